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
