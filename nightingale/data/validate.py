"""Validate a MEDS 0.4 dataset and summarise it, streaming one shard at a time.

Each shard is read through a polars lazy scan; only per-shard aggregates, the shard's unique codes
and one `(subject_id, n_events, first_row)` row per subject are kept, so memory grows with the
number of subjects and codes, never with the number of events or shards.

Strictness, decided once here (issue 2, section 3):
- errors: no shard under `data/`; `metadata/codes.parquet` or `metadata/subject_splits.parquet`
  missing; a required column (`subject_id`, `time`, `code`) missing; `subject_id` not int64;
  `time` not a timestamp; `code`/`text_value` not string; `numeric_value` not floating point;
  null `subject_id` or `code`; rows not sorted by (subject_id, time) with null-time (static) rows
  first per subject; a subject in more than one shard; a split name outside train/tuning/held_out;
  a subject with more than one split; a data subject without a split; a data code absent from
  `codes.parquet` (the MIMIC-IV demo has every code, so this is an error by default;
  `strict_codes=False` makes it a warning for ETLs that write codes metadata lazily).
- warnings: `metadata/dataset.json` absent (MEDS 0.4 asks for it, but the data are usable
  without it); `time` in a unit other than microseconds or with a time zone (MEDS says naive
  `timestamp[us]`; polars reads the others correctly); `numeric_value` float64 instead of float32;
  optional `numeric_value`/`text_value` columns absent; NaN/inf values; times before 1800 or after
  2500 (not "after today": de-identified data such as the MIMIC-IV demo is shifted to 2110-2202);
  events before the subject's `MEDS_BIRTH`; split subjects with no data; duplicate codes metadata.
- the reference checks (`validate_reference.py`): every file against the `meds` package's own
  schemas, which are exact about types (`code` string, not large_string; `dataset.json`'s
  `created_at` a date-time, not null). Findings carry `check="meds"`; by default they are errors
  (`reference="error"`, what `nightingale validate` asks), `"warn"` when reading a dataset someone
  else wrote (we read large_string as happily as string), `"off"` to skip them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from nightingale import schema as S

log = logging.getLogger(__name__)

_ROW = "__row"  # row index inside a shard (0-based), added to every scan
_SHARD = "__shard"
_N_EVENTS = "n_events"
_EARLIEST = dt.datetime(1800, 1, 1)
_LATEST = dt.datetime(2500, 1, 1)
_MAX_EXAMPLES = 5


def _locate(file: str | None, column: str | None, row: int | None) -> str:
    parts = [file] if file else []
    if column:
        parts.append(f"column {column!r}")
    if row is not None:
        parts.append(f"row {row}")
    return ", ".join(parts)


NIGHTINGALE_CHECK = "nightingale"  # this module's checks
MEDS_CHECK = "meds"  # the `meds` package's schema validation (validate_reference.py)
REFERENCE_MODES = ("error", "warn", "off")


class MEDSValidationError(ValueError):
    """A MEDS dataset breaks the standard: where (file relative to the root, column, 0-based row),
    what was expected, and which check found it (`nightingale` or the `meds` reference)."""

    def __init__(self, message: str, *, file: str | None = None, column: str | None = None,
                 row: int | None = None, check: str = NIGHTINGALE_CHECK):
        super().__init__(message)
        self.message, self.file, self.column, self.row = message, file, column, row
        self.check = check

    def __str__(self) -> str:
        where = _locate(self.file, self.column, self.row)
        text = f"{where}: {self.message}" if where else self.message
        return f"[{self.check}] {text}" if self.check != NIGHTINGALE_CHECK else text

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "column": self.column, "row": self.row, "message": self.message,
                "check": self.check}


@dataclass(frozen=True)
class ValidationWarning:
    """Something odd but usable; located like `MEDSValidationError`."""

    message: str
    file: str | None = None
    column: str | None = None
    row: int | None = None
    check: str = NIGHTINGALE_CHECK

    def __str__(self) -> str:
        where = _locate(self.file, self.column, self.row)
        text = f"{where}: {self.message}" if where else self.message
        return f"[{self.check}] {text}" if self.check != NIGHTINGALE_CHECK else text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DatasetSummary:
    """Counts over the whole dataset. `events_per_subject` has min/median/mean/p95/max (linear
    interpolation for the quantiles); `subjects_per_split` counts data subjects by their split."""

    n_shards: int
    n_subjects: int
    n_events: int
    n_static_events: int  # rows with a null time (static facts such as sex)
    n_timed_events: int
    n_unique_codes: int
    n_numeric_values: int  # rows with a non-null numeric_value
    time_min: dt.datetime | None
    time_max: dt.datetime | None
    events_per_subject: dict[str, float]
    subjects_per_split: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("time_min", "time_max"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


@dataclass
class ValidationReport:
    root: Path
    errors: list[MEDSValidationError] = field(default_factory=list)
    warnings: list[ValidationWarning] = field(default_factory=list)
    summary: DatasetSummary | None = None
    reference: str = "error"  # how the `meds` schema findings were treated (REFERENCE_MODES)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_invalid(self) -> None:
        """Raise the first error (the others are in `errors`)."""
        if self.errors:
            raise self.errors[0]

    def by_check(self, check: str) -> list[MEDSValidationError]:
        return [e for e in self.errors if e.check == check]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "valid": self.ok,
            "meds_schema": self.reference,
            "checks": {c: {"errors": len(self.by_check(c)),
                           "warnings": sum(w.check == c for w in self.warnings)}
                       for c in (NIGHTINGALE_CHECK, MEDS_CHECK)},
            "errors": [e.to_dict() for e in self.errors],
            "warnings": [w.to_dict() for w in self.warnings],
            "summary": self.summary.to_dict() if self.summary else None,
        }


def validate_meds(root: str | Path, *, strict_codes: bool = True, fail_fast: bool = False,
                  reference: str = "error") -> ValidationReport:
    """Check a MEDS dataset (see the module docstring for what is an error and what a warning).

    Errors are collected into the report; with `fail_fast` the first one is raised instead.
    `strict_codes=False` turns data codes missing from `codes.parquet` into a warning;
    `reference` says what the `meds` package's schema findings are: "error", "warn" or "off".
    The report's `summary` is filled whenever every shard could be read (right columns and
    dtypes), even if rows break other rules; cross-shard and split checks need that too.
    """
    if reference not in REFERENCE_MODES:
        raise ValueError(f"reference: {reference!r} is not one of {list(REFERENCE_MODES)}")
    report = _Validator(Path(root), strict_codes=strict_codes, fail_fast=fail_fast).run()
    report.reference = reference
    if reference != "off" and Path(root).is_dir():
        from nightingale.data.validate_reference import reference_findings

        for f in reference_findings(root):
            message = f"{f.schema}: {f.message}"
            if reference == "error":
                err = MEDSValidationError(message, file=f.file, check=MEDS_CHECK)
                if fail_fast:
                    raise err
                report.errors.append(err)
            else:
                report.warnings.append(ValidationWarning(message, f.file, check=MEDS_CHECK))
    return report


def summarise_meds(root: str | Path) -> DatasetSummary:
    """Summary counts of a MEDS dataset; raises `MEDSValidationError` only if it cannot be read."""
    report = validate_meds(root, strict_codes=False, reference="off")
    if report.summary is None:
        report.raise_if_invalid()
        raise MEDSValidationError("no summary could be computed", file=str(root))
    return report.summary


class _Validator:
    def __init__(self, root: Path, *, strict_codes: bool, fail_fast: bool):
        self.root, self.strict_codes, self.fail_fast = root, strict_codes, fail_fast
        self.report = ValidationReport(root=root)
        self.known_codes: pl.Series | None = None

    # --- recording ---------------------------------------------------------------------------
    def error(self, message: str, file: str | None = None, column: str | None = None,
              row: int | None = None) -> None:
        err = MEDSValidationError(message, file=file, column=column, row=row)
        log.debug("MEDS error: %s", err)
        if self.fail_fast:
            raise err
        self.report.errors.append(err)

    def warn(self, message: str, file: str | None = None, column: str | None = None,
             row: int | None = None) -> None:
        self.report.warnings.append(ValidationWarning(message, file, column, row))

    # --- the whole dataset -------------------------------------------------------------------
    def run(self) -> ValidationReport:
        if not self.root.is_dir():
            self.error("MEDS dataset folder does not exist", file=str(self.root))
            return self.report
        self._check_metadata()
        data_dir = self.root / S.DATA_DIR
        shards = sorted(data_dir.rglob("*.parquet")) if data_dir.is_dir() else []
        if not shards:
            self.error("no parquet shards under data/: the dataset is empty (expected "
                       "data/**/*.parquet)", file=f"{S.DATA_DIR}/")
            return self.report
        names = [p.relative_to(self.root).as_posix() for p in shards]
        stats, subjects, codes = [], [], pl.Series(S.CODE, [], dtype=pl.String)
        unreadable = 0
        for i, (path, name) in enumerate(zip(shards, names)):
            log.debug("validating shard %d/%d %s", i + 1, len(shards), name)
            result = self._check_shard(path, name)
            if result is None:
                unreadable += 1
                continue
            agg, per_subject, shard_codes = result
            stats.append(agg)
            subjects.append(per_subject.with_columns(pl.lit(i, dtype=pl.UInt32).alias(_SHARD)))
            codes = pl.concat([codes, shard_codes]).unique()  # keeps memory at O(vocabulary)
        if unreadable:  # cross-shard checks and counts would only echo the missing shards
            return self.report
        per_subject = pl.concat(subjects)
        self._check_one_shard_per_subject(per_subject, names)
        split_of = self._check_splits(per_subject, names)
        self.report.summary = _summarise(len(shards), stats, per_subject, codes, split_of)
        return self.report

    def _check_metadata(self) -> None:
        codes_path = self.root / S.CODES_FILE
        if not codes_path.exists():
            self.error("metadata file is missing (expected columns code, description, "
                       "parent_codes)", file=S.CODES_FILE)
        elif (codes := self._read_metadata(S.CODES_FILE)) is not None:
            if S.CODE not in codes.columns or codes.schema[S.CODE] != pl.String:
                self.error(f"expected a string column {S.CODE!r}; have {dict(codes.schema)}",
                           file=S.CODES_FILE, column=S.CODE)
            else:
                self.known_codes = codes[S.CODE].drop_nulls()
                n_dup = self.known_codes.is_duplicated().sum()
                if n_dup:
                    self.warn(f"{n_dup} rows repeat a code", file=S.CODES_FILE, column=S.CODE)
        if not (self.root / S.SPLITS_FILE).exists():
            self.error("metadata file is missing (expected columns subject_id, split)",
                       file=S.SPLITS_FILE)
        meta_path = self.root / S.DATASET_FILE
        if not meta_path.exists():
            self.warn("metadata file is missing (MEDS 0.4 expects dataset_name, meds_version, ...)",
                      file=S.DATASET_FILE)
            return
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.error(f"not valid JSON: {exc}", file=S.DATASET_FILE)
            return
        if not isinstance(meta, dict):
            self.error("expected a JSON object", file=S.DATASET_FILE)
        elif "meds_version" not in meta:
            self.warn("no 'meds_version' key", file=S.DATASET_FILE)

    def _read_metadata(self, rel: str) -> pl.DataFrame | None:
        try:
            return pl.read_parquet(self.root / rel)
        except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable file
            self.error(f"not a readable parquet file: {exc}", file=rel)
            return None

    # --- one shard ---------------------------------------------------------------------------
    def _check_dtypes(self, schema: pl.Schema, name: str) -> bool:
        """Check column presence and dtypes; False if the rows cannot be checked."""
        readable = True
        for col in S.REQUIRED_DATA_COLUMNS:
            if col not in schema:
                self.error(f"required column {col!r} is missing; have {list(schema)}",
                           file=name, column=col)
                readable = False
        for col in (S.NUMERIC_VALUE, S.TEXT_VALUE):
            if col not in schema:
                self.warn(f"optional column {col!r} is absent", file=name, column=col)
        for col, dtype in schema.items():
            if col not in S.DATA_SCHEMA:
                continue  # extension columns (e.g. unit) are allowed
            expected = S.DATA_SCHEMA[col]
            if dtype == expected:
                continue
            if col == S.TIME and isinstance(dtype, pl.Datetime):
                self.warn(f"dtype {dtype}; MEDS expects {expected} (naive, microseconds)",
                          file=name, column=col)
            elif col == S.NUMERIC_VALUE and dtype == pl.Float64:
                self.warn(f"dtype {dtype}; MEDS expects {expected}", file=name, column=col)
            else:
                self.error(f"dtype {dtype}; expected {expected}", file=name, column=col)
                readable = readable and col not in S.REQUIRED_DATA_COLUMNS
        return readable

    def _check_shard(self, path: Path, name: str):
        try:
            schema = pl.read_parquet_schema(path)
        except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable shard
            self.error(f"not a readable parquet file: {exc}", file=name)
            return None
        if not self._check_dtypes(schema, name):
            return None
        sid, time, code = pl.col(S.SUBJECT_ID), pl.col(S.TIME), pl.col(S.CODE)
        row = pl.col(_ROW)
        cols = [c for c in (S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE) if c in schema]
        lf = pl.scan_parquet(path).select(cols).with_row_index(_ROW)
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
                pl.len().alias(_N_EVENTS), row.min().alias(_ROW),
                (time.min() < birth).fill_null(False).alias("before_birth"),
            ),
            lf.select(code.drop_nulls().unique()),
        ])
        a = agg.row(0, named=True)
        if a["null_sid"]:
            self.error(f"{a['null_sid']} null subject_id value(s); every row needs a subject",
                       file=name, column=S.SUBJECT_ID, row=a["null_sid_row"])
        if a["null_code"]:
            self.error(f"{a['null_code']} null code value(s); every row needs a code",
                       file=name, column=S.CODE, row=a["null_code_row"])
        if first_unsorted.height:
            r = first_unsorted.row(0, named=True)
            self.error(
                f"rows are not sorted by (subject_id, time): subject {r[S.SUBJECT_ID]} at time "
                f"{r[S.TIME]} follows subject {r['prev_sid']} at time {r['prev_time']}; expected "
                "subject_id ascending and, within a subject, null-time (static) rows first, then "
                "non-decreasing time",
                file=name, column=S.TIME if r[S.SUBJECT_ID] == r["prev_sid"] else S.SUBJECT_ID,
                row=r[_ROW])
        if a["non_finite"]:
            self.warn(f"{a['non_finite']} NaN/inf value(s)", file=name, column=S.NUMERIC_VALUE,
                      row=a["non_finite_row"])
        if a["implausible"]:
            self.warn(f"{a['implausible']} time(s) before {_EARLIEST.year} or from "
                      f"{_LATEST.year} on", file=name, column=S.TIME, row=a["implausible_row"])
        n_before_birth = int(per_subject["before_birth"].sum())
        if n_before_birth:
            self.warn(f"{n_before_birth} subject(s) have events before their {S.BIRTH_CODE}",
                      file=name, column=S.TIME)
        self._check_codes(lf, shard_codes[S.CODE], name)
        return a, per_subject.select(S.SUBJECT_ID, _N_EVENTS, _ROW), shard_codes[S.CODE]

    def _check_codes(self, lf: pl.LazyFrame, shard_codes: pl.Series, name: str) -> None:
        if self.known_codes is None:
            return  # codes.parquet missing or malformed: already an error
        missing = shard_codes.filter(~shard_codes.is_in(self.known_codes.implode()))
        if missing.is_empty():
            return
        first = (lf.filter(pl.col(S.CODE).is_in(missing.implode())).select(_ROW, S.CODE)
                 .head(1).collect().row(0, named=True))
        examples = ", ".join(repr(c) for c in missing.sort().head(_MAX_EXAMPLES))
        message = (f"code {first[S.CODE]!r} is not in {S.CODES_FILE}; {missing.len()} distinct "
                   f"code(s) of this shard are missing there (e.g. {examples})")
        (self.error if self.strict_codes else self.warn)(
            message, file=name, column=S.CODE, row=first[_ROW])

    # --- across shards -----------------------------------------------------------------------
    def _check_one_shard_per_subject(self, per_subject: pl.DataFrame, names: list[str]) -> None:
        dup = per_subject.filter(pl.col(S.SUBJECT_ID).is_duplicated())
        if dup.is_empty():
            return
        n_dup = dup[S.SUBJECT_ID].n_unique()
        first_sid = dup[S.SUBJECT_ID].min()
        rows = dup.filter(pl.col(S.SUBJECT_ID) == first_sid).sort(_SHARD)
        (_, _, row_a, shard_a), (_, _, row_b, shard_b) = rows.head(2).iter_rows()
        self.error(
            f"subject {first_sid} is in {names[shard_a]} (row {row_a}) and in {names[shard_b]} "
            f"(row {row_b}); each subject must be in exactly one shard ({n_dup} subject(s) are "
            "split across shards)",
            file=names[shard_b], column=S.SUBJECT_ID, row=row_b)

    def _check_splits(self, per_subject: pl.DataFrame, names: list[str]) -> pl.DataFrame | None:
        """Check subject_splits.parquet; return (subject_id, split) or None if unusable."""
        path = self.root / S.SPLITS_FILE
        if not path.exists():
            return None  # already an error
        splits = self._read_metadata(S.SPLITS_FILE)
        if splits is None:
            return None
        for col, dtype in S.SPLITS_SCHEMA.items():
            if col not in splits.columns or splits.schema[col] != dtype:
                got = splits.schema.get(col, "missing")
                self.error(f"column {col!r} is {got}; expected {dtype}", file=S.SPLITS_FILE,
                           column=col)
                return None
        splits = splits.select(S.SUBJECT_ID, S.SPLIT).with_row_index(_ROW)
        bad = splits.filter(~pl.col(S.SPLIT).is_in(list(S.SPLITS)) | pl.col(S.SPLIT).is_null())
        if bad.height:
            r = bad.row(0, named=True)
            self.error(f"split {r[S.SPLIT]!r} for subject {r[S.SUBJECT_ID]}; expected one of "
                       f"{list(S.SPLITS)} ({bad.height} such row(s))", file=S.SPLITS_FILE,
                       column=S.SPLIT, row=r[_ROW])
        repeated = splits.filter(~pl.col(S.SUBJECT_ID).is_first_distinct())
        if repeated.height:
            r = repeated.row(0, named=True)
            self.error(f"subject {r[S.SUBJECT_ID]} is listed more than once; every subject needs "
                       "exactly one split", file=S.SPLITS_FILE, column=S.SUBJECT_ID, row=r[_ROW])
        data_subjects = per_subject.unique(S.SUBJECT_ID, keep="first")
        no_split = data_subjects.join(splits, on=S.SUBJECT_ID, how="anti").sort(S.SUBJECT_ID)
        if no_split.height:
            r = no_split.row(0, named=True)
            self.error(
                f"subject {r[S.SUBJECT_ID]} (first row {r[_ROW]} of {names[r[_SHARD]]}) has no "
                f"split; {no_split.height} data subject(s) are missing from {S.SPLITS_FILE}",
                file=S.SPLITS_FILE, column=S.SUBJECT_ID)
        no_data = splits.join(data_subjects, on=S.SUBJECT_ID, how="anti")
        if no_data.height:
            self.warn(f"{no_data.height} subject(s) have a split but no data (e.g. "
                      f"{no_data[S.SUBJECT_ID].head(_MAX_EXAMPLES).to_list()})",
                      file=S.SPLITS_FILE, column=S.SUBJECT_ID, row=no_data[_ROW][0])
        return splits.unique(S.SUBJECT_ID, keep="first").select(S.SUBJECT_ID, S.SPLIT)


def _summarise(n_shards: int, stats: list[dict[str, Any]], per_subject: pl.DataFrame, codes: pl.Series,
               split_of: pl.DataFrame | None) -> DatasetSummary:
    counts = per_subject.group_by(S.SUBJECT_ID).agg(pl.col(_N_EVENTS).sum())
    n = counts[_N_EVENTS]
    eps = {
        "min": float(n.min()), "median": float(n.median()), "mean": float(n.mean()),
        "p95": float(n.quantile(0.95, interpolation="linear")), "max": float(n.max()),
    }
    by_split: dict[str, int] = {}
    if split_of is not None:
        joined = counts.join(split_of, on=S.SUBJECT_ID, how="left")
        for split in (*S.SPLITS, None):
            k = joined.filter(pl.col(S.SPLIT).eq_missing(split)).height
            if k or split in S.SPLITS:
                by_split[split or "unassigned"] = k
    def total(key: str) -> int:
        return sum(int(a[key]) for a in stats)

    times = [t for a in stats for t in (a["time_min"], a["time_max"]) if t is not None]
    n_events, n_static = total("n_events"), total("n_static")
    return DatasetSummary(
        n_shards=n_shards,
        n_subjects=counts.height,
        n_events=n_events,
        n_static_events=n_static,
        n_timed_events=n_events - n_static,
        n_unique_codes=codes.len(),
        n_numeric_values=total("n_numeric"),
        time_min=min(times, default=None),
        time_max=max(times, default=None),
        events_per_subject=eps,
        subjects_per_split=by_split,
    )
