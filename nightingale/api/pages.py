"""Read-only pages for planners in a browser: their population jobs, and one finished job's
expected counts by group and horizon as tables and bar charts (server-rendered HTML and inline
SVG, no script), suppressed cells shown as such, the model's gate verdict, a download link.

Authentication is the API's own keys: the key is entered once in a form (POSTed, never in an
address), checked like a header key (the `forecast` scope), and exchanged for a random session
token kept in an HttpOnly, SameSite=Strict cookie for the browser session; the server holds the
token -> key id map in memory, so a restart signs everyone out. The audit log records page
requests like API calls (route template, key id), never the key."""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import parse_qs

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from nightingale.api.auth import ApiKey, AuthError, ScopeError
from nightingale.api.jobs import POPULATION, JobNotFound
from nightingale.api.population_routes import finished_zip, job_out
from nightingale.api.routes import _state

router = APIRouter(include_in_schema=False)
COOKIE = "ng_session"
_TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
                                autoescape=True, undefined=jinja2.StrictUndefined)
HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
           "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}
CHART_W, CHART_H, BAR_W = 640, 200, 46


def _page(name: str, status: int = 200, **values) -> HTMLResponse:
    return HTMLResponse(_TEMPLATES.get_template(name).render(**values), status_code=status, headers=HEADERS)


def _session(request: Request) -> ApiKey | None:
    """The key behind the request's session cookie (noted for the audit), or None."""
    key = _state(request).sessions.get(request.cookies.get(COOKIE, ""))
    if key is not None:
        request.scope["state"]["ng_audit"]["key_id"] = key.id
    return key


def _charts(cells: list[dict]) -> list[dict]:
    """Bar geometry for each grouping of one outcome and horizon (suppressed cells left empty)."""
    out = []
    for group in dict.fromkeys(c["group"] for c in cells if c["group"] != "all"):
        part = [c for c in cells if c["group"] == group]
        top = max([max(c["upper"], c.get("observed") or 0) for c in part if not c["suppressed"]] + [1.0])
        base, scale = CHART_H - 24, (CHART_H - 40) / top
        bars = []
        for k, c in enumerate(part):
            bar = {"x": 48 + k * (BAR_W + 24), "w": BAR_W, "value": c["value"], "suppressed": c["suppressed"]}
            if not c["suppressed"]:
                bar.update(expected=c["expected"], y=base - c["expected"] * scale, h=c["expected"] * scale,
                           lo=base - c["lower"] * scale, hi=base - c["upper"] * scale,
                           observed=base - c["observed"] * scale if c.get("observed") is not None else None)
            bars.append(bar)
        out.append({"group": group, "bars": bars, "base": base, "top": top, "height": CHART_H,
                    "shown": any(not b["suppressed"] for b in bars),
                    "width": max(CHART_W, 60 + len(part) * (BAR_W + 24))})
    return out


def _blocks(cells: list[dict]) -> list[dict]:
    blocks: dict[tuple, list[dict]] = {}
    for c in cells:
        blocks.setdefault((c["outcome"], c["horizon_days"]), []).append(c)
    return [{"outcome": o, "horizon_days": h, "cells": cs, "observed": "observed" in cs[0], "charts": _charts(cs)}
            for (o, h), cs in blocks.items()]


@router.get("/population", name="population_jobs")
async def jobs_page(request: Request):
    key = _session(request)
    if key is None:
        return _page("login.html", signed_in=False, message=None)
    st = _state(request)
    jobs = [job_out(j, request) for j in st.jobs.mine(key.id, "admin" in key.scopes, POPULATION)]
    return _page("jobs.html", signed_in=True, jobs=jobs)


@router.post("/population/login")
async def login(request: Request):
    st = _state(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    try:
        key = st.keys.authenticate((form.get("key") or [""])[0].strip())
        request.scope["state"]["ng_audit"]["key_id"] = key.id
        st.keys.authorise(key, "forecast")
    except (AuthError, ScopeError) as e:
        return _page("login.html", 401 if isinstance(e, AuthError) else 403, signed_in=False,
                     message="Unknown API key." if isinstance(e, AuthError) else str(e))
    token = secrets.token_urlsafe(32)
    st.sessions[token] = key
    resp = RedirectResponse("/population", status_code=303, headers=HEADERS)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                    path="/population")
    return resp


@router.post("/population/logout")
async def logout(request: Request):
    _state(request).sessions.pop(request.cookies.get(COOKIE, ""), None)
    resp = RedirectResponse("/population", status_code=303, headers=HEADERS)
    resp.delete_cookie(COOKIE, path="/population")
    return resp


def _job(request: Request, job_id: str):
    key = _session(request)
    if key is None:
        return None
    try:
        return _state(request).jobs.get(job_id, key.id, "admin" in key.scopes, POPULATION)
    except JobNotFound:
        return False


@router.get("/population/{job_id}", name="population_page")
async def job_page(job_id: str, request: Request):
    job = _job(request, job_id)
    if job is None:
        return _page("login.html", 401, signed_in=False, message="Sign in to see this forecast.")
    if job is False:
        return _page("jobs.html", 404, signed_in=True, jobs=[])
    out = job_out(job, request)
    r = out.results
    return _page("job.html", signed_in=True, job=out, r=r, blocks=_blocks(r["cells"]) if r else [])


@router.get("/population/{job_id}/download")
async def job_download(job_id: str, request: Request):
    job = _job(request, job_id)
    if not job:
        return _page("login.html", 401 if job is None else 404, signed_in=job is not None, message="Sign in first.")
    return finished_zip(job)
