"""The HTTP routes: thin translations between schemas and the inference layer."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import io
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from nightingale.api import schemas as M
from nightingale.api.auth import ApiKey, presented_key
from nightingale.api.jobs import COHORT, cohort_work, released
from nightingale.api.state import FieldError, ServerState
from nightingale.inference.cohort_calendar import Calendar, calendar_window
from nightingale.inference.cohorts import CohortSpec, validate_spec
from nightingale.inference.forecast import (
    ForecastConfig,
    UnknownOutcomeCodes,
    forecast,
    outcome_token_ids,
)
from nightingale.inference.next_events import next_events
from nightingale.inference.population.config import parse_time
from nightingale.inference.prompts import Event, Prompt, build_prompt, static_codes, to_us
from nightingale.inference.risk import population_count

router = APIRouter()
DAY_S = 86400.0
AUTH_RESPONSES = {401: {"model": M.ErrorOut}, 403: {"model": M.ErrorOut}, 413: {"model": M.ErrorOut},
                  503: {"model": M.ErrorOut}}


def _state(request: Request) -> ServerState:
    return request.app.state.ng


def require(scope: str | None):
    """Dependency: authenticate the key, check `scope` (None: any valid key), note the key id."""

    def dep(request: Request) -> ApiKey:
        st = _state(request)
        key = st.keys.authenticate(presented_key(request.headers))
        request.scope["state"]["ng_audit"]["key_id"] = key.id
        if scope is not None:
            st.keys.authorise(key, scope)
        return key

    return dep


AnyKey = Annotated[ApiKey, Depends(require(None))]
ForecastKey = Annotated[ApiKey, Depends(require("forecast"))]
GenerateKey = Annotated[ApiKey, Depends(require("generate"))]


def _note(request: Request, **counts) -> None:
    request.scope["state"]["ng_audit"].update(counts)


def _check_patient(p: M.PatientIn, loc: tuple, st: ServerState) -> None:
    if len(p.events) > st.cfg.limits.max_events_per_patient:
        raise FieldError((*loc, "events"), f"{len(p.events)} events; at most {st.cfg.limits.max_events_per_patient} (limits.max_events_per_patient)")


def _prompt(p: M.PatientIn, loc: tuple, st: ServerState, room: int) -> Prompt:
    engine = st.require_engine()
    try:
        return build_prompt(
            engine.vocab,
            [Event(e.time, e.code, e.numeric_value) for e in p.events],
            birth=p.birth_date,
            statics=static_codes(p.sex, p.static_codes),
            prediction_time=p.prediction_time,
            max_tokens=room,
        )
    except ValueError as e:
        field = str(e).split(":", 1)[0]
        raise FieldError((*loc, field), str(e)) from None


async def _timed(coro, st: ServerState):
    return await asyncio.wait_for(coro, st.cfg.request_timeout_s)


# --- probes ------------------------------------------------------------------------------------------
@router.get("/healthz", tags=["ops"])
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], responses={503: {"model": M.ErrorOut}})
async def readyz(request: Request):
    """Readiness: the engine is up and healthy, and the server is not shutting down."""
    st = _state(request)
    if st.shutting_down or st.engine is None or not st.engine.healthy:
        why = "shutting down" if st.shutting_down else st.engine_error or "loading"
        return JSONResponse({"status": "not ready", "detail": why}, status_code=503,
                            headers={"Retry-After": str(st.cfg.retry_after_s)})
    return {"status": "ready"}


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(request: Request):
    """Prometheus metrics: requests, latency, tokens generated, queue depth, cohort jobs."""
    st = _state(request)
    st.metrics.sync_engine(st.engine)
    st.sync_job_metrics()
    return Response(st.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/v1/model", tags=["model"], response_model=M.ModelInfo, responses=AUTH_RESPONSES)
async def model_info(request: Request, key: AnyKey):
    """The served model's card and gate report."""
    st = _state(request)
    engine = st.require_engine()
    return M.ModelInfo(model_dir=engine.model_dir.name, card=st.card, gate=st.gate, vocabulary_size=len(engine.vocab),
                       max_model_len=engine.max_model_len, dtype=engine.dtype)


