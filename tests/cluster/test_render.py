"""Rendered batch scripts: what matters on the GPU clusters (nodes, GPUs, srun task layout, rank
variables, MASTER_ADDR, signal + requeue, NCCL env), valid bash, and the dependency chain."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from nightingale.cluster.profiles import JobRequest, load_profile
from nightingale.cluster.render import (
    RenderContext,
    plan_eval,
    plan_forecast,
    plan_prepare,
    plan_train,
)
from nightingale.cluster.sweep import sweep_command

CTX = RenderContext(workdir=Path("/scratch/me"), log_dir=Path("/scratch/me/logs"), python="python3")
TRAIN_ARGS = ["model=base", "data_dir=/scratch/prep", "run_dir=/scratch/run"]


def sbatch_lines(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.M))


def assert_bash_syntax(script: str, tmp_path: Path) -> None:
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def render_train(profile: str, nodes: int, **kw) -> str:
    job = JobRequest(nodes=nodes, account="proj1", **kw).resolve(load_profile(profile))
    (spec,) = plan_train(job, TRAIN_ARGS, CTX)
    return spec.script


@pytest.mark.parametrize(("profile", "nodes", "gpus"), [("gh200", 4, 4), ("generic_gpu", 2, 8)])
def test_gpu_train_script(profile, nodes, gpus, tmp_path):
    script = render_train(profile, nodes)
    assert_bash_syntax(script, tmp_path)
    sb = sbatch_lines(script)
    assert sb["nodes"] == str(nodes) and sb["gpus-per-node"] == str(gpus)
    assert sb["ntasks-per-node"] == str(gpus)  # one task per GPU
    assert sb["account"] == "proj1" and sb["mem"] == "0"
    assert sb["signal"] == "B:USR1@300" and "requeue" in sb and sb["open-mode"] == "append"
    assert sb["output"] == "/scratch/me/logs/%x-%j.out"
    # srun: one task per GPU; ranks from Slurm; rendezvous on the first node of the allocation
    assert re.search(rf"^srun --kill-on-bad-exit=1 --nodes={nodes} --ntasks-per-node={gpus} ", script, re.M)
    assert "export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID" in script
    assert 'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    assert "MASTER_PORT=" in script
    # preemption: forward USR1 to the step, requeue after the checkpoint (exit 143)
    assert "trap 'ng_forward USR1' USR1" in script and 'kill -USR1 "$NG_STEP_PID"' in script
    assert 'if [ "$rc" -eq 143 ]' in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    # NCCL and the GPU training defaults from the profile
    assert re.search(r"^export NCCL_SOCKET_IFNAME=", script, re.M)
    assert "train.precision=bf16" in script and "deepspeed=zero2_gpu" in script
    assert "train.peak_flops=9.89e+14" in script
    assert "data_dir=/scratch/prep" in script


def test_gh200_specifics():
    script = render_train("gh200", 1)
    assert "module load brics/nccl\nmodule load brics/aws-ofi-nccl" in script
    assert "export FI_PROVIDER=cxi" in script and "export NCCL_NET='AWS Libfabric'" in script
    assert sbatch_lines(script)["cpus-per-task"] == "72"


def test_fewer_gpus_than_the_node_has():
    sb = sbatch_lines(render_train("generic_gpu", 1, gpus_per_node=2))
    assert (sb["gpus-per-node"], sb["ntasks-per-node"]) == ("2", "2")


def test_torchrun_launcher_one_per_node(tmp_path):
    profile = dataclasses.replace(load_profile("generic_gpu"), launcher="torchrun")
    (spec,) = plan_train(JobRequest(nodes=3).resolve(profile), TRAIN_ARGS, CTX)
    assert_bash_syntax(spec.script, tmp_path)
    sb = sbatch_lines(spec.script)
    assert sb["ntasks-per-node"] == "1" and sb["gpus-per-node"] == "8"
    assert "--ntasks-per-node=1" in spec.script and "--nproc-per-node=8" in spec.script
    assert '--rdzv-endpoint="${MASTER_ADDR}:${MASTER_PORT}"' in spec.script
    assert "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in spec.script


def test_container_wraps_the_python(tmp_path):
    profile = dataclasses.replace(load_profile("gh200"), container=None)
    from nightingale.cluster.profiles import Container
    profile = dataclasses.replace(profile, container=Container("/img/ng.sif"))
    (spec,) = plan_train(JobRequest(account="p").resolve(profile), TRAIN_ARGS, CTX)
    assert "apptainer exec --nv /img/ng.sif python3 " in spec.script


def test_local_train_script(tmp_path):
    (spec,) = plan_train(JobRequest().resolve(load_profile("local")), ["data_dir=d", "train=smoke"], CTX)
    assert_bash_syntax(spec.script, tmp_path)
    sb = sbatch_lines(spec.script)
    assert (sb["nodes"], sb["ntasks-per-node"], sb["cpus-per-task"]) == ("1", "2", "1")
    assert "gpus-per-node" not in sb and "account" not in sb
    assert "export DS_ACCELERATOR=cpu" in spec.script and "export OMP_NUM_THREADS=1" in spec.script
    # the user's overrides come after the profile's defaults
    assert spec.script.index("train.peak_flops=5e+10") < spec.script.index("train=smoke")


def test_user_overrides_replace_profile_defaults():
    job = JobRequest(account="p").resolve(load_profile("gh200"))
    (spec,) = plan_train(job, ["data_dir=d", "train.precision=fp32", "train.peak_flops=1e12"], CTX)
    assert "train.precision=bf16" not in spec.script and "train.peak_flops=9.89e+14" not in spec.script


def test_prepare_array_and_merge_chain(tiny_meds, tmp_path):
    job = JobRequest(account="p").resolve(load_profile("gh200"))
    plan = plan_prepare(job, ["data=meds", f"data.path={tiny_meds}", "out_dir=/scratch/prep"], CTX,
                        max_parallel=2)
    assert [s.name for s in plan] == ["prepare-fit", "prepare-encode", "prepare-merge"]
    assert [s.after for s in plan] == [(), ("prepare-fit",), ("prepare-encode",)]
    fit, encode, merge = plan
    for spec in plan:
        assert_bash_syntax(spec.script, tmp_path)
        sb = sbatch_lines(spec.script)
        assert sb["nodes"] == "1" and sb["ntasks-per-node"] == "1" and "gpus-per-node" not in sb
        assert "signal" not in sb
    assert sbatch_lines(encode.script)["array"] == "0-5%2" and encode.array_size == 6
    assert sbatch_lines(encode.script)["output"] == "/scratch/me/logs/%x-%A_%a.out"
    assert "SHARDS=(held_out/0 held_out/1 train/0 train/1 tuning/0 tuning/1)" in encode.script
    assert 'stage=encode shard="$SHARD"' in encode.script
    assert "stage=fit" in fit.script and "stage=merge" in merge.script


def test_prepare_needs_shards_and_out_dir(tmp_path):
    job = JobRequest().resolve(load_profile("local"))
    with pytest.raises(ValueError, match="^out_dir:"):
        plan_prepare(job, ["data=meds", f"data.path={tmp_path}"], CTX)
    with pytest.raises(ValueError, match="holds no MEDS shards"):
        plan_prepare(job, ["data=meds", f"data.path={tmp_path}", "out_dir=o"], CTX)


def test_forecast_array_takes_one_gpu_per_shard_then_merges(tiny_meds, tmp_path):
    job = JobRequest(nodes=4, account="p").resolve(load_profile("gh200"))
    args = ["model_dir=/scratch/run/model", f"meds_dir={tiny_meds}", "out_dir=/scratch/fc"]
    tasks, merge = plan_forecast(job, args, CTX, max_parallel=3)
    assert (tasks.name, tasks.after, merge.name, merge.after) == ("forecast", (), "forecast-merge", ("forecast",))
    for spec in (tasks, merge):
        assert_bash_syntax(spec.script, tmp_path)
    sb, mb = sbatch_lines(tasks.script), sbatch_lines(merge.script)
    assert (sb["nodes"], sb["gpus-per-node"], sb["ntasks-per-node"], sb["array"]) == ("1", "1", "1", "0-5%3")
    assert "gpus-per-node" not in mb and "array" not in mb  # the merge reads parquet: no GPU
    assert 'serve/forecast.py model_dir=/scratch/run/model' in tasks.script
    assert 'progress=false stage=shard shard="$SHARD"' in tasks.script and "stage=merge" in merge.script
    assert "SHARDS=(held_out/0 held_out/1 train/0 train/1 tuning/0 tuning/1)" in tasks.script


def test_forecast_needs_a_model_data_and_an_output():
    job = JobRequest().resolve(load_profile("local"))
    for missing in ("model_dir", "meds_dir", "out_dir"):
        args = [a for a in ("model_dir=m", "meds_dir=d", "out_dir=o") if not a.startswith(missing)]
        with pytest.raises(ValueError, match=f"^{missing}: required for a population forecast"):
            plan_forecast(job, args, CTX)


def test_eval_job_takes_one_gpu():
    job = JobRequest(nodes=4, account="p").resolve(load_profile("gh200"))
    (spec,) = plan_eval(job, ["model_dir=/scratch/run/model"], CTX, after=("train",))
    sb = sbatch_lines(spec.script)
    assert (sb["nodes"], sb["gpus-per-node"], sb["ntasks-per-node"]) == ("1", "1", "1")
    assert spec.after == ("train",)
    assert re.search(r"^python3 \S+/eval/evaluate\.py model_dir=/scratch/run/model$", spec.script, re.M)


def test_pipeline_dry_run_wires_the_dependencies(tiny_meds, tmp_path, submit):
    code, out = submit("pipeline", "--profile", "gh200", "--account", "p1", "--nodes", "2", "--out",
                       tmp_path / "pipe", "--prepare", "data=meds", "--prepare", f"data.path={tiny_meds}",
                       "train=smoke", "--dry-run", cwd=tmp_path)
    assert code == 0
    heads = re.findall(r"^# ---- (\S+): (.*)$", out, re.M)
    assert heads == [
        ("prepare-fit", "sbatch --parsable prepare-fit.sbatch"),
        ("prepare-encode", "sbatch --parsable --dependency=afterok:<prepare-fit> prepare-encode.sbatch"),
        ("prepare-merge", "sbatch --parsable --dependency=afterok:<prepare-encode> prepare-merge.sbatch"),
        ("train", "sbatch --parsable --dependency=afterok:<prepare-merge> train.sbatch"),
        ("eval", "sbatch --parsable --dependency=afterok:<train> eval.sbatch"),
    ]
    assert f"data_dir={tmp_path / 'pipe' / 'prepared'}" in out
    assert f"model_dir={tmp_path / 'pipe' / 'train' / 'model'}" in out
    assert not (tmp_path / "logs").exists()  # a dry run writes nothing


def test_sweep_command_sets_the_submitit_launcher():
    job = JobRequest(account="p").resolve(load_profile("gh200"))
    argv = sweep_command(job, ["data_dir=/d", "train.lr=1e-3,3e-3"], CTX)
    assert argv[2] == "-m" and "hydra/launcher=submitit_slurm" in argv
    for want in ("hydra.launcher.nodes=1", "hydra.launcher.tasks_per_node=4", "hydra.launcher.gpus_per_node=4",
                 "hydra.launcher.cpus_per_task=72", "hydra.launcher.timeout_min=1440",
                 "hydra.launcher.partition=workq", "hydra.launcher.account=p", "train.lr=1e-3,3e-3",
                 "run_dir=${hydra:sweep.dir}/${hydra:job.num}"):
        assert want in argv
    setup = next(a for a in argv if a.startswith("hydra.launcher.setup="))
    assert "export NCCL_SOCKET_IFNAME=hsn" in setup and "MASTER_ADDR=$(scontrol show hostnames" in setup
