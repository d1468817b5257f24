"""Sampled futures as MEDS generated trajectories, for the MEDS community's trajectory tools.

MEDS_trajectory_evaluation reads generated trajectories as MEDS data plus a `prediction_time`
column (the input cut-off each future continues from), one file per sample index, so that the
k-th future of every (subject, prediction time) lies in `k.parquet`. A user can then label the
futures with their own ACES task configs (`ZSACES_label`) and compute their own metrics.

A rollout starts at its prompt's anchor (the last real event at or before the prediction time)
and its clock is the sum of its time-gap tokens. Decoding uses the same clock (tokenizer/decode.py),
so an event lies at anchor + elapsed time. Events before the prediction time are left out: the
real record says nothing happened between the anchor and the prediction time, and the forecast
counts outcomes from it (elapsed >= lead) too; an event generated at the prediction time itself
stays, as the forecast counts it. `[EOR]` (the horizon, or the end of the record) ends a
trajectory; a generated death is written as `MEDS_DEATH`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.atomic import atomic_dir
from nightingale.data.meds_io import write_meds_parquet
from nightingale.inference.rollouts import Rollout
from nightingale.tokenizer import families as F
from nightingale.tokenizer.decode import decode
from nightingale.tokenizer.vocabulary import Vocabulary

TRAJECTORY_COLUMNS = (S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE, S.PREDICTION_TIME)


def rollout_events(vocab: Vocabulary, rollout: Rollout, subject_id: int, anchor_us: int,
                   prediction_us: int, seed: int = 0) -> pl.DataFrame:
    """One rollout as MEDS events after the prediction time, with its `prediction_time`."""
    tokens = np.r_[np.int64(F.SOT_ID), np.asarray(rollout.tokens, dtype=np.int64)]
    frame, _ = decode(vocab, tokens, start_time=int(anchor_us), subject_id=int(subject_id), seed=seed)
    return (frame.filter(pl.col(S.TIME) >= pl.lit(int(prediction_us)).cast(pl.Datetime("us")))
            .with_columns(pl.lit(int(prediction_us)).cast(pl.Datetime("us")).alias(S.PREDICTION_TIME))
            .select(TRAJECTORY_COLUMNS))


class TrajectoryCollector:
    """Gathers rollouts batch by batch; `write(out_dir)` writes `{sample}.parquet` per sample index."""

    def __init__(self, vocab: Vocabulary, n_samples: int):
        self.vocab = vocab
        self.frames: list[list[pl.DataFrame]] = [[] for _ in range(n_samples)]

    def add(self, rollouts: Sequence[Sequence[Rollout]], subject_ids: Sequence[int],
            anchors_us: Sequence[int], predictions_us: Sequence[int]) -> None:
        for rs, sid, anchor, t in zip(rollouts, subject_ids, anchors_us, predictions_us):
            for k, r in enumerate(rs[: len(self.frames)]):
                self.frames[k].append(rollout_events(self.vocab, r, sid, anchor, t, seed=k))

    def write(self, out_dir: str | Path, *, overwrite: bool = True) -> list[Path]:
        """All samples, each validated against the trajectory schema, written atomically as a folder."""
        empty = pl.DataFrame(schema={**{c: S.DATA_SCHEMA[c] for c in TRAJECTORY_COLUMNS[:-1]},
                                     S.PREDICTION_TIME: S.LABEL_SCHEMA[S.PREDICTION_TIME]})
        out_dir = Path(out_dir)
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            for k, frames in enumerate(self.frames):
                frame = pl.concat([empty, *frames]).sort(S.SUBJECT_ID, S.PREDICTION_TIME, S.TIME,
                                                          maintain_order=True)
                write_meds_parquet(frame, tmp / f"{k}.parquet", S.GeneratedTrajectorySchema,
                                   what=f"trajectory sample {k}", atomic=False)
        return [out_dir / f"{k}.parquet" for k in range(len(self.frames))]
