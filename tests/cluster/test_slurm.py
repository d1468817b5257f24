"""Against the real Slurm (slurm/local/cluster.sh): the data-prep array + merge, a 2-task DeepSpeed
pretraining job and a dependent evaluation job, preemption -> checkpoint -> requeue -> resume, and
a 2-point sweep through the submitit launcher. Tiny data (300 simulated subjects), the tiny model
preset, a few steps. Skips without Slurm; fails in CI, where the cluster must be up."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from nightingale.cluster.profiles import JobRequest, load_profile
from nightingale.cluster.render import RenderContext, plan_prepare, plan_train
from nightingale.cluster.submit import job_states, sbatch_test_only, wait_for
from tests.cluster.conftest import job_ids, prepare_single, squeue_ids

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# The evaluation stage does not exist yet: a stand-in that checks the exported model directory.
EVAL_STAND_IN = ("{python} -c \"import sys, pathlib; d = pathlib.Path(sys.argv[1].split('=', 1)[1]); "
                 "assert (d / 'config.json').is_file(), d; print('eval stand-in: model at', d)\"")
SMOKE = ["train=smoke", "train.eval_every=1000", "wandb.mode=disabled"]


def corpus_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def trained_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss/train" in r]


def test_test_only_judges_local_scripts_not_gpu_ones(slurm, tiny_meds, tmp_path):
    """sbatch --test-only accepts every local-profile script; this CPU cluster cannot judge the
    GPU profiles' scripts (no GPU gres, no such partitions), so it refuses them."""
    ctx = RenderContext(workdir=tmp_path, log_dir=tmp_path / "logs")
    local = JobRequest().resolve(load_profile("local"))
    plan = plan_train(local, ["data_dir=d"], ctx) + plan_prepare(
        local, ["data=meds", f"data.path={tiny_meds}", "out_dir=o"], ctx)
    before = squeue_ids()
    for spec in plan:
        ok, msg = sbatch_test_only(spec.script)
        assert ok and "to start at" in msg, (spec.name, msg)
    gpu = JobRequest(account="p").resolve(load_profile("gh200"))
    ok, msg = sbatch_test_only(plan_train(gpu, ["data_dir=d"], ctx)[0].script)
    assert not ok and "error" in msg
    assert squeue_ids() == before


def test_prepare_array_train_and_eval(slurm, submit, tiny_meds, tmp_path):
    """prepare (fit -> 6-task encode array -> merge) gives the single-process corpus byte for byte;
    a 2-task DeepSpeed job submitted after it exports a model; an eval job runs after that."""
    logs, prep, run = tmp_path / "logs", tmp_path / "prep", tmp_path / "run"
    code, out = submit("prepare", "--profile", "local", "--log-dir", logs, "data=meds",
                       f"data.path={tiny_meds}", f"out_dir={prep}", cwd=tmp_path)
    assert code == 0, out
    prep_ids = job_ids(out)
    code, out = submit("train", "--profile", "local", "--log-dir", logs, "--after", prep_ids["prepare-merge"],
                       f"data_dir={prep}", f"run_dir={run}", *SMOKE, cwd=tmp_path)
    assert code == 0, out
    train_id = job_ids(out)["train"]
    code, out = submit("eval", "--profile", "local", "--log-dir", logs, "--after", train_id,
                       "--eval-command", EVAL_STAND_IN, f"model_dir={run / 'model'}", cwd=tmp_path)
    assert code == 0, out
    eval_id = job_ids(out)["eval"]
    show = subprocess.run(["scontrol", "show", "job", eval_id], capture_output=True, text=True).stdout
    assert f"Dependency=afterok:{train_id}" in show

    single = prepare_single(tiny_meds, tmp_path / "single")  # meanwhile, the single-process path
    assert wait_for(eval_id, timeout_s=540) == ["COMPLETED"], sorted(p.name for p in logs.iterdir())
    assert job_states(prep_ids["prepare-encode"]) in (["GONE"], ["COMPLETED"] * 6)

    cluster_corpus = corpus_files(prep / "corpus")
    assert len(cluster_corpus) >= 15 and cluster_corpus == corpus_files(single / "corpus")
    assert (prep / "vocab" / "tokenizer.json").read_bytes() == (single / "vocab" / "tokenizer.json").read_bytes()
    encode_logs = sorted(p.name for p in logs.glob("ng-prep-encode-*_*.out"))
    assert encode_logs == [f"ng-prep-encode-{prep_ids['prepare-encode']}_{i}.out" for i in range(6)]

    train_log = (logs / f"ng-train-{train_id}.out").read_text()
    assert "on 2 rank(s)" in train_log and "training step exited with 0" in train_log
    assert (run / "model" / "config.json").is_file() and (run / "model" / "tokenizer.json").is_file()
    assert trained_steps(run)[-1] == 12
    assert "eval stand-in: model at" in (logs / f"ng-eval-{eval_id}.out").read_text()


