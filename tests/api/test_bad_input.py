"""Bad input a new user sends, over real HTTP to the real server: a 422 naming the patient and the
field, never a 500; unsorted events are sorted and the answer says so."""

from __future__ import annotations

import json

import pytest

from tests.api.test_endpoints import forecast_body, patient

pytestmark = pytest.mark.slow
ROUTES = ("/v1/forecasts", "/v1/next-events")


def _post(client, path: str, p: dict, **kw):
    body = forecast_body([p], rollouts=2, **kw) if path == "/v1/forecasts" else {"patient": p}
    # json.dumps writes NaN/Infinity literally, as Python's own clients and parsers accept them
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


def _loc(r, path: str) -> tuple[list, str]:
    assert r.status_code == 422, (r.status_code, r.text)
    [err] = r.json()["detail"]
    return err["loc"], err["msg"]


def _patient_loc(path: str) -> list:
    return ["body", "patients", 0] if path == "/v1/forecasts" else ["body", "patient"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("path", ROUTES)
def test_non_finite_numeric_value_is_a_422_naming_it(forecaster, path, value):
    p = patient()
    p["events"][2]["numeric_value"] = value
    loc, _ = _loc(_post(forecaster, path, p), path)
    assert loc == [*_patient_loc(path), "events", 2, "numeric_value"]


@pytest.mark.parametrize("path", ROUTES)
def test_event_before_birth_is_a_422_naming_the_event(forecaster, path):
    p = patient()
    p["birth_date"] = "2021-03-01"  # events start 2021-01-15
    loc, msg = _loc(_post(forecaster, path, p), path)
    assert loc == _patient_loc(path)
    assert msg.startswith("Value error, events[0].time") and "before birth_date 2021-03-01" in msg


@pytest.mark.parametrize("path", ROUTES)
def test_birth_date_in_the_future_is_a_422(forecaster, path):
    p = patient()
    p["birth_date"] = "2150-01-01"
    loc, msg = _loc(_post(forecaster, path, p), path)
    assert loc == _patient_loc(path) and "birth_date: 2150-01-01 is in the future" in msg


def test_unsorted_events_are_sorted_and_flagged(forecaster):
    ordered = patient(n=6)
    shuffled = {**ordered, "events": ordered["events"][::-1]}
    answers = {}
    for name, p in (("ordered", ordered), ("shuffled", shuffled)):
        r = _post(forecaster, "/v1/next-events", p)
        assert r.status_code == 200, r.text
        answers[name] = r.json()
    assert answers["ordered"]["events_reordered"] is False
    assert answers["shuffled"]["events_reordered"] is True
    # sorted, the two timelines are one: the same prompt, so the same next-event distribution
    assert answers["shuffled"]["events"] == answers["ordered"]["events"]

    r = _post(forecaster, "/v1/forecasts", shuffled, seed=3)
    assert r.status_code == 200 and r.json()["patients"][0]["events_reordered"] is True


def test_unknown_outcome_codes_and_long_horizons_are_422(server, forecaster):
    r = forecaster.post("/v1/forecasts", json=forecast_body(
        [patient()], outcomes=[{"name": "x", "codes": ["NOPE//1", "NOPE//2*"]}], rollouts=2))
    loc, msg = _loc(r, "/v1/forecasts")
    assert loc == ["body", "outcomes", 0, "codes", 0] and "NOPE//1" in msg and "NOPE//2*" in msg

    too_far = server.cfg.limits.max_horizon_days + 1
    r = forecaster.post("/v1/forecasts", json=forecast_body([patient()], horizons_days=[30, too_far], rollouts=2))
    loc, msg = _loc(r, "/v1/forecasts")
    assert loc == ["body", "horizons_days"] and "max_horizon_days" in msg

