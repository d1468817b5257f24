"""Shared views of MEDS event tables used by the synthetic-data checks.

Every check takes events as a polars DataFrame or LazyFrame (or a MEDS dataset root, optionally
one split of it) and works on the same few views: the timed clinical events (static rows and
`MEDS_BIRTH` removed), each subject's birth time and sex, and a subject x code presence matrix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset

EventsLike = pl.DataFrame | pl.LazyFrame | MEDSDataset | str | os.PathLike
SEX_PREFIX = f"SEX{S.CODE_SEPARATOR}"
UNKNOWN_SEX = "unknown"
DAYS_PER_YEAR = 365.25
US_PER_DAY = 86_400 * 1_000_000


def load_events(source: EventsLike, split: str | None = None) -> pl.DataFrame:
    """MEDS events (subject_id, time, code, numeric_value) sorted by subject then time.

    `source` is a frame, a `MEDSDataset` or a dataset root; `split` keeps one split's subjects
    (read from `metadata/subject_splits.parquet`; with a frame it is an error). The sort is
    stable, so events at the same time keep the order they were written in.
    """
    if isinstance(source, str | os.PathLike):
        source = MEDSDataset(Path(source))
    if isinstance(source, MEDSDataset):
        lf = source.scan()
        if split is not None:
            ids = source.subjects(split)
            lf = lf.filter(pl.col(S.SUBJECT_ID).is_in(ids.implode()))
    else:
        if split is not None:
            raise ValueError("split: only a MEDS dataset (root or MEDSDataset) has splits")
        lf = source.lazy()
    names = lf.collect_schema().names()
    missing = [c for c in S.REQUIRED_DATA_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"events are missing MEDS column(s) {missing}; have {names}")
    value = (
        pl.col(S.NUMERIC_VALUE).cast(pl.Float32)
        if S.NUMERIC_VALUE in names
        else pl.lit(None, dtype=pl.Float32).alias(S.NUMERIC_VALUE)
    )
    return (
        lf.select(
            pl.col(S.SUBJECT_ID).cast(pl.Int64),
            pl.col(S.TIME).cast(pl.Datetime("us")),
            pl.col(S.CODE).cast(pl.String),
            value,
        )
        .sort([S.SUBJECT_ID, S.TIME], nulls_last=False, maintain_order=True)
        .collect()
    )


def subsample_subjects(events: pl.DataFrame, max_subjects: int | None, seed: int) -> pl.DataFrame:
    """At most `max_subjects` subjects of `events` (all their rows), drawn without replacement
    with `seed`; `events` itself when it has no more than that (or `max_subjects` is None)."""
    ids = events[S.SUBJECT_ID].unique(maintain_order=True)
    if max_subjects is None or len(ids) <= max_subjects:
        return events
    keep = ids.sample(max_subjects, seed=seed)
    return events.filter(pl.col(S.SUBJECT_ID).is_in(keep.implode()))


def timed_events(events: pl.DataFrame) -> pl.DataFrame:
    """Clinical events: rows with a time, `MEDS_BIRTH` removed (it is a demographic, not care)."""
    return events.filter(pl.col(S.TIME).is_not_null() & (pl.col(S.CODE) != S.BIRTH_CODE))


def demographics(events: pl.DataFrame) -> pl.DataFrame:
    """One row per subject: subject_id, sex (suffix of the `SEX//` static code, else "unknown"),
    birth (the first `MEDS_BIRTH` time, null when absent)."""
    subjects = events.select(pl.col(S.SUBJECT_ID).unique(maintain_order=True))
    sex = (
        events.filter(pl.col(S.TIME).is_null() & pl.col(S.CODE).str.starts_with(SEX_PREFIX))
        .group_by(S.SUBJECT_ID, maintain_order=True)
        .agg(pl.col(S.CODE).first().str.strip_prefix(SEX_PREFIX).alias("sex"))
    )
    birth = (
        events.filter(pl.col(S.CODE) == S.BIRTH_CODE)
        .group_by(S.SUBJECT_ID, maintain_order=True)
        .agg(pl.col(S.TIME).min().alias("birth"))
    )
    return (
        subjects.join(sex, on=S.SUBJECT_ID, how="left")
        .join(birth, on=S.SUBJECT_ID, how="left")
        .with_columns(pl.col("sex").fill_null(UNKNOWN_SEX))
    )


def years_between(start: pl.Expr, end: pl.Expr) -> pl.Expr:
    """(end - start) in years of 365.25 days, as float64."""
    return (end - start).dt.total_microseconds().cast(pl.Float64) / (US_PER_DAY * DAYS_PER_YEAR)


def code_prevalence(events: pl.DataFrame) -> pl.DataFrame:
    """Share of subjects with each code at least once (static rows included): code, prevalence."""
    n = max(events[S.SUBJECT_ID].n_unique(), 1)
    return (
        events.select(S.SUBJECT_ID, S.CODE)
        .unique()
        .group_by(S.CODE)
        .agg((pl.len() / n).alias("prevalence"))
        .sort(S.CODE)
    )


def presence_matrix(events: pl.DataFrame, codes: list[str]) -> np.ndarray:
    """Subjects x `codes` boolean matrix: subject has the code at least once (rows in subject
    order of first appearance; subjects without any of the codes are rows of False)."""
    subjects = events[S.SUBJECT_ID].unique(maintain_order=True)
    index = {c: j for j, c in enumerate(codes)}
    pairs = (
        events.filter(pl.col(S.CODE).is_in(codes))
        .select(S.SUBJECT_ID, S.CODE)
        .unique()
        .join(
            pl.DataFrame({S.SUBJECT_ID: subjects, "_row": np.arange(len(subjects))}),
            on=S.SUBJECT_ID,
        )
    )
    out = np.zeros((len(subjects), len(codes)), dtype=bool)
    cols = pairs[S.CODE].replace_strict(index, return_dtype=pl.Int64).to_numpy()
    out[pairs["_row"].to_numpy(), cols] = True
    return out
