"""Federated pretraining against central training and each site alone, on simulated sites that differ.

Three arms, one vocabulary (the federation's), the same model preset and optimizer settings:
  federated  `rounds` rounds over all sites (real SuperLink, SuperNodes, SecAgg+ unless
             --no-secagg); each site trains steps / (rounds x sites) local steps a round, so the
             federation does `steps` optimizer steps in all (--site-batch b: b rows a local step,
             and as many more local steps as keep the rows the federation trains on equal to
             central training's, e.g. central's batch split across the sites)
  central    the sites' records pooled in one place, `steps` steps: the same compute in all
  central equal-steps   the same, steps / sites steps: as many sequential optimizer steps as each
             site takes (the same wall-clock time, with every site training at once on its own GPU)
  alone      each site on its own records, steps / sites steps (the compute it gives the federation)
The goal is judged against both central arms: at the same compute a federation takes a third of
central training's sequential steps (3 sites), at the same steps it processes 3x the tokens.
Each model is scored by its loss (nats/token) on every site's held-out patients, and by its
zero-shot `mortality_1y` AUROC there (the evaluation harness: vLLM rollouts at temperature 1, the
task's labels, with the logistic baseline and the simulator's oracle on the same labels; a site-alone
model on its own site only; --labels 0 skips this). Intervals only with >= 30 of each class.
Prints the tables, the goal (federated loss within 5% of central, and below the site-alone
average), and the time and bytes of a federated round; writes results.json and PNGs.

    .venv/bin/python benchmarks/bench_federated.py --out runs/bench_fed --subjects 2000 --steps 2970 --rounds 15

(about 70 minutes on a 2-core CPU; the models, and each AUROC, are kept in --out and reused by a rerun)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nightingale.data.simulator.sites import simulate_sites  # noqa: E402
from nightingale.federated.config import FederationConfig  # noqa: E402
from nightingale.federated.launch import LocalFederation  # noqa: E402
from nightingale.federated.site import Site  # noqa: E402


def held_out_loss(model_dir: Path, prepared: Path, context: int, windows: int) -> float:
    """Mean next-token loss (nats/token) of a model on fixed windows of a held-out corpus."""
    import torch
    from transformers import AutoModelForCausalLM

    from nightingale.model.loss import target_nll
    from nightingale.tokenizer.prepared import fixed_windows, load_prepared

    data = load_prepared(prepared, context)
    rows = fixed_windows(data.held_out, data.vocab, context, windows, seed=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total = count = 0.0
    with torch.no_grad():
        for b in range(0, len(rows), 16):
            ids = torch.as_tensor(rows[b:b + 16], dtype=torch.int64)
            nll = target_nll(model(input_ids=ids).logits, ids)
            total, count = total + float(nll.sum()), count + len(nll)
    return total / count


def train(data_dir: Path, run_dir: Path, args, steps: int) -> Path:
    """A central (or site-alone) run of the usual trainer, one process."""
    model_dir = run_dir / "model"
    if model_dir.exists():
        done = json.loads((run_dir / "train_config.json").read_text())["max_steps"]
        if done != steps:
            raise SystemExit(f"{run_dir}: holds a {done}-step run, this benchmark asks for {steps}; use another --out")
        return model_dir
    cmd = [sys.executable, str(ROOT / "train" / "train.py"), f"model={args.model}", f"data_dir={data_dir}",
           f"run_dir={run_dir}", f"train.max_steps={steps}", f"train.micro_batch_size={args.micro_batch}",
           f"train.warmup_steps={max(1, steps // 10)}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
           f"train.log_every={max(1, steps // 5)}", "train.progress=false", "deepspeed=zero1", "wandb.mode=disabled",
           f"train.eval_windows={args.micro_batch * 4}"]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    return model_dir


def pooled(sites: dict[str, Site], out: Path, vocab_dir: Path) -> Path:
    """The sites' records in one MEDS folder (links to their shards), prepared with `vocab_dir`."""
    from nightingale.tokenizer.prepare import PrepareConfig, Preparer

    meds = out / "pooled-meds"
    if not meds.exists():
        for name, site in sites.items():
            for shard in (site.data_dir / "data").rglob("*.parquet"):
                dst = meds / "data" / shard.parent.name / f"{name}-{shard.name}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(shard.resolve())
        import polars as pl

        (meds / "metadata").mkdir(parents=True, exist_ok=True)
        pl.concat([pl.read_parquet(s.data_dir / "metadata" / "subject_splits.parquet") for s in sites.values()]) \
            .write_parquet(meds / "metadata" / "subject_splits.parquet")
        pl.concat([pl.read_parquet(s.data_dir / "metadata" / "codes.parquet") for s in sites.values()]).unique("code") \
            .write_parquet(meds / "metadata" / "codes.parquet")
        shutil.copy(next(iter(sites.values())).data_dir / "metadata" / "dataset.json", meds / "metadata" / "dataset.json")
    prepared = out / "pooled-prepared"
    if not (prepared / "corpus").exists():
        shutil.copytree(vocab_dir, prepared / "vocab", dirs_exist_ok=True)
        Preparer(PrepareConfig(meds, prepared, show_progress=False)).run("all")
    return prepared


