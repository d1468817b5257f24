"""A population forecast job: a gated model, a MEDS dataset and a config -> per-patient risks and
population aggregates in an output folder, shard by shard, resumable.

    out/job.json                      what was asked (a rerun with another config is refused)
    out/predictions/<shard>.parquet   per-patient risks (shard.py)
    out/partials/<shard>.parquet      the shard's additive sums per group cell
    out/calibration/<shard>.parquet   with recalibrate: the same sums one longest horizon earlier,
                                      with what then happened (calibrate.py)
    out/shards/<shard>.json           the shard's counts: its `.done` marker, written last
    out/aggregates.{parquet,json}     the merge: expected counts by group, suppressed (aggregate.py)
    out/summary.{md,png}              what a planner reads (summary.py)

Everything the job can check is checked in the constructor, before any shard is read or any
engine started: the gate, the outcomes against the model's vocabulary, the groups against the
data, the prediction time against the data's time range. The same object serves the stage script
(serve/forecast.py: all shards, one shard of a Slurm array, or the merge) and the API's
population jobs, which pass the server's own engine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from nightingale import schema as S
from nightingale.atomic import atomic_file, write_json_atomic
from nightingale.data.meds_io import MEDSDataset, observation_end
from nightingale.inference.engine import Engine, EngineConfig
from nightingale.inference.forecast import outcome_token_ids
from nightingale.inference.gate import check_gate
from nightingale.inference.population import aggregate as A
from nightingale.inference.population import calibrate, summary
from nightingale.inference.population.cohort import data_time_range, group_source, load_shard_cohort
from nightingale.inference.population.config import WHERE, PopulationConfig
from nightingale.inference.population.shard import forecast_cohort, partial_sums
from nightingale.model.folder import ModelDir

log = logging.getLogger(__name__)
STAGES = ("all", "shard", "merge")


class PopulationJob:
    def __init__(self, cfg: PopulationConfig, model_dir: str | Path, meds_dir: str | Path, out_dir: str | Path,
                 *, allow_ungated: bool = False, name: str | None = None):
        """name: what the results call the dataset (the API's registered name; default its
        folder's name, never its path)."""
        self.cfg = cfg
        self.model = ModelDir(model_dir)
        self.gate = check_gate(self.model, allow_ungated=allow_ungated)
        self.gate.pop("report", None)
        self.vocab = self.model.vocabulary
        self.outcomes = outcome_token_ids(self.vocab, cfg.outcomes, strict=True)
        try:
            self.dataset = MEDSDataset(meds_dir)
        except FileNotFoundError as e:
            raise ValueError(f"{WHERE}.meds_dir: {e}") from None
        self.name = name or self.dataset.root.name
        self.all_shards = [self.dataset.shard_name(p) for p in self.dataset.shards()]
        if not self.all_shards:
            raise ValueError(f"{WHERE}.meds_dir: {self.dataset.root} holds no shards (data/**/*.parquet)")
        self.columns = self._check_groups()
        self._check_time()
        self.oracle_outcomes = self._check_oracle()
        self.split_ids = None if cfg.split is None else self.dataset.subjects(cfg.split).to_numpy()
        self.shards = self.all_shards if self.split_ids is None else [s for s in self.all_shards if self._holds_split(s)]
        self.out = Path(out_dir)
        self.context_length = self.model.context_length  # prompt room: this less reserve_tokens

    def _holds_split(self, shard: str) -> bool:
        ids = pq.read_table(self.dataset.data_dir / f"{shard}.parquet", columns=[S.SUBJECT_ID])[S.SUBJECT_ID]
        return bool(np.isin(ids.to_numpy(), self.split_ids).any())

    # --- checks before any work ------------------------------------------------------------------
    def _check_groups(self) -> tuple[str, ...]:
        schema = pq.read_schema(self.dataset.shards()[0])
        extra = [c for c in schema.names if c not in S.DATA_COLUMNS]
        families = {c.split(S.CODE_SEPARATOR, 1)[0] for c in self.dataset.codes()[S.CODE].to_list() if S.CODE_SEPARATOR in c}
        families |= {c.split(S.CODE_SEPARATOR, 1)[0] for c, st in zip(self.vocab.codes, self.vocab.is_static)
                     if st and c}
        columns = []
        for i, g in enumerate(self.cfg.groups):
            kind, fam = group_source(g)
            if g in extra:
                columns.append(g)
            elif kind == "family" and fam not in families:
                raise ValueError(f"{WHERE}.groups[{i}]: {g!r} is neither age_band, sex, a static code family of "
                                 f"the data (have {sorted(families)}) nor a column of its shards (have {extra})")
        return tuple(columns)

    def _check_time(self) -> None:
        t = self.cfg.prediction_time
        lo, hi = data_time_range(self.dataset.scan())
        end = observation_end(self.dataset) or hi
        if t is not None and lo is not None and not (lo <= t <= end):
            raise ValueError(f"{WHERE}.prediction_time: {t.isoformat()} is outside the data, which runs from "
                             f"{lo.isoformat()} to {end.isoformat()}")
        if self.cfg.backtest:
            if t is None:
                raise ValueError(f"{WHERE}.backtest: needs a fixed prediction_time (a date), not 'last'")
            last = t + dt.timedelta(days=max(self.cfg.horizons_days))
            if last > end:
                raise ValueError(f"{WHERE}.backtest: prediction_time + the longest horizon ({last.isoformat()}) "
                                 f"passes the end of the data's follow-up ({end.isoformat()})")
        if self.cfg.recalibrate:
            if t is None:
                raise ValueError(f"{WHERE}.recalibrate: needs a fixed prediction_time (a date), not 'last'")
            first = self.cfg.calibration_time()
            if lo is None or first < lo:
                raise ValueError(f"{WHERE}.recalibrate: prediction_time - the longest horizon ({first.isoformat()}) "
                                 f"is before the data begin ({lo.isoformat() if lo else 'no timed events'})")

    def _check_oracle(self) -> dict[str, str]:
        if not self.cfg.oracle:
            return {}
        from nightingale.data.simulator.oracle import OUTCOMES

        if "simulator" not in self.dataset.metadata():
            raise ValueError(f"{WHERE}.oracle: {self.dataset.root} is not simulated data (dataset.json has no "
                             "'simulator'); the oracle exists for the simulator only")
        if self.cfg.prediction_time is None:
            raise ValueError(f"{WHERE}.oracle: needs a fixed prediction_time (a date)")
        found = {}
        for name, codes in self.cfg.outcomes.items():
            match = [k for k, o in OUTCOMES.items() if tuple(codes) == o.codes and not o.new_only]
            if not match:
                raise ValueError(f"{WHERE}.oracle: outcome {name!r} ({list(codes)}) is not one the simulator "
                                 f"knows the truth of (have {[o.codes for o in OUTCOMES.values() if not o.new_only]})")
            found[name] = match[0]
        return found

    # --- the folder --------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {"config": self.cfg.as_dict(), "model": str(self.model.path), "dataset": str(self.dataset.root),
                "shards": self.shards}

    def open(self) -> None:
        """Create the output folder, or check that it holds this very job (resume)."""
        path = self.out / "job.json"
        mine = json.loads(json.dumps(self.manifest(), default=str))
        if path.exists():
            theirs = json.loads(path.read_text())
            if theirs != mine:
                raise ValueError(f"{WHERE}.out_dir: {self.out} holds another job (job.json differs); choose "
                                 "another out_dir or remove it")
            return
        write_json_atomic(mine, path)

    def _marker(self, shard: str) -> Path:
        return self.out / "shards" / f"{shard}.json"

    def done(self, shard: str) -> bool:
        return self._marker(shard).exists()

    def todo(self) -> list[str]:
        return [s for s in self.shards if not self.done(s)]

    # --- work --------------------------------------------------------------------------------------
    async def run_shard(self, shard: str, engine: Callable[[], Awaitable[Engine]],
                        progress: Callable[[int], None] | None = None) -> dict:
        """Forecast one shard and write its files (the marker last); returns its counts.
        `engine()` gives the engine, and is awaited only when the shard has patients at risk."""
        if shard not in self.shards:
            raise ValueError(f"{WHERE}.shard: {shard!r} is not a shard of {self.dataset.root} holding subjects "
                             f"of the split; have {self.shards}")
        events = await asyncio.to_thread(lambda: self.dataset.scan(shard).collect())
        seconds: dict[str, float] = {}
        if self.cfg.recalibrate:  # first the window before t (not counted as progress: patients forecast at t are)
            ccfg = self.cfg.calibration_config()
            cohort, risks = await self._forecast(ccfg, events, engine, None, seconds, "calibration")
            with atomic_file(self.out / "calibration" / f"{shard}.parquet") as tmp:
                partial_sums(ccfg, cohort, risks).write_parquet(tmp)
        cohort, risks = await self._forecast(self.cfg, events, engine, progress, seconds, "forecast")
        if self.oracle_outcomes:
            t0 = time.perf_counter()
            risks = await asyncio.to_thread(self._with_oracle, risks)
            seconds["oracle"] = time.perf_counter() - t0
        sums = partial_sums(self.cfg, cohort, risks)
        preds = risks.drop("_mc")
        with atomic_file(self.out / "predictions" / f"{shard}.parquet") as tmp:
            preds.write_parquet(tmp)
        with atomic_file(self.out / "partials" / f"{shard}.parquet") as tmp:
            sums.write_parquet(tmp)
        counts = dict(cohort.counts)
        write_json_atomic({"counts": counts, "seconds": seconds}, self._marker(shard))
        log.info("shard %s: %d patients at risk forecast", shard, counts.get("at_risk", 0))
        return counts

    async def _forecast(self, cfg: PopulationConfig, events: pl.DataFrame, engine: Callable[[], Awaitable[Engine]],
                        progress: Callable[[int], None] | None, seconds: dict[str, float], what: str):
        """The shard's population at risk at `cfg.prediction_time` and its risks; the seconds the
        rollouts took go under `what`."""
        room = self.context_length - cfg.reserve_tokens
        cohort = await asyncio.to_thread(load_shard_cohort, self.vocab, cfg, events, self.split_ids, self.columns, room)
        t0 = time.perf_counter()
        risks = await forecast_cohort(await engine() if cohort.prompts else None, cfg, cohort, self.outcomes, progress)
        seconds[what] = time.perf_counter() - t0
        return cohort, risks

    def _with_oracle(self, risks: pl.DataFrame) -> pl.DataFrame:
        from nightingale.data.simulator.oracle import oracle_risk

        parts = []
        for (name, days), part in risks.group_by("outcome", "horizon_days", maintain_order=True):
            p = oracle_risk(self.dataset.root, part[S.SUBJECT_ID].to_numpy(), part[S.PREDICTION_TIME].to_numpy(),
                            self.oracle_outcomes[name], float(days), n_samples=self.cfg.oracle_samples)
            parts.append(part.with_columns(pl.Series("oracle_probability", np.nan_to_num(p, nan=0.0))))
        return pl.concat(parts) if parts else risks.with_columns(pl.lit(None, pl.Float64).alias("oracle_probability"))

    def merge(self) -> dict[str, Any]:
        """Aggregate every shard's sums into the job's results (refused while a shard is missing)."""
        missing = self.todo()
        if missing:
            raise ValueError(f"{WHERE}.stage=merge: {len(missing)} shard(s) not done yet: {missing[:5]}")
        counts: Counter = Counter()
        seconds: Counter = Counter()
        for s in self.shards:
            marker = json.loads(self._marker(s).read_text())
            counts.update(marker["counts"])
            seconds.update(marker["seconds"])
        sums = A.merge_partials([pl.read_parquet(self.out / "partials" / f"{s}.parquet") for s in self.shards])
        ratios = None
        if self.cfg.recalibrate:
            window = A.merge_partials([pl.read_parquet(self.out / "calibration" / f"{s}.parquet") for s in self.shards])
            ratios = calibrate.fit(window, self.cfg.small_count_threshold)
        agg = A.aggregate(sums, self.cfg.small_count_threshold, backtest=self.cfg.backtest,
                          oracle=bool(self.oracle_outcomes), groups=self.cfg.groups, ratios=ratios)
        result = {**self.manifest(), "model": self.model.path.name, "dataset": self.name,
                  "card": {k: self.model.card.get(k) for k in ("data", "steps")}, "gate": self.gate,
                  "counts": dict(counts), "seconds": {k: round(v, 2) for k, v in seconds.items()},
                  "interval": A.INTERVAL + (f"; {calibrate.INTERVAL}" if ratios is not None else ""),
                  "cells": agg.to_dicts()}
        if ratios is not None:
            result["calibration"] = {"time": self.cfg.calibration_time().isoformat(),
                                     "ratios": [r.as_dict() for r in ratios.values()]}
        if self.cfg.backtest:
            result["coverage"] = A.coverage(sums, oracle=bool(self.oracle_outcomes), ratios=ratios)
        with atomic_file(self.out / "aggregates.parquet") as tmp:
            agg.write_parquet(tmp)
        write_json_atomic(result, self.out / "aggregates.json")
        with atomic_file(self.out / "summary.md") as tmp:
            tmp.write_text(summary.markdown(agg, result))
        summary.plot(agg, self.out / "summary.png")
        return result


