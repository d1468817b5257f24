"""Load test: concurrent planners calling POST /v1/forecasts on a real server (not part of CI).

Starts the serving stage (vLLM CPU engine + FastAPI, a separate process) on the demo model, then
`--clients` concurrent clients each send one-patient forecasts (death and emergency admission
within a year, `--rollouts` rollouts) back to back for `--seconds`. Patients are real held-out
timelines of the demo dataset, cut at a random event. Prints throughput, latency percentiles and
status counts (the goal: zero 5xx).

    make demo    # builds runs/demo (model and data)
    .venv/bin/python benchmarks/load_forecasts.py --clients 50 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serving import BENCH_KEY, held_out_events, patient_bodies, served  # noqa: E402

from nightingale import schema as S  # noqa: E402


def random_cut(events: pl.DataFrame, seed: int) -> dict:
    """A random event time per subject (not the birth row)."""
    rng = np.random.default_rng(seed)
    out = {}
    for (sid,), g in events.filter(pl.col(S.TIME).is_not_null() & (pl.col(S.CODE) != S.BIRTH_CODE)).group_by(
            S.SUBJECT_ID, maintain_order=True):
        times = g[S.TIME].to_list()
        out[int(sid)] = times[int(rng.integers(len(times)))]
    return out


async def client(url: str, bodies: list[dict], stop_at: float, k: int, lat: list, codes: collections.Counter):
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {BENCH_KEY}"},
                                 timeout=300) as c:
        i = k
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                r = await c.post("/v1/forecasts", json=bodies[i % len(bodies)])
                codes[r.status_code] += 1
            except httpx.HTTPError as e:
                codes[type(e).__name__] += 1
            lat.append(time.monotonic() - t0)
            i += 1


async def load(url: str, bodies: list[dict], clients: int, seconds: float) -> dict:
    lat: list[float] = []
    codes: collections.Counter = collections.Counter()
    t0 = time.monotonic()
    await asyncio.gather(*(client(url, bodies, t0 + seconds, k, lat, codes) for k in range(clients)))
    wall = time.monotonic() - t0
    ms = np.asarray(lat) * 1000
    ok = codes.get(200, 0)
    return {
        "clients": clients, "seconds": round(wall, 1), "requests": len(lat), "ok": ok,
        "requests_per_s": round(len(lat) / wall, 2),
        "latency_ms": {q: round(float(np.percentile(ms, int(q[1:]))), 1) for q in ("p50", "p95", "p99")}
        if len(ms) else {},
        "latency_ms_max": round(float(ms.max()), 1) if len(ms) else None,
        "status": {str(k): v for k, v in sorted(codes.items(), key=str)},
        "server_errors_5xx": sum(v for k, v in codes.items() if isinstance(k, int) and k >= 500),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default="runs/demo/train/model")
    ap.add_argument("--meds", default="runs/demo/meds")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rollouts", type=int, default=8, help="per request (the server default; 32 before the probability estimator)")
    ap.add_argument("--patients", type=int, default=200, help="distinct held-out patients to cycle through")
    args = ap.parse_args()
    for p in (args.model_dir, args.meds):
        if not Path(p).exists():
            ap.error(f"{p} does not exist: run `make demo` first, or pass --model-dir/--meds")
    events = held_out_events(args.meds, args.patients)
    patients = patient_bodies(events, random_cut(events, seed=1))
    bodies = [{"patients": [p], "horizons_days": [365], "rollouts": args.rollouts, "seed": i,
               "outcomes": [{"name": "death", "codes": [S.DEATH_CODE]},
                            {"name": "emergency_admission", "codes": ["ADMISSION//EMERGENCY"]}]}
              for i, p in enumerate(patients.values())]
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp, served(args.model_dir, Path(tmp)) as srv:
        t0 = time.monotonic()
        asyncio.run(load(srv.url, bodies, clients=4, seconds=5))  # warm-up: compile, fill caches
        warm = time.monotonic() - t0
        result = asyncio.run(load(srv.url, bodies, args.clients, args.seconds))
        m = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {BENCH_KEY}"}).text
    result.update({"rollouts_per_request": args.rollouts, "patients_cycled": len(bodies),
                   "warmup_s": round(warm, 1),
                   "patient_rollouts_per_s": round(result["ok"] * args.rollouts / result["seconds"], 1),
                   "tokens_generated_total": next((float(line.split()[-1]) for line in m.splitlines()
                                                   if line.startswith("nightingale_tokens_generated_total")), None)})
    print(json.dumps(result, indent=2))
    return 0 if result["server_errors_5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
