"""Do the served model's risks track the truth? /v1/forecasts against the simulator's oracle.

For `--patients` held-out subjects of the demo dataset (simulated, so the true process is known),
a prediction time is drawn at a random event of each record, with a full year of follow-up left
in the simulation window. The server (real process, vLLM CPU) forecasts death within 365 days
from the events up to then; `oracle_risk` gives the true probability under the simulator; the
observed outcome comes from the data after the prediction time. Prints the Pearson and Spearman
correlations of model and oracle risks, and the AUROC of each against observed outcomes, and
writes a scatter plot.

    .venv/bin/python benchmarks/forecasts_vs_oracle.py --patients 300 --rollouts 32
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
from scipy import stats
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serving import BENCH_KEY, held_out_events, patient_bodies, served  # noqa: E402

from nightingale import schema as S  # noqa: E402
from nightingale.data.meds_io import MEDSDataset  # noqa: E402
from nightingale.data.simulator.oracle import load_config, observed_labels, oracle_risk  # noqa: E402

HORIZON_DAYS = 365.0


def prediction_times(events: pl.DataFrame, window_end: dt.datetime, seed: int) -> dict[int, dt.datetime]:
    """A random event time per subject with a full horizon left before the window ends."""
    rng = np.random.default_rng(seed)
    last = window_end - dt.timedelta(days=HORIZON_DAYS)
    ok = events.filter(pl.col(S.TIME).is_not_null() & (pl.col(S.CODE) != S.BIRTH_CODE)
                       & (pl.col(S.TIME) <= last) & (pl.col(S.CODE) != S.DEATH_CODE))
    out = {}
    for (sid,), g in ok.group_by(S.SUBJECT_ID, maintain_order=True):
        times = g[S.TIME].to_list()
        out[int(sid)] = times[int(rng.integers(len(times)))]
    return out


def forecast(url: str, bodies: dict[int, dict], rollouts: int, batch: int) -> dict[int, float]:
    out: dict[int, float] = {}
    ids = list(bodies)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {BENCH_KEY}"}, timeout=3600) as c:
        for i in range(0, len(ids), batch):
            chunk = ids[i : i + batch]
            r = c.post("/v1/forecasts", json={
                "patients": [{**bodies[s], "ref": str(k)} for k, s in enumerate(chunk)],
                "outcomes": [{"name": "death", "codes": [S.DEATH_CODE]}],
                "horizons_days": [HORIZON_DAYS], "rollouts": rollouts, "seed": i,
            })
            r.raise_for_status()
            for p in r.json()["patients"]:
                out[chunk[int(p["ref"])]] = p["risks"][0]["probability"]
            print(f"  forecast {min(i + batch, len(ids))}/{len(ids)} patients", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default="runs/demo/train/model")
    ap.add_argument("--meds", default="runs/demo/meds")
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--rollouts", type=int, default=32)
    ap.add_argument("--oracle-samples", type=int, default=500)
    ap.add_argument("--plot", default="runs/demo/forecasts_vs_oracle.png")
    args = ap.parse_args()
    for p in (args.model_dir, args.meds):
        if not Path(p).exists():
            ap.error(f"{p} does not exist: run `make demo` first, or pass --model-dir/--meds")
    cfg = load_config(args.meds)
    events = held_out_events(args.meds, args.patients, seed=2)
    times = prediction_times(events, dt.datetime.combine(cfg.end_date, dt.time()), seed=3)
    ids = np.array(sorted(times), dtype=np.int64)
    t_arr = np.array([np.datetime64(times[s], "us") for s in ids])
    t0 = time.monotonic()
    truth = oracle_risk(args.meds, ids, t_arr, "death", HORIZON_DAYS, n_samples=args.oracle_samples)
    oracle_s = time.monotonic() - t0
    keep = np.isfinite(truth)
    ids, t_arr, truth = ids[keep], t_arr[keep], truth[keep]
    all_events = pl.concat([lf for _, lf in MEDSDataset(args.meds).iter_shards()]).filter(
        pl.col(S.SUBJECT_ID).is_in(ids.tolist())).collect()
    observed = observed_labels(all_events, ids, t_arr, "death", HORIZON_DAYS)
    bodies = patient_bodies(events, {int(s): times[int(s)] for s in ids})
    with tempfile.TemporaryDirectory(prefix="bench_oracle_") as tmp, served(args.model_dir, Path(tmp)) as srv:
        t0 = time.monotonic()
        risk = forecast(srv.url, bodies, args.rollouts, batch=50)
        serve_s = time.monotonic() - t0
    model = np.array([risk[int(s)] for s in ids])
    result = {
        "patients": len(ids), "deaths_within_1y": int(observed.sum()), "rollouts": args.rollouts,
        "oracle_samples": args.oracle_samples,
        "pearson_model_vs_oracle": round(float(stats.pearsonr(model, truth)[0]), 3),
        "spearman_model_vs_oracle": round(float(stats.spearmanr(model, truth)[0]), 3),
        "auroc_model": round(float(roc_auc_score(observed, model)), 3) if 0 < observed.sum() < len(observed) else None,
        "auroc_oracle": round(float(roc_auc_score(observed, truth)), 3) if 0 < observed.sum() < len(observed) else None,
        "mean_risk_model": round(float(model.mean()), 4), "mean_risk_oracle": round(float(truth.mean()), 4),
        "observed_rate": round(float(observed.mean()), 4),
        "forecast_seconds": round(serve_s, 1), "oracle_seconds": round(oracle_s, 1),
    }
    if result["auroc_model"] and result["auroc_oracle"]:
        result["auroc_fraction_of_oracle"] = round(result["auroc_model"] / result["auroc_oracle"], 3)
    from nightingale.evaluation.plots import plot_scatter

    plot_scatter(truth, model, args.plot, xlabel="oracle P(death within 1 y)",
                 ylabel=f"/v1/forecasts P(death within 1 y), {args.rollouts} rollouts",
                 title=f"Demo model vs simulator oracle (n={len(ids)}, r={result['pearson_model_vs_oracle']})")
    result["plot"] = args.plot
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
