"""Zero-shot task probabilities from Monte-Carlo rollouts: the serving code path, on held-out data.

For every label row (subject, prediction time) the subject's tokens known at the prediction time
(`inference.prompts.corpus_prompt`) are continued `rollouts` times by the vLLM engine with
`inference.rollouts.sample_rollouts`, the one rollout implementation the API also uses; the
probability of a task is the share of rollouts in which one of its outcome tokens occurs within
the horizon (`inference.risk`).

Rollouts are shared: label rows of different tasks with the same subject and prediction time are
rolled out once, to the longest of their horizons, and each task reads its own horizon and
outcome codes from the same futures. The horizon counts from the prediction time; the prompt
is anchored at the last event at or before it, so a task with an offset after its trigger
counts outcomes in (lead, lead + horizon] of elapsed time, where lead = prediction time - anchor.

The per-rollout hits are kept (rows x rollouts), so the AUROC's dependence on the number of
rollouts can be read off without sampling again (`auroc_by_rollouts`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.evaluation.metrics import auroc
from nightingale.inference.engine import Engine
from nightingale.inference.prompts import corpus_prompt, resolve_outcome_codes
from nightingale.inference.rollouts import MAX_TOKENS, RolloutConfig, sample_rollouts

log = logging.getLogger(__name__)
DAY_US = 86_400_000_000


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig:
    """rollouts: per label row; batch: prompts submitted to the engine at once (bounds memory and
    gives progress); chunk_tokens / max_new_tokens / temperature / top_p / seed: as RolloutConfig."""

    rollouts: int = 20
    batch: int = 128
    chunk_tokens: int = 64
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rollouts", "batch", "chunk_tokens", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ZeroShotConfig.{name}: must be >= 1, got {getattr(self, name)!r}")


@dataclasses.dataclass
class TaskRollouts:
    """One task's label rows with, per row, the rollout hits (bool [rows, rollouts]) and the share
    of rollouts that ran out of tokens before the horizon."""

    labels: pl.DataFrame
    hits: np.ndarray
    truncated: np.ndarray

    @property
    def probability(self) -> np.ndarray:
        return self.hits.mean(axis=1) if self.hits.size else np.zeros(len(self.labels))


async def task_rollouts(engine: Engine, corpus, tasks: Mapping[str, tuple[Sequence[str], float]],
                        labels: Mapping[str, pl.DataFrame], cfg: ZeroShotConfig,
                        progress=None) -> dict[str, TaskRollouts]:
    """Rollout hits for every task's label rows.

    tasks: name -> (outcome codes, horizon in days); labels: name -> MEDS label frame
    (subject_id, prediction_time, boolean_value). `progress(done, total)` is called per batch.
    """
    vocab = engine.vocab
    outcome_ids = {}
    for name, (codes, _) in tasks.items():
        ids = sorted({i for v in resolve_outcome_codes(vocab, list(codes)).values() for i in v})
        if not ids:
            log.warning("task %s: no outcome code is in the vocabulary; every probability is 0", name)
        outcome_ids[name] = np.asarray(ids, dtype=np.int64)
    rows = pl.concat([
        labels[name].select(S.SUBJECT_ID, pl.col(S.PREDICTION_TIME).cast(pl.Datetime("us")))
        .with_columns(pl.lit(tasks[name][1] * DAY_US).cast(pl.Float64).alias("_h"))
        for name in tasks if len(labels[name])
    ]) if any(len(labels[n]) for n in tasks) else pl.DataFrame()
    if rows.is_empty():
        return {n: TaskRollouts(labels[n], np.zeros((0, cfg.rollouts), bool), np.zeros(0)) for n in tasks}
    keys = rows.group_by(S.SUBJECT_ID, S.PREDICTION_TIME).agg(pl.col("_h").max()).sort(
        S.SUBJECT_ID, S.PREDICTION_TIME)
    sid = keys[S.SUBJECT_ID].to_numpy()
    t_us = keys[S.PREDICTION_TIME].cast(pl.Int64).to_numpy()
    horizon_us = keys["_h"].to_numpy()
    room = engine.max_model_len - min(cfg.chunk_tokens, cfg.max_new_tokens)
    prompts = [corpus_prompt(corpus, vocab, int(s), int(t), room) for s, t in zip(sid, t_us)]
    lead_us = t_us - np.array([p.anchor_us for p in prompts])
    futures: list = [None] * len(prompts)
    # Same longest horizon -> one RolloutConfig; batches bound what is in flight.
    for h in np.unique(horizon_us):
        idx = np.flatnonzero(horizon_us == h)
        for b in range(0, len(idx), cfg.batch):
            part = idx[b : b + cfg.batch]
            rc = RolloutConfig(
                n=cfg.rollouts, horizon_s=float((h + lead_us[part].max()) / 1e6), chunk_tokens=cfg.chunk_tokens,
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                seed=cfg.seed + int(b) + 7919 * int(h // DAY_US),
            )
            outs = await sample_rollouts(engine, [prompts[i] for i in part], rc)
            for i, o in zip(part, outs):
                futures[i] = o
            if progress is not None:
                progress(sum(f is not None for f in futures), len(futures))
    key_row = {(int(s), int(t)): k for k, (s, t) in enumerate(zip(sid, t_us))}
    out = {}
    for name, (_, horizon_days) in tasks.items():
        lab = labels[name]
        n = len(lab)
        hits = np.zeros((n, cfg.rollouts), bool)
        trunc = np.zeros(n)
        lab_t = lab[S.PREDICTION_TIME].cast(pl.Datetime("us")).cast(pl.Int64).to_numpy() if n else []
        for r, (s, t) in enumerate(zip(lab[S.SUBJECT_ID].to_numpy() if n else [], lab_t)):
            k = key_row[(int(s), int(t))]
            lo_s = lead_us[k] / 1e6
            hi_s = lo_s + horizon_days * 86400
            ids = outcome_ids[name]
            for j, ro in enumerate(futures[k]):
                inside = (ro.elapsed_s > lo_s) & (ro.elapsed_s <= hi_s)
                hits[r, j] = bool(np.isin(ro.tokens[inside], ids).any())
            trunc[r] = np.mean([ro.end == MAX_TOKENS for ro in futures[k]])
        out[name] = TaskRollouts(lab, hits, trunc)
    return out


def auroc_by_rollouts(y_true: np.ndarray, hits: np.ndarray, counts: Sequence[int]) -> dict[int, float]:
    """AUROC of the probability estimated from the first m rollouts, for each m in `counts` (<= the
    rollouts sampled): how many rollouts a stable AUROC needs."""
    return {int(m): auroc(y_true, hits[:, :m].mean(axis=1)) for m in counts if 0 < m <= hits.shape[1]}