# --- next events ---------------------------------------------------------------------------------
@router.post("/v1/next-events", tags=["predict"], response_model=M.NextEventsResponse, responses=AUTH_RESPONSES)
async def post_next_events(body: M.NextEventsRequest, request: Request, key: ForecastKey):
    """Top-k next events and the distribution of the time to the next event, for one patient."""
    st = _state(request)
    _note(request, patients=1)
    if body.top_k > st.cfg.limits.max_top_k:
        raise FieldError(("top_k",), f"{body.top_k}; at most {st.cfg.limits.max_top_k} (limits.max_top_k)")
    _check_patient(body.patient, ("patient",), st)
    async with st.admission():
        engine = st.require_engine()
        prompt = _prompt(body.patient, ("patient",), st, engine.max_model_len - 2)
        ne = await _timed(next_events(engine, prompt, body.top_k), st)
    return M.NextEventsResponse(
        ref=body.patient.ref,
        events=[M.CodeProbability(code=c, probability=p) for c, p in ne.events],
        time_to_next_event=[
            M.TimeBinOut(label=b.label, lower_days=b.lower_s / DAY_S, upper_days=None if b.upper_s is None else b.upper_s / DAY_S,
                         probability=b.probability)
            for b in ne.time_to_next
        ],
        p_death_next=ne.p_death_next, p_end_of_record=ne.p_end_of_record, unresolved=ne.unresolved,
        codes_resolved=dict(prompt.codes), events_reordered=body.patient.events_reordered,
    )


# --- forecasts -------------------------------------------------------------------------------------
def _lead_s(p: M.PatientIn, prompt: Prompt) -> float:
    """Seconds from the last encoded event to the prediction time (0 without one)."""
    return 0.0 if p.prediction_time is None else max(0.0, (to_us(p.prediction_time) - prompt.anchor_us) / 1e6)


def check_outcome_request(body, rollouts: int, lim, extra: list[tuple] = ()) -> None:
    """A forecast request's shape against the limits (rollouts, outcomes, horizons, and `extra`
    (loc, value, cap, limit name) checks), and its outcomes: codes per outcome, unique names.
    Shared by patient and population forecasts; each break is a 422 naming the field."""
    checks = [
        *extra,
        (("rollouts",), rollouts, lim.max_rollouts, "max_rollouts"),
        (("outcomes",), len(body.outcomes), lim.max_outcomes, "max_outcomes"),
        (("horizons_days",), len(body.horizons_days), lim.max_horizons, "max_horizons"),
        (("horizons_days",), max(body.horizons_days), lim.max_horizon_days, "max_horizon_days"),
    ]
    for loc, value, cap, name in checks:
        if value > cap:
            raise FieldError(loc, f"{value} is over the limit {cap} (limits.{name})")
    seen: set[str] = set()
    for i, o in enumerate(body.outcomes):
        if len(o.codes) > lim.max_codes_per_outcome:
            raise FieldError(("outcomes", i, "codes"), f"{len(o.codes)} codes; at most {lim.max_codes_per_outcome}")
        if o.name in seen:
            raise FieldError(("outcomes", i, "name"), f"{o.name!r} is named twice; outcome names must be unique")
        seen.add(o.name)


def unknown_codes_error(e: UnknownOutcomeCodes, outcomes: list[M.OutcomeIn]) -> FieldError:
    """The 422 for outcome codes no token matches, located at the first such code."""
    j = outcomes[e.index].codes.index(e.codes[0])
    return FieldError(("outcomes", e.index, "codes", j), f"{', '.join(map(repr, e.codes))}: no code the model can emit matches")


async def _forecast(body: M.ForecastRequest, request: Request, *, keep_rollouts: bool = False):
    """Check the request against the limits and roll it out: (forecast, prompts, leads, config)."""
    st = _state(request)
    lim = st.cfg.limits
    n = body.rollouts or st.cfg.default_rollouts
    _note(request, patients=len(body.patients), rollouts=n)
    check_outcome_request(body, n, lim, [(("patients",), len(body.patients), lim.max_patients, "max_patients")])
    for i, p in enumerate(body.patients):
        _check_patient(p, ("patients", i), st)
    fcfg = ForecastConfig(estimator=body.estimator or st.cfg.estimator, rollouts=n,
                          max_new_tokens=st.cfg.max_new_tokens, reserve_tokens=st.cfg.reserve_tokens,
                          seed=st.cfg.seed if body.seed is None else body.seed)
    async with st.admission():
        engine = st.require_engine()
        try:
            outcomes = outcome_token_ids(engine.vocab, {o.name: o.codes for o in body.outcomes}, strict=True)
        except UnknownOutcomeCodes as e:
            raise unknown_codes_error(e, body.outcomes) from None
        room = engine.max_model_len - st.cfg.reserve_tokens
        prompts = [_prompt(p, ("patients", i), st, room) for i, p in enumerate(body.patients)]
        leads = [_lead_s(p, q) for p, q in zip(body.patients, prompts)]
        fc = await _timed(forecast(engine, prompts, outcomes, [h * DAY_S for h in body.horizons_days], fcfg, leads,
                                   keep_rollouts=keep_rollouts), st)
    st.metrics.rollouts.inc(n * len(prompts))
    return fc, prompts, leads, fcfg


