"""Batch scripts from a checked job request (profiles.ResolvedJob) and Hydra overrides.

Templates live in slurm/templates/*.sbatch.j2 (jinja2). Each `plan_*` function returns the jobs of
one stage as `JobSpec`s (script text + which earlier jobs it waits for), which `submit.submit_plan`
hands to `sbatch`; nothing here touches Slurm.

    train    one job: N nodes x G ranks, `--signal=B:USR1@lead --requeue`, checkpoint + requeue
    prepare  fit (1 task) -> encode (array, one task per MEDS shard) -> merge (1 task)
    eval     one task after a training job (afterok)
    forecast an array (one task per MEDS shard, one engine per GPU) -> merge (the aggregates)
    federate the coordinator (one task, no GPU) and one job per site (one GPU where the profile
             has them), which find each other through the shared run folder
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

import jinja2

from nightingale.cluster.profiles import REPO_ROOT, ClusterProfile, ResolvedJob

TEMPLATE_DIR = REPO_ROOT / "slurm" / "templates"
EXIT_PREEMPTED = 143  # train/train.py: stopped by a signal after writing a checkpoint
MAX_REQUEUES = 20
DEFAULT_EVAL_COMMAND = "{python} eval/evaluate.py"
FORECAST_SCRIPT = REPO_ROOT / "serve" / "forecast.py"


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One batch job of a plan: `after` names earlier jobs of the plan it waits for (afterok)."""

    name: str
    script: str
    after: tuple[str, ...] = ()
    array_size: int | None = None


@dataclasses.dataclass(frozen=True)
class RenderContext:
    """Where jobs run and write: the working directory (relative paths in overrides are relative
    to it), the per-job log folder, and the Python that runs the stages."""

    workdir: Path
    log_dir: Path
    python: str = sys.executable
    name_prefix: str = "ng"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["q"] = lambda v: shlex.quote(str(v))
    return env


