"""Population forecasts over HTTP: a job over a registered dataset, its aggregates against its own
per-patient risks, suppression, who may see it, and bad input refused before any work starts."""

from __future__ import annotations

import io
import json
import zipfile

import polars as pl
import pytest

from nightingale import schema as S
from tests.api.conftest import POPULATION
from tests.inference import harness

pytestmark = pytest.mark.slow
THRESHOLD = 10  # the server's small_count_threshold (the default)


def test_the_job_aggregates_its_own_per_patient_risks(population_job, forecaster):
    res = population_job["results"]
    cells = res["cells"]
    at_risk = res["counts"]["at_risk"]
    counts = res["counts"]
    assert counts["subjects"] == 300 and 200 <= at_risk < 300  # the dead and the not yet registered are out
    assert at_risk + counts["no_history"] + counts["dead_before"] == 300
    assert population_job["done_patients"] == at_risk and population_job["done_shards"] == population_job["shards"]
    everyone = {c["outcome"]: c for c in cells if c["group"] == "all"}
    assert set(everyone) == {"death", "admission"}
    assert all(c["patients"] == at_risk or c["suppressed"] for c in everyone.values())
    assert not everyone["admission"]["suppressed"]  # ~10% of 240 patients a year: over the threshold

    z = zipfile.ZipFile(io.BytesIO(forecaster.get(population_job["downloads"]["zip"]).content))
    assert {"aggregates.json", "aggregates.parquet", "summary.md", "summary.png"} <= set(z.namelist())
    preds = pl.concat([pl.read_parquet(io.BytesIO(z.read(n))) for n in z.namelist() if n.startswith("predictions/")])
    assert preds.columns[:4] == [S.SUBJECT_ID, S.PREDICTION_TIME, "outcome", "horizon_days"]
    assert preds[S.SUBJECT_ID].n_unique() == at_risk and ((preds["lower"] <= preds["probability"])
                                                           & (preds["probability"] <= preds["upper"])).all()
    for name, cell in everyone.items():
        mine = preds.filter(pl.col("outcome") == name)
        if cell["suppressed"]:
            assert cell["expected"] is None and min(mine["probability"].sum(), mine["observed"].sum()) < THRESHOLD
            continue
        assert cell["expected"] == pytest.approx(mine["probability"].sum(), abs=0.006)
        assert cell["observed"] == mine["observed"].sum() and cell["lower"] <= cell["expected"] <= cell["upper"]
    assert json.loads(z.read("aggregates.json"))["cells"] == cells


def test_small_counts_are_suppressed_in_every_grouping(population_job):
    cells = population_job["results"]["cells"]
    for c in cells:
        if c["suppressed"] is None:
            assert c["patients"] >= THRESHOLD and c["expected"] >= THRESHOLD and c["observed"] >= THRESHOLD
        else:
            assert c["patients"] is None and c["expected"] is None and c["observed"] is None
    for outcome in ("death", "admission"):
        for group in POPULATION["groups"]:
            part = [c for c in cells if c["outcome"] == outcome and c["group"] == group]
            assert part, (outcome, group)
            assert sum(c["suppressed"] is not None for c in part) != 1, part  # a lone one could be recovered
    sex = [c for c in cells if c["outcome"] == "admission" and c["group"] == "sex" and not c["suppressed"]]
    everyone = next(c for c in cells if c["outcome"] == "admission" and c["group"] == "all")
    if len(sex) == 2:
        assert sum(c["patients"] for c in sex) == everyone["patients"]


def test_only_its_owner_and_admins_see_it(population_job, forecaster, admin, generator, server):
    jid = population_job["id"]
    assert generator.get(f"/v1/population-forecasts/{jid}").status_code == 403  # no forecast scope
    assert admin.get(f"/v1/population-forecasts/{jid}").json()["status"] == "done"
    assert jid in [j["id"] for j in forecaster.get("/v1/population-forecasts").json()]
    with open(server.cfg.audit_log) as f:
        audit = [json.loads(line) for line in f]
    assert any(a["endpoint"] == "/v1/population-forecasts" and a["method"] == "POST" and a["status"] == 202
               and a["key_id"] == "forecaster" for a in audit)


@pytest.mark.parametrize("change, loc, words", [
    ({"dataset": "nhs-england"}, ["body", "dataset"], "not a registered dataset"),
    ({"groups": ["age_band", "sex", "PRACTICE"]}, ["body", "groups", 2], "'PRACTICE' is neither age_band"),
    ({"prediction_time": "1850-01-01"}, ["body", "prediction_time"], "outside the data"),
    ({"prediction_time": "2025-06-01"}, ["body", "backtest"], "passes the end of the data's follow-up"),
    ({"prediction_time": None, "backtest": False, "recalibrate": True}, ["body", "recalibrate"],
     "needs a fixed prediction_time"),
    ({"outcomes": [{"name": "x", "codes": ["NOT//A_CODE"]}]}, ["body", "outcomes", 0, "codes", 0], "no code the model"),
    ({"groups": ["a", "b", "c", "d", "e", "f", "g"]}, ["body", "groups"], "limits.max_groups"),
    ({"rollouts": 1000}, ["body", "rollouts"], "limits.max_rollouts"),
])
def test_bad_input_is_a_422_naming_it_before_any_work(server, forecaster, change, loc, words):
    before = dict(server.state.jobs.jobs)
    r = forecaster.post("/v1/population-forecasts", json={**POPULATION, **change})
    assert r.status_code == 422, r.text
    err = r.json()["detail"][0]
    assert err["loc"] == loc and words in err["msg"], err
    assert server.state.jobs.jobs == before


def test_the_registered_datasets_are_the_only_ones(server):
    assert server.cfg.datasets == {harness.DATASET: server.cfg.datasets[harness.DATASET]}