@router.post("/v1/forecasts", tags=["predict"], response_model=M.ForecastResponse, responses=AUTH_RESPONSES)
async def post_forecasts(body: M.ForecastRequest, request: Request, key: ForecastKey):
    """Per patient, outcome and horizon: the probability that the outcome happens within the
    horizon (counted from the prediction time) with a 95% Monte-Carlo interval, from the
    forecasting core (nightingale.inference.forecast, the code the evaluation gates); per
    population: the expected count with a 95% interval, small counts suppressed."""
    st = _state(request)
    fc, prompts, _, fcfg = await _forecast(body, request)
    n = fcfg.rollouts
    patients = []
    for i, p in enumerate(body.patients):
        risks = []
        for a, o in enumerate(body.outcomes):
            for b, h in enumerate(body.horizons_days):
                est = fc.estimate(i, a, b)
                risks.append(M.RiskOut(outcome=o.name, horizon_days=h, probability=est.probability, lower=est.lower,
                                       upper=est.upper, rollouts=est.rollouts, truncated=est.truncated,
                                       estimator=est.estimator))
        patients.append(M.PatientForecast(ref=p.ref, risks=risks, codes_resolved=dict(prompts[i].codes),
                                          events_reordered=p.events_reordered))
    population = []
    for a, o in enumerate(body.outcomes):
        for b, h in enumerate(body.horizons_days):
            ests = [fc.estimate(i, a, b) for i in range(len(prompts))]
            pe = population_count([e.probability for e in ests], [e.variance for e in ests], st.cfg.small_count_threshold)
            population.append(M.PopulationOut(outcome=o.name, horizon_days=h, patients=pe.patients, expected_count=pe.expected,
                                              lower=pe.lower, upper=pe.upper, suppressed=pe.suppressed, threshold=pe.threshold))
    return M.ForecastResponse(patients=patients, population=population, rollouts=n, estimator=fcfg.estimator,
                              interval=M.INTERVALS[fcfg.estimator])


@router.post("/v1/forecasts/trajectories", tags=["predict"], responses={
    **AUTH_RESPONSES, 200: {"content": {"application/zip": {}},
                            "description": "{k}.parquet per rollout k (MEDS generated trajectories)"}})