def _wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def _show(job_id: str) -> str:
    return subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout


def test_preemption_checkpoints_requeues_and_resumes(slurm, submit, tiny_meds, tmp_path):
    """USR1 to the batch shell (what --signal=B:USR1@lead sends before the time limit): the ranks
    checkpoint, the job requeues itself and the requeued run resumes from that step."""
    prep = prepare_single(tiny_meds, tmp_path / "prep")
    logs, run, max_steps = tmp_path / "logs", tmp_path / "run", 20
    code, out = submit("train", "--profile", "local", "--log-dir", logs, f"data_dir={prep}", f"run_dir={run}",
                       *SMOKE, f"train.max_steps={max_steps}", "train.checkpoint_every=1000", cwd=tmp_path)
    assert code == 0, out
    job = job_ids(out)["train"]
    metrics = run / "metrics.jsonl"
    _wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, 300,
                f"job {job} trained no steps: {_show(job)}")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    _wait_until(lambda: "Restarts=1" in _show(job) and "JobState=PENDING" in _show(job), 180,
                f"job {job} was not requeued: {_show(job)}")
    # slurmctld holds a requeued job ~120 s (its credential lifetime) before it may start again;
    # a few seconds suffice on one node (sooner, slurmd refuses the job: "credential revoked").
    # (StartTime=now, rather than a time ahead, also makes slurmctld schedule it at once.)
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    assert wait_for(job, timeout_s=400) == ["COMPLETED"]

    # checkpoint_every is beyond max_steps: the only checkpoints are the signal's and the last
    ckpts = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert len(ckpts) == 2 and 0 < ckpts[0] < max_steps == ckpts[1], ckpts
    log = (logs / f"ng-train-{job}.out").read_text()
    assert "training step exited with 143" in log and f"requeueing job {job}" in log
    assert "restart 1" in log and log.count("training step exited with 0") == 1
    steps = trained_steps(run)
    assert steps == list(range(1, max_steps + 1))  # each step once: fewer than stopped + max_steps
    assert (run / "model" / "config.json").is_file()


def test_sweep_through_the_submitit_launcher(slurm, submit, tiny_meds, tmp_path):
    """Two learning rates as a Hydra multirun on the submitit_slurm launcher: two Slurm jobs (one
    rank each, side by side on the two CPUs), each trains 4 steps and exports a model."""
    prep = prepare_single(tiny_meds, tmp_path / "prep")
    sweep = tmp_path / "sweep"
    code, _ = submit("sweep", "--profile", "local", "--tasks-per-node", "1", "--log-dir", tmp_path / "logs",
                     f"data_dir={prep}", f"hydra.sweep.dir={sweep}", *SMOKE, "train.max_steps=4",
                     "train.lr=1e-3,3e-3", cwd=tmp_path)
    assert code == 0
    lrs = set()
    for point in ("0", "1"):
        assert (sweep / point / "model" / "config.json").is_file()
        assert trained_steps(sweep / point)[-1] == 4
        lrs.add(re.search(r"^  lr: (\S+)$", (sweep / point / "config.yaml").read_text(), re.M).group(1))
    assert lrs == {"0.001", "0.003"}
    assert len(list((sweep / ".submitit").glob("*_[01]"))) == 2  # one array job, two tasks
