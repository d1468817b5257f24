"""OMOP out, end to end: a model trained on OMOP data (Eunomia, imported by import-omop) generates
a cohort; the cohort is written as OMOP CDM 5.4 tables and read back by `nightingale import-omop`
into MEDS that validates, with the codes the model learnt and each patient's sex as OMOP codes it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys

import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.omop.convert import OMOPImportConfig, convert_omop
from nightingale.data.omop.export import export_omop
from nightingale.data.validate import validate_meds
from nightingale.inference.cohort_calendar import calendar_window
from nightingale.inference.cohorts import CohortSpec, generate_cohort
from nightingale.inference.engine import Engine, EngineConfig
from tests.inference import harness
from tests.meds_check import assert_meds_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def eunomia_model(eunomia_omop, tmp_path_factory):
    root = harness.artifacts_root(tmp_path_factory.getbasetemp()) / "eunomia"
    if not (root / "meds").exists():
        root.mkdir(parents=True, exist_ok=True)
        convert_omop(OMOPImportConfig(cdm=eunomia_omop, out=root / "meds", max_time=dt.datetime(2026, 1, 1)))
    return harness.train_model_dir(root, steps=150, about="Eunomia GiBleed via import-omop (tests)"), root / "meds"


def test_a_cohort_of_an_omop_model_goes_out_as_omop_and_back(eunomia_model, tmp_path):
    model_dir, meds = eunomia_model
    spec = CohortSpec(n_patients=24, seed=1, batch_size=24, max_new_tokens=600, **calendar_window(meds).spec_fields())

    async def run():
        engine = await Engine.start(EngineConfig(model_dir=str(model_dir), max_num_seqs=64))
        try:
            return await generate_cohort(engine, spec, tmp_path / "cohort")
        finally:
            await engine.aclose()

    report = asyncio.run(run())
    assert report["patients"] == 24
    codes = pl.read_parquet(meds / S.CODES_FILE)
    counts = export_omop(tmp_path / "cohort", tmp_path / "omop", codes)
    assert counts["person"] == 24 and counts["condition_occurrence"] + counts["drug_exposure"] > 0
    person = pl.read_csv(tmp_path / "omop" / "PERSON.csv")
    assert set(person["gender_concept_id"]) <= {8507, 8532} and person["gender_concept_id"].is_not_null().all()

    proc = subprocess.run([sys.executable, "-m", "nightingale.cli", "import-omop", "--cdm", str(tmp_path / "omop"),
                           "--out", str(tmp_path / "back")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert validate_meds(tmp_path / "back").ok
    assert_meds_dataset(tmp_path / "back")  # and the `meds` package's own schemas
    synth = pl.read_parquet(sorted((tmp_path / "cohort" / S.DATA_DIR).rglob("*.parquet")))
    back = pl.read_parquet(sorted((tmp_path / "back" / S.DATA_DIR).rglob("*.parquet")))
    assert back[S.SUBJECT_ID].n_unique() == 24
    # every timed event comes back as it was, but a visit's end: OMOP has no visit without one, so
    # a START the model left open closes at its start, and an END with no START is not written
    keep = pl.col(S.TIME).is_not_null() & ~pl.col(S.CODE).str.ends_with("//END")
    cols = [S.SUBJECT_ID, S.TIME, S.CODE]
    assert back.filter(keep).select(cols).sort(cols).equals(synth.filter(keep).select(cols).sort(cols))
    ends = pl.col(S.CODE).str.ends_with("//END")
    assert back.filter(ends).height == back.filter(pl.col(S.CODE).str.ends_with("//START")).height
