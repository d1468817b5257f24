"""The session's real server (uvicorn + vLLM CPU engine on a tiny model) and HTTP clients."""

from __future__ import annotations

import httpx
import pytest

from tests.inference import harness


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = harness.serving(tmp_path_factory.getbasetemp() / "serving")
    yield srv
    harness.stop_serving()


def _client(server, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=300)


@pytest.fixture(scope="session")
def forecaster(server):
    with _client(server, harness.API_KEYS["forecaster"][0]) as c:
        yield c


@pytest.fixture(scope="session")
def generator(server):
    with _client(server, harness.API_KEYS["generator"][0]) as c:
        yield c


@pytest.fixture(scope="session")
def admin(server):
    with _client(server, harness.API_KEYS["root"][0]) as c:
        yield c


@pytest.fixture(scope="session")
def anonymous(server):
    with _client(server, None) as c:
        yield c


POPULATION = {
    "dataset": harness.DATASET,
    "outcomes": [{"name": "death", "codes": ["MEDS_DEATH"]}, {"name": "admission", "codes": ["ADMISSION//EMERGENCY"]}],
    "horizons_days": [365],
    "prediction_time": "2024-06-01",
    "groups": ["age_band", "sex", "IMD"],
    "rollouts": 4,
    "backtest": True,
}


def wait_done(client: httpx.Client, path: str, timeout_s: float = 400) -> dict:
    import time

    deadline = time.time() + timeout_s
    while True:
        job = client.get(path).json()
        if job["status"] not in ("queued", "running") or time.time() > deadline:
            return job
        time.sleep(1)


@pytest.fixture(scope="session")
def population_job(forecaster) -> dict:
    """A finished population forecast over the test model's own 300 simulated subjects (a fixed
    date with 18 months of follow-up after it, so the job also counts what happened)."""
    r = forecaster.post("/v1/population-forecasts", json=POPULATION)
    assert r.status_code == 202, r.text
    job = wait_done(forecaster, f"/v1/population-forecasts/{r.json()['id']}")
    assert job["status"] == "done", job
    return job
