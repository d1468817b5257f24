"""The audit log: one JSON line per API call, appended and flushed before the answer leaves.

Fields: time (UTC ISO 8601), request id, key id (None when unauthenticated), method, endpoint
(the route template, e.g. /v1/cohorts/{job_id}: never a raw path), status, outcome (ok, client
error, rejected, server error), patients, rollouts, duration_ms. Never identifiers, codes, refs,
timelines or request bodies: the caller fills only counts (see `AuditLog.FIELDS`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import Any


class AuditLog:
    FIELDS = ("time", "request_id", "key_id", "method", "endpoint", "status", "outcome", "patients",
              "rollouts", "duration_ms")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._f = open(self.path, "a", buffering=1)

    @staticmethod
    def outcome(status: int) -> str:
        if status < 400:
            return "ok"
        if status in (429, 503):
            return "rejected"
        return "client_error" if status < 500 else "server_error"

    def write(self, **fields: Any) -> None:
        rec = {k: fields.get(k) for k in self.FIELDS}  # only known, non-identifying fields
        rec["time"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        rec["outcome"] = self.outcome(int(fields.get("status") or 0))
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        with self._lock:
            self._f.close()
