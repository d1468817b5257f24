"""Evaluation wall time and rollouts needed: ~1,000 held-out subjects x 3 simulator tasks, tiny preset.

Simulates a fresh cohort (`--subjects`, 10% held out) with the same simulator, encodes it with the
demo model's own vocabulary (the prepare stage loads a vocabulary already in its out_dir), and runs
the evaluation stage on a copy of the demo model: intrinsic metrics, the three simulator tasks
(`--max-labels` predictions each, `--rollouts` rollouts), the supervised baseline and the oracle;
no synthetic cohort (timed by the stage's report separately). Prints the stage's section timings,
the total against the goal (600 s) and the AUROC of each task by number of rollouts (1, 2, 4, ...
up to --rollouts) for both estimators, with the "rollouts needed" comparison: the probability
estimator at 4 rollouts against the counting estimator at the most rollouts run.

    make demo        # the model
    .venv/bin/python benchmarks/bench_evaluation.py --subjects 12000 --rollouts 8    # wall time
    .venv/bin/python benchmarks/bench_evaluation.py --subjects 12000 --rollouts 64 \
        --tasks configs/eval/tasks/simulator/mortality_1y.yaml                      # rollouts needed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 600


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default="runs/demo/train/model")
    ap.add_argument("--vocab", default="runs/demo/prepared/vocab")
    ap.add_argument("--subjects", type=int, default=12000)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--max-labels", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tasks", default="configs/eval/tasks/simulator",
                    help="a folder of task YAMLs or one task file (e.g. .../mortality_1y.yaml)")
    ap.add_argument("--keep", help="keep the work folder here (default: a temporary one)")
    args = ap.parse_args()
    for p in (args.model_dir, args.vocab):
        if not Path(p).exists():
            ap.error(f"{p} does not exist: run `make demo` first")
    py = sys.executable
    ng = str(Path(py).with_name("nightingale"))
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if not (work / "meds").exists():
            run([ng, "simulate", "--subjects", str(args.subjects), "--seed", str(args.seed), "--out", str(work / "meds")])
        if not (work / "prep" / "corpus").exists():
            shutil.copytree(args.vocab, work / "prep" / "vocab", dirs_exist_ok=True)
            run([py, "data_prep/prepare.py", "data=meds", f"data.path={work / 'meds'}", f"out_dir={work / 'prep'}",
                 "progress=false", "workers=2"])
        data_s = time.perf_counter() - t0
        model = work / "model"
        shutil.copytree(args.model_dir, model, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("evaluation", "gate_report.json"))
        env = {**os.environ, "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(REPO / "runs" / "demo" / "vllm_cache"))}
        t0 = time.perf_counter()
        r = subprocess.run([py, "eval/evaluate.py", f"model_dir={model}", f"data_dir={work / 'prep'}",
                            f"meds_dir={work / 'meds'}", "synthetic.enabled=false", "progress=false",
                            f"zeroshot.rollouts={args.rollouts}", f"task_scoring.max_labels={args.max_labels}",
                            f"task_dir={REPO / args.tasks}",
                            f"hydra.run.dir={work / 'hydra'}"], cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode not in (0, 1):
            print(r.stderr[-4000:], file=sys.stderr)
            return r.returncode
        rep = json.loads((model / "evaluation" / "report.json").read_text())
    tasks = rep["tasks"]
    result = {
        "cpus": os.cpu_count(), "subjects_simulated": args.subjects, "data_prep_s": round(data_s, 1),
        "rollouts": args.rollouts,
        "predictions": {n: t["labels"]["evaluated"] for n, t in tasks.items()},
        "wall_s": round(wall, 1), "goal_s": GOAL_S, "ratio_to_goal": round(wall / GOAL_S, 3),
        "sections_s": {k: round(v, 1) for k, v in rep["timings"].items()},
        "auroc": {n: {p: t[p]["auroc"] for p in ("model", "baseline", "oracle") if t.get(p) and "auroc" in t[p]}
                  for n, t in tasks.items()},
        "auroc_by_rollouts": {n: t.get("auroc_by_rollouts") for n, t in tasks.items()},
        "gate_passed": rep["gate"]["passed"], "gate_failed": rep["gate"]["failed"],
    }
    result["rollouts_needed"] = {
        n: {"probability@4": (a := t.get("auroc_by_rollouts") or {}).get("probability", {}).get("4"),
            f"count@{args.rollouts}": a.get("count", {}).get(str(args.rollouts)),
            "labels_kept": t["labels"].get("kept"), "positives_kept": t["labels"].get("positives")}
        for n, t in tasks.items()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
