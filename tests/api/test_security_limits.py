"""Auth (401/403), every limit (4xx naming the field), malformed bodies (422), overload (503)."""

from __future__ import annotations

import pytest

from tests.api.test_endpoints import forecast_body, patient
from tests.inference.harness import LIMITS

pytestmark = pytest.mark.slow


def _loc(r) -> list:
    return [d["loc"] for d in r.json()["detail"]]


@pytest.mark.parametrize("method,path,body", [
    ("post", "/v1/forecasts", {}), ("post", "/v1/next-events", {}), ("post", "/v1/cohorts", {}),
    ("get", "/v1/model", None), ("get", "/v1/cohorts/abc", None), ("get", "/v1/cohorts/abc/download", None),
])
def test_no_or_bad_key_is_401(anonymous, server, method, path, body):
    r = anonymous.request(method, path, json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = anonymous.request(method, path, json=body, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401


def test_scopes_are_403(forecaster, generator, admin):
    assert generator.post("/v1/forecasts", json=forecast_body([patient()])).status_code == 403
    assert generator.post("/v1/next-events", json={"patient": patient()}).status_code == 403
    assert forecaster.post("/v1/cohorts", json={"n_patients": 1}).status_code == 403
    assert forecaster.get("/v1/cohorts/abc").status_code == 403
    # admin holds every scope; X-API-Key works like the bearer header
    r = admin.post("/v1/next-events", json={"patient": patient(), "top_k": 1})
    assert r.status_code == 200


@pytest.mark.parametrize("change,loc", [
    ({"patients": [patient()] * (LIMITS["max_patients"] + 1)}, ["body", "patients"]),
    ({"rollouts": LIMITS["max_rollouts"] + 1}, ["body", "rollouts"]),
    ({"horizons_days": [LIMITS["max_horizon_days"] + 1]}, ["body", "horizons_days"]),
    ({"horizons_days": [10, 20, 30, 40]}, ["body", "horizons_days"]),
    ({"outcomes": [{"name": f"o{i}", "codes": ["MEDS_DEATH"]} for i in range(LIMITS["max_outcomes"] + 1)]}, ["body", "outcomes"]),
    ({"outcomes": [{"name": "x", "codes": ["MEDS_DEATH"] * (LIMITS["max_codes_per_outcome"] + 1)}]}, ["body", "outcomes", 0, "codes"]),
    ({"outcomes": [{"name": "x", "codes": ["MEDS_DEATH", "NOT//ACODE"]}]}, ["body", "outcomes", 0, "codes", 1]),
    ({"patients": [patient(n=LIMITS["max_events_per_patient"] + 1)]}, ["body", "patients", 0, "events"]),
    ({"rollouts": 0}, ["body", "rollouts"]),
    ({"horizons_days": [-1]}, ["body", "horizons_days", 0]),
    ({"rollouts": "many"}, ["body", "rollouts"]),
    ({"patients": [{**patient(), "events": [{"time": "yesterday", "code": "X"}]}]}, ["body", "patients", 0, "events", 0, "time"]),
    ({"patients": [{**patient(), "prediction_time": "1900-01-01T00:00:00"}]}, ["body", "patients", 0, "events"]),
    ({"patients": [{**patient(), "surname": "Smith"}]}, ["body", "patients", 0, "surname"]),
    ({"patients": []}, ["body", "patients"]),
])
def test_forecast_limits_and_types_name_the_field(forecaster, change, loc):
    body = forecast_body([patient()])
    body.update(change)
    r = forecaster.post("/v1/forecasts", json=body)
    assert r.status_code == 422, r.text
    assert loc in _loc(r), r.text


def test_other_limits(forecaster, generator):
    r = forecaster.post("/v1/next-events", json={"patient": patient(), "top_k": LIMITS["max_top_k"] + 1})
    assert r.status_code == 422 and ["body", "top_k"] in _loc(r)
    r = generator.post("/v1/cohorts", json={"n_patients": LIMITS["max_cohort_patients"] + 1})
    assert r.status_code == 422 and ["body", "n_patients"] in _loc(r)
    r = generator.post("/v1/cohorts", json={"n_patients": 2, "sex": "X"})
    assert r.status_code == 422 and ["body", "sex"] in _loc(r)
    r = generator.post("/v1/cohorts", json={"n_patients": 2, "age_min": 50, "age_max": 40})
    assert r.status_code == 422 and ["body", "age_min"] in _loc(r)
    r = generator.post("/v1/cohorts", json={"n_patients": 2, "starting_code": "NOT//ACODE"})
    assert r.status_code == 422 and ["body", "starting_code"] in _loc(r)
    r = generator.post("/v1/cohorts", json={"n_patients": 2, "start_date": "2020-01-01", "end_date": "2019-06-01"})
    assert r.status_code == 422 and ["body", "end_date"] in _loc(r) and "must be after start_date" in r.text
    r = generator.post("/v1/cohorts", json={"n_patients": 2, "start_date": "9999-01-01"})
    assert r.status_code == 422 and ["body", "start_date"] in _loc(r) and "outside 1900-01-01" in r.text


def test_body_size_limit_is_413(forecaster):
    big = forecast_body([patient(n=3)])
    big["padding"] = "x" * (LIMITS["max_body_bytes"] + 10)
    r = forecaster.post("/v1/forecasts", json=big)
    assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body"]
    # Chunked upload without a Content-Length is counted as it streams.
    data = b'{"patients": [' + b" " * (LIMITS["max_body_bytes"] + 10) + b"]}"
    r = forecaster.post("/v1/forecasts", content=iter([data[:1000], data[1000:]]),
                        headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_malformed_json_is_422(forecaster):
    r = forecaster.post("/v1/forecasts", content=b'{"patients": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = forecaster.post("/v1/next-events", json={"patient": "not an object"})
    assert r.status_code == 422 and ["body", "patient"] in _loc(r)
    r = forecaster.post("/v1/next-events", json={"patient": {**patient(), "events": [{"time": "2020-01-01", "code": "A", "numeric_value": "NaN"}]}})
    assert r.status_code == 422


def test_queue_full_is_503_with_retry_after(server, forecaster):
    st = server.state
    saved = st.inflight
    st.inflight = server.cfg.max_inflight  # as if that many requests were in flight
    try:
        r = forecaster.post("/v1/forecasts", json=forecast_body([patient()], rollouts=2))
    finally:
        st.inflight = saved
    assert r.status_code == 503 and r.headers["retry-after"] == str(server.cfg.retry_after_s)
    assert forecaster.post("/v1/forecasts", json=forecast_body([patient()], rollouts=2)).status_code == 200
