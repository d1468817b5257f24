"""Background jobs: submitted over HTTP, run on the server's engine, downloaded when done.

Two kinds share one queue (and so the engine): synthetic cohorts and population forecasts. Each
job writes under `<root>/<kind>/<id>/`; at most `max_running` jobs run at once, the others wait
queued, and at most MAX_QUEUED wait or run. A job is visible only to the key that submitted it
(and admin keys). On shutdown running jobs are cancelled and marked so.

- cohort: `meds/` (the MEDS dataset, atomic), `evidence/` (its fidelity, privacy and utility
  against the reference data, and the release verdict), then `cohort.zip` (both), `cohort.csv`
  and, for a model of OMOP concepts, `cohort-omop.zip` (OMOP CDM 5.4 tables and the evidence);
- population: the population job's folder (inference/population/job.py), then `results.zip`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import shutil
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nightingale.atomic import atomic_file
from nightingale.data.omop.export import export_omop
from nightingale.evaluation.synthetic.evidence import cohort_evidence
from nightingale.evaluation.synthetic.release import ReleaseConfig, release_check
from nightingale.inference.cohorts import dataset_to_csv, generate_cohort, zip_dataset

log = logging.getLogger(__name__)
MAX_QUEUED = 16
COHORT, POPULATION = "cohort", "population"
STATUSES = ("queued", "running", "done", "failed", "cancelled")


class JobNotFound(KeyError):
    pass


class JobsFull(RuntimeError):
    pass


@dataclasses.dataclass
class Job:
    """One job. spec: what was asked (a CohortSpec, or a PopulationJob); done/total: progress in
    the kind's unit (patients); report: what the job produced that the API shows."""

    id: str
    owner: str
    kind: str
    spec: Any
    dir: Path
    status: str = "queued"
    done: int = 0
    total: int | None = None
    created_at: str = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    report: dict | None = None
    error: str | None = None
    task: asyncio.Task | None = None

    @property
    def meds_dir(self) -> Path:
        return self.dir / "meds"

    def file(self, fmt: str) -> Path:
        return self.dir / {"meds": "cohort.zip", "csv": "cohort.csv", "omop": "cohort-omop.zip", "zip": "results.zip"}[fmt]


Work = Callable[[Job], Awaitable[None]]


class Jobs:
    def __init__(self, root: str | Path, max_running: int, on_change: Callable[[], None] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sem = asyncio.Semaphore(max_running)
        self._on_change = on_change or (lambda: None)
        self.jobs: dict[str, Job] = {}

    def counts(self, kind: str | None = None) -> dict[str, int]:
        out: dict[str, int] = {s: 0 for s in STATUSES}
        for j in self.jobs.values():
            if kind is None or j.kind == kind:
                out[j.status] += 1
        return out

    def new(self, owner: str, kind: str, spec: Any = None) -> Job:
        """A job's id and folder name, before it is checked and started (refused when the queue
        is full); nothing is written until `start`."""
        if sum(j.status in ("queued", "running") for j in self.jobs.values()) >= MAX_QUEUED:
            raise JobsFull(f"{MAX_QUEUED} jobs are already queued or running")
        jid = uuid.uuid4().hex
        return Job(jid, owner, kind, spec, self.root / kind / jid)

    def start(self, job: Job, work: Work) -> Job:
        job.dir.mkdir(parents=True, exist_ok=True)
        self.jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, work))
        self._on_change()
        return job

    def get(self, jid: str, key_id: str, admin: bool = False, kind: str | None = None) -> Job:
        job = self.jobs.get(jid)
        if job is None or (job.owner != key_id and not admin) or (kind is not None and job.kind != kind):
            raise JobNotFound(jid)
        return job

    def mine(self, key_id: str, admin: bool = False, kind: str | None = None) -> list[Job]:
        """The caller's jobs (every job for an admin key), newest first."""
        out = [j for j in self.jobs.values() if (j.owner == key_id or admin) and (kind is None or j.kind == kind)]
        return sorted(out, key=lambda j: j.created_at, reverse=True)

    async def _run(self, job: Job, work: Work) -> None:
        try:
            async with self._sem:
                job.status = "running"
                self._on_change()
                await work(job)
                job.status = "done"
        except asyncio.CancelledError:
            job.status = "cancelled"
            raise
        except Exception as e:  # noqa: BLE001 - recorded on the job; no patient data in the message
            job.status, job.error = "failed", type(e).__name__
            log.error("%s job %s failed: %s", job.kind, job.id, type(e).__name__)
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