def _quote_all(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def _render(template: str, job: ResolvedJob, ctx: RenderContext, **values) -> str:
    prefix = job.profile.container.prefix() + " " if job.profile.container else ""
    values.setdefault("tasks_per_node", job.ranks_per_node)
    values.setdefault("cpus_per_task", job.cpus_per_task)
    values.setdefault("gpus_per_node", job.gpus_per_node)
    values.setdefault("array", None)
    values.setdefault("shards", None)
    values.setdefault("preemptible", False)
    return _env().get_template(template).render(
        job=job, log_dir=ctx.log_dir, workdir=ctx.workdir, python=shlex.quote(ctx.python),
        prefix=prefix, env=job.profile.env, exit_preempted=EXIT_PREEMPTED,
        max_requeues=MAX_REQUEUES, **values)


def override_value(overrides: list[str], key: str) -> str | None:
    """The value of `key=...` among Hydra overrides (the last one wins), else None."""
    found = None
    for o in overrides:
        k, sep, v = o.lstrip("+~").partition("=")
        if sep and k == key:
            found = v
    return found


def train_overrides(profile: ClusterProfile, overrides: list[str]) -> list[str]:
    """The profile's defaults (precision, DeepSpeed config, peak FLOP/s for MFU) before the user's
    overrides, leaving out any key the user sets."""
    mine = {o.lstrip("+~").partition("=")[0] for o in overrides}
    defaults = list(profile.train_overrides)
    if profile.peak_flops:
        defaults.append(f"train.peak_flops={float(profile.peak_flops):g}")
    return [d for d in defaults if d.partition("=")[0] not in mine] + list(overrides)


def plan_train(job: ResolvedJob, overrides: list[str], ctx: RenderContext) -> list[JobSpec]:
    """One distributed pretraining job (train/train.py) that checkpoints and requeues on USR1."""
    if override_value(overrides, "data_dir") is None:
        raise ValueError("data_dir: required for a training job (the prepared corpus: "
                         "data_dir=<out_dir of prepare>)")
    args = [str(REPO_ROOT / "train" / "train.py"), *train_overrides(job.profile, overrides)]
    layout = {}
    if job.profile.launcher == "torchrun":  # one task per node holding all its ranks' CPUs
        layout = dict(tasks_per_node=1, cpus_per_task=job.cpus_per_task * job.ranks_per_node)
    script = _render("train.sbatch.j2", job, ctx, kind="train", name=f"{ctx.name_prefix}-train",
                     command=_quote_all(args), preemptible=True, **layout)
    return [JobSpec("train", script)]


def _single(job: ResolvedJob, gpus: int) -> ResolvedJob:
    """The same profile and account, one node and one task (with `gpus` GPUs)."""
    return dataclasses.replace(job, nodes=1, gpus_per_node=gpus, ranks_per_node=1)


def _meds_shards(overrides: list[str], workdir: Path) -> list[str]:
    """Shard names (e.g. train/0) of the MEDS dataset that prepare will read, listed now so that
    the array's size is known at submission."""
    out_dir = override_value(overrides, "out_dir")
    if out_dir is None:
        raise ValueError("out_dir: required for a cluster preparation job (a folder every node sees)")
    if override_value(overrides, "data") == "meds":
        meds = override_value(overrides, "data.path")
        if meds is None:
            raise ValueError("data.path: required with data=meds (the MEDS dataset root)")
    else:
        meds = override_value(overrides, "meds_dir") or f"{out_dir}/meds"
    root = (workdir / meds) if not Path(meds).is_absolute() else Path(meds)
    shards = sorted(str(p.relative_to(root / "data").with_suffix(""))
                    for p in (root / "data").rglob("*.parquet"))
    if not shards:
        raise ValueError(f"data.path: {root} holds no MEDS shards (data/**/*.parquet); ingest the "
                         "dataset first (python data_prep/ingest.py ...) so that the job array "
                         "knows its shards")
    return shards


def plan_prepare(job: ResolvedJob, overrides: list[str], ctx: RenderContext,
                 max_parallel: int | None = None) -> list[JobSpec]:
    """fit -> encode array (one task per shard) -> merge, each waiting for the one before."""
    shards = _meds_shards(overrides, ctx.workdir)
    one = _single(job, 0)
    base = [ctx.python, str(REPO_ROOT / "data_prep" / "prepare.py"), *overrides, "progress=false"]
    common = dict(kind="prepare")
    fit = _render("task.sbatch.j2", one, ctx, name=f"{ctx.name_prefix}-prep-fit",
                  command=_quote_all([*base, "stage=fit"]), **common)
    array = f"0-{len(shards) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    encode = _render("task.sbatch.j2", one, ctx, name=f"{ctx.name_prefix}-prep-encode",
                     command=_quote_all([*base, "stage=encode"]) + ' shard="$SHARD"',
                     array=array, shards=shards, **common)
    merge = _render("task.sbatch.j2", one, ctx, name=f"{ctx.name_prefix}-prep-merge",
                    command=_quote_all([*base, "stage=merge"]), **common)
    return [JobSpec("prepare-fit", fit), JobSpec("prepare-encode", encode, ("prepare-fit",), len(shards)),
            JobSpec("prepare-merge", merge, ("prepare-encode",))]


def plan_eval(job: ResolvedJob, overrides: list[str], ctx: RenderContext,
              command: str = DEFAULT_EVAL_COMMAND, after: tuple[str, ...] = ()) -> list[JobSpec]:
    """One evaluation task (one GPU where the profile has them): `command` + the overrides.
    `command` may use {python}; relative script paths resolve against the repository."""
    argv = shlex.split(command.format(python=ctx.python))
    if len(argv) > 1 and argv[1].endswith(".py") and not Path(argv[1]).is_absolute():
        argv[1] = str(REPO_ROOT / argv[1])
    one = _single(job, min(1, job.gpus_per_node))
    script = _render("task.sbatch.j2", one, ctx, kind="eval", name=f"{ctx.name_prefix}-eval",
                     command=_quote_all([*argv, *overrides]))
    return [JobSpec("eval", script, after)]


