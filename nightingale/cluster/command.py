"""`nightingale submit`: render a Slurm batch script from a cluster profile and submit it.

    nightingale submit train --profile gh200 --nodes 4 --account brics.p123 model=base \\
        data_dir=/projects/p123/prep run_dir=/projects/p123/runs/base      # 16 GPUs, srun per GPU
    nightingale submit prepare --profile local data=meds data.path=runs/meds out_dir=runs/prep
    nightingale submit eval --profile local --after 1234 model_dir=runs/train/model data_dir=runs/prep
    nightingale submit pipeline --profile local --out runs/pipe --prepare data=meds \\
        --prepare data.path=runs/meds train=smoke                  # prepare -> train -> eval
    nightingale submit sweep --profile local data_dir=runs/prep 'train.lr=1e-3,3e-3'
    nightingale submit forecast --profile gh200 model_dir=runs/train/model meds_dir=/data/icb/meds \\
        out_dir=runs/forecast forecast.prediction_time=2025-01-01   # one task per shard, then merge
    nightingale submit federate --profile gh200 run_dir=/projects/p123/fed sites_dir=/projects/p123/sites \
        rounds=20 model=small                  # a coordinator job + one job per site (README "Training across sites")
    nightingale submit train --profile local --dry-run ...   # print the scripts, submit nothing

Trailing KEY=VALUE arguments are Hydra overrides of the stage (train: train/train.py; prepare:
data_prep/prepare.py; eval: the eval command; forecast: serve/forecast.py; pipeline: training, with --prepare/--eval for the
others). The request is checked against the profile before anything is submitted.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

from nightingale.cluster.profiles import JobRequest, load_profile
from nightingale.cluster.render import (
    DEFAULT_EVAL_COMMAND,
    JobSpec,
    RenderContext,
    plan_eval,
    plan_federate,
    plan_forecast,
    plan_prepare,
    plan_train,
)
from nightingale.cluster.submit import SubmitError, sbatch_test_only, submit_plan, wait_for
from nightingale.cluster.sweep import sweep_command

log = logging.getLogger(__name__)
KINDS = ("train", "prepare", "eval", "pipeline", "sweep", "forecast", "federate")


class _OverridesParser(argparse.ArgumentParser):
    """Takes KEY=VALUE overrides wherever they stand among the options (argparse alone takes
    positionals from one run of arguments only)."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        ns.overrides = [*ns.overrides, *(e for e in extras if not e.startswith("-"))]
        return ns, [e for e in extras if e.startswith("-")]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("submit", help="render and submit Slurm jobs from a cluster profile",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("kind", choices=KINDS, help="what to run")
    p.add_argument("--profile", required=True, help="configs/cluster/<name>.yaml, or a YAML path")
    p.add_argument("--nodes", type=int, default=1, help="nodes for training (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=None, metavar="G",
                   help="GPUs (= ranks) per node; default: all of the profile's")
    p.add_argument("--tasks-per-node", type=int, default=None, metavar="T",
                   help="CPU ranks per node on a CPU-only profile; default: the profile's")
    p.add_argument("--account", default=None, help="Slurm account (project); else the profile's or $SBATCH_ACCOUNT")
    p.add_argument("--partition", default=None, help="override the profile's partition")
    p.add_argument("--time", default=None, help="time limit [D-]HH:MM:SS; default: the profile's")
    p.add_argument("--log-dir", type=Path, default=Path("logs"),
                   help="per-job logs %%x-%%j.out / %%x-%%A_%%a.out and the submitted scripts (default ./logs)")
    p.add_argument("--after", action="append", default=[], metavar="JOBID",
                   help="wait for this job to succeed first (afterok); repeatable")
    p.add_argument("--out", type=Path, default=None,
                   help="pipeline: root folder (prepared/, train/ under it)")
    p.add_argument("--prepare", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline: an override of data_prep/prepare.py; repeatable")
    p.add_argument("--eval", action="append", default=[], metavar="KEY=VALUE", dest="eval_overrides",
                   help="pipeline: an override of the eval command; repeatable")
    p.add_argument("--eval-command", default=DEFAULT_EVAL_COMMAND,
                   help=f"evaluation command ({{python}} = this Python; default {DEFAULT_EVAL_COMMAND!r})")
    p.add_argument("--no-eval", action="store_true", help="pipeline: stop after training")
    p.add_argument("--array-parallel", type=int, default=None, metavar="K",
                   help="prepare, forecast: run at most K array tasks at once")
    p.add_argument("--dry-run", action="store_true", help="print the scripts and sbatch commands; submit nothing")
    p.add_argument("--test-only", action="store_true",
                   help="ask Slurm (sbatch --test-only) whether it would run each script; submit nothing")
    p.add_argument("--wait", action="store_true", help="block until the last job ends; exit 1 unless it completed")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    p.__class__ = _OverridesParser  # add_parser takes no parser class of its own
    p.set_defaults(func=run)


def build_plan(args: argparse.Namespace):
    """Validate the request against the profile and render every job; raises ValueError."""
    profile = load_profile(args.profile)
    for o in [*args.overrides, *args.prepare, *args.eval_overrides]:
        if "=" not in o:
            raise ValueError(f"override {o!r}: expected KEY=VALUE (a Hydra override)")
    request = JobRequest(nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                         tasks_per_node=args.tasks_per_node, account=args.account,
                         time=args.time, partition=args.partition)
    job = request.resolve(profile)
    python = profile.python or ("python3" if profile.container else sys.executable)
    ctx = RenderContext(workdir=Path.cwd(), log_dir=args.log_dir.resolve(), python=python)
    if args.kind == "sweep":
        return job, sweep_command(job, list(args.overrides), ctx)
    if args.kind == "train":
        return job, plan_train(job, list(args.overrides), ctx)
    if args.kind == "prepare":
        return job, plan_prepare(job, list(args.overrides), ctx, args.array_parallel)
    if args.kind == "eval":
        return job, plan_eval(job, list(args.overrides), ctx, args.eval_command)
    if args.kind == "forecast":
        return job, plan_forecast(job, list(args.overrides), ctx, args.array_parallel)
    if args.kind == "federate":
        return job, plan_federate(job, list(args.overrides), ctx)
    if args.out is None:
        raise ValueError("--out: required for a pipeline (its prepared/ and train/ folders)")
    out = args.out.resolve()
    plan = plan_prepare(job, [*args.prepare, f"out_dir={out / 'prepared'}"], ctx, args.array_parallel)
    train = plan_train(job, [f"data_dir={out / 'prepared'}", f"run_dir={out / 'train'}", *args.overrides], ctx)
    plan += [_after(train[0], "prepare-merge")]
    if not args.no_eval:
        ev = plan_eval(job, [f"model_dir={out / 'train' / 'model'}", f"data_dir={out / 'prepared'}",
                             *args.eval_overrides], ctx,
                       args.eval_command, after=("train",))
        plan += ev
    return job, plan


def _after(spec: JobSpec, *names: str) -> JobSpec:
    return dataclasses.replace(spec, after=tuple(names))


def run(args: argparse.Namespace) -> int:
    try:
        job, plan = build_plan(args)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.kind == "sweep":
        if args.dry_run or args.test_only:
            print(subprocess.list2cmdline(plan))
            return 0
        return subprocess.call(plan)
    if args.test_only:
        ok_all = True
        for spec in plan:
            ok, msg = sbatch_test_only(spec.script)
            ok_all &= ok
            print(f"{spec.name}: {'OK' if ok else 'REFUSED'}: {msg}")
        return 0 if ok_all else 1
    try:
        submitted = submit_plan(plan, args.log_dir.resolve(), dry_run=args.dry_run, after=args.after)
    except SubmitError as exc:
        log.error("%s", exc)
        return 1
    for s in submitted:
        if args.dry_run:
            print(f"# ---- {s.name}: {' '.join(s.command)}\n{s.script}")
        else:
            print(f"{s.name} {s.job_id}")
    if args.wait and not args.dry_run:
        states = wait_for(submitted[-1].job_id, timeout_s=7 * 24 * 3600)
        log.info("job %s ended: %s", submitted[-1].job_id, ",".join(states))
        return 0 if all(s == "COMPLETED" for s in states) else 1
    return 0
