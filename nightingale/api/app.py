"""The app factory: `build_app(cfg)` -> a FastAPI app serving one gated model.

Lifespan: the gate is checked before anything else (a model without a passing report is refused
unless `allow_ungated`, logged); the vLLM engine then starts in the background, so `/healthz`
answers at once and `/readyz` turns 200 when the engine is up; on shutdown (uvicorn first stops
accepting and lets in-flight requests finish, up to its graceful timeout) cohort jobs are
cancelled and the engine is shut down.

One pure-ASGI middleware does, for every request: the body-size limit (413, before the body is
parsed), Prometheus metrics by route template, and the audit record (see audit.py) once the
response status is known. Engine and auth errors map to HTTP codes in exception handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import Match

from nightingale.api import pages, population_routes, routes
from nightingale.api.audit import AuditLog
from nightingale.api.auth import AuthError, ScopeError
from nightingale.api.config import ServeConfig
from nightingale.api.jobs import JobNotFound, Jobs, JobsFull
from nightingale.api.state import FieldError, Overloaded, ServerState
from nightingale.inference.engine import EngineError, EngineOverloaded
from nightingale.inference.gate import check_gate
from nightingale.model.folder import ModelDir

log = logging.getLogger(__name__)
UNAUDITED = ("/healthz", "/readyz", "/metrics")  # probes and scrapes: no patient data, no key


def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class ObserveMiddleware:
    """Body-size limit, metrics and audit for every HTTP request (pure ASGI: no body buffering)."""

    def __init__(self, app, state: ServerState, fastapi_app: FastAPI):
        self.app, self.st, self.fastapi_app = app, state, fastapi_app

    def _template(self, scope) -> str:
        route = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return route.path
        for r in self.fastapi_app.routes:
            m, _ = r.matches(scope)
            if m == Match.FULL:
                return r.path
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex[:16]
        audit: dict[str, Any] = {}
        scope.setdefault("state", {})["ng_audit"] = audit
        status = {"code": 500, "started": False}
        limit = self.st.cfg.limits.max_body_bytes

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        too_large = _error(413, [{"loc": ["body"], "msg": f"request body over {limit} bytes (limits.max_body_bytes)", "type": "too_large"}])
        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if length is not None and length.isdigit() and int(length) > limit:
                await too_large(scope, receive, send_wrapper)
            elif length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                # No declared length (chunked): read at most limit + 1 bytes, then replay them.
                chunks, size, more = [], 0, True
                while more and size <= limit:
                    message = await receive()
                    if message["type"] != "http.request":
                        break
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    more = message.get("more_body", False)
                if size > limit:
                    await too_large(scope, receive, send_wrapper)
                else:
                    body = b"".join(chunks)
                    sent = False

                    async def replay():
                        nonlocal sent
                        if not sent:
                            sent = True
                            return {"type": "http.request", "body": body, "more_body": False}
                        return await receive()

                    await self.app(scope, replay, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = self._template(scope)
            dt_s = time.perf_counter() - t0
            self.st.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.st.metrics.latency.labels(endpoint).observe(dt_s)
            if endpoint not in UNAUDITED and self.st.audit is not None:
                self.st.audit.write(
                    request_id=rid, key_id=audit.get("key_id"), method=scope.get("method"), endpoint=endpoint,
                    status=status["code"], patients=audit.get("patients"), rollouts=audit.get("rollouts"),
                    duration_ms=round(dt_s * 1000, 1),
                )


def _register_handlers(app: FastAPI, st: ServerState) -> None:
    retry = {"Retry-After": str(st.cfg.retry_after_s)}

    @app.exception_handler(AuthError)
    async def _auth(_: Request, e: AuthError):
        return _error(401, str(e), {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ScopeError)
    async def _scope(_: Request, e: ScopeError):
        return _error(403, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError):
        # Where and why only: the offending input is the caller's own (and may be patient data or
        # a NaN that JSON cannot carry back).
        errors = [{"loc": [str(p) if not isinstance(p, int) else p for p in err.get("loc", ())],
                   "msg": str(err.get("msg", "invalid")), "type": str(err.get("type", "value_error"))}
                  for err in e.errors()]
        return _error(422, errors)

    @app.exception_handler(FieldError)
    async def _field(_: Request, e: FieldError):
        return _error(e.status, [{"loc": ["body", *e.loc], "msg": e.msg, "type": "value_error"}])

    @app.exception_handler(Overloaded)
    @app.exception_handler(EngineOverloaded)
    @app.exception_handler(JobsFull)
    async def _busy(_: Request, e: Exception):
        return _error(503, f"busy: {e}; retry later", retry)

    @app.exception_handler(EngineError)
    async def _engine(_: Request, e: EngineError):
        return _error(503, f"unavailable: {e}", retry)

    @app.exception_handler(JobNotFound)
    async def _nojob(_: Request, e: JobNotFound):
        return _error(404, "no such job")

    @app.exception_handler(TimeoutError)
    async def _timeout(_: Request, e: TimeoutError):
        return _error(504, "the model did not answer in time (request_timeout_s)")

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        # Type only: messages and tracebacks can carry request content.
        log.error("unhandled %s on %s", type(e).__name__, request.scope.get("path"))
        return _error(500, "internal error")


def build_app(cfg: ServeConfig) -> FastAPI:
    """The FastAPI app for `cfg` (nothing starts until the lifespan runs)."""
    st = ServerState(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        model = ModelDir(cfg.model.model_dir)  # ModelDirError names a missing file: refuse to start
        st.gate = check_gate(model, allow_ungated=cfg.allow_ungated)  # GateError: refuse to start
        st.card = model.card
        st.audit = AuditLog(cfg.audit_log)
        st.jobs = Jobs(cfg.jobs_dir, cfg.max_running_jobs, st.sync_job_metrics)
        st._start_task = asyncio.create_task(st.start_engine())
        try:
            yield
        finally:
            st.shutting_down = True
            log.info("shutting down: cancelling cohort jobs, stopping the engine")
            await st.jobs.shutdown()
            if not st._start_task.done():
                st._start_task.cancel()
                with contextlib.suppress(BaseException):
                    await st._start_task
            if st.engine is not None:
                await st.engine.aclose()
            st.audit.close()

    app = FastAPI(
        title="Nightingale",
        version="0.1.0",
        description="Next-event prediction, risk forecasts and synthetic cohorts from a health foundation model.",
        lifespan=lifespan,
    )
    app.state.ng = st
    _register_handlers(app, st)
    app.include_router(routes.router)
    app.include_router(population_routes.router)
    app.include_router(pages.router)
    app.add_middleware(ObserveMiddleware, state=st, fastapi_app=app)
    return app
