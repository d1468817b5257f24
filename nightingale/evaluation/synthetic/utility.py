"""Is a synthetic cohort useful for training models? Train on synthetic, test on real (TSTR).

The task (one row per subject): does the record contain an outcome code (by default
`MEDS_DEATH`)? Features describe the history before the outcome: for a subject with an outcome,
only events strictly before its first occurrence count; otherwise all clinical events do. They
are log1p counts of the top-K codes (fitted on the real training cohort, outcome codes excluded,
so every cohort shares the columns), log1p of the number of events, age at the last counted event
(years; the training median when there is no birth), and sex. A standardised L2 logistic
regression is fitted on the synthetic cohort (TSTR) and on the real training cohort (TRTR), and
both are scored by AUROC on held-out real patients; TSTR/TRTR near 1 means the synthetic data
carry the signal the real data do (Esteban, Hyland & Ratsch, "Real-valued (medical) time series
generation with recurrent conditional GANs", 2017).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nightingale import schema as S
from nightingale.evaluation.synthetic.events import (
    EventsLike,
    demographics,
    load_events,
    timed_events,
    years_between,
)
from nightingale.evaluation.synthetic.summary import code_counts, fit_top_codes


def task_table(
    events: pl.DataFrame, outcome_codes: tuple[str, ...], top_codes: list[str]
) -> pl.DataFrame:
    """subject_id, label (bool), sex_f, age (null without a birth), log_events and one
    `count:<code>` column per top code, from events before each subject's first outcome."""
    clinical = timed_events(events)
    first = (
        clinical.filter(pl.col(S.CODE).is_in(list(outcome_codes)))
        .group_by(S.SUBJECT_ID)
        .agg(pl.col(S.TIME).min().alias("_outcome"))
    )
    history = (
        clinical.join(first, on=S.SUBJECT_ID, how="left")
        .filter(pl.col("_outcome").is_null() | (pl.col(S.TIME) < pl.col("_outcome")))
        .filter(~pl.col(S.CODE).is_in(list(outcome_codes)))
    )
    demo = demographics(events).join(first, on=S.SUBJECT_ID, how="left")
    last = history.group_by(S.SUBJECT_ID).agg(
        pl.col(S.TIME).max().alias("_last"), pl.len().alias("_n")
    )
    table = demo.join(last, on=S.SUBJECT_ID, how="left").select(
        S.SUBJECT_ID,
        pl.col("_outcome").is_not_null().alias("label"),
        (pl.col("sex") == "F").cast(pl.Float64).alias("sex_f"),
        years_between(pl.col("birth"), pl.col("_last")).alias("age"),
        pl.col("_n").fill_null(0).cast(pl.Float64).log1p().alias("log_events"),
    )
    counts = code_counts(history, table[S.SUBJECT_ID], top_codes)
    return table.join(counts, on=S.SUBJECT_ID, how="left", maintain_order="left")


def _xy(table: pl.DataFrame, age_fill: float) -> tuple[np.ndarray, np.ndarray]:
    feats = table.drop(S.SUBJECT_ID, "label").with_columns(
        pl.col("age").fill_null(age_fill),
        pl.col("^count:.*$").cast(pl.Float64).log1p(),
    )
    return feats.to_numpy().astype(np.float64), table["label"].to_numpy().astype(np.int64)


def _fit_score(train: pl.DataFrame, test: pl.DataFrame, age_fill: float, seed: int) -> float | None:
    x, y = _xy(train, age_fill)
    x_test, y_test = _xy(test, age_fill)
    if len(np.unique(y)) < 2 or len(np.unique(y_test)) < 2:
        return None  # one class only: no model to fit, or no AUROC to compute
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(x, y)
    return float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))


def utility_report(
    synth: EventsLike,
    train: EventsLike,
    held_out: EventsLike,
    *,
    outcome_codes: tuple[str, ...] = (S.DEATH_CODE,),
    top_codes: int | list[str] = 50,
    seed: int = 0,
) -> dict[str, float | int | None]:
    """TSTR and TRTR AUROC on held-out real patients for the task in the module docstring.

    Keys: utility/auc_tstr, utility/auc_trtr, utility/ratio (TSTR / TRTR), utility/prevalence_
    {synth,train,held_out} (share of subjects with the outcome), utility/features. An AUROC is
    None when a training or test cohort holds only one class.
    """
    synth, train, held_out = (load_events(x) for x in (synth, train, held_out))
    outcome_codes = tuple(outcome_codes)
    codes = (
        fit_top_codes(train, top_codes, exclude=outcome_codes)
        if isinstance(top_codes, int)
        else [c for c in top_codes if c not in outcome_codes]
    )
    tables = {
        k: task_table(v, outcome_codes, codes)
        for k, v in (("synth", synth), ("train", train), ("held_out", held_out))
    }
    age_fill = float(tables["train"]["age"].median() or 0.0)
    tstr = _fit_score(tables["synth"], tables["held_out"], age_fill, seed)
    trtr = _fit_score(tables["train"], tables["held_out"], age_fill, seed)
    out: dict[str, float | int | None] = {
        "utility/auc_tstr": tstr,
        "utility/auc_trtr": trtr,
        "utility/ratio": tstr / trtr if tstr is not None and trtr else None,
    }
    for k, t in tables.items():
        out[f"utility/prevalence_{k}"] = float(t["label"].mean()) if t.height else None
    out["utility/features"] = len(tables["train"].columns) - 2
    return out
