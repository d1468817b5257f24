"""Population forecast throughput and quality: the stage's own code (PopulationJob) on one machine.

A 1-year forecast of two outcomes (death, emergency admission) for every subject of a split alive
with history at a fixed date, with the default rollouts, by age band and sex. Prints patients/s
(engine start excluded, oracle excluded), the projected wall time for 1,000,000 patients on this
machine, and, since the simulator's data continue past the date, the expected counts against the
observed counts and the simulator's oracle with the 95% intervals' coverage across groups: the
model's own, and recalibrated by what it got wrong on the same population a year before
(`forecast.recalibrate`, inference/population/calibrate.py; its rollouts are timed apart).

    make demo
    .venv/bin/python benchmarks/bench_population.py --model runs/demo/train/model --meds runs/demo/meds \\
        --split held_out --prediction-time 2024-06-01
    # a population the model never saw: simulate it with another seed, forecast everyone
    .venv/bin/nightingale simulate --subjects 5000 --seed 7 --out runs/pop/meds
    .venv/bin/python benchmarks/bench_population.py --meds runs/pop/meds --split all --out runs/bench_population_pop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

from nightingale.inference.engine import Engine, EngineConfig
from nightingale.inference.population import PopulationConfig, PopulationJob

OUTCOMES = {"death": ["MEDS_DEATH"], "emergency_admission": ["ADMISSION//EMERGENCY"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("runs/demo/train/model"))
    ap.add_argument("--meds", type=Path, default=Path("runs/demo/meds"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench_population"))
    ap.add_argument("--split", default="held_out", help="train | tuning | held_out | all")
    ap.add_argument("--prediction-time", default="2024-06-01")
    ap.add_argument("--rollouts", type=int, default=PopulationConfig.rollouts)
    ap.add_argument("--oracle-samples", type=int, default=100)
    ap.add_argument("--no-oracle", action="store_true")
    ap.add_argument("--no-recalibrate", action="store_true")
    ap.add_argument("--max-num-seqs", type=int, default=1024)
    args = ap.parse_args()

    cfg = PopulationConfig.from_mapping({
        "outcomes": OUTCOMES, "horizons_days": [365], "prediction_time": args.prediction_time, "split": None if args.split == "all" else args.split,
        "rollouts": args.rollouts, "backtest": True, "oracle": not args.no_oracle,
        "recalibrate": not args.no_recalibrate,
        "oracle_samples": args.oracle_samples, "groups": ["age_band", "sex"],
    })
    job = PopulationJob(cfg, args.model, args.meds, args.out, allow_ungated=True)

    async def run() -> dict:
        t0 = time.perf_counter()
        engine = await Engine.start(EngineConfig(model_dir=str(args.model), max_num_seqs=args.max_num_seqs))
        start_s = time.perf_counter() - t0

        async def get():
            return engine

        job.open()
        tokens0 = engine.tokens_generated
        for shard in job.todo():
            await job.run_shard(shard, get)
        tokens = engine.tokens_generated - tokens0
        await engine.aclose()
        return {"engine_start_s": round(start_s, 1), "tokens": tokens}

    timing = asyncio.run(run())
    result = job.merge()
    patients = result["counts"]["at_risk"]
    secs = result["seconds"]["forecast"]
    rate = patients / secs
    timing.update(patients=patients, forecast_s=secs, oracle_s=result["seconds"].get("oracle"),
                  calibration_s=result["seconds"].get("calibration"),
                  patients_per_s=round(rate, 2),
                  tokens_per_s=round(timing["tokens"] / (secs + result["seconds"].get("calibration", 0.0))),
                  projected_1m_patients_h=round(1e6 / rate / 3600, 1))
    print(f"machine: {platform.node()}, {os.cpu_count()} cores; model {args.model}; {args.rollouts} rollouts; "
          f"2 outcomes x 1 year")
    print(json.dumps(timing, indent=1))
    rows = _table(result)
    print("\n".join(rows))
    (args.out / "report.json").write_text(json.dumps({"timing": timing, "result": result}, indent=1, default=str))
    (args.out / "report.md").write_text("\n".join(rows) + "\n")
    print(f"\nsummary: {args.out / 'summary.md'}, chart: {args.out / 'summary.png'}, report: {args.out / 'report.md'}")
    return 0


def _table(result: dict) -> list[str]:
    """Model / observed / oracle per cell, and how often each 95% interval held the observed count."""
    oracle = any("oracle_expected" in c for c in result["cells"])
    recal = any("uncalibrated" in c for c in result["cells"])
    head = "model's own | recalibrated [95%]" if recal else "model expected [95%]"
    rows = [f"| outcome | group | value | patients | {head} | observed | oracle expected [95%] |",
            "|---|---|---|---|---|---|---|" + ("---|" if recal else "")]
    for c in result["cells"]:
        if c["suppressed"]:
            rows.append(f"| {c['outcome']} | {c['group']} | {c['value']} | suppressed ({c['suppressed']}) |"
                        + " |" * (4 if recal else 3))
            continue
        orc = f"{c['oracle_expected']:.1f} [{c['oracle_lower']:.1f}, {c['oracle_upper']:.1f}]" if oracle else "n/a"
        own = f"{c['uncalibrated']:.1f} | " if recal else ""
        rows.append(f"| {c['outcome']} | {c['group']} | {c['value']} | {c['patients']} | {own}{c['expected']:.1f} "
                    f"[{c['lower']:.1f}, {c['upper']:.1f}]{'' if c['covered'] else ' (missed)'} | {c['observed']} | {orc} |")
    for r in result.get("calibration", {}).get("ratios", []):
        rows.append(f"\nratio {r['outcome']} {r['horizon_days']:g} d: " + (
            f"{r['ratio']} [{r['ratio_lower']}, {r['ratio_upper']}]" if r["applied"] else f"not applied ({r['reason']})"))
    cov = result.get("coverage", {})
    rows.append(f"\ncoverage of the 95% intervals over {cov.get('cells')} cells (suppressed ones included): "
                f"model {cov.get('model')}, recalibrated {cov.get('recalibrated', 'n/a')}, oracle {cov.get('oracle', 'n/a')}")
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