def mortality_auroc(models: dict[str, Path], sites: dict[str, Site], out: Path, args, tag: str) -> dict:
    """Zero-shot mortality_1y on each site's held-out labels through the evaluation harness, per
    (model, site) and pooled over the sites; the baseline and the oracle once per site (their
    labels are the same for every model: same data, task and seed)."""
    import polars as pl

    from nightingale import schema as S
    from nightingale.evaluation.harness import Harness, TasksConfig, score
    from nightingale.evaluation.tasks import load_task
    from nightingale.evaluation.zeroshot import ZeroShotConfig

    task = load_task(ROOT / "configs" / "eval" / "tasks" / "simulator" / "mortality_1y.yaml")
    engine_cfg = {**yaml.safe_load((ROOT / "configs" / "engine" / "default.yaml").read_text()), "max_num_seqs": 1024}
    zcfg = ZeroShotConfig(rollouts=args.rollouts)
    table: dict[str, dict] = {}
    pooled_preds: dict[str, list[pl.DataFrame]] = {}
    for model, model_dir in models.items():
        for name, site in sites.items():
            if model.endswith(" alone") and model != f"{name} alone":
                continue
            first = model == "federated"
            where = out / "auroc" / (model.replace(" ", "-") + (tag if first else "")) / name
            saved = where / "entry.json"
            if not saved.exists():
                tcfg = TasksConfig(max_labels=args.labels, bootstrap=200, baseline=first, oracle=first,
                                   oracle_samples=100)
                h = Harness(model_dir, site.prepared, site.data_dir, where, engine_cfg=engine_cfg, progress=False)
                try:
                    entry = h.tasks({task.name: task}, zcfg, tcfg)[task.name]
                finally:
                    h.close()
                entry.pop("_preds", None)
                saved.write_text(json.dumps({k: entry.get(k) for k in ("labels", "model", "baseline", "oracle")},
                                            default=str))
            entry = json.loads(saved.read_text())
            for arm in ("model", "baseline", "oracle"):
                if entry.get(arm):
                    label = model if arm == "model" else arm
                    table.setdefault(label, {})[name] = {k: entry[arm].get(k) for k in
                                                         ("auroc", "auroc_ci", "positives", "n", "interval_note")}
            preds = where / "predictions" / f"{task.name}.model.parquet"
            key = "site alone" if model.endswith(" alone") else model
            pooled_preds.setdefault(key, []).append(pl.read_parquet(preds))
            if first:
                pooled_preds.setdefault("baseline", []).append(
                    pl.read_parquet(where / "predictions" / f"{task.name}.baseline.parquet"))
    pooled = {}
    for key, frames in pooled_preds.items():
        f = pl.concat(frames)
        y = f[S.BOOLEAN_VALUE].to_numpy().astype(np.int64)
        p = f[S.PREDICTED_BOOLEAN_PROBABILITY].to_numpy().astype(np.float64)
        sc = score(y, p, 1000, 0, 30, f[S.SUBJECT_ID].to_numpy())
        pooled[key] = {k: sc.get(k) for k in ("auroc", "auroc_ci", "positives", "n", "interval_note")}
    return {"per_site": table, "pooled": pooled, "rollouts": args.rollouts, "max_labels_per_site": args.labels}


def auroc_text(result: dict, names: list[str]) -> list[str]:
    def cell(v: dict | None) -> str:
        if not v or v.get("auroc") is None:
            return "n/a"
        ci = v.get("auroc_ci")
        return f"{v['auroc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" ({v['positives']}/{v['n']})"

    lines = ["| model | " + " | ".join(names) + " | pooled |", "|" + "---|" * (len(names) + 2)]
    for label, row in result["per_site"].items():
        pooled = cell(result["pooled"][label]) if label in result["pooled"] else ""  # the oracle's risks are not kept
        lines.append(f"| {label} | " + " | ".join(cell(row.get(n)) if n in row else "" for n in names) + f" | {pooled} |")
    if "site alone" in result["pooled"]:
        lines.append("| each site alone, on its own site | " + " | ".join("" for _ in names)
                     + f" | {cell(result['pooled']['site alone'])} |")
    return lines


def seconds(s: float | None) -> str:
    return "n/a (reused from an earlier run)" if s is None else f"{s:.0f} s"


