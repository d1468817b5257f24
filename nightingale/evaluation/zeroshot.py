"""Zero-shot task probabilities from the forecasting core: the serving code path, on held-out data.

For every label row (subject, prediction time) the subject's tokens known at the prediction time
(`inference.prompts.corpus_prompt`) are rolled out by `inference.forecast.forecast`, the function
`POST /v1/forecasts` calls, with the same estimators and the same definition of "the outcome
happens within the horizon" (counted from the prediction time: lead <= elapsed <= lead + horizon,
lead = prediction time - the last event before it).

Rollouts are shared: label rows of different tasks with the same subject and prediction time are
rolled out once, to the longest of their horizons, and each task reads its own outcome and
horizon from the same futures. Both estimators' per-rollout values are kept (rows x rollouts),
so the AUROC's dependence on the number of rollouts can be read off for each without sampling
again (`auroc_by_rollouts`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.config import check_choice, check_ints
from nightingale.evaluation.metrics import auroc
from nightingale.inference.engine import Engine
from nightingale.inference.forecast import (
    ESTIMATORS,
    ForecastConfig,
    forecast,
    mean_risk,
    outcome_token_ids,
)
from nightingale.inference.prompts import corpus_prompt

log = logging.getLogger(__name__)
DAY_US = 86_400_000_000
DAY_S = 86_400.0


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig:
    """rollouts: per label row; estimator: the one the task is scored with (the other is
    reported beside it); batch: prompts submitted to the engine at once (bounds memory and gives
    progress); max_new_tokens / reserve_tokens / seed: as ForecastConfig; trajectories: also
    write the rollouts as MEDS generated trajectories (inference/trajectories.py)."""

    rollouts: int = 8
    estimator: str = "probability"
    batch: int = 128
    max_new_tokens: int = 1024
    reserve_tokens: int = 64
    seed: int = 0
    trajectories: bool = False

    def __post_init__(self) -> None:
        check_ints(self, ("rollouts", "batch", "max_new_tokens", "reserve_tokens"), "ZeroShotConfig")
        check_choice("ZeroShotConfig.estimator", self.estimator, ESTIMATORS)

    def forecast_config(self) -> ForecastConfig:
        return ForecastConfig(estimator=self.estimator, rollouts=self.rollouts, max_new_tokens=self.max_new_tokens,
                              reserve_tokens=self.reserve_tokens, seed=self.seed)


@dataclasses.dataclass
class TaskRollouts:
    """One task's label rows with, per row, both estimators' per-rollout values
    ({estimator: float [rows, rollouts]}), the configured estimator, and the share of rollouts
    that ran out of tokens before the horizon."""

    labels: pl.DataFrame
    values: dict[str, np.ndarray]
    estimator: str
    truncated: np.ndarray

    @property
    def probability(self) -> np.ndarray:
        v = self.values[self.estimator]
        return mean_risk(v) if v.size else np.zeros(len(self.labels))


async def task_rollouts(engine: Engine, corpus, tasks: Mapping[str, tuple[Sequence[str], float]],
                        labels: Mapping[str, pl.DataFrame], cfg: ZeroShotConfig,
                        progress=None, trajectories=None) -> dict[str, TaskRollouts]:
    """Both estimators' per-rollout values for every task's label rows.

    tasks: name -> (outcome codes, horizon in days); labels: name -> MEDS label frame
    (subject_id, prediction_time, boolean_value). `progress(done, total)` is called per batch;
    `trajectories` (a TrajectoryCollector) receives every rollout when given.
    """
    vocab = engine.vocab
    outcomes = outcome_token_ids(vocab, {name: list(codes) for name, (codes, _) in tasks.items()}, strict=False)
    empty = {e: np.zeros((0, cfg.rollouts)) for e in ESTIMATORS}
    rows = [
        labels[name].select(S.SUBJECT_ID, pl.col(S.PREDICTION_TIME).cast(pl.Datetime("us")))
        .with_columns(pl.lit(float(tasks[name][1])).alias("_days"))
        for name in tasks if len(labels[name])
    ]
    if not rows:
        return {n: TaskRollouts(labels[n], dict(empty), cfg.estimator, np.zeros(0)) for n in tasks}
    keys = (pl.concat(rows).group_by(S.SUBJECT_ID, S.PREDICTION_TIME).agg(pl.col("_days").max())
            .sort(S.SUBJECT_ID, S.PREDICTION_TIME))
    sid = keys[S.SUBJECT_ID].to_numpy()
    t_us = keys[S.PREDICTION_TIME].cast(pl.Int64).to_numpy()
    longest = keys["_days"].to_numpy()
    room = engine.max_model_len - cfg.reserve_tokens
    prompts = [corpus_prompt(corpus, vocab, int(s), int(t), room) for s, t in zip(sid, t_us)]
    lead_s = (t_us - np.array([p.anchor_us for p in prompts])) / 1e6
    horizons = sorted({float(h) for _, h in tasks.values()})
    names = list(outcomes)
    fcfg = cfg.forecast_config()
    shape = (len(prompts), len(names), len(horizons), cfg.rollouts)
    values = {e: np.full(shape, np.nan) for e in ESTIMATORS}
    truncated = np.zeros(len(prompts))
    done = 0
    # Rows with the same longest horizon roll out together (each to its own lead + that horizon).
    for h in np.unique(longest):
        idx = np.flatnonzero(longest == h)
        hs = [x for x in horizons if x <= h]
        for b in range(0, len(idx), cfg.batch):
            part = idx[b : b + cfg.batch]
            fc = await forecast(engine, [prompts[i] for i in part], outcomes, [x * DAY_S for x in hs], fcfg,
                                lead_s[part], keep_rollouts=trajectories is not None)
            if trajectories is not None:
                trajectories.add(fc.rollouts_kept, sid[part], [prompts[i].anchor_us for i in part], t_us[part])
            for e in ESTIMATORS:
                values[e][part, :, : len(hs)] = fc.values(e)  # hs is a prefix of the sorted horizons
            truncated[part] = fc.truncated
            done += len(part)
            if progress is not None:
                progress(done, len(prompts))
    key_row = {(int(s), int(t)): k for k, (s, t) in enumerate(zip(sid, t_us))}
    out = {}
    for name, (_, horizon_days) in tasks.items():
        lab = labels[name]
        if not len(lab):
            out[name] = TaskRollouts(lab, dict(empty), cfg.estimator, np.zeros(0))
            continue
        lab_t = lab[S.PREDICTION_TIME].cast(pl.Datetime("us")).cast(pl.Int64).to_numpy()
        r = np.array([key_row[(int(s), int(t))] for s, t in zip(lab[S.SUBJECT_ID].to_numpy(), lab_t)])
        a, b = names.index(name), horizons.index(float(horizon_days))
        out[name] = TaskRollouts(lab, {e: values[e][r, a, b] for e in ESTIMATORS}, cfg.estimator, truncated[r])
    return out


def auroc_by_rollouts(y_true: np.ndarray, values: np.ndarray, counts: Sequence[int]) -> dict[int, float]:
    """AUROC of the probability estimated from the first m rollouts' values, for each m in
    `counts` (<= the rollouts sampled): how many rollouts a stable AUROC needs."""
    return {int(m): auroc(y_true, mean_risk(values[:, :m])) for m in counts if 0 < m <= values.shape[1]}
