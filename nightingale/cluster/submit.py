"""Hand rendered jobs to Slurm: `sbatch --parsable`, afterok dependencies, job states.

Every plan is validated and rendered before the first `sbatch` runs, so a bad request submits
nothing. A submitted script is kept beside its log as `<log_dir>/<job-name>-<job-id>.sbatch`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from nightingale.cluster.render import JobSpec

log = logging.getLogger(__name__)
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED", "GONE", "DEPENDENCY_NEVER_SATISFIED"}


class SubmitError(RuntimeError):
    """sbatch refused a job (the message carries Slurm's words and the jobs already submitted)."""


@dataclasses.dataclass(frozen=True)
class Submitted:
    name: str
    job_id: str  # "<name>" placeholders in a dry run
    command: tuple[str, ...]
    script: str


def require_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise SubmitError("sbatch is not on PATH: submit from a Slurm login node (or use --dry-run)")


def _sbatch_command(spec: JobSpec, deps: list[str], path: str) -> list[str]:
    cmd = ["sbatch", "--parsable"]
    if deps:
        cmd.append(f"--dependency=afterok:{':'.join(deps)}")
    return [*cmd, path]


def submit_plan(plan: list[JobSpec], log_dir: Path, dry_run: bool = False,
                after: Iterable[str] = ()) -> list[Submitted]:
    """Submit the jobs in order; each waits (afterok) for the plan jobs it names, and jobs that name
    none wait for the external job ids in `after`. A dry run submits nothing and uses
    placeholders `<name>` for the ids."""
    external = [str(a) for a in after]
    ids: dict[str, str] = {}
    done: list[Submitted] = []
    if not dry_run:
        require_slurm()
        log_dir.mkdir(parents=True, exist_ok=True)  # Slurm does not create the log folder
    for spec in plan:
        deps = [ids[n] for n in spec.after] if spec.after else external
        if dry_run:
            ids[spec.name] = f"<{spec.name}>"
            done.append(Submitted(spec.name, ids[spec.name],
                                  tuple(_sbatch_command(spec, deps, f"{spec.name}.sbatch")), spec.script))
            continue
        with tempfile.NamedTemporaryFile("w", dir=log_dir, prefix=f".{spec.name}-", suffix=".sbatch",
                                         delete=False) as f:
            f.write(spec.script)
        cmd = _sbatch_command(spec, deps, f.name)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            Path(f.name).unlink(missing_ok=True)
            already = ", ".join(f"{s.name}={s.job_id}" for s in done) or "none"
            raise SubmitError(f"sbatch refused the {spec.name} job: {proc.stderr.strip()} "
                              f"(already submitted: {already})")
        job_id = proc.stdout.strip().split(";")[0]
        ids[spec.name] = job_id
        kept = log_dir / f"{_job_name(spec.script) or spec.name}-{job_id}.sbatch"
        Path(f.name).rename(kept)
        log.info("submitted %s as job %s%s (script %s)", spec.name, job_id,
                 f" after {','.join(deps)}" if deps else "", kept)
        done.append(Submitted(spec.name, job_id, tuple(cmd), spec.script))
    return done


def _job_name(script: str) -> str | None:
    m = re.search(r"^#SBATCH --job-name=(\S+)", script, re.M)
    return m.group(1) if m else None


def sbatch_test_only(script: str) -> tuple[bool, str]:
    """Ask Slurm whether and when it would run the script, without submitting it
    (`sbatch --test-only`); returns (accepted, Slurm's message)."""
    require_slurm()
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch") as f:
        f.write(script)
        f.flush()
        proc = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True)
    return proc.returncode == 0, (proc.stderr + proc.stdout).strip()


def job_states(job_id: str) -> list[str]:
    """States of a job (one per array task) from `scontrol show job`; ["GONE"] once slurmctld has
    forgotten it (MinJobAge after it ended; accounting may be off, so no sacct)."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True)
    if proc.returncode != 0:
        return ["GONE"]
    states = []
    for line in proc.stdout.splitlines():
        state = re.search(r"\bJobState=(\S+)", line)
        if state and state.group(1) == "PENDING" and "Reason=DependencyNeverSatisfied" in line:
            states.append("DEPENDENCY_NEVER_SATISFIED")  # an earlier job failed: it will never run
        elif state:
            states.append(state.group(1))
    return states or ["GONE"]


def wait_for(job_id: str, timeout_s: float = 3600, poll_s: float = 2.0) -> list[str]:
    """Block until every task of the job is in a terminal state; returns the states."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = job_states(job_id)
        if all(s in TERMINAL_STATES for s in states):
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {states} after {timeout_s:.0f} s")
        time.sleep(poll_s)
