"""Prepared simulator corpora for the training tests, and a launcher of real DeepSpeed runs.

`launch(...)` starts `torchrun --nproc_per_node=2 train/train.py` as a subprocess in its own
process group (`signal_job` signals the whole job, as Slurm does) with the CPU settings of
docs: DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1 per rank, wandb disabled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nightingale.data.simulator.config import SimulatorConfig
from nightingale.data.simulator.simulate import simulate
from nightingale.tokenizer.prepare import PrepareConfig, prepare

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
_port = [29600 + os.getpid() % 200 * 5]


def _prepared(root: Path, subjects: int) -> Path:
    simulate(SimulatorConfig(subjects=subjects, seed=0, shard_size=subjects), root / "meds", workers=1)
    prepare(PrepareConfig(meds_dir=root / "meds", out_dir=root / "prep", show_progress=False))
    shutil.rmtree(root / "meds")
    return root / "prep"


@pytest.fixture(scope="session")
def sim_prep(tmp_path_factory) -> Path:
    """A small simulator corpus (500 subjects): vocab/ and corpus/{train,tuning,held_out}/."""
    return _prepared(tmp_path_factory.mktemp("sim"), 500)


def launch(data_dir: Path, run_dir: Path, *overrides: str, nproc: int = 2,
           nan_at_step: int | None = None) -> subprocess.Popen:
    """Start a 2-rank DeepSpeed training job (smoke settings + overrides); stdout+stderr go to
    <run_dir>.log. Returns the torchrun process (leader of its own process group).
    nan_at_step: the loss of that step becomes NaN (faulty_train.py injects it)."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "PYTHONUNBUFFERED": "1"}
    script = REPO / "train" / "train.py"
    if nan_at_step is not None:
        env["NIGHTINGALE_TEST_NAN_AT_STEP"] = str(nan_at_step)
        script = Path(__file__).with_name("faulty_train.py")
    _port[0] += 1
    cmd = [str(TORCHRUN), f"--nproc_per_node={nproc}", f"--master_port={_port[0]}",
           str(script), "train=smoke", f"data_dir={data_dir}", f"run_dir={run_dir}", *overrides]
    log = open(f"{run_dir}.log", "ab")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def signal_job(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to torchrun and every worker, as Slurm signals every task of a job (torchrun
    starts its workers in sessions of their own, so a process-group kill would miss them)."""
    import psutil

    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def run_job(data_dir: Path, run_dir: Path, *overrides: str, timeout: float = 240,
            nan_at_step: int | None = None) -> int:
    """Launch and wait; returns the exit code."""
    proc = launch(data_dir, run_dir, *overrides, nan_at_step=nan_at_step)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            signal_job(proc, 9)


def job_log(run_dir: Path) -> str:
    return Path(f"{run_dir}.log").read_text(errors="replace")


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 180, what: str = "") -> None:
    """Poll `predicate` until true; fail if the job ends or the time runs out first."""
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"job ended (code {proc.returncode}) before {what}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
