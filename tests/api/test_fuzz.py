"""Fuzz the OpenAPI schema with schemathesis against the running server: no 5xx.

Bounded: a few examples per operation, so it stays fast. The work endpoints are fuzzed with an
admin key for forecasts/next events and model info; cohort submission is fuzzed with few examples
(each accepted one starts a job). Probes are included.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from tests.inference import harness

pytestmark = pytest.mark.slow


def _openapi() -> dict:
    """The served OpenAPI document (it depends on no runtime state, so an unstarted app gives the
    same one); the calls go to the running server through `base_url`."""
    from nightingale.api import ServeConfig, build_app

    return build_app(ServeConfig.from_mapping({"model": {"model_dir": "unused"}, "api_keys_env": None})).openapi()


schema = schemathesis.openapi.from_dict(_openapi())
AUTH = {"Authorization": f"Bearer {harness.API_KEYS['root'][0]}"}


@schema.exclude(path="/v1/cohorts", method="POST").parametrize()
@settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, server):
    case.call_and_validate(base_url=server.url, headers=AUTH, checks=[not_a_server_error], timeout=300)


@schema.include(path="/v1/cohorts", method="POST").parametrize()
@settings(max_examples=3, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
def test_cohort_submission_no_server_errors(case, server):
    case.call_and_validate(base_url=server.url, headers=AUTH, checks=[not_a_server_error], timeout=300)
