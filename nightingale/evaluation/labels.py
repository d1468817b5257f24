"""Label drawing shared by the built-in tasks (`tasks.py`) and the ACES and label-file tasks
(`external_tasks.py`): one prediction time per subject without looking ahead (see the `tasks`
module docstring for why), the observation end a dataset declares, and the counts of a labelling
run."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from nightingale import schema as S


def draw_keys(subject_ids: np.ndarray, times_us: np.ndarray, seed: int) -> np.ndarray:
    """Stable pseudo-random uint64 keys of (subject id, time in us since the epoch, seed).

    SplitMix64 finalisers (Steele et al., OOPSLA 2014), so the keys are the same across library
    versions and platforms, unlike polars' `hash`. A draw keeps the candidate with the smallest key
    per subject: uniform over the subject's distinct candidate times, and independent of every
    other subject in the frame.
    """

    def mix(x: np.ndarray) -> np.ndarray:
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        x = mix(np.asarray(subject_ids).astype(np.uint64) + golden * np.uint64((seed + 1) % 2**64))
        return mix((x ^ np.asarray(times_us).astype(np.uint64)) + golden)


def draw_one_per_subject(rows: pl.DataFrame, seed: int, until: dt.datetime | None = None,
                         time_col: str = S.PREDICTION_TIME, draws: int = 1) -> pl.DataFrame:
    """One row per subject, chosen without looking past it (see the module docstring): a date D
    uniform between the subject's first candidate time and the last date the draw may pick, then
    the first candidate at or after D. That last date is `until` (the observation end less the
    horizon, where known) or, without it, the subject's last candidate; where it is before the
    first candidate, D is the first candidate. A subject with no candidate in [D, until] gives no
    row. With `draws` > 1, that many independent dates per subject (a time drawn twice is kept
    once). The built-in tasks and ACES tasks draw alike."""
    if rows.is_empty():
        return rows
    t = pl.col(time_col).cast(pl.Datetime("us")).cast(pl.Int64)
    hi = t if until is None else pl.lit(until).cast(pl.Datetime("us")).cast(pl.Int64)
    per = rows.group_by(S.SUBJECT_ID).agg(t.min().alias("_lo"), hi.max().alias("_hi")).sort(S.SUBJECT_ID)
    sid = np.tile(per[S.SUBJECT_ID].to_numpy(), draws)
    draw = np.repeat(np.arange(draws, dtype=np.int64), len(per))
    u = draw_keys(sid, draw, seed).astype(np.float64) / 2.0**64  # draw 0: the single draw's date
    lo, end = np.tile(per["_lo"].to_numpy(), draws), np.tile(per["_hi"].to_numpy(), draws)
    dates = pl.DataFrame({S.SUBJECT_ID: pl.Series(sid, dtype=rows.schema[S.SUBJECT_ID]), "_draw": draw,
                          "_d": lo + (u * np.maximum(end - lo, 0)).astype(np.int64), "_end": np.maximum(end, lo)})
    return (rows.join(dates, on=S.SUBJECT_ID)
            .filter((t >= pl.col("_d")) & (t <= pl.col("_end")))
            .sort(S.SUBJECT_ID, "_draw", time_col).unique([S.SUBJECT_ID, "_draw"], keep="first", maintain_order=True)
            .drop("_draw", "_d", "_end").unique([S.SUBJECT_ID, time_col], maintain_order=True)
            .sort(S.SUBJECT_ID, time_col))


def draw_rule(end_known: bool, draws: int = 1) -> str:
    """How `draw_one_per_subject` chose, in words for label reports."""
    bound = ("the observation end less the horizon (looks at no later event)" if end_known
             else "the subject's last candidate (the observation end is unknown)")
    return f"{draws} draw(s) per subject: the first candidate at or after a uniform date up to {bound}"


def draw_end(horizon_days: float, observation_end: dt.datetime | None) -> dt.datetime | None:
    """The last date a one-per-subject draw may pick where the observation end is known: that end
    less the horizon (None where it is not known: each subject's record bounds its own draw)."""
    return None if observation_end is None else observation_end - dt.timedelta(days=horizon_days)


@dataclass(frozen=True)
class LabelReport:
    """Counts from one labelling run (no identifiers). candidates: prediction times after the draw;
    then excluded_new_only, censored, and kept = candidates - both; positives among kept."""

    task: str
    subjects: int
    candidates: int
    excluded_new_only: int
    censored: int
    kept: int
    positives: int
    censoring: str = "on the last event of each record"
    draw: str = "every candidate time"

    @property
    def prevalence(self) -> float:
        return self.positives / self.kept if self.kept else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "prevalence": self.prevalence}


