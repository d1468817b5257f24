"""Fuzz the OpenAPI schema with schemathesis against the running server: no 5xx.

Bounded: a few examples per operation, so it stays fast. The work endpoints are fuzzed with an
admin key for forecasts/next events and model info; cohort submission is fuzzed with few examples
(each accepted one starts a job). Probes are included. Then timelines that fit the schema but not
the world (NaN and infinite values, events before birth or far in the future, births to come,
unsorted events, prediction times before everything) through both prediction endpoints.
"""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
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


# --- semantically wrong timelines: the schema admits their shape, not their meaning ---------------
_CODES = ["SNOMED//185345009", "ICD10//I10", "ATC//C10AA01", "LOINC//8480-6", "MEDS_DEATH", "NOT//IN_VOCAB"]
_values = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30))
_times = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31))
_event = st.fixed_dictionaries({"time": _times.map(dt.datetime.isoformat), "code": st.sampled_from(_CODES)},
                               optional={"numeric_value": _values})
_patient = st.fixed_dictionaries(
    {"events": st.lists(_event, min_size=1, max_size=12)},
    optional={"birth_date": st.dates().map(dt.date.isoformat), "sex": st.sampled_from(["F", "M"]),
              "prediction_time": _times.map(dt.datetime.isoformat)})


@given(p=_patient, path=st.sampled_from(["/v1/next-events", "/v1/forecasts"]))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_wrong_timelines_get_a_200_or_a_422(server, p, path):
    body = ({"patient": p} if path == "/v1/next-events" else
            {"patients": [p], "outcomes": [{"name": "death", "codes": ["MEDS_DEATH"]}], "horizons_days": [365], "rollouts": 2})
    r = httpx.post(server.url + path, content=json.dumps(body), timeout=300,
                   headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code in (200, 422), (r.status_code, r.text)
    if r.status_code == 422:
        assert all(e["loc"][0] == "body" and e["msg"] for e in r.json()["detail"])
