"""Forecast one shard's population at risk: per-patient risks and the additive sums of its groups.

Per shard, two files (written atomically, then the `.done` marker):
- `predictions/<shard>.parquet`: subject_id, prediction_time, outcome, horizon_days,
  probability, lower, upper (the 95% Monte-Carlo interval of the model's probability; null with
  one rollout), and `observed` / `oracle_probability` when asked for;
- `partials/<shard>.parquet`: per group (`all`, then each requested group and value), outcome and
  horizon: patients, sum p, sum p(1-p), sum of Monte-Carlo variances (and the observed count and
  the oracle's sums). These sums add up across shards, so the merge is exact whatever the sharding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.inference.engine import Engine
from nightingale.inference.forecast import forecast
from nightingale.inference.population.cohort import ShardCohort, observed_column
from nightingale.inference.population.config import PopulationConfig
from nightingale.inference.risk import estimates

log = logging.getLogger(__name__)
DAY_S = 86_400.0
ALL = "all"
SUMS = ("patients", "sum_p", "sum_pq", "sum_mc", "observed", "oracle_sum", "oracle_pq")
PARTIAL_SCHEMA = {"group": pl.String, "value": pl.String, "outcome": pl.String, "horizon_days": pl.Float64,
                  **{k: pl.Float64 for k in SUMS}}


async def forecast_cohort(engine: Engine, cfg: PopulationConfig, cohort: ShardCohort,
                          outcomes: Mapping[str, np.ndarray],
                          progress: Callable[[int], None] | None = None) -> pl.DataFrame:
    """Long frame of per-patient risks (one row per subject x outcome x horizon) for the cohort,
    rolled out `cfg.batch` prompts at a time; `progress(k)` after each batch of k prompts."""
    fcfg = cfg.forecast_config()
    horizons = [h * DAY_S for h in cfg.horizons_days]
    leads = cohort.subjects["lead_s"].to_numpy()
    names = list(outcomes)
    n = len(cohort.prompts)
    p = np.zeros((n, len(names), len(horizons)))
    lo, hi, var = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for b in range(0, n, cfg.batch):
        part = slice(b, min(b + cfg.batch, n))
        fc = await forecast(engine, cohort.prompts[part], outcomes, horizons, fcfg, leads[part])
        p[part], lo[part], hi[part], var[part] = estimates(fc.values(), cfg.estimator)
        if progress is not None:
            progress(part.stop - part.start)
    subj = cohort.subjects
    frames = []
    for a, name in enumerate(names):
        for k, days in enumerate(cfg.horizons_days):
            frames.append(subj.select(S.SUBJECT_ID, S.PREDICTION_TIME).with_columns(
                pl.lit(name).alias("outcome"), pl.lit(float(days)).alias("horizon_days"),
                pl.Series("probability", p[:, a, k]),
                pl.Series("lower", lo[:, a, k]).fill_nan(None), pl.Series("upper", hi[:, a, k]).fill_nan(None),
                pl.Series("_mc", var[:, a, k]),
                *([subj[observed_column(name, days)].alias("observed")] if cfg.backtest else []),
            ))
    empty = {S.SUBJECT_ID: pl.Int64, S.PREDICTION_TIME: pl.Datetime("us"), "outcome": pl.String,
             "horizon_days": pl.Float64, "probability": pl.Float64, "lower": pl.Float64, "upper": pl.Float64,
             "_mc": pl.Float64, **({"observed": pl.Boolean} if cfg.backtest else {})}
    return pl.concat(frames) if n else pl.DataFrame(schema=empty)


def partial_sums(cfg: PopulationConfig, cohort: ShardCohort, risks: pl.DataFrame) -> pl.DataFrame:
    """The additive sums of every group cell (see the module docstring)."""
    groups = cohort.subjects.select(S.SUBJECT_ID, *cfg.groups)
    long = risks.join(groups, on=S.SUBJECT_ID, how="left")
    has_oracle = "oracle_probability" in long.columns
    q = pl.col("oracle_probability") if has_oracle else pl.lit(0.0)
    sums = [
        pl.len().cast(pl.Float64).alias("patients"),
        pl.col("probability").sum().alias("sum_p"),
        (pl.col("probability") * (1 - pl.col("probability"))).sum().alias("sum_pq"),
        pl.col("_mc").sum().alias("sum_mc"),
        (pl.col("observed").cast(pl.Float64).sum() if cfg.backtest else pl.lit(0.0)).alias("observed"),
        q.fill_null(0.0).sum().cast(pl.Float64).alias("oracle_sum"),
        (q * (1 - q)).fill_null(0.0).sum().cast(pl.Float64).alias("oracle_pq"),
    ]
    parts = [long.group_by("outcome", "horizon_days").agg(*sums)
             .with_columns(pl.lit(ALL).alias("group"), pl.lit(ALL).alias("value"))]
    for g in cfg.groups:
        parts.append(long.group_by("outcome", "horizon_days", g).agg(*sums)
                     .with_columns(pl.lit(g).alias("group"), pl.col(g).cast(pl.String).alias("value")).drop(g))
    out = pl.concat([x.select(list(PARTIAL_SCHEMA)) for x in parts]).cast(PARTIAL_SCHEMA)
    return out.sort("outcome", "horizon_days", "group", "value")
