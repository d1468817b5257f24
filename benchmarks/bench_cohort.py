"""Synthetic cohorts from a trained model: speed, how timelines end, and whether they hold up as data.

Generates cohorts of each size in `--patients` with the serving engine (whole timelines: sliding
windows past the context until death, end of record or the token budget), streaming shard by
shard to disk. Prints patients/s and events/s (engine start excluded), this process's peak memory
(flat across sizes when streaming works; the engine's own process is not counted), the share of
timelines cut by the token budget, and death prevalence against the training data. Timelines
follow the training data's calendar (each starts on a date, at an age, drawn from the training
records' own first events, and runs to death or their end of follow-up), so like is compared
with like. With
`--evidence`, the first cohort is also judged against the training and held-out data the way the
evaluation does (fidelity, privacy, and utility: a mortality model trained on the cohort and
tested on real held-out patients, TSTR, against one trained on real data, TRTR), and each task of
`--tasks` (default mortality_1y) is scored TSTR against TRTR with the supervised baseline.

    make demo
    .venv/bin/python benchmarks/bench_cohort.py --model runs/demo/train/model --meds runs/demo/meds \\
        --patients 1000 10000 --evidence
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import polars as pl

from nightingale import schema as S
from nightingale.inference.cohort_calendar import calendar_window
from nightingale.inference.cohorts import CohortSpec, generate_cohort
from nightingale.inference.engine import Engine, EngineConfig


def death_share(root: Path, split: str | None = None) -> tuple[float, int]:
    """Share of subjects with a death event, and the subjects counted."""
    from nightingale.evaluation.synthetic.events import load_events

    ev = load_events(root, split) if split else load_events(root)
    n = ev[S.SUBJECT_ID].n_unique()
    dead = ev.filter(pl.col(S.CODE) == S.DEATH_CODE)[S.SUBJECT_ID].n_unique()
    return dead / max(n, 1), n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("runs/demo/train/model"))
    ap.add_argument("--meds", type=Path, default=Path("runs/demo/meds"), help="the model's training data (MEDS)")
    ap.add_argument("--patients", type=int, nargs="+", default=[1000])
    ap.add_argument("--max-new-tokens", type=int, default=CohortSpec.max_new_tokens)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--evidence", action="store_true", help="judge the first cohort (fidelity, privacy, utility)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_cohort"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start-date", type=dt.datetime.fromisoformat, default=None,
                    help="every timeline's first event (default: drawn from the training records' own starts)")
    ap.add_argument("--end-date", type=dt.datetime.fromisoformat, default=None,
                    help="no event after it (default: the training data's end of follow-up)")
    ap.add_argument("--no-calendar", action="store_true", help="no calendar window: start 2020-01-01, no end date")
    ap.add_argument("--tasks", type=Path, nargs="*",
                    default=[Path("configs/eval/tasks/simulator/mortality_1y.yaml")],
                    help="with --evidence: task YAMLs scored TSTR against TRTR with the supervised baseline")
    args = ap.parse_args()

    real_death, real_n = death_share(args.meds, S.TRAIN)
    window = {"start_date": args.start_date or CohortSpec.start_date, "end_date": args.end_date}
    if not args.no_calendar and args.start_date is None:  # the training data's record starts and ages at start
        calendar = calendar_window(args.meds, S.TRAIN)
        calendar = calendar.until(args.end_date) if args.end_date else calendar
        window |= calendar.spec_fields() | {"follow_to_end": args.end_date is not None or calendar.observed_end}
    elif args.end_date is None and not args.no_calendar:
        window["end_date"] = calendar_window(args.meds, S.TRAIN).end
    results = []

    async def run() -> None:
        engine = await Engine.start(EngineConfig(model_dir=str(args.model), max_num_seqs=args.batch_size))
        try:
            for n in args.patients:
                out = args.out / f"cohort_{n}"
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                spec = CohortSpec(n_patients=n, seed=args.seed, max_new_tokens=args.max_new_tokens,
                                  batch_size=args.batch_size, shard_size=1000, **window)
                t0 = time.perf_counter()
                rep = await generate_cohort(engine, spec, out)
                secs = time.perf_counter() - t0
                share, _ = death_share(out)
                results.append({
                    "patients": n, "seconds": round(secs, 1), "patients_per_s": round(n / secs, 2),
                    "events_per_s": round(rep["events"] / secs), "tokens_per_s": round(rep["generated_tokens"] / secs),
                    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                    "ended_max_tokens_share": rep["truncated_share"], "ended_death": rep.get("ended_death", 0),
                    "ended_end_date": rep.get("ended_end_date", 0), "ended_end_of_record": rep.get("ended_end_of_record", 0),
                    "windows_per_timeline": round(rep["windows"] / n, 2), "windows_max": rep["windows_max"],
                    "generated_tokens_max": rep["generated_tokens_max"], "events_per_patient": round(rep["events"] / n, 1),
                    "death_share": round(share, 4), "death_share_train": round(real_death, 4),
                    "death_share_relative_error": round(abs(share - real_death) / real_death, 3) if real_death else None,
                    "dropped_rate": rep["dropped_rate"],
                })
                print(json.dumps(results[-1]), flush=True)
        finally:
            await engine.aclose()

    asyncio.run(run())
    print(f"machine: {platform.node()}, {os.cpu_count()} cores; model {args.model}; training data {args.meds} "
          f"({real_n} train subjects, {real_death:.1%} with a death); calendar: "
          + ("none" if not (window.get("start_dates") or window['end_date']) else
             f"{len(window.get('start_dates', ())) or 1} start dates, end {window['end_date']}, "
             f"followed to the end: {window.get('follow_to_end', True)}"))
    report = {"cohorts": results}
    if args.evidence:
        from nightingale.evaluation.synthetic.events import load_events
        from nightingale.evaluation.synthetic.report import SyntheticEvalConfig, evaluate_synthetic

        t0 = time.perf_counter()
        ev = evaluate_synthetic(args.out / f"cohort_{args.patients[0]}", load_events(args.meds, S.TRAIN),
                                load_events(args.meds, S.HELD_OUT), SyntheticEvalConfig(seed=args.seed))
        keys = {"utility": ["utility/auc_tstr", "utility/auc_trtr", "utility/ratio", "utility/prevalence_synth",
                            "utility/prevalence_train"],
                "privacy": ["mia/auc", "dcr/exact_match_share", "dcr/median_ratio", "ngram/copy_share_synth",
                            "ngram/copy_share_held_out"],
                "fidelity": ["prevalence/pearson", "cooccurrence/pearson", "events_per_subject/ks"]}
        head = {k: {m: ev[k].get(m) for m in ms} for k, ms in keys.items()}
        from nightingale.data.meds_io import MEDSDataset
        from nightingale.evaluation.synthetic.task_utility import task_utility
        from nightingale.evaluation.tasks import load_task

        head["tasks"] = {}
        for path in args.tasks:
            task = load_task(path)
            head["tasks"][task.name] = task_utility(MEDSDataset(args.out / f"cohort_{args.patients[0]}"),
                                                    MEDSDataset(args.meds), task, window["end_date"])
        print(json.dumps(head, indent=1))
        report["evidence"] = {**head, "seconds": round(time.perf_counter() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out, delete=False, suffix=".tmp") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(f.name, args.out / "report.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
