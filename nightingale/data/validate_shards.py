"""MEDS validation of the data shards: columns and dtypes, null ids and codes, sorting, values and
times, codes against `codes.parquet`, one shard per subject. Each shard is one polars lazy scan
reduced to aggregates, its unique codes and one row per subject, so memory does not grow with the
number of events. What is an error and what a warning is listed in `validate.py`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl

from nightingale import schema as S
from nightingale.data.validate_report import MAX_EXAMPLES, N_EVENTS, ROW, SHARD, Findings

_EARLIEST = dt.datetime(1800, 1, 1)
_LATEST = dt.datetime(2500, 1, 1)


def check_dtypes(schema: pl.Schema, name: str, findings: Findings) -> bool:
    """Check column presence and dtypes; False if the rows cannot be checked."""
    readable = True
    for col in S.REQUIRED_DATA_COLUMNS:
        if col not in schema:
            findings.error(f"required column {col!r} is missing; have {list(schema)}",
                           file=name, column=col)
            readable = False
    for col in (S.NUMERIC_VALUE, S.TEXT_VALUE):
        if col not in schema:
            findings.warn(f"optional column {col!r} is absent", file=name, column=col)
    for col, dtype in schema.items():
        if col not in S.DATA_SCHEMA:
            continue  # extension columns (e.g. unit) are allowed
        expected = S.DATA_SCHEMA[col]
        if dtype == expected:
            continue
        if col == S.TIME and isinstance(dtype, pl.Datetime):
            findings.warn(f"dtype {dtype}; MEDS expects {expected} (naive, microseconds)",
                          file=name, column=col)
        elif col == S.NUMERIC_VALUE and dtype == pl.Float64:
            findings.warn(f"dtype {dtype}; MEDS expects {expected}", file=name, column=col)
        else:
            findings.error(f"dtype {dtype}; expected {expected}", file=name, column=col)
            readable = readable and col not in S.REQUIRED_DATA_COLUMNS
    return readable


def check_shard(path: Path, name: str, findings: Findings, known_codes: pl.Series | None,
                strict_codes: bool) -> tuple[dict[str, Any], pl.DataFrame, pl.Series] | None:
    """Check one shard (`name`: its path relative to the root). Returns its aggregates, one
    (subject_id, n_events, first row) row per subject and its unique codes; None when its
    columns or dtypes leave the rows uncheckable."""
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable shard
        findings.error(f"not a readable parquet file: {exc}", file=name)
        return None
    if not check_dtypes(schema, name, findings):
        return None
    sid, time, code = pl.col(S.SUBJECT_ID), pl.col(S.TIME), pl.col(S.CODE)
    row = pl.col(ROW)
    cols = [c for c in (S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE) if c in schema]
    lf = pl.scan_parquet(path).select(cols).with_row_index(ROW)
    if getattr(schema[S.TIME], "time_zone", None):  # compare in naive UTC
        lf = lf.with_columns(time.dt.convert_time_zone("UTC").dt.replace_time_zone(None))
    has_num = S.NUMERIC_VALUE in schema and schema[S.NUMERIC_VALUE].is_float()
    num = pl.col(S.NUMERIC_VALUE)
    implausible = (time < _EARLIEST) | (time >= _LATEST)
    aggs = [
        pl.len().alias("n_events"),
        time.is_null().sum().alias("n_static"),
        time.min().alias("time_min"),
        time.max().alias("time_max"),
        sid.is_null().sum().alias("null_sid"),
        row.filter(sid.is_null()).first().alias("null_sid_row"),
        code.is_null().sum().alias("null_code"),
        row.filter(code.is_null()).first().alias("null_code_row"),
        implausible.sum().alias("implausible"),
        row.filter(implausible).first().alias("implausible_row"),
        (num.is_not_null().sum() if has_num else pl.lit(0)).alias("n_numeric"),
        ((~num.is_finite()).sum() if has_num else pl.lit(0)).alias("non_finite"),
        (row.filter(~num.is_finite()).first() if has_num else pl.lit(None)).alias(
            "non_finite_row"),
    ]
    prev_sid, prev_time = sid.shift(1), time.shift(1)
    # Sorted means: subject ids non-decreasing; within a subject, static (null time) rows
    # first, then non-decreasing times. Null comparisons are spelled out (null is not false).
    unsorted = (sid < prev_sid) | (
        (sid == prev_sid) & prev_time.is_not_null() & (time.is_null() | (time < prev_time))
    )
    birth = time.filter(code == S.BIRTH_CODE).min()
    agg, first_unsorted, per_subject, shard_codes = pl.collect_all([
        lf.select(aggs),
        lf.with_columns(prev_sid.alias("prev_sid"), prev_time.alias("prev_time"))
        .filter(unsorted).head(1),
        lf.filter(sid.is_not_null()).group_by(S.SUBJECT_ID).agg(
            pl.len().alias(N_EVENTS), row.min().alias(ROW),
            (time.min() < birth).fill_null(False).alias("before_birth"),
        ),
        lf.select(code.drop_nulls().unique()),
    ])
    a = agg.row(0, named=True)
    if a["null_sid"]:
        findings.error(f"{a['null_sid']} null subject_id value(s); every row needs a subject",
                       file=name, column=S.SUBJECT_ID, row=a["null_sid_row"])
    if a["null_code"]:
        findings.error(f"{a['null_code']} null code value(s); every row needs a code",
                       file=name, column=S.CODE, row=a["null_code_row"])
    if first_unsorted.height:
        r = first_unsorted.row(0, named=True)
        findings.error(
            f"rows are not sorted by (subject_id, time): subject {r[S.SUBJECT_ID]} at time "
            f"{r[S.TIME]} follows subject {r['prev_sid']} at time {r['prev_time']}; expected "
            "subject_id ascending and, within a subject, null-time (static) rows first, then "
            "non-decreasing time",
            file=name, column=S.TIME if r[S.SUBJECT_ID] == r["prev_sid"] else S.SUBJECT_ID,
            row=r[ROW])
    if a["non_finite"]:
        findings.warn(f"{a['non_finite']} NaN/inf value(s)", file=name, column=S.NUMERIC_VALUE,
                      row=a["non_finite_row"])
    if a["implausible"]:
        findings.warn(f"{a['implausible']} time(s) before {_EARLIEST.year} or from "
                      f"{_LATEST.year} on", file=name, column=S.TIME, row=a["implausible_row"])
    n_before_birth = int(per_subject["before_birth"].sum())
    if n_before_birth:
        findings.warn(f"{n_before_birth} subject(s) have events before their {S.BIRTH_CODE}",
                      file=name, column=S.TIME)
    if known_codes is not None:  # else codes.parquet is missing or malformed: already an error
        check_codes(lf, shard_codes[S.CODE], known_codes, name, findings, strict=strict_codes)
    return a, per_subject.select(S.SUBJECT_ID, N_EVENTS, ROW), shard_codes[S.CODE]


def check_codes(lf: pl.LazyFrame, shard_codes: pl.Series, known_codes: pl.Series, name: str,
                findings: Findings, *, strict: bool) -> None:
    """Every code of the shard must be in codes.parquet (`known_codes`): an error when `strict`,
    else a warning."""
    missing = shard_codes.filter(~shard_codes.is_in(known_codes.implode()))
    if missing.is_empty():
        return
    first = (lf.filter(pl.col(S.CODE).is_in(missing.implode())).select(ROW, S.CODE)
             .head(1).collect().row(0, named=True))
    examples = ", ".join(repr(c) for c in missing.sort().head(MAX_EXAMPLES))
    message = (f"code {first[S.CODE]!r} is not in {S.CODES_FILE}; {missing.len()} distinct "
               f"code(s) of this shard are missing there (e.g. {examples})")
    (findings.error if strict else findings.warn)(
        message, file=name, column=S.CODE, row=first[ROW])


def check_one_shard_per_subject(per_subject: pl.DataFrame, names: list[str], findings: Findings) -> None:
    """No subject may appear in two shards (`per_subject`: one row per subject and shard)."""
    dup = per_subject.filter(pl.col(S.SUBJECT_ID).is_duplicated())
    if dup.is_empty():
        return
    n_dup = dup[S.SUBJECT_ID].n_unique()
    first_sid = dup[S.SUBJECT_ID].min()
    rows = dup.filter(pl.col(S.SUBJECT_ID) == first_sid).sort(SHARD)
    (_, _, row_a, shard_a), (_, _, row_b, shard_b) = rows.head(2).iter_rows()
    findings.error(
        f"subject {first_sid} is in {names[shard_a]} (row {row_a}) and in {names[shard_b]} "
        f"(row {row_b}); each subject must be in exactly one shard ({n_dup} subject(s) are "
        "split across shards)",
        file=names[shard_b], column=S.SUBJECT_ID, row=row_b)
