"""Shared by the serving benchmarks: API patient bodies from a MEDS dataset, a served model."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset

# serve/process.py starts the serving stage's script: a checkout helper, not part of the library.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serve.process import ServerProcess  # noqa: E402

BENCH_KEY = "bench-key-not-secret"


def patient_bodies(events: pl.DataFrame, prediction_times: dict[int, dt.datetime] | None = None,
                   max_events: int = 2000) -> dict[int, dict]:
    """API patient bodies (sex, birth date, events) per subject of MEDS `events`; with
    `prediction_times`, only events at or before each subject's time are sent."""
    out: dict[int, dict] = {}
    for (sid,), g in events.group_by(S.SUBJECT_ID, maintain_order=True):
        sid = int(sid)
        t = prediction_times.get(sid) if prediction_times else None
        static = g.filter(pl.col(S.TIME).is_null())[S.CODE].to_list()
        timed = g.filter(pl.col(S.TIME).is_not_null())
        birth = timed.filter(pl.col(S.CODE) == S.BIRTH_CODE)[S.TIME]
        body = timed.filter(pl.col(S.CODE) != S.BIRTH_CODE)
        if t is not None:
            body = body.filter(pl.col(S.TIME) <= t)
        body = body.tail(max_events)
        if body.is_empty():
            continue
        sex = next((c.split("//", 1)[1] for c in static if c.startswith("SEX//")), None)
        out[sid] = {
            "sex": sex,
            "birth_date": birth[0].date().isoformat() if len(birth) else None,
            "static_codes": [c for c in static if not c.startswith("SEX//")],
            "events": [
                {"time": r[S.TIME].isoformat(), "code": r[S.CODE],
                 **({"numeric_value": float(r[S.NUMERIC_VALUE])}
                    if r[S.NUMERIC_VALUE] is not None and np.isfinite(r[S.NUMERIC_VALUE]) else {})}
                for r in body.iter_rows(named=True)
            ],
        }
    return out


def held_out_events(meds_dir: str | Path, n: int, seed: int = 0) -> pl.DataFrame:
    """All events of `n` randomly chosen held-out subjects."""
    ds = MEDSDataset(meds_dir)
    ids = ds.subjects("held_out").to_numpy()
    rng = np.random.default_rng(seed)
    pick = rng.choice(ids, size=min(n, len(ids)), replace=False)
    return (pl.concat([lf for _, lf in ds.iter_shards()], how="vertical")
            .filter(pl.col(S.SUBJECT_ID).is_in(pick.tolist())).collect())


@contextlib.contextmanager
def served(model_dir: str | Path, work: Path, *, extra: list[str] = ()) -> Iterator[ServerProcess]:
    """The serving stage on `model_dir` (dev config: a model without a gate report is served with a
    logged warning), with an admin key `BENCH_KEY`; its log goes to work/server.log."""
    work.mkdir(parents=True, exist_ok=True)
    env = {"NIGHTINGALE_BENCH_KEYS": f"bench:{BENCH_KEY}:admin",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
           "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(work / "vllm_cache"))}
    overrides = [f"model_dir={model_dir}", "serve.api_keys_env=NIGHTINGALE_BENCH_KEYS",
                 f"serve.audit_log={work / 'audit.jsonl'}", f"serve.jobs_dir={work / 'jobs'}",
                 "log_level=warning", f"hydra.run.dir={work / 'hydra'}", *extra]
    with ServerProcess(["experiment=dev", *overrides], env=env, log_path=work / "server.log") as srv:
        yield srv
