"""Fixtures for the cluster tests: the real local Slurm (slurm/local/cluster.sh), tiny MEDS data,
and the `nightingale submit` verb run in process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nightingale.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[2]


def _slurm_state() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return None
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout.strip() else None


@pytest.fixture(scope="session")
def slurm() -> None:
    """A live Slurm controller and an idle-or-busy node; skips without one, fails in CI (CI
    starts the local cluster with `slurm/local/cluster.sh start`)."""
    state = _slurm_state()
    if state is None or not re.match(r"(idle|mixed|alloc|completing)", state):
        reason = (f"no usable Slurm here (sinfo {'missing' if shutil.which('sinfo') is None else 'state ' + repr(state)}); "
                  "start one with `sudo slurm/local/cluster.sh start`")
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the local Slurm cluster: {reason}")
        pytest.skip(reason)


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.fixture
def submit(capsys, monkeypatch):
    """Run `nightingale submit ARGS` in process from `cwd`; returns (exit code, stdout). Jobs it
    submitted that are still queued when the test ends are cancelled."""
    submitted: list[str] = []

    def run(*args: str, cwd: Path) -> tuple[int, str]:
        monkeypatch.chdir(cwd)
        code = cli_main(["submit", *map(str, args)])
        out = capsys.readouterr().out
        submitted.extend(job_ids(out).values())
        return code, out

    yield run
    if submitted and shutil.which("scancel"):
        subprocess.run(["scancel", *submitted], capture_output=True)


def job_ids(stdout: str) -> dict[str, str]:
    """{'train': '12', ...} from the lines `<name> <job id>` that `nightingale submit` prints."""
    return dict(line.split() for line in stdout.splitlines() if re.fullmatch(r"\S+ \d+", line))


@pytest.fixture(scope="session")
def tiny_meds(tmp_path_factory) -> Path:
    """300 simulated subjects in shards of 150: six shards (train, tuning, held_out x 2)."""
    out = tmp_path_factory.mktemp("cluster") / "meds"
    subprocess.run([sys.executable, "-m", "nightingale.cli", "simulate", "--subjects", "300", "--seed", "0",
                    "--shard-size", "150", "--out", str(out)], check=True, capture_output=True)
    return out


def prepare_single(meds: Path, out: Path) -> Path:
    """The single-process preparation path (data_prep/prepare.py, stage=all)."""
    subprocess.run([sys.executable, str(REPO_ROOT / "data_prep" / "prepare.py"), "data=meds",
                    f"data.path={meds}", f"out_dir={out}", "progress=false"],
                   check=True, capture_output=True)
    return out