def run_stage(job: PopulationJob, engine_cfg: EngineConfig, stage: str = "all", shard: str | None = None,
              show_progress: bool = True) -> dict[str, Any] | None:
    """The stage script's work: every shard not yet done then the merge (all), one shard of an
    array (shard), or the merge alone (merge). One engine for all the shards of a process."""
    from tqdm import tqdm

    if stage not in STAGES:
        raise ValueError(f"{WHERE}.stage: {stage!r}; allowed {list(STAGES)}")
    if stage == "shard" and shard is None:
        raise ValueError(f"{WHERE}.shard: required with stage=shard (e.g. shard=held_out/0)")
    job.open()
    job.context_length = engine_cfg.max_model_len or job.context_length
    if stage == "shard" and shard in job.all_shards and shard not in job.shards:
        log.info("shard %s holds no subject of the %s split: nothing to forecast", shard, job.cfg.split)
        return None
    todo = [] if stage == "merge" else ([shard] if stage == "shard" else job.todo())
    if todo:
        asyncio.run(_run_shards(job, engine_cfg, todo, show_progress, tqdm))
    return None if stage == "shard" else job.merge()


async def _run_shards(job: PopulationJob, engine_cfg: EngineConfig, shards: list[str], show: bool, tqdm) -> None:
    started: list[Engine] = []

    async def engine() -> Engine:  # started on the first shard with patients at risk
        if not started:
            started.append(await Engine.start(engine_cfg))
        return started[0]

    try:
        for s in shards:
            with tqdm(desc=f"forecast {s}", unit="patient", file=sys.stderr, disable=not show) as bar:
                await job.run_shard(s, engine, bar.update)
    finally:
        if started:
            await started[0].aclose()
