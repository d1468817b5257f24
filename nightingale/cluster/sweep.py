"""Hyperparameter sweeps: Hydra multirun through the submitit launcher, configured from a profile.

`nightingale submit sweep --profile P train.lr=1e-3,3e-3 data_dir=...` runs
`python train/train.py -m hydra/launcher=submitit_slurm hydra.launcher.partition=... ...`: Hydra
expands the sweep, submitit submits one Slurm job per point (a job array) and waits for them.
"""

from __future__ import annotations

import re
import shlex
import time

from nightingale.cluster.profiles import REPO_ROOT, ResolvedJob
from nightingale.cluster.render import RenderContext, override_value, train_overrides


def _minutes(slurm_time: str) -> int:
    """Slurm `[D-]HH:MM:SS` (or MM, or HH:MM) -> whole minutes, at least 1."""
    days, _, clock = slurm_time.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = parts[0], parts[1], 0
    else:
        h, m, s = parts
    return max(1, (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0))


def _hydra_str(value: str) -> str:
    """A Hydra override string literal (single-quoted, escaping quotes and backslashes)."""
    return "'" + re.sub(r"([\\'])", r"\\\1", value) + "'"


def sweep_command(job: ResolvedJob, overrides: list[str], ctx: RenderContext) -> list[str]:
    """argv of the multirun: train/train.py -m with the submitit_slurm launcher set from the job."""
    if override_value(overrides, "data_dir") is None:
        raise ValueError("data_dir: required for a training sweep (the prepared corpus)")
    p = job.profile
    setup = [f"module load {m}" for m in p.modules]
    setup += [f"export {k}={shlex.quote(v)}" for k, v in p.env.items()]
    setup += [*p.setup,
              'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
              "export MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))"]
    sweep_dir = override_value(overrides, "hydra.sweep.dir") or str(
        ctx.log_dir / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    launcher = [
        "hydra/launcher=submitit_slurm",
        f"hydra.launcher.nodes={job.nodes}",
        f"hydra.launcher.tasks_per_node={job.ranks_per_node}",
        f"hydra.launcher.cpus_per_task={job.cpus_per_task}",
        f"hydra.launcher.timeout_min={_minutes(job.time)}",
        f"hydra.launcher.name={ctx.name_prefix}-sweep",
        "hydra.launcher.setup=[" + ",".join(_hydra_str(s) for s in setup) + "]",
    ]
    if job.partition:
        launcher.append(f"hydra.launcher.partition={job.partition}")
    if job.account:
        launcher.append(f"hydra.launcher.account={job.account}")
    if job.gpus_per_node:
        launcher.append(f"hydra.launcher.gpus_per_node={job.gpus_per_node}")
    user = list(overrides)
    if override_value(overrides, "hydra.sweep.dir") is None:
        user.append(f"hydra.sweep.dir={sweep_dir}")
    if override_value(overrides, "run_dir") is None:  # one run folder per sweep point
        user.append("run_dir=${hydra:sweep.dir}/${hydra:job.num}")
    return [ctx.python, str(REPO_ROOT / "train" / "train.py"), "-m", *launcher,
            *train_overrides(p, user)]
