"""MEDS -> OMOP CDM 5.4 and back: a dataset of OMOP-derived codes reads back to the same events."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.omop.convert import OMOPImportConfig, convert_omop
from nightingale.data.omop.export import export_omop
from nightingale.data.validate import validate_meds
from tests.data.test_omop import write_cdm54

COLS = [S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE]


def _import(cdm, out):
    return convert_omop(OMOPImportConfig(cdm=cdm, out=out, max_time=dt.datetime(2026, 1, 1)))


def _events(root) -> pl.DataFrame:
    return pl.read_parquet(sorted((root / S.DATA_DIR).rglob("*.parquet"))).select(COLS).sort(COLS, nulls_last=True)


def test_the_5_4_fixture_reads_back_to_the_same_events(tmp_path):
    _import(write_cdm54(tmp_path / "cdm"), tmp_path / "meds")
    codes = pl.read_parquet(tmp_path / "meds" / S.CODES_FILE)
    assert {"omop_concept_id", "omop_table"} <= set(codes.columns)
    assert codes.filter(pl.col(S.CODE) == "Visit//IP//START")["omop_table"].item() == "visit_occurrence"
    counts = export_omop(tmp_path / "meds", tmp_path / "omop")
    assert counts["person"] == 3 and counts["visit_occurrence"] == 1 and counts["death"] == 1
    person = pl.read_csv(tmp_path / "omop" / "PERSON.csv")
    assert person.filter(pl.col("person_id") == 1)["gender_concept_id"].item() == 8532  # Gender//F
    _import(tmp_path / "omop", tmp_path / "meds2")
    assert validate_meds(tmp_path / "meds2").ok
    before, after = _events(tmp_path / "meds"), _events(tmp_path / "meds2")
    # text values are not written back (synthetic data carry none); every coded event is
    assert after.equals(before), (before.join(after, on=COLS, how="anti"), after.join(before, on=COLS, how="anti"))


def test_eunomia_reads_back_to_the_same_events(eunomia_omop, tmp_path):
    _import(eunomia_omop, tmp_path / "meds")
    export_omop(tmp_path / "meds", tmp_path / "omop")
    _import(tmp_path / "omop", tmp_path / "meds2")
    assert _events(tmp_path / "meds").equals(_events(tmp_path / "meds2"))


def test_bad_input_names_what_is_wrong_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="meds_dir: "):
        export_omop(tmp_path / "nothing", tmp_path / "omop")
    _import(write_cdm54(tmp_path / "cdm"), tmp_path / "meds")
    with pytest.raises(ValueError, match="codes: the reference codes.parquet has no omop_concept_id"):
        export_omop(tmp_path / "meds", tmp_path / "omop", pl.DataFrame({S.CODE: ["X//1"]}))
    assert not (tmp_path / "omop").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export_omop(tmp_path / "meds", tmp_path / "taken")
    proc = subprocess.run([sys.executable, "-m", "nightingale.cli", "export-omop", "--meds", str(tmp_path / "meds"),
                           "--codes", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "o2")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--codes" in proc.stderr and not (tmp_path / "o2").exists()
