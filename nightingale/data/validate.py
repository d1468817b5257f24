"""Validate a MEDS 0.4 dataset and summarise it, streaming one shard at a time.

The checks live beside this module: `validate_shards.py` (each data shard, and one shard per
subject), `validate_metadata.py` (codes, dataset.json, splits), `validate_reference.py` (the
`meds` package's schemas); the findings and the summary are the types of `validate_report.py`,
re-exported here.

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

import logging
from pathlib import Path
from typing import Any

import polars as pl

from nightingale import schema as S
from nightingale.data.validate_metadata import check_metadata, check_splits
from nightingale.data.validate_report import (
    MEDS_CHECK,
    N_EVENTS,
    NIGHTINGALE_CHECK,
    REFERENCE_MODES,
    SHARD,
    DatasetSummary,
    Findings,
    MEDSValidationError,
    ValidationReport,
    ValidationWarning,
)
from nightingale.data.validate_shards import check_one_shard_per_subject, check_shard

__all__ = [
    "MEDS_CHECK",
    "NIGHTINGALE_CHECK",
    "REFERENCE_MODES",
    "DatasetSummary",
    "MEDSValidationError",
    "ValidationReport",
    "ValidationWarning",
    "summarise_meds",
    "validate_meds",
]

log = logging.getLogger(__name__)


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
    report = _check_dataset(Path(root), strict_codes=strict_codes, fail_fast=fail_fast)
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


def _check_dataset(root: Path, *, strict_codes: bool, fail_fast: bool) -> ValidationReport:
    """The nightingale checks of the dataset at `root` (metadata, every shard, across shards)."""
    report = ValidationReport(root=root)
    findings = Findings(report, fail_fast=fail_fast)
    if not root.is_dir():
        findings.error("MEDS dataset folder does not exist", file=str(root))
        return report
    known_codes = check_metadata(root, findings)
    data_dir = root / S.DATA_DIR
    shards = sorted(data_dir.rglob("*.parquet")) if data_dir.is_dir() else []
    if not shards:
        findings.error("no parquet shards under data/: the dataset is empty (expected "
                       "data/**/*.parquet)", file=f"{S.DATA_DIR}/")
        return report
    names = [p.relative_to(root).as_posix() for p in shards]
    stats, subjects, codes = [], [], pl.Series(S.CODE, [], dtype=pl.String)
    unreadable = 0
    for i, (path, name) in enumerate(zip(shards, names)):
        log.debug("validating shard %d/%d %s", i + 1, len(shards), name)
        result = check_shard(path, name, findings, known_codes, strict_codes)
        if result is None:
            unreadable += 1
            continue
        agg, per_subject, shard_codes = result
        stats.append(agg)
        subjects.append(per_subject.with_columns(pl.lit(i, dtype=pl.UInt32).alias(SHARD)))
        codes = pl.concat([codes, shard_codes]).unique()  # keeps memory at O(vocabulary)
    if unreadable:  # cross-shard checks and counts would only echo the missing shards
        return report
    per_subject = pl.concat(subjects)
    check_one_shard_per_subject(per_subject, names, findings)
    split_of = check_splits(root, per_subject, names, findings)
    report.summary = _summarise(len(shards), stats, per_subject, codes, split_of)
    return report


def _summarise(n_shards: int, stats: list[dict[str, Any]], per_subject: pl.DataFrame, codes: pl.Series,
               split_of: pl.DataFrame | None) -> DatasetSummary:
    """The dataset's counts from the shards' aggregates (`stats`), their per-subject rows, the
    unique codes and the (subject_id, split) table (None: splits unusable, none counted)."""
    counts = per_subject.group_by(S.SUBJECT_ID).agg(pl.col(N_EVENTS).sum())
    n = counts[N_EVENTS]
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
