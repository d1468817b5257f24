"""Every cohort carries its evidence and passes a release check before the generate scope gets it.

The independent cohort is the model's own, generated through `POST /v1/cohorts`. The copying
cohort stands for a model that memorised its training records, which cannot be trained within a
test: its MEDS data are training subjects, written where a job's generator would write them. What
is under test is real either way: the server's judge step (evidence against the registered
reference, release check), the job's report and the download endpoints over HTTP.
"""

from __future__ import annotations

import io
import time
import zipfile

import polars as pl
import pytest

from nightingale import schema as S
from nightingale.api.jobs import COHORT, judge_cohort
from nightingale.data.meds_io import MEDSDataset, MEDSWriter
from nightingale.inference.cohorts import CohortSpec
from tests.inference import harness

pytestmark = pytest.mark.slow


def _wait(client, jid: str) -> dict:
    deadline = time.time() + 300
    while (job := client.get(f"/v1/cohorts/{jid}").json())["status"] in ("queued", "running"):
        assert time.time() < deadline, job
        time.sleep(1)
    return job


def test_an_independent_cohort_is_released_with_its_evidence(generator):
    r = generator.post("/v1/cohorts", json={"n_patients": 50, "seed": 11})
    assert r.status_code == 202, r.text
    job = _wait(generator, r.json()["id"])
    assert job["status"] == "done", job
    assert job["release"]["released"], job["release"]
    assert {c["check"] for c in job["release"]["checks"]} == {"exact_copies", "copied_runs", "membership_inference",
                                                              "attribute_inference"}
    ev = job["evidence"]
    assert ev["dcr/exact_match_share"] == 0.0 and 0 < ev["mia/auc"] < 1 and ev["utility/auc_trtr"] is not None
    z = zipfile.ZipFile(io.BytesIO(generator.get(job["downloads"]["meds"]).content))
    names = set(z.namelist())
    assert {"evidence/evidence.json", "evidence/evidence.md", "evidence/plots/dcr.png"} <= names
    assert any(n.startswith("data/train/") for n in names)
    # the test model's codes are the simulator's, not OMOP concepts: no OMOP tables to offer
    assert "omop" not in job["downloads"]
    r = generator.get(f"/v1/cohorts/{job['id']}/download", params={"format": "omop"})
    assert r.status_code == 409 and "not OMOP concepts" in r.json()["detail"]


def test_a_cohort_copying_training_timelines_is_kept_for_the_operator(server, generator, admin):
    st = server.state
    reference = st.cfg.datasets[st.cfg.cohort_reference]
    ds = MEDSDataset(reference)
    first = ds.subjects(S.TRAIN).sort().head(50)
    copied = ds.scan().filter(pl.col(S.SUBJECT_ID).is_in(first.implode())).collect()

    async def copy_training(job) -> None:  # in place of generate_cohort: a memorising model's output
        with MEDSWriter(job.meds_dir) as w:
            w.write_shard("train/0", copied)
            w.write_splits(pl.DataFrame({S.SUBJECT_ID: copied[S.SUBJECT_ID].unique(), S.SPLIT: S.TRAIN}))
            w.write_dataset_json({"dataset_name": "copied"})
        job.report = {"patients": 50}
        await judge_cohort(job, reference, st.cfg.release)

    async def start():
        assert "generator" in harness.API_KEYS  # the key id that owns the job, as POST /v1/cohorts would
        return st.jobs.start(st.jobs.new("generator", COHORT, CohortSpec(n_patients=50)), copy_training).id

    jid = server.run(start())
    job = _wait(generator, jid)
    assert job["status"] == "done", job
    assert not job["release"]["released"] and job["downloads"] is None
    assert any(r.startswith("exact_copies: 1.0 is over the limit 0.0") for r in job["release"]["reasons"])
    for fmt in ("meds", "csv"):
        r = generator.get(f"/v1/cohorts/{jid}/download", params={"format": fmt})
        assert r.status_code == 403 and "failed its release check" in r.json()["detail"], r.text
    # the operator can still look at what was kept back
    assert admin.get(f"/v1/cohorts/{jid}").json()["downloads"] is not None
    assert admin.get(f"/v1/cohorts/{jid}/download", params={"format": "csv"}).status_code == 200