def plan_forecast(job: ResolvedJob, overrides: list[str], ctx: RenderContext,
                  max_parallel: int | None = None) -> list[JobSpec]:
    """A population forecast (serve/forecast.py): an array with one task per MEDS shard, each on
    one GPU of the profile (its own vLLM engine), then the merge of the shards' sums into the
    aggregates once every task succeeded (afterok)."""
    for key in ("model_dir", "meds_dir", "out_dir"):
        if override_value(overrides, key) is None:
            raise ValueError(f"{key}: required for a population forecast ({key}=...)")
    shards = _meds_shards(overrides, ctx.workdir)
    base = [ctx.python, str(FORECAST_SCRIPT), *overrides, "progress=false"]
    array = f"0-{len(shards) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    one = _single(job, min(1, job.gpus_per_node))
    tasks = _render("task.sbatch.j2", one, ctx, kind="forecast", name=f"{ctx.name_prefix}-forecast",
                    command=_quote_all([*base, "stage=shard"]) + ' shard="$SHARD"', array=array, shards=shards)
    merge = _render("task.sbatch.j2", _single(job, 0), ctx,
                    kind="forecast", name=f"{ctx.name_prefix}-forecast-merge", command=_quote_all([*base, "stage=merge"]))
    return [JobSpec("forecast", tasks, (), len(shards)), JobSpec("forecast-merge", merge, ("forecast",))]


def plan_federate(job: ResolvedJob, overrides: list[str], ctx: RenderContext) -> list[JobSpec]:
    """A federation on a cluster: the coordinator job (`nightingale federate coordinator`) and one
    job per site folder of `sites_dir` (`nightingale federate site --join`), listed now. The jobs
    need no dependency: sites wait for the coordinator to announce itself in `run_dir`. Other
    KEY=VALUE arguments are federation settings (`--set`); `config=` names a settings file."""
    settings = [o for o in overrides if o.partition("=")[0] not in ("run_dir", "sites_dir", "work_dir", "config")]
    run_dir, sites_dir = override_value(overrides, "run_dir"), override_value(overrides, "sites_dir")
    if run_dir is None or sites_dir is None:
        raise ValueError("run_dir and sites_dir: required for a federation (run_dir=<coordinator folder> "
                         "sites_dir=<one MEDS folder per site>)")
    run, root = ctx.workdir / run_dir, ctx.workdir / sites_dir
    sites = sorted(p.name for p in root.iterdir() if (p / "data").is_dir()) if root.is_dir() else []
    if len(sites) < 2:
        raise ValueError(f"sites_dir: {root} holds {len(sites)} site folder(s) with data/; a federation needs 2 or more")
    work = ctx.workdir / (override_value(overrides, "work_dir") or f"{run_dir}/sites")
    cli = [ctx.python, "-m", "nightingale.cli", "federate"]
    config = override_value(overrides, "config")
    coord = [*cli, "coordinator", "--run-dir", str(run), "--sites", str(len(sites)),
             *(["--config", str(ctx.workdir / config)] if config else []),
             *[a for o in settings for a in ("--set", o)]]
    plan = [JobSpec("federate-coordinator", _render("task.sbatch.j2", _single(job, 0), ctx, kind="federate",
                                                    name=f"{ctx.name_prefix}-fed-coordinator",
                                                    command=_quote_all(coord)))]
    one = _single(job, min(1, job.gpus_per_node))
    for name in sites:
        cmd = [*cli, "site", "--name", name, "--data", str(root / name), "--work", str(work / name), "--join", str(run)]
        plan.append(JobSpec(f"federate-site-{name}", _render("task.sbatch.j2", one, ctx, kind="federate",
                                                              name=f"{ctx.name_prefix}-fed-{name}",
                                                              command=_quote_all(cmd))))
    return plan
