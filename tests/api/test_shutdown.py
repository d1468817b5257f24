"""Graceful shutdown of the real serving stage: SIGTERM lets an in-flight forecast finish.

A second server *process* (`serve/serve.py`, the same one `make demo` starts) on the session's tiny
model, because the signal must reach a process of its own; it costs one more engine start.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx
import pytest

from serve.process import ServerProcess

pytestmark = pytest.mark.slow
KEY = "sk-shutdown-test"


def _queue_depth(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(r"^nightingale_queue_depth (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_sigterm_finishes_the_in_flight_request_then_exits(server, tmp_path):
    audit = tmp_path / "audit.jsonl"
    srv = ServerProcess(
        [f"model_dir={server.cfg.model.model_dir}", "serve.api_keys_env=NG_SHUTDOWN_KEYS",
         f"serve.audit_log={audit}", f"serve.jobs_dir={tmp_path / 'jobs'}",
         "graceful_timeout_s=120", f"hydra.run.dir={tmp_path / 'hydra'}", "log_level=warning"],
        env={"NG_SHUTDOWN_KEYS": f"shut:{KEY}:forecast"}, log_path=tmp_path / "server.log",
    ).start()
    try:
        patient = {"sex": "F", "birth_date": "1950-01-01", "events": [
            {"time": "2020-01-01T09:00:00", "code": "ICD10//I10"},
            {"time": "2020-02-01T09:00:00", "code": "ICD10//E11.9"}]}
        body = {"patients": [patient] * 4, "outcomes": [{"name": "death", "codes": ["MEDS_DEATH"]}],
                "horizons_days": [365], "rollouts": 32, "seed": 1}
        answer: dict = {}

        def call():
            try:
                answer["r"] = httpx.post(srv.url + "/v1/forecasts", json=body, timeout=300,
                                         headers={"Authorization": f"Bearer {KEY}"})
            except httpx.HTTPError as e:  # pragma: no cover - the assertion below reports it
                answer["error"] = e

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 60
        while _queue_depth(srv.url) < 1:
            assert time.monotonic() < deadline and t.is_alive(), "the forecast never became in-flight"
            time.sleep(0.05)
        srv.proc.send_signal(signal.SIGTERM)  # SIGTERM, as Slurm, systemd or Kubernetes send it
        t_signal = time.monotonic()

        # New connections are refused while the in-flight one is still being answered.
        refused = False
        while time.monotonic() - t_signal < 20 and t.is_alive():
            try:
                httpx.get(srv.url + "/healthz", timeout=2)
            except httpx.TransportError:
                refused = True
                break
            time.sleep(0.1)
        t.join(300)
        assert "error" not in answer, f"in-flight request failed: {answer.get('error')!r}"
        r = answer["r"]
        assert r.status_code == 200, r.text
        assert len(r.json()["patients"]) == 4
        assert all(p["risks"][0]["rollouts"] == 32 for p in r.json()["patients"])
        assert refused, "the server still accepted connections after SIGTERM"
        # uvicorn re-raises the signal once its graceful shutdown is done: exit by SIGTERM (-15 here,
        # 143 in a shell) *after* the lifespan has stopped the engine, which the log shows.
        assert srv.proc.wait(120) in (0, -signal.SIGTERM)
        assert "vLLM engine shut down" in (tmp_path / "server.log").read_text()
        records = [json.loads(line) for line in audit.read_text().splitlines()]
        assert [(x["endpoint"], x["status"]) for x in records if x["endpoint"] == "/v1/forecasts"] == [
            ("/v1/forecasts", 200)]
    finally:
        srv.kill()