async def post_forecast_trajectories(body: M.ForecastRequest, request: Request, key: ForecastKey):
    """The rollouts behind a forecast (the same request, limits and seed give the same futures as
    POST /v1/forecasts) as MEDS generated trajectories: a zip of `{k}.parquet`, one file per
    rollout index k, in MEDS_trajectory_evaluation's schema (MEDS events after the prediction
    time, plus `prediction_time`). `subject_id` is the patient's position in the request (0-based);
    `prediction_time` is the patient's, or the last event's when none is given. Label them with
    your own ACES task configs (`ZSACES_label`)."""
    import tempfile
    import zipfile

    from nightingale.inference.trajectories import TrajectoryCollector

    st = _state(request)
    fc, prompts, leads, fcfg = await _forecast(body, request, keep_rollouts=True)
    vocab = st.require_engine().vocab

    def build() -> bytes:
        collector = TrajectoryCollector(vocab, fcfg.rollouts)
        anchors = [q.anchor_us for q in prompts]
        predictions = [a + int(round(lead * 1e6)) for a, lead in zip(anchors, leads)]
        collector.add(fc.rollouts_kept, list(range(len(prompts))), anchors, predictions)
        buf = io.BytesIO()
        with tempfile.TemporaryDirectory() as tmp:
            files = collector.write(Path(tmp) / "trajectories")
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                for f in files:
                    z.write(f, f.name)
        return buf.getvalue()

    return Response(await asyncio.to_thread(build), media_type="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="trajectories.zip"'})


# --- cohorts ----------------------------------------------------------------------------------------
def _job_out(job, request: Request, admin: bool) -> M.CohortJob:
    """The job as its caller may see it: the downloads only once the cohort passed the release
    check (an admin sees them anyway, to inspect what was kept back)."""
    downloads = None
    if job.status == "done" and (released(job) or admin):
        base = str(request.url_for("download_cohort", job_id=job.id))
        downloads = {"meds": f"{base}?format=meds", "csv": f"{base}?format=csv"}
        if job.file("omop").exists():
            downloads["omop"] = f"{base}?format=omop"
    report = dict(job.report or {})
    return M.CohortJob(id=job.id, status=job.status, n_patients=job.spec.n_patients, done_patients=job.done,
                       created_at=job.created_at, report=report or None, error=job.error, downloads=downloads,
                       release=report.pop("release", None), evidence=report.pop("evidence", None))


COHORT_DATES = (dt.datetime(1900, 1, 1), dt.datetime(2100, 1, 1))  # a timeline's calendar window


@functools.lru_cache(maxsize=8)
def _calendar(meds_dir: str) -> Calendar:
    """A registered dataset's calendar: record starts, ages at start, end of follow-up (read once per server)."""
    return calendar_window(meds_dir)


@router.post("/v1/cohorts", tags=["generate"], response_model=M.CohortJob, status_code=202, responses=AUTH_RESPONSES)
async def post_cohorts(body: M.CohortRequest, request: Request, key: GenerateKey):
    """Start generating a synthetic cohort (a job); poll GET /v1/cohorts/{id}."""
    st = _state(request)
    _note(request, patients=body.n_patients)
    if body.n_patients > st.cfg.limits.max_cohort_patients:
        raise FieldError(("n_patients",), f"{body.n_patients} is over the limit {st.cfg.limits.max_cohort_patients} (limits.max_cohort_patients)")
    if body.age_min is not None and body.age_max is not None and body.age_min >= body.age_max:
        raise FieldError(("age_min",), "must be below age_max")
    start = parse_time(body.start_date, "start_date") or CohortSpec.start_date
    end = parse_time(body.end_date, "end_date")
    calendar: dict = {}
    if body.start_date is None and st.cfg.cohort_reference:  # the reference data's own calendar and age mix
        data = await asyncio.to_thread(_calendar, st.cfg.datasets[st.cfg.cohort_reference])
        # a requested end date follows everyone to it; the data's own end only where it is stated
        data = data.until(end) if end is not None else data
        calendar = {**data.spec_fields(), "follow_to_end": body.end_date is not None or data.observed_end}
        end, start = data.end, data.starts[0]
    for name, t in (("start_date", start), ("end_date", end)):
        if t is not None and not COHORT_DATES[0] <= t <= COHORT_DATES[1]:
            raise FieldError((name,), f"{t.date().isoformat()} is outside {COHORT_DATES[0].date().isoformat()} "
                                      f"to {COHORT_DATES[1].date().isoformat()}")
    if end is not None and end <= start:
        raise FieldError(("end_date",), f"{end.date().isoformat()} must be after start_date {start.date().isoformat()}")
    async with st.admission():
        engine = st.require_engine()
        spec = CohortSpec(n_patients=body.n_patients, sex=body.sex, age_min=body.age_min, age_max=body.age_max,
                          starting_code=body.starting_code, seed=body.seed, max_new_tokens=st.cfg.cohort_max_new_tokens,
                          start_date=start, **({"end_date": end} | calendar))
        try:
            validate_spec(engine.vocab, spec)
        except ValueError as e:
            raise FieldError((str(e).split(":", 1)[0],), str(e)) from None
        reference = st.cfg.datasets.get(st.cfg.cohort_reference) if st.cfg.cohort_reference else None
        job = st.jobs.start(st.jobs.new(key.id, COHORT, spec), cohort_work(st.require_engine, reference, st.cfg.release))
    return _job_out(job, request, "admin" in key.scopes)


@router.get("/v1/cohorts/{job_id}", tags=["generate"], response_model=M.CohortJob, responses={**AUTH_RESPONSES, 404: {"model": M.ErrorOut}})
async def get_cohort(job_id: str, request: Request, key: GenerateKey):
    """A cohort job's status and progress (only the submitting key, or an admin key, sees it)."""
    st = _state(request)
    return _job_out(st.jobs.get(job_id, key.id, "admin" in key.scopes, COHORT), request, "admin" in key.scopes)


@router.get("/v1/cohorts/{job_id}/download", tags=["generate"], name="download_cohort",
            responses={**AUTH_RESPONSES, 404: {"model": M.ErrorOut}, 409: {"model": M.ErrorOut}})
async def download_cohort(job_id: str, request: Request, key: GenerateKey,
                          format: Annotated[Literal["meds", "csv", "omop"], Query()] = "meds"):
    """The finished cohort: a zipped MEDS dataset (format=meds), one CSV of events (format=csv) or
    zipped OMOP CDM 5.4 tables (format=omop, for a model trained on OMOP concepts)."""
    st = _state(request)
    job = st.jobs.get(job_id, key.id, "admin" in key.scopes, COHORT)
    _note(request, patients=job.spec.n_patients)
    if job.status != "done":
        return JSONResponse({"detail": f"cohort job is {job.status}, not done"}, status_code=409)
    if not released(job) and "admin" not in key.scopes:
        why = "; ".join(job.report["release"]["reasons"])
        return JSONResponse({"detail": f"the cohort failed its release check and is kept for the operator: {why}"},
                            status_code=403)
    path = job.file(format)
    if format == "omop" and not path.exists():
        return JSONResponse({"detail": "no OMOP export: the model's codes are not OMOP concepts (its reference data "
                                       "did not come from import-omop)"}, status_code=409)
    media, ext = ("text/csv", "csv") if format == "csv" else ("application/zip", "zip")
    return FileResponse(path, media_type=media, filename=f"cohort-{job.id}{'-omop' if format == 'omop' else ''}.{ext}")