def cohort_work(engine: Callable, reference: str | Path | None, release: ReleaseConfig) -> Work:
    """Generate the job's cohort (spec: a CohortSpec) on the engine `engine()` returns, then
    judge it against `reference` (`judge_cohort`)."""

    async def work(job: Job) -> None:
        job.total = job.spec.n_patients

        def progress(done: int, total: int) -> None:
            job.done = done

        job.report = await generate_cohort(engine(), job.spec, job.meds_dir, progress=progress)
        await judge_cohort(job, reference, release)

    return work


async def judge_cohort(job: Job, reference: str | Path | None, release: ReleaseConfig) -> None:
    """The cohort's evidence and release verdict (evaluation/synthetic/evidence.py) into the job's
    `evidence/` and report, then its downloads (the zip holds the evidence beside the MEDS data).
    Without reference data nothing can be checked, and the cohort is not released."""
    report = job.report if job.report is not None else {}
    if reference is None:
        report["release"] = release_check(None, release)
    else:
        res = await asyncio.to_thread(cohort_evidence, job.meds_dir, reference, job.dir / "evidence",
                                      release=release, seed=getattr(job.spec, "seed", 0))
        report.update(evidence=res["headline"], release=res["release"])
    job.report = report
    extra = [job.dir / "evidence"] if (job.dir / "evidence").is_dir() else []
    await asyncio.to_thread(zip_dataset, job.meds_dir, job.file("meds"), extra)
    await asyncio.to_thread(dataset_to_csv, job.meds_dir, job.file("csv"))
    if reference is not None:
        await asyncio.to_thread(_omop_download, job, Path(reference), extra)


def _omop_download(job: Job, reference: Path, extra: list[Path]) -> None:
    """The cohort as OMOP CDM 5.4 tables (`cohort-omop.zip`), when the model's codes are OMOP
    concepts: the reference data came from import-omop (its codes.parquet has omop_concept_id)."""
    import polars as pl

    codes = pl.read_parquet(reference / "metadata" / "codes.parquet")
    if "omop_concept_id" not in codes.columns or codes["omop_concept_id"].is_null().all():
        return
    export_omop(job.meds_dir, job.dir / "omop", codes, overwrite=True)
    zip_dataset(job.dir / "omop", job.file("omop"), extra)


def released(job: Job) -> bool:
    return bool((job.report or {}).get("release", {}).get("released"))


def population_work(engine: Callable) -> Work:
    """Run the job's population forecast (spec: a PopulationJob writing into the job's folder),
    shard by shard on the engine `engine()` returns, then merge and zip the results."""

    async def work(job: Job) -> None:
        pj = job.spec
        await asyncio.to_thread(pj.open)

        def progress(k: int) -> None:
            job.done += k

        async def current():
            return engine()

        for shard in pj.todo():
            await pj.run_shard(shard, current, progress)
        job.report = await asyncio.to_thread(pj.merge)
        await asyncio.to_thread(zip_results, pj.out, job.file("zip"))

    return work


RESULT_FILES = ("aggregates.json", "aggregates.parquet", "summary.md", "summary.png")


def zip_results(out: Path, zip_path: Path) -> Path:
    """A population job's aggregates, summary and per-patient predictions as one zip."""
    with atomic_file(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in RESULT_FILES:
            z.write(out / name, name)
        for p in sorted((out / "predictions").glob("**/*.parquet")):
            z.write(p, p.relative_to(out).as_posix())
    return zip_path
