"""Population forecasts over HTTP: a job over a dataset the operator registered, by name.

POST starts the job (every check first: dataset, limits, outcomes, groups, prediction time, each
a 422 naming the request part), GET shows its progress and, when done, the aggregates; the
download is a zip of the aggregates, the summary (Markdown, PNG) and the per-patient risks. The
work is inference/population/job.py's, on the server's engine, queued with the cohort jobs."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from nightingale.api import schemas as M
from nightingale.api.jobs import POPULATION, Job, population_work
from nightingale.api.routes import (
    AUTH_RESPONSES,
    ForecastKey,
    _note,
    _state,
    check_outcome_request,
    unknown_codes_error,
)
from nightingale.api.state import FieldError, ServerState
from nightingale.inference.forecast import UnknownOutcomeCodes
from nightingale.inference.population import PopulationConfig, PopulationJob

router = APIRouter()
log = logging.getLogger(__name__)
_FIELD = re.compile(r"^forecast\.(\w+)(?:\[(\d+)\])?")
RESULTS = ("counts", "interval", "gate", "config", "cells", "model", "calibration", "coverage")
_REQUEST_FIELDS = {"outcomes", "horizons_days", "prediction_time", "split", "groups", "rollouts", "backtest", "recalibrate", "seed"}


def _loc(message: str) -> tuple:
    """The request part a PopulationConfig/PopulationJob error names (`forecast.groups[2]: ...`)."""
    m = _FIELD.match(message)
    if m is None or m.group(1) not in _REQUEST_FIELDS:
        return ("dataset",)
    return (m.group(1),) if m.group(2) is None else (m.group(1), int(m.group(2)))


def _check_limits(body: M.PopulationForecastRequest, st: ServerState) -> int:
    n = body.rollouts or st.cfg.population_rollouts
    lim = st.cfg.limits
    check_outcome_request(body, n, lim, [(("groups",), len(body.groups), lim.max_groups, "max_groups")])
    return n


def _population_job(body: M.PopulationForecastRequest, st: ServerState, rollouts: int, out: Path) -> PopulationJob:
    if body.dataset not in st.cfg.datasets:
        raise FieldError(("dataset",), f"{body.dataset!r} is not a registered dataset; registered: "
                                       f"{sorted(st.cfg.datasets)}")
    try:
        cfg = PopulationConfig.from_mapping({
            "outcomes": {o.name: o.codes for o in body.outcomes}, "horizons_days": body.horizons_days,
            "prediction_time": body.prediction_time, "split": body.split, "groups": body.groups,
            "rollouts": rollouts, "estimator": st.cfg.estimator, "max_new_tokens": st.cfg.max_new_tokens,
            "reserve_tokens": st.cfg.reserve_tokens, "seed": st.cfg.seed if body.seed is None else body.seed,
            "small_count_threshold": st.cfg.small_count_threshold, "backtest": body.backtest, "recalibrate": body.recalibrate,
        })
        job = PopulationJob(cfg, st.cfg.model.model_dir, st.cfg.datasets[body.dataset], out,
                            allow_ungated=st.cfg.allow_ungated, name=body.dataset)
        job.context_length = st.require_engine().max_model_len
        return job
    except UnknownOutcomeCodes as e:
        raise unknown_codes_error(e, body.outcomes) from None
    except ValueError as e:
        loc = _loc(str(e))
        if loc == ("dataset",):  # the operator's dataset itself is unreadable: no server paths in the answer
            log.error("registered dataset %r cannot be used: %s", body.dataset, e)
            raise FieldError(loc, f"the registered dataset {body.dataset!r} cannot be read; see the server log") from None
        raise FieldError(loc, str(e).split(": ", 1)[-1]) from None


def job_out(job: Job, request: Request) -> M.PopulationJobOut:
    pj: PopulationJob = job.spec
    downloads = None
    if job.status == "done":
        downloads = {"zip": str(request.url_for("download_population_forecast", job_id=job.id))}
    return M.PopulationJobOut(
        id=job.id, status=job.status, dataset=pj.name,
        created_at=job.created_at, shards=len(pj.shards), done_shards=len(pj.shards) - len(pj.todo()) if job.dir.exists() else 0,
        done_patients=job.done, error=job.error,
        results=None if job.report is None else {k: job.report[k] for k in RESULTS if k in job.report},
        downloads=downloads, page=str(request.url_for("population_page", job_id=job.id)))


@router.post("/v1/population-forecasts", tags=["population"], response_model=M.PopulationJobOut, status_code=202,
             responses={**AUTH_RESPONSES, 422: {"model": M.ErrorOut}})
async def post_population_forecast(body: M.PopulationForecastRequest, request: Request, key: ForecastKey):
    """Start a population forecast over a registered dataset (a job); poll GET
    /v1/population-forecasts/{id}. Expected counts by group with 95% intervals, small counts
    suppressed; per-patient risks in the download."""
    st = _state(request)
    rollouts = _check_limits(body, st)
    _note(request, rollouts=rollouts)
    async with st.admission():
        st.require_engine()
        job = st.jobs.new(key.id, POPULATION)
        job.spec = await asyncio.to_thread(_population_job, body, st, rollouts, job.dir)
        st.jobs.start(job, population_work(st.require_engine))
    return job_out(job, request)


@router.get("/v1/population-forecasts", tags=["population"], response_model=list[M.PopulationJobOut],
            responses=AUTH_RESPONSES)
async def list_population_forecasts(request: Request, key: ForecastKey):
    """The caller's population jobs, newest first (an admin key sees every job)."""
    st = _state(request)
    return [job_out(j, request) for j in st.jobs.mine(key.id, "admin" in key.scopes, POPULATION)]


@router.get("/v1/population-forecasts/{job_id}", tags=["population"], response_model=M.PopulationJobOut,
            responses={**AUTH_RESPONSES, 404: {"model": M.ErrorOut}})
async def get_population_forecast(job_id: str, request: Request, key: ForecastKey):
    """A population job's progress and, when done, its aggregates (only the submitting key, or an
    admin key, sees it)."""
    st = _state(request)
    return job_out(st.jobs.get(job_id, key.id, "admin" in key.scopes, POPULATION), request)


def finished_zip(job: Job):
    """The job's results zip, or a 409 while it is not done."""
    if job.status != "done":
        return JSONResponse({"detail": f"population job is {job.status}, not done"}, status_code=409)
    return FileResponse(job.file("zip"), media_type="application/zip", filename=f"population-{job.id}.zip")


@router.get("/v1/population-forecasts/{job_id}/download", tags=["population"], name="download_population_forecast",
            responses={**AUTH_RESPONSES, 404: {"model": M.ErrorOut}, 409: {"model": M.ErrorOut}})
async def download_population_forecast(job_id: str, request: Request, key: ForecastKey,
                                       format: Annotated[Literal["zip"], Query()] = "zip"):
    """The finished job: aggregates.json/parquet, summary.md/png and predictions/*.parquet, zipped."""
    st = _state(request)
    job = st.jobs.get(job_id, key.id, "admin" in key.scopes, POPULATION)
    _note(request, patients=job.done)
    return finished_zip(job)
