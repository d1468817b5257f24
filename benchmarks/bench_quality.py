"""Forecast quality at scale: model vs supervised baseline vs the simulator's oracle, per task.

The whole pipeline on a large simulated cohort (simulate -> prepare -> train -> evaluate), then one
table per task: labels (positives), AUROC of the model, the logistic baseline and the oracle, the
model's AUROC as a fraction of the oracle's and its margin over the baseline, and mean predicted
risk against the observed rate (calibration-in-the-large), with training tokens, tokens per
parameter and time per stage; the goal (issue 13): model >= 0.95 x oracle and >= baseline on every
task. A PNG of observed against predicted risk by decile (model and oracle) per task is written
beside the report. Stages already done in `--work` are skipped, so a long run can be resumed.

    # hours on the 2-core CPU; minutes on a lent GPU (add --nproc 1 --train-override train.precision=bf16)
    .venv/bin/python benchmarks/bench_quality.py --subjects 100000 --model small --steps 20000 --work runs/quality
    .venv/bin/python benchmarks/bench_quality.py --subjects 4000 --steps 200 --work runs/quality-smoke   # a check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREDICTORS = ("model", "baseline", "oracle")


def run(cmd: list[str], env: dict | None = None, ok: tuple[int, ...] = (0,)) -> float:
    """Seconds a stage took; a return code outside `ok` stops the benchmark."""
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})}).returncode
    if rc not in ok:
        raise SystemExit(f"{cmd[1]} exited with {rc}")
    return time.perf_counter() - t0


def calibration_in_the_large(entry: dict) -> tuple[float, float]:
    """(mean predicted, observed rate) over a predictor's calibration table."""
    bins = entry["calibration"]
    n = sum(b["count"] for b in bins)
    return (sum(b["mean_predicted"] * b["count"] for b in bins) / n, sum(b["positives"] for b in bins) / n)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4), squeeze=False)
    for ax, (name, t) in zip(axes[0], tasks.items()):
        top = 0.0
        for who, style in (("model", "o-"), ("oracle", "s--"), ("baseline", "^:")):
            if not t.get(who):
                continue
            bins = t[who]["calibration"]
            xs, ys = [b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins]
            ax.plot(xs, ys, style, label=who)
            top = max(top, *xs, *ys)
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("mean predicted risk (decile)")
        ax.set_ylabel("observed rate")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--model", default="small", help="model preset (configs/model/)")
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--nproc", type=int, default=2, help="training ranks (torchrun --nproc_per_node)")
    ap.add_argument("--max-labels", type=int, default=5000, help="held-out predictions per task")
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/quality", help="work folder; finished stages are kept and skipped")
    ap.add_argument("--train-override", action="append", default=[], help="extra Hydra override for train/train.py")
    args = ap.parse_args()
    work = (REPO / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    ng = str(Path(py).with_name("nightingale"))
    times: dict[str, float] = {}
    if not (work / "meds").exists():
        times["simulate_s"] = run([ng, "simulate", "--subjects", str(args.subjects), "--seed", str(args.seed),
                                   "--out", str(work / "meds")])
    if not (work / "prepared" / "prepare_report.json").exists():
        times["prepare_s"] = run([py, "data_prep/prepare.py", "data=meds", f"data.path={work / 'meds'}",
                                  f"out_dir={work / 'prepared'}", "workers=2", "progress=false"])
    model_dir = work / "train" / "model"
    if not (model_dir / "model.safetensors").exists():
        torchrun = str(Path(py).with_name("torchrun"))
        times["train_s"] = run([torchrun, f"--nproc_per_node={args.nproc}", "train/train.py", "experiment=quality",
                                f"model={args.model}", f"train.max_steps={args.steps}",
                                f"train.checkpoint_every={max(args.steps // 10, 1)}", "wandb.mode=disabled",
                                f"data_dir={work / 'prepared'}", f"run_dir={work / 'train'}", *args.train_override],
                               env={"OMP_NUM_THREADS": "1"})
    report_path = model_dir / "evaluation" / "report.json"
    if not report_path.exists():
        times["evaluate_s"] = run([py, "eval/evaluate.py", "experiment=quality", f"model_dir={model_dir}",
                                   f"data_dir={work / 'prepared'}", f"zeroshot.rollouts={args.rollouts}",
                                   f"task_scoring.max_labels={args.max_labels}", f"hydra.run.dir={work / 'hydra'}"],
                                  ok=(0, 1))  # 1: the gate failed; the report is written either way
    report = json.loads(report_path.read_text())
    card = json.loads((model_dir / "model_card.json").read_text()) if (model_dir / "model_card.json").exists() else {}
    print(f"# Forecast quality: {args.subjects:,} simulated subjects, preset {args.model}, {args.steps:,} steps")
    tokens, params = card.get("tokens_seen"), card.get("n_params")
    if tokens and params:
        print(f"training: {tokens:,} tokens seen, {params:,} parameters, {tokens / params:.1f} tokens per parameter")
    if times:
        print("stage times (this run): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"held-out loss {report['intrinsic']['loss']:.3f} ({report['intrinsic']['loss_vs_bigram']:.3f} of the bigram's)")
    print("\n| task | labels (pos) | model | baseline | oracle | model/oracle | model-baseline | "
          "mean predicted (model / oracle) | observed | goal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok_all = True
    for name, t in report["tasks"].items():
        if "model" not in t:
            print(f"| {name} | {t['labels']['kept']} ({t['labels']['positives']}) | no labels to score |")
            ok_all = False
            continue
        au = {w: (t[w] or {}).get("auroc") if t.get(w) else None for w in PREDICTORS}
        mp, obs = calibration_in_the_large(t["model"])
        op = calibration_in_the_large(t["oracle"])[0] if t.get("oracle") else float("nan")
        frac = au["model"] / au["oracle"] if au["model"] and au["oracle"] else float("nan")
        diff = au["model"] - au["baseline"] if au["model"] is not None and au["baseline"] is not None else float("nan")
        ok = frac >= 0.95 and diff >= 0
        ok_all &= ok
        f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {name} | {t['model']['n']} ({t['model']['positives']}) | {f(au['model'])} | {f(au['baseline'])} | "
              f"{f(au['oracle'])} | {frac:.3f} | {diff:+.3f} | {mp:.4f} / {op:.4f} | {obs:.4f} | "
              f"{'met' if ok else 'missed'} |")
    png = model_dir / "evaluation" / "quality_calibration.png"
    plot(report, png)
    print(f"\ncalibration plot: {png}\ngoal (>= 0.95 x oracle and >= baseline on every task): "
          f"{'met' if ok_all else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
