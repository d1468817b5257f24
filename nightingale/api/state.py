"""What the routes share with the app: the server state, and the errors routes raise that the
app's handlers turn into HTTP answers. Both `app.py` and `routes.py` import it; neither imports
the other's module for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nightingale.api.audit import AuditLog
from nightingale.api.auth import ApiKey, KeyStore, load_keys
from nightingale.api.config import ServeConfig
from nightingale.api.jobs import COHORT, Jobs
from nightingale.api.metrics import Metrics
from nightingale.inference.engine import Engine, EngineError

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """More HTTP work in flight than ServeConfig.max_inflight."""


class FieldError(Exception):
    """A request field breaks a limit or cannot be served: 422 with the field's location."""

    def __init__(self, loc: tuple, msg: str, status: int = 422):
        super().__init__(msg)
        self.loc, self.msg, self.status = loc, msg, status


class ServerState:
    """Everything the routes share: config, engine, keys, audit log, metrics, jobs, admission."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.keys = KeyStore(load_keys(cfg.api_keys_file, cfg.api_keys_env))
        if not self.keys.keys:
            log.warning("no API keys configured (%s / %s): every request will get 401", cfg.api_keys_file, cfg.api_keys_env)
        self.metrics = Metrics()
        self.audit: AuditLog | None = None
        self.engine: Engine | None = None
        self.engine_error: str | None = None
        self.gate: dict[str, Any] = {}
        self.card: dict[str, Any] = {}
        self.jobs: Jobs | None = None
        self.sessions: dict[str, ApiKey] = {}  # browser session token -> key (pages.py)
        self.inflight = 0
        self.shutting_down = False
        self._start_task: asyncio.Task | None = None

    async def start_engine(self) -> None:
        try:
            self.engine = await Engine.start(self.cfg.model)
            log.info("engine ready")
        except Exception as e:  # noqa: BLE001 - reported by /readyz; the process stays up for probes
            self.engine_error = f"{type(e).__name__}: {e}"
            log.error("engine failed to start: %s", self.engine_error)

    def require_engine(self) -> Engine:
        if self.shutting_down:
            raise EngineError("the server is shutting down")
        if self.engine is None:
            raise EngineError("the model is still loading" if self.engine_error is None else "the engine failed to start")
        return self.engine

    @contextlib.asynccontextmanager
    async def admission(self):
        """One unit of HTTP work; refused (503) past max_inflight."""
        if self.inflight >= self.cfg.max_inflight:
            raise Overloaded(f"{self.inflight} requests in flight (max_inflight={self.cfg.max_inflight})")
        self.inflight += 1
        self.metrics.queue_depth.set(self.inflight)
        try:
            yield
        finally:
            self.inflight -= 1
            self.metrics.queue_depth.set(self.inflight)

    def sync_job_metrics(self) -> None:
        if self.jobs is not None:
            for status, n in self.jobs.counts(COHORT).items():
                self.metrics.cohort_jobs.labels(status).set(n)