def round_bytes(fed: LocalFederation, names: list[str]) -> float:
    """Bytes a site sends and receives per round (train messages of all SecAgg+ stages), mean."""
    per_round = []
    for name in names:
        path = fed.wire_log(name)
        if not path.exists():
            continue
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        train = [w for w in lines if w["in"]["type"] == "train"]
        total = sum(w["in"].get("bytes", 0) + w["out"].get("bytes", 0) for w in train)
        rounds = max(1, sum(1 for w in train if "fitres.metrics" in w["out"].get("configs", {})))
        per_round.append(total / rounds)
    return float(np.mean(per_round)) if per_round else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_fed")
    ap.add_argument("--sites", type=Path, default=ROOT / "configs" / "federated" / "sites" / "three.yaml")
    ap.add_argument("--subjects", type=int, default=5000, help="subjects per site")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of central training (the budget)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--micro-batch", type=int, default=8, help="rows per optimizer step of central training")
    ap.add_argument("--site-batch", type=int, default=None,
                    help="rows per local step at a site (default: --micro-batch); the sites' local steps are "
                         "set so that the federation computes as many rows as central training")
    ap.add_argument("--eval-windows", type=int, default=256)
    ap.add_argument("--labels", type=int, default=600, help="mortality_1y held-out labels per site (0: no AUROC)")
    ap.add_argument("--rollouts", type=int, default=4, help="rollouts per mortality_1y label")
    ap.add_argument("--no-secagg", action="store_true")
    ap.add_argument("--strategy", default="fedavg", help="fedavg | fedprox | fedadam")
    ap.add_argument("--server-lr", type=float, default=None,
                    help="the coordinator's step on the averaged update (default: the strategy's own)")
    ap.add_argument("--server-momentum", type=float, default=0.0, help="fedavg/fedprox: server momentum (FedAvgM)")
    args = ap.parse_args()
    out = args.out.resolve()
    spec = yaml.safe_load(args.sites.read_text())
    names = list(spec)
    if not (out / "sites").exists():
        simulate_sites(spec, out / "sites", subjects=args.subjects)
    tag = "" if args.strategy == "fedavg" else f"-{args.strategy}"  # each setting its own federated run
    tag += "" if args.server_lr is None else f"-lr{args.server_lr:g}"
    tag += f"-m{args.server_momentum:g}" if args.server_momentum else ""
    site_batch = args.site_batch or args.micro_batch
    tag += "" if site_batch == args.micro_batch else f"-b{site_batch}"
    sites = {n: Site(n, out / "sites" / n, out / f"fed-sites{tag}" / n) for n in names}
    local = args.steps * args.micro_batch // (args.rounds * len(names) * site_batch)
    if local < 1:
        raise SystemExit(f"--steps {args.steps}: fewer than one local step per round per site")
    cfg = FederationConfig.from_mapping({
        "rounds": args.rounds, "local_steps": local, "min_sites": len(names), "model": args.model,
        "strategy": args.strategy, "server_lr": args.server_lr, "server_momentum": args.server_momentum,
        "secagg": {"enabled": not args.no_secagg, "num_shares": len(names)},
        "train": {"micro_batch_size": site_batch, "warmup_steps": max(1, args.rounds * local // 10),
                  "zero_stage": 1, "eval_windows": args.micro_batch * 4}})
    fed_dir = out / f"federated{tag}"
    results = out / f"results{tag}.json"
    previous = json.loads(results.read_text()) if results.exists() else {}
    reused = {"federated": (fed_dir / "model").exists(), "central": (out / "central" / "model").exists()}
    t0 = time.time()
    with LocalFederation(fed_dir, sites, wire_logs=True) as fed:
        if not (fed_dir / "model").exists():
            status = fed.run(cfg, timeout=24 * 3600)
            if status["status"] != "done":
                raise SystemExit(f"federation {status['status']}: {status.get('message')}")
        bytes_per_round = round_bytes(fed, names)
    fed_wall = previous.get("federated_wall_s") if reused["federated"] else time.time() - t0  # a rerun keeps the first
    history = json.loads((fed_dir / "rounds" / "latest").parent.joinpath(
        (fed_dir / "rounds" / "latest").read_text().strip(), "state.json").read_text())["history"]
    models = {"federated": fed_dir / "model"}
    t0 = time.time()
    pooled_dir = pooled(sites, out, fed_dir / "vocab")
    models["central"] = train(pooled_dir, out / "central", args, args.steps)
    central_wall = previous.get("central_wall_s") if reused["central"] else time.time() - t0
    models["central equal-steps"] = train(pooled_dir, out / "central-equal-steps", args, args.steps // len(names))
    for n, s in sites.items():
        models[f"{n} alone"] = train(s.prepared, out / f"alone-{n}", args, args.steps // len(names))
    context = cfg.model.context_length
    losses = {m: {n: held_out_loss(d, sites[n].prepared, context, args.eval_windows) for n in names}
              for m, d in models.items()}
    fed_mean = float(np.mean(list(losses["federated"].values())))
    central_mean = float(np.mean(list(losses["central"].values())))
    alone_own = float(np.mean([losses[f"{n} alone"][n] for n in names]))
    fed_own = float(np.mean([losses["federated"][n] for n in names]))
    header = "| model | " + " | ".join(names) + " | mean |"
    lines = [header, "|" + "---|" * (len(names) + 2)]
    for m, row in losses.items():
        lines.append(f"| {m} | " + " | ".join(f"{row[n]:.4f}" for n in names) + f" | {np.mean(list(row.values())):.4f} |")
    ratio = fed_mean / central_mean
    ratio_steps = fed_mean / float(np.mean(list(losses["central equal-steps"].values())))
    report = {
        "machine": f"{platform.node()} {os.cpu_count()} CPUs", "subjects_per_site": args.subjects,
        "steps": args.steps, "rounds": args.rounds, "local_steps": local, "secagg": not args.no_secagg,
        "held_out_loss": losses, "federated_over_central": ratio, "federated_over_central_equal_steps": ratio_steps,
        "goal_within_5pct_equal_steps": ratio_steps <= 1.05, "federated_own_sites": fed_own,
        "site_alone_average": alone_own, "goal_within_5pct": ratio <= 1.05, "goal_beats_alone": fed_own < alone_own,
        "round_seconds": [h["seconds"] for h in history], "bytes_per_round_per_site": bytes_per_round,
        "federated_wall_s": fed_wall, "central_wall_s": central_wall,
    }
    report.update(strategy=args.strategy, server_lr=cfg.server_step, server_momentum=args.server_momentum)
    aurocs = mortality_auroc(models, sites, out, args, tag) if args.labels > 0 else None
    report["mortality_1y"] = aurocs
    results.write_text(json.dumps(report, indent=2))
    text = "\n".join([
        f"# Federated ({args.strategy}, server lr {cfg.server_step:g}, momentum {args.server_momentum:g}) vs central vs site alone ({report['machine']}; {args.subjects} subjects per site)", "",
        "Held-out loss (nats/token) on each site's held-out patients:", "", *lines, "",
        f"- federated / central loss, same compute ({args.steps} steps): {ratio:.3f} "
        f"(goal <= 1.05: {'met' if ratio <= 1.05 else 'missed'})",
        f"- federated / central loss, same sequential steps ({args.steps // len(names)}): {ratio_steps:.3f} "
        f"(goal <= 1.05: {'met' if ratio_steps <= 1.05 else 'missed'})",
        f"- each site's own held-out: federated {fed_own:.4f} vs site alone {alone_own:.4f} "
        f"(goal: lower: {'met' if fed_own < alone_own else 'missed'})",
        f"- a federated round: {np.mean(report['round_seconds']):.1f} s on average, "
        f"{bytes_per_round / 1e6:.2f} MB in and out per site; federation wall {seconds(fed_wall)}, "
        f"central training wall {seconds(central_wall)}"])
    if aurocs:
        text += "\n\n" + "\n".join([
            f"Zero-shot mortality_1y AUROC on each site's held-out labels ({args.rollouts} rollouts per label, "
            "temperature 1; [95% interval, bootstrap over subjects] where both classes have >= 30 labels; "
            "(positives/labels)):", "", *auroc_text(aurocs, names)])
    (out / f"results{tag}.md").write_text(text + "\n")
    print(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(rows: dict[str, dict[str, float]], ylabel: str, ylim: tuple[float, float], path: Path) -> None:
        """One group of bars per site, one bar per model (NaN where a model was not scored there)."""
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(rows)
        for i, (m, row) in enumerate(rows.items()):
            ax.bar(np.arange(len(names)) + i * width, [row.get(n, np.nan) for n in names], width, label=m)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        ax.set_ylabel(ylabel)
        ax.set_ylim(*ylim)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)

    bars(losses, "held-out loss (nats/token)", (min(min(r.values()) for r in losses.values()) * 0.95,
                                               max(max(r.values()) for r in losses.values()) * 1.02),
         out / f"held_out_loss{tag}.png")
    if aurocs:
        rows = {m: {n: v["auroc"] for n, v in row.items() if v.get("auroc") is not None}
                for m, row in aurocs["per_site"].items()}
        bars(rows, "mortality_1y AUROC (held-out)", (0.5, 1.0), out / f"mortality_auroc{tag}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
