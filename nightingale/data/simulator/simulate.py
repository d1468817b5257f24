"""Write a simulated cohort as a MEDS 0.4 dataset, batch by batch, in a process pool.

Batch `k` (subjects `k * shard_size + 1 ...`) is simulated from `SeedSequence([seed, k])`, its
subjects are split 80/10/10 into train/tuning/held_out (a permutation drawn from
`SeedSequence([seed, k, 1])`), and it is written as `data/{split}/k.parquet`. Nothing depends on the
number of workers or on wall-clock time, so a seed always gives byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing as mp
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.data.meds_io import MEDSWriter, conform_events
from nightingale.data.privacy import PrivacyPolicy
from nightingale.data.simulator import codes as C
from nightingale.data.simulator.config import STEP_DAYS, SimulatorConfig
from nightingale.data.simulator.engine import run_shard

log = logging.getLogger(__name__)
DATASET_NAME = "nightingale-simulator"
SIMULATOR_VERSION = "1"
_CODE_SERIES = pl.Series(S.CODE, C.CODE_STRINGS, dtype=pl.String)
# Each code's index, or its 3-character ICD-10 stem's where it has a dotted child code (a site
# that codes to stems: ICD10//E11.9 -> ICD10//E11).
_STEMS = np.array([C.IDX.get(c.split(".")[0], i) if c.startswith("ICD10//") else i
                   for i, c in enumerate(C.CODE_STRINGS)], dtype=np.int16)


@dataclass
class ShardResult:
    shard: int
    frames: dict[str, pl.DataFrame]  # split -> sorted MEDS events
    splits: pl.DataFrame
    events: int
    subjects: int
    removed: int


def _split_of(cfg: SimulatorConfig, shard: int, n: int) -> np.ndarray:
    perm = np.random.default_rng(np.random.SeedSequence([cfg.seed, shard, 1])).permutation(n)
    rank = np.empty(n, np.int64)
    rank[perm] = np.arange(n)
    return np.where(rank < round(0.8 * n), 0, np.where(rank < round(0.9 * n), 1, 2))


def shard_events(cfg: SimulatorConfig, shard: int) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """All MEDS rows of batch `shard`, sorted (subject, then time with static rows first).

    Returns the rows (raw subject ids), the subject ids, and each subject's split index
    (0 train, 1 tuning, 2 held_out). Sorting is a stable numpy lexsort, so rows with equal times
    keep the order the engine emitted them in (a death stays after its step's other events).
    """
    st, sink, _ = run_shard(cfg, shard)
    sub, day, code, value = sink.arrays()
    if cfg.code_stems:
        code = _STEMS[code]
    start_us = int(np.datetime64(cfg.start_date, "us").astype(np.int64))
    n = st.n
    local = np.arange(n, dtype=np.int32)
    # Static facts (null time), then birth, then the events.
    static_codes = np.concatenate([
        np.where(st.male, C.IDX["SEX//M"], C.IDX["SEX//F"]),
        C.IDX["ETHNICITY//White"] + st.eth.astype(np.int64),
        C.IDX["IMD//Q1"] + st.imd.astype(np.int64) - 1,
    ]).astype(np.int16)
    all_sub = np.concatenate([np.tile(local, 3), local, sub])
    seconds = np.round(np.concatenate([st.birth_day, day]) * 86_400.0).astype(np.int64)
    time_us = np.concatenate([np.full(3 * n, np.iinfo(np.int64).min), start_us + seconds * 1_000_000])
    all_code = np.concatenate([static_codes, np.full(n, C.IDX[S.BIRTH_CODE], np.int16), code])
    all_val = np.concatenate([np.full(4 * n, np.nan, np.float32), value])
    order = np.lexsort((time_us, all_sub))
    all_sub, time_us, all_code, all_val = all_sub[order], time_us[order], all_code[order], all_val[order]
    static = time_us == np.iinfo(np.int64).min
    events = pl.DataFrame({
        S.SUBJECT_ID: st.sid[all_sub],
        S.TIME: pl.Series(S.TIME, time_us, dtype=pl.Int64).cast(pl.Datetime("us")),
        S.CODE: _CODE_SERIES.gather(all_code),
        S.NUMERIC_VALUE: pl.Series(S.NUMERIC_VALUE, all_val, dtype=pl.Float32).fill_nan(None),
        S.TEXT_VALUE: pl.Series(S.TEXT_VALUE, [None] * len(all_sub), dtype=pl.String),
        "_split": _split_of(cfg, shard, n)[all_sub].astype(np.int8),
    }).with_columns(pl.when(pl.Series(static)).then(None).otherwise(pl.col(S.TIME)).alias(S.TIME))
    return events, st.sid, _split_of(cfg, shard, n)


def simulate_shard(cfg: SimulatorConfig, shard: int, policy: PrivacyPolicy | None = None) -> ShardResult:
    """Simulate batch `shard`, apply the privacy policy, and cut its sorted rows by split."""
    events, sid, split = shard_events(cfg, shard)
    splits = pl.DataFrame({S.SUBJECT_ID: sid, S.SPLIT: np.array(S.SPLITS)[split]})
    removed = 0
    private = policy is not None and policy.active
    if private:
        if policy.opt_out:
            removed = int((~policy.keep_mask(splits[S.SUBJECT_ID])).sum())
        events = policy.apply(events)
        splits = policy.apply(splits)
    frames = {}
    for i, name in enumerate(S.SPLITS):
        part = events.filter(pl.col("_split") == i).drop("_split")
        if part.height:
            # Pseudonyms break the subject order; re-sort (stable, so times stay as they were).
            frames[name] = conform_events(part) if private else part
    return ShardResult(shard, frames, splits, events.height, splits.height, removed)


def _work(args) -> ShardResult:
    cfg, shard, policy = args
    return simulate_shard(cfg, shard, policy)


@dataclass
class SimulationSummary:
    out: Path
    subjects: int
    events: int
    shards: int
    removed_subjects: int

    @property
    def events_per_subject(self) -> float:
        return self.events / max(self.subjects, 1)


def simulate(cfg: SimulatorConfig, out: str | Path, *, workers: int = 2, overwrite: bool = False,
             policy: PrivacyPolicy | None = None,
             on_shard: Callable[[ShardResult], None] | None = None) -> SimulationSummary:
    """Simulate `cfg` and write it as a MEDS dataset at `out` (atomically: all or nothing).

    `workers` processes simulate batches in parallel (1 = in this process); `on_shard` is called
    after each batch is written (e.g. to advance a progress bar).
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: must be a positive integer, got {workers!r}")
    policy = policy or PrivacyPolicy()
    tasks = [(cfg, k, policy) for k in range(cfg.n_shards)]
    all_splits, events, removed = [], 0, 0
    with MEDSWriter(out, overwrite=overwrite) as w:
        if workers == 1 or len(tasks) == 1:
            results = map(_work, tasks)
            pool = None
        else:
            pool = mp.get_context("spawn").Pool(min(workers, len(tasks)))
            results = pool.imap(_work, tasks, chunksize=1)
        try:
            for res in results:
                for name, frame in res.frames.items():
                    w.write_shard(f"{name}/{res.shard}", frame, conform=False)
                all_splits.append(res.splits)
                events += res.events
                removed += res.removed
                if on_shard is not None:
                    on_shard(res)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        splits = pl.concat(all_splits)
        if splits.height == 0:
            raise ValueError("every simulated subject was removed by the opt-out list; nothing to write")
        w.write_splits(splits)
        w.write_codes(C.codes_table())
        w.write_dataset_json({
            "dataset_name": DATASET_NAME,
            "dataset_version": SIMULATOR_VERSION,
            # the simulated extract is taken at the end of its window, not at the wall-clock time,
            # so a seed gives byte-identical output (MEDS wants a date-time here, not null)
            "created_at": f"{cfg.end_date + dt.timedelta(days=1)}T00:00:00+00:00",
            # every subject is followed to the end date (inclusive) or death: labels censor on it
            "observation_end": f"{cfg.end_date + dt.timedelta(days=1)}T00:00:00",
            "simulator": {**cfg.to_dict(), "step_days": STEP_DAYS, "version": SIMULATOR_VERSION},
            "privacy": policy.describe(removed),
            "subjects": splits.height,
            "events": events,
        })
    log.info("simulated %d subjects, %d events into %s", splits.height, events, out)
    return SimulationSummary(Path(out), splits.height, events, cfg.n_shards, removed)
