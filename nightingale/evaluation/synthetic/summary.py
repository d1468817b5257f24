"""One row per patient: the table that SDMetrics, distance-to-closest-record and PAR work on.

Columns of `patient_summary`: subject_id; sex ("F", "M", ... or "unknown"); birth_year (decimal
year, null without a `MEDS_BIRTH`); age_first (age in years at the first clinical event);
follow_up_years (first to last clinical event); n_events (clinical events: timed rows other than
`MEDS_BIRTH`); n_codes (distinct codes among them); died (any `MEDS_DEATH`); then one
`count:<code>` column per top code. The top codes are fitted once on the real training data
(`fit_top_codes`) and passed to every call, so synthetic and real tables share their columns.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.evaluation.synthetic.events import demographics, timed_events, years_between

COUNT_PREFIX = "count:"
BASE_COLUMNS = ("sex", "birth_year", "age_first", "follow_up_years", "n_events", "n_codes", "died")
NUMERIC_COLUMNS = ("birth_year", "age_first", "follow_up_years", "n_events", "n_codes")


def fit_top_codes(events: pl.DataFrame, k: int, *, exclude: tuple[str, ...] = ()) -> list[str]:
    """The `k` clinical codes held by the most subjects (ties broken by code), fitted on real
    training events. `MEDS_DEATH` is left out (the summary has `died`), as is anything in
    `exclude`."""
    if k < 0:
        raise ValueError(f"k: the number of top codes must be >= 0, got {k}")
    drop = {S.DEATH_CODE, *exclude}
    counts = (
        timed_events(events)
        .filter(~pl.col(S.CODE).is_in(list(drop)))
        .select(S.SUBJECT_ID, S.CODE)
        .unique()
        .group_by(S.CODE)
        .len()
        .sort(["len", S.CODE], descending=[True, False])
    )
    return counts[S.CODE].head(k).to_list()


def count_column(code: str) -> str:
    return f"{COUNT_PREFIX}{code}"


def code_counts(events: pl.DataFrame, subjects: pl.Series, codes: list[str]) -> pl.DataFrame:
    """subject_id plus one `count:<code>` column (int64, 0 when absent) per code, one row per
    subject in `subjects` order."""
    base = pl.DataFrame({S.SUBJECT_ID: subjects})
    if not codes:
        return base
    wide = (
        events.filter(pl.col(S.CODE).is_in(codes))
        .group_by(S.SUBJECT_ID, S.CODE)
        .len()
        .pivot(on=S.CODE, index=S.SUBJECT_ID, values="len")
    )
    for c in codes:  # codes nobody has still get their (zero) column
        if c not in wide.columns:
            wide = wide.with_columns(pl.lit(0, dtype=pl.UInt32).alias(c))
    wide = wide.select(
        S.SUBJECT_ID, *[pl.col(c).cast(pl.Int64).alias(count_column(c)) for c in codes]
    )
    return base.join(wide, on=S.SUBJECT_ID, how="left").with_columns(
        pl.col(count_column(c)).fill_null(0) for c in codes
    )


def patient_summary(events: pl.DataFrame, top_codes: list[str]) -> pl.DataFrame:
    """The per-patient table described in the module docstring, one row per subject of `events`
    (in order of first appearance)."""
    demo = demographics(events)
    clinical = timed_events(events)
    per = clinical.group_by(S.SUBJECT_ID).agg(
        pl.col(S.TIME).min().alias("_first"),
        pl.col(S.TIME).max().alias("_last"),
        pl.len().alias("n_events"),
        pl.col(S.CODE).n_unique().alias("n_codes"),
        (pl.col(S.CODE) == S.DEATH_CODE).any().alias("died"),
    )
    year0 = pl.datetime(1970, 1, 1)
    out = (
        demo.join(per, on=S.SUBJECT_ID, how="left")
        .with_columns(
            (1970.0 + years_between(year0, pl.col("birth"))).alias("birth_year"),
            years_between(pl.col("birth"), pl.col("_first")).alias("age_first"),
            years_between(pl.col("_first"), pl.col("_last"))
            .fill_null(0.0)
            .alias("follow_up_years"),
            pl.col("n_events").fill_null(0).cast(pl.Int64),
            pl.col("n_codes").fill_null(0).cast(pl.Int64),
            pl.col("died").fill_null(False),
        )
        .select(S.SUBJECT_ID, *BASE_COLUMNS)
    )
    counts = code_counts(clinical, out[S.SUBJECT_ID], top_codes)
    return out.join(counts, on=S.SUBJECT_ID, how="left", maintain_order="left")


def feature_matrix(
    summary: pl.DataFrame, *, fill: dict[str, float] | None = None
) -> tuple[np.ndarray, list[str], dict[str, float]]:
    """Numeric features from a summary table for distances and models.

    Counts (n_events, n_codes, `count:*`) become log1p(count) so heavy users do not dominate a
    Euclidean distance; sex becomes one indicator per value seen ("F", "M"), died 0/1; nulls
    (birth_year, age_first without a birth) are filled with `fill` (the training medians, returned
    when `fill` is None so the same values are reused on other tables). Returns (matrix, column
    names, fill values).
    """
    counts = ["n_events", "n_codes"] + [c for c in summary.columns if c.startswith(COUNT_PREFIX)]
    cont = ["birth_year", "age_first", "follow_up_years"]
    if fill is None:
        fill = {c: float(summary[c].median() or 0.0) for c in cont}
    cols = {c: summary[c].cast(pl.Float64).fill_null(fill[c]).to_numpy() for c in cont}
    cols.update({c: np.log1p(summary[c].cast(pl.Float64).to_numpy()) for c in counts})
    for sex in ("F", "M"):
        cols[f"sex={sex}"] = (summary["sex"] == sex).cast(pl.Float64).to_numpy()
    cols["died"] = summary["died"].cast(pl.Float64).to_numpy()
    names = list(cols)
    matrix = (
        np.column_stack([cols[c] for c in names]) if len(summary) else np.zeros((0, len(names)))
    )
    return matrix, names, fill
