"""Cohort jobs: submitted over HTTP, generated in the background, downloaded when done.

Each job writes under `<cohorts_dir>/<id>/`: `meds/` (the MEDS dataset, atomic), `cohort.zip` and
`cohort.csv` (made once the dataset is complete). At most `max_running` jobs generate at once (the
engine is shared with forecasts); others wait queued. A job is visible only to the key that
submitted it (and admin keys). On shutdown running jobs are cancelled and marked so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from nightingale.inference.cohorts import CohortSpec, dataset_to_csv, generate_cohort, zip_dataset

log = logging.getLogger(__name__)
MAX_QUEUED = 16


class JobNotFound(KeyError):
    pass


class JobsFull(RuntimeError):
    pass


@dataclasses.dataclass
class Job:
    id: str
    owner: str
    spec: CohortSpec
    dir: Path
    status: str = "queued"
    done_patients: int = 0
    created_at: str = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    report: dict | None = None
    error: str | None = None
    task: asyncio.Task | None = None

    @property
    def meds_dir(self) -> Path:
        return self.dir / "meds"

    def file(self, fmt: str) -> Path:
        return self.dir / ("cohort.zip" if fmt == "meds" else "cohort.csv")


class CohortJobs:
    def __init__(self, root: str | Path, max_running: int, engine: Callable, on_change: Callable[[], None] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sem = asyncio.Semaphore(max_running)
        self._engine = engine
        self._on_change = on_change or (lambda: None)
        self.jobs: dict[str, Job] = {}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {s: 0 for s in ("queued", "running", "done", "failed", "cancelled")}
        for j in self.jobs.values():
            out[j.status] += 1
        return out

    def submit(self, owner: str, spec: CohortSpec) -> Job:
        if sum(j.status in ("queued", "running") for j in self.jobs.values()) >= MAX_QUEUED:
            raise JobsFull(f"{MAX_QUEUED} cohort jobs are already queued or running")
        jid = uuid.uuid4().hex
        job = Job(jid, owner, spec, self.root / jid)
        job.dir.mkdir(parents=True)
        self.jobs[jid] = job
        job.task = asyncio.create_task(self._run(job))
        self._on_change()
        return job

    def get(self, jid: str, key_id: str, admin: bool = False) -> Job:
        job = self.jobs.get(jid)
        if job is None or (job.owner != key_id and not admin):
            raise JobNotFound(jid)
        return job

    async def _run(self, job: Job) -> None:
        try:
            async with self._sem:
                job.status = "running"
                self._on_change()

                def progress(done: int, total: int) -> None:
                    job.done_patients = done

                job.report = await generate_cohort(self._engine(), job.spec, job.meds_dir, progress=progress)
                await asyncio.to_thread(zip_dataset, job.meds_dir, job.file("meds"))
                await asyncio.to_thread(dataset_to_csv, job.meds_dir, job.file("csv"))
                job.status = "done"
        except asyncio.CancelledError:
            job.status = "cancelled"
            raise
        except Exception as e:  # noqa: BLE001 - recorded on the job; no patient data in the message
            job.status, job.error = "failed", type(e).__name__
            log.error("cohort job %s failed: %s", job.id, type(e).__name__)
        finally:
            self._on_change()

    async def shutdown(self) -> None:
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def purge(self) -> None:
        """Remove every job's files (tests; a deployment keeps them for download)."""
        shutil.rmtree(self.root, ignore_errors=True)
