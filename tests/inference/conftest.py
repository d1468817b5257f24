"""The session's real server and engine (see harness.py); inference tests use its engine."""

from __future__ import annotations

import pytest

from tests.inference import harness


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = harness.serving(tmp_path_factory.getbasetemp() / "serving")
    yield srv
    harness.stop_serving()


@pytest.fixture(scope="session")
def engine(server):
    return server.state.engine


@pytest.fixture(scope="session")
def vocab(engine):
    return engine.vocab
