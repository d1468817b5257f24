"""A classical baseline generator: SDV's PARSynthesizer (probabilistic autoregressive model).

PAR (Zhang et al., "Sequential models in the synthetic data vault", 2022) fits a GaussianCopula
to each sequence's context and a recurrent network to the sequence of rows. Each patient becomes
one sequence:
- context: sex, birth_year (decimal year) and first_age_days (age in days at the first event);
- rows: code (categorical, restricted to the `top_codes` most common codes plus `MEDS_DEATH`;
  other events are dropped), gap_days (days since the previous kept event, 0 for the first) and
  numeric_value (null where the code has none).
Only each patient's first `max_events` kept events are used: PAR's loss loops over patients in
Python, so cost grows with subjects x events x epochs, and deepecho trains full-batch, so an
epoch is a single Adam step (lr 1e-3): with few epochs PAR has not learned when to stop and
samples two- to five-event timelines. Measured on the 2,000-subject demo cohort, 2 shared CPU
cores: 200 patients x <= 32 events, 128 epochs: fit 227 s, 200 patients sampled in 99 s (code
prevalence r = 0.81 vs train); 500 x <= 64 at 32 epochs: fit 724 s under heavy load, still
untrained (r = 0.49, median 5 events). Sampling draws a context, then rows until PAR's end
token, and rebuilds MEDS events: a birth at the decimal birth year, the first event
first_age_days later, then the cumulative gaps; a timeline stops at its first `MEDS_DEATH`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import time
from typing import Any

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.data.meds_io import conform_events
from nightingale.evaluation.synthetic.events import (
    DAYS_PER_YEAR,
    SEX_PREFIX,
    UNKNOWN_SEX,
    US_PER_DAY,
    EventsLike,
    demographics,
    load_events,
    timed_events,
    years_between,
)
from nightingale.evaluation.synthetic.quiet import quiet_sdv
from nightingale.evaluation.synthetic.summary import fit_top_codes

log = logging.getLogger(__name__)

TABLE = "events"
CONTEXT = ("sex", "birth_year", "first_age_days")
SEQUENCE = ("code", "gap_days", "numeric_value")
_EPOCH = dt.datetime(1970, 1, 1)


@dataclasses.dataclass
class FittedPAR:
    """A fitted PARSynthesizer with what is needed to sample MEDS from it. `info`: subjects,
    rows, codes, epochs, max_events, fit_seconds, seed."""

    synthesizer: Any  # sdv.sequential.PARSynthesizer
    codes: list[str]
    seed: int
    info: dict[str, Any]


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def par_table(
    events: pl.DataFrame, codes: list[str], *, max_subjects: int | None, max_events: int, seed: int
) -> pl.DataFrame:
    """The sequences PAR trains on, one row per kept event (columns: subject_id, CONTEXT,
    SEQUENCE). Subjects without a birth or without any kept event are left out; at most
    `max_subjects` subjects are drawn with `seed`."""
    demo = demographics(events).filter(pl.col("birth").is_not_null())
    kept = timed_events(events).filter(pl.col(S.CODE).is_in(codes))
    kept = kept.join(demo, on=S.SUBJECT_ID, how="inner")
    ids = kept[S.SUBJECT_ID].unique(maintain_order=True)
    if max_subjects is not None and len(ids) > max_subjects:
        ids = ids.sample(max_subjects, seed=seed).sort()
        kept = kept.filter(pl.col(S.SUBJECT_ID).is_in(ids.implode()))
    kept = kept.group_by(S.SUBJECT_ID, maintain_order=True).head(max_events)
    first = pl.col(S.TIME).min().over(S.SUBJECT_ID)
    gap = pl.col(S.TIME).diff().over(S.SUBJECT_ID).dt.total_microseconds() / US_PER_DAY
    return kept.select(
        S.SUBJECT_ID,
        "sex",
        (1970.0 + years_between(pl.lit(_EPOCH), pl.col("birth"))).alias("birth_year"),
        (years_between(pl.col("birth"), first) * DAYS_PER_YEAR).alias("first_age_days"),
        pl.col(S.CODE).alias("code"),
        gap.fill_null(0.0).alias("gap_days"),
        pl.col(S.NUMERIC_VALUE).cast(pl.Float64).alias("numeric_value"),
    )


def _metadata():
    from sdv.metadata import Metadata

    numerical = {"sdtype": "numerical"}
    columns = {
        S.SUBJECT_ID: {"sdtype": "id"},
        "sex": {"sdtype": "categorical"},
        "birth_year": numerical,
        "first_age_days": numerical,
        "code": {"sdtype": "categorical"},
        "gap_days": numerical,
        "numeric_value": numerical,
    }
    return Metadata.load_from_dict(
        {"tables": {TABLE: {"columns": columns, "sequence_key": S.SUBJECT_ID}}}
    )


def fit_par(
    train_events: EventsLike,
    *,
    max_subjects: int = 500,
    max_events: int = 64,
    top_codes: int = 100,
    epochs: int = 128,
    seed: int = 0,
    verbose: bool = False,
) -> FittedPAR:
    """Fit PAR on (a subsample of) the training cohort; see the module docstring for the table.

    `epochs` is SDV's default (128 full-batch steps; fewer leave PAR untrained, see the module
    docstring for costs); `verbose` shows PAR's own progress bars (loss per epoch, then one tick per sampled patient).
    Seeds Python, numpy and torch with `seed`, so a fit is reproducible on one machine.
    """
    from sdv.sequential import PARSynthesizer

    for name, value in (("max_events", max_events), ("top_codes", top_codes), ("epochs", epochs)):
        if value < 1:
            raise ValueError(f"fit_par: {name} must be >= 1, got {value}")
    if max_subjects is not None and max_subjects < 2:
        raise ValueError(f"fit_par: max_subjects must be >= 2 (or None), got {max_subjects}")
    events = load_events(train_events)
    codes = fit_top_codes(events, top_codes)
    if events[S.CODE].eq(S.DEATH_CODE).any():
        codes.append(S.DEATH_CODE)
    table = par_table(events, codes, max_subjects=max_subjects, max_events=max_events, seed=seed)
    n_subjects = table[S.SUBJECT_ID].n_unique()
    if n_subjects < 2:
        raise ValueError("fit_par: fewer than 2 subjects with a birth and a kept event to train on")
    log.info(
        "PAR: fitting %d subjects, %d rows, %d codes, %d epochs",
        n_subjects,
        table.height,
        len(codes),
        epochs,
    )
    _seed_everything(seed)
    start = time.perf_counter()
    with quiet_sdv():
        par = PARSynthesizer(
            _metadata(), context_columns=list(CONTEXT), epochs=epochs, cuda=False, verbose=verbose
        )
        par.fit({TABLE: table.to_pandas()})
    seconds = time.perf_counter() - start
    log.info("PAR: fitted in %.1f s", seconds)
    info = {
        "subjects": n_subjects,
        "rows": table.height,
        "codes": len(codes),
        "epochs": epochs,
        "max_events": max_events,
        "fit_seconds": seconds,
        "seed": seed,
    }
    return FittedPAR(par, codes, seed, info)


def to_meds(sampled: pl.DataFrame, *, start_id: int = 1) -> pl.DataFrame:
    """PAR's sampled rows (subject_id, CONTEXT, SEQUENCE) as sorted MEDS events with new subject
    ids from `start_id`: a `SEX//` static row, `MEDS_BIRTH`, then the events (see module)."""
    sampled = sampled.with_columns(
        pl.col(S.SUBJECT_ID).rle_id().cast(pl.Int64).add(start_id).alias(S.SUBJECT_ID)
    )
    # Times are rounded to whole seconds, like the source data.
    birth_s = ((pl.col("birth_year") - 1970.0) * DAYS_PER_YEAR * 86_400.0).round()
    step = pl.col("gap_days").fill_null(0.0).clip(lower_bound=0.0)
    step = pl.when(pl.int_range(pl.len()).over(S.SUBJECT_ID) == 0).then(0.0).otherwise(step)
    offset_days = pl.col("first_age_days").clip(lower_bound=0.0) + step.cum_sum().over(S.SUBJECT_ID)
    rows = sampled.with_columns(
        (birth_s * 1e6).cast(pl.Int64).cast(pl.Datetime("us")).alias("_birth"),
        ((birth_s + (offset_days * 86_400.0).round()) * 1e6)
        .cast(pl.Int64)
        .cast(pl.Datetime("us"))
        .alias(S.TIME),
    )
    # A timeline ends at its first death.
    died_before = (pl.col("code") == S.DEATH_CODE).cast(pl.Int32).cum_sum().over(S.SUBJECT_ID)
    rows = rows.filter((died_before - (pl.col("code") == S.DEATH_CODE).cast(pl.Int32)) == 0)
    heads = rows.group_by(S.SUBJECT_ID, maintain_order=True).agg(
        pl.col("sex").first(), pl.col("_birth").first()
    )
    static = heads.filter(pl.col("sex") != UNKNOWN_SEX).select(
        S.SUBJECT_ID,
        pl.lit(None, dtype=pl.Datetime("us")).alias(S.TIME),
        (pl.lit(SEX_PREFIX) + pl.col("sex")).alias(S.CODE),
        pl.lit(None, dtype=pl.Float32).alias(S.NUMERIC_VALUE),
    )
    birth = heads.select(
        S.SUBJECT_ID,
        pl.col("_birth").alias(S.TIME),
        pl.lit(S.BIRTH_CODE).alias(S.CODE),
        pl.lit(None, dtype=pl.Float32).alias(S.NUMERIC_VALUE),
    )
    body = rows.select(
        S.SUBJECT_ID,
        S.TIME,
        pl.col("code").alias(S.CODE),
        pl.col("numeric_value").fill_nan(None).cast(pl.Float32).alias(S.NUMERIC_VALUE),
    )
    return conform_events(pl.concat([static, birth, body]))


def sample_par(
    fitted: FittedPAR, n: int, *, seed: int | None = None, start_id: int = 1
) -> pl.DataFrame:
    """Sample `n` synthetic patients as MEDS events (subject ids `start_id` ... `start_id + n - 1`,
    sorted by subject then time, static rows first). The same `seed` (default: the fit's)
    gives the same patients."""
    if n < 1:
        raise ValueError(f"sample_par: n must be >= 1, got {n}")
    seed = fitted.seed if seed is None else seed
    par = fitted.synthesizer
    _seed_everything(seed)
    # SDV 2.0 offers no public seed for PAR's context model (a GaussianCopula that otherwise
    # always starts from SDV's fixed seed); this is the one private call. The rows are drawn
    # with torch's global generator, seeded above.
    par._context_synthesizer.reset_sampling()
    par._context_synthesizer._set_random_state(seed)
    start = time.perf_counter()
    with quiet_sdv():
        sampled = par.sample_sequences(n)[TABLE]
    log.info(
        "PAR: sampled %d patients (%d rows) in %.1f s", n, len(sampled), time.perf_counter() - start
    )
    frame = pl.from_pandas(sampled).with_columns(
        pl.col("sex").cast(pl.String), pl.col("code").cast(pl.String)
    )
    return to_meds(frame, start_id=start_id)
