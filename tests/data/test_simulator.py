"""The cohort simulator writes valid, deterministic, plausible MEDS data, with privacy applied."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.cli import main as cli
from nightingale.data.meds_io import MEDSDataset
from nightingale.data.simulator import SimulatorConfig, simulate
from nightingale.data.simulator import codes as C
from nightingale.data.simulator import model as M
from tests.meds_check import assert_meds_dataset

SUBJECTS, SHARD = 1500, 500


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "ds"
    simulate(SimulatorConfig(subjects=SUBJECTS, shard_size=SHARD, seed=11), out, workers=1)
    return out


@pytest.fixture(scope="module")
def events(sim) -> pl.DataFrame:
    return MEDSDataset(sim).scan().collect()


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- MEDS validity ---------------------------------------------------------------------------------
def test_layout_and_dtypes(sim):
    assert_meds_dataset(sim)  # the `meds` package's own schemas
    ds = MEDSDataset(sim)
    names = {ds.shard_name(p) for p in ds.shards()}
    assert names == {f"{s}/{k}" for s in S.SPLITS for k in range(SUBJECTS // SHARD)}
    for path in ds.shards():
        df = pl.read_parquet(path)
        assert dict(df.schema) == S.DATA_SCHEMA, path
        assert df[S.SUBJECT_ID].null_count() == 0 and df[S.CODE].null_count() == 0
    meta = json.loads((sim / S.DATASET_FILE).read_text())
    # the extract date (the day after the window ends), not the wall clock: seeds stay reproducible
    assert meta["created_at"] == "2026-01-01T00:00:00+00:00" and meta["simulator"]["seed"] == 11
    assert meta["meds_version"] == S.MEDS_VERSION and meta["privacy"]["pseudonymised"] is False


def test_sorted_static_first_one_shard_per_subject(sim):
    seen: dict[int, str] = {}
    for name, lf in MEDSDataset(sim).iter_shards():
        df = lf.collect()
        # Within a subject: static rows (null time) first, then non-decreasing time.
        chk = df.with_columns(pl.col(S.TIME).is_null().alias("static")).group_by(
            S.SUBJECT_ID, maintain_order=True).agg(
            (pl.col(S.TIME).drop_nulls().diff().dt.total_microseconds().min() >= 0).alias("sorted"),
            (pl.col("static").cast(pl.Int8).diff().max() <= 0).alias("static_first"))
        assert chk["sorted"].fill_null(True).all() and chk["static_first"].fill_null(True).all(), name
        assert df[S.SUBJECT_ID].is_sorted()
        for sid in df[S.SUBJECT_ID].unique().to_list():
            assert sid not in seen, f"subject {sid} in {name} and {seen[sid]}"
            seen[sid] = name
    assert len(seen) == SUBJECTS


def test_static_rows_have_null_time(events):
    static = events.filter(pl.col(S.TIME).is_null())
    assert static[S.CODE].str.contains("^(SEX|ETHNICITY|IMD)//").all()
    per = static.group_by(S.SUBJECT_ID).len()
    assert per.height == SUBJECTS and (per["len"] == 3).all()
    births = events.filter(pl.col(S.CODE) == S.BIRTH_CODE)
    assert births.height == SUBJECTS and births[S.TIME].null_count() == 0


def test_codes_metadata_complete(sim, events):
    codes = MEDSDataset(sim).codes()
    assert {S.CODE, S.DESCRIPTION, S.PARENT_CODES, S.UNIT} <= set(codes.columns)
    known = set(codes[S.CODE].to_list())
    assert set(events[S.CODE].unique().to_list()) <= known
    assert (codes[S.DESCRIPTION].str.len_chars() > 0).all()
    parents = {p for ps in codes[S.PARENT_CODES].to_list() for p in ps}
    assert parents <= known, parents - known
    icd = codes.filter(pl.col(S.CODE).str.starts_with("ICD10//") & ~pl.col(S.CODE).str.contains("CHAPTER"))
    assert (icd[S.PARENT_CODES].list.len() > 0).all()
    e11 = codes.filter(pl.col(S.CODE) == "ICD10//E11.9")[S.PARENT_CODES][0].to_list()
    assert e11 == ["ICD10//E11"]
    units = dict(codes.select(S.CODE, S.UNIT).iter_rows())
    assert units["LOINC//59261-8"] == "mmol/mol" and units["LOINC//62238-1"] == "mL/min/1.73m2"
    numeric_codes = events.filter(pl.col(S.NUMERIC_VALUE).is_not_null())[S.CODE].unique().to_list()
    assert all(units[c] for c in numeric_codes)


def test_splits_cover_subjects(sim, events):
    splits = MEDSDataset(sim).splits()
    assert splits.height == SUBJECTS and splits[S.SUBJECT_ID].n_unique() == SUBJECTS
    assert set(splits[S.SUBJECT_ID].to_list()) == set(events[S.SUBJECT_ID].unique().to_list())
    share = splits[S.SPLIT].value_counts().sort(S.SPLIT)
    counts = dict(share.iter_rows())
    assert counts == {S.TRAIN: 1200, S.TUNING: 150, S.HELD_OUT: 150}
    # The split a subject is written under is the one in subject_splits.
    ds = MEDSDataset(sim)
    for name, lf in ds.iter_shards():
        ids = lf.select(S.SUBJECT_ID).unique().collect()[S.SUBJECT_ID]
        assert set(splits.filter(pl.col(S.SUBJECT_ID).is_in(ids.implode()))[S.SPLIT].unique()) == {name.split("/")[0]}


def test_validator_accepts_output(sim):
    validate = pytest.importorskip("nightingale.data.validate")
    report = validate.validate_meds(sim)
    assert report.ok, [e.to_dict() for e in report.errors]


# --- determinism -------------------------------------------------------------------------------
def test_same_seed_byte_identical_any_workers(sim, tmp_path):
    again = tmp_path / "again"
    simulate(SimulatorConfig(subjects=SUBJECTS, shard_size=SHARD, seed=11), again, workers=2)
    assert _digest(again) == _digest(sim)


def test_different_seed_differs(sim, tmp_path):
    other = tmp_path / "other"
    simulate(SimulatorConfig(subjects=SUBJECTS, shard_size=SHARD, seed=12), other, workers=1)
    a, b = _digest(sim), _digest(other)
    assert a.keys() == b.keys()
    assert a["data/train/0.parquet"] != b["data/train/0.parquet"]


# --- plausibility --------------------------------------------------------------------------------
def _first(events: pl.DataFrame, code: str) -> pl.DataFrame:
    return events.filter(pl.col(S.CODE) == code).group_by(S.SUBJECT_ID).agg(pl.col(S.TIME).min().alias(code))


def test_prevalence_by_age(events):
    end = events.group_by(S.SUBJECT_ID).agg(pl.col(S.TIME).max().alias("last"))
    birth = events.filter(pl.col(S.CODE) == S.BIRTH_CODE).select(S.SUBJECT_ID, pl.col(S.TIME).alias("birth"))
    ages = end.join(birth, on=S.SUBJECT_ID).with_columns(
        ((pl.col("last") - pl.col("birth")).dt.total_days() / 365.25).alias("age"))
    dm = set(events.filter(pl.col(S.CODE) == "ICD10//E11.9")[S.SUBJECT_ID].to_list())
    htn = set(events.filter(pl.col(S.CODE) == "ICD10//I10")[S.SUBJECT_ID].to_list())
    young = ages.filter(pl.col("age") < 40)[S.SUBJECT_ID].to_list()
    old = ages.filter(pl.col("age") >= 60)[S.SUBJECT_ID].to_list()
    elderly = ages.filter(pl.col("age") >= 75)[S.SUBJECT_ID].to_list()

    def prev(group, cases):
        return np.mean([i in cases for i in group])

    assert prev(old, dm) > 3 * prev(young, dm)
    assert 0.05 < prev(old, dm) < 0.40
    assert 0.35 < prev(elderly, htn) < 0.90
    assert prev(young, htn) < 0.10


def test_values_follow_conditions(events):
    dm = _first(events, "ICD10//E11.9")
    a1c = events.filter(pl.col(S.CODE) == "LOINC//59261-8").join(dm, on=S.SUBJECT_ID, how="left")
    diab = a1c.filter(pl.col(S.TIME) >= pl.col("ICD10//E11.9"))[S.NUMERIC_VALUE].mean()
    non = a1c.filter(pl.col("ICD10//E11.9").is_null())[S.NUMERIC_VALUE].mean()
    assert diab > non + 10, (diab, non)
    ckd = events.filter(pl.col(S.CODE).str.starts_with("ICD10//N18.")).group_by(S.SUBJECT_ID).agg(
        pl.col(S.TIME).min().alias("ckd"))
    egfr = events.filter(pl.col(S.CODE) == "LOINC//62238-1").join(ckd, on=S.SUBJECT_ID, how="left")
    assert egfr.filter(pl.col(S.TIME) >= pl.col("ckd"))[S.NUMERIC_VALUE].mean() < 60
    assert egfr.filter(pl.col("ckd").is_null())[S.NUMERIC_VALUE].mean() > 75
    # eGFR is computed from the creatinine measured at the same time: higher creatinine, lower eGFR.
    pair = events.filter(pl.col(S.CODE).is_in(["LOINC//62238-1", "LOINC//14682-9"])).pivot(
        on=S.CODE, index=[S.SUBJECT_ID, S.TIME], values=S.NUMERIC_VALUE, aggregate_function="first")
    info = events.filter(pl.col(S.CODE).is_in([S.BIRTH_CODE, "SEX//M", "SEX//F"])).group_by(S.SUBJECT_ID).agg(
        pl.col(S.TIME).min().alias("birth"), (pl.col(S.CODE) == "SEX//M").any().alias("male"))
    pair = pair.join(info, on=S.SUBJECT_ID)
    age = ((pair[S.TIME] - pair["birth"]).dt.total_days() / 365.25).to_numpy()
    expected = M.egfr_from_creatinine(pair["LOINC//14682-9"].to_numpy(), age, pair["male"].to_numpy())
    assert np.abs(expected - pair["LOINC//62238-1"].to_numpy()).max() <= 1.0


def test_prescriptions_follow_diagnoses(events):
    dm = _first(events, "ICD10//E11.9")
    met = _first(events, "ATC//A10BA02")
    both = met.join(dm, on=S.SUBJECT_ID, how="left")
    assert met.height > 10
    assert both["ICD10//E11.9"].null_count() == 0, "metformin without a diabetes diagnosis"
    assert (both["ATC//A10BA02"] >= both["ICD10//E11.9"]).all(), "metformin before diagnosis"
    af = _first(events, "ICD10//I48.9")
    for drug in ("ATC//B01AF02", "ATC//B01AA03"):
        d = _first(events, drug).join(af, on=S.SUBJECT_ID, how="left")
        assert d["ICD10//I48.9"].null_count() == 0 and (d[drug] >= d["ICD10//I48.9"]).all()
    # Repeat issues: diabetics on metformin get it many times.
    n_issues = events.filter(pl.col(S.CODE) == "ATC//A10BA02").group_by(S.SUBJECT_ID).len()["len"]
    assert n_issues.median() >= 6


def test_death_last_and_admissions_discharged(events):
    deaths = events.filter(pl.col(S.CODE) == S.DEATH_CODE)
    assert deaths[S.SUBJECT_ID].n_unique() == deaths.height > 0
    last = events.filter(pl.col(S.TIME).is_not_null()).group_by(S.SUBJECT_ID, maintain_order=True).agg(
        pl.col(S.CODE).last(), pl.col(S.TIME).max().alias("tmax"))
    dead = last.filter(pl.col(S.SUBJECT_ID).is_in(deaths[S.SUBJECT_ID].implode()))
    assert (dead[S.CODE] == S.DEATH_CODE).all()
    adm = events.filter(pl.col(S.CODE) == "ADMISSION//EMERGENCY").height
    dis = events.filter(pl.col(S.CODE).str.starts_with("DISCHARGE//")).height
    died_in = adm - dis
    assert adm > 0 and 0 <= died_in <= deaths.height
    end = np.datetime64("2026-01-01")
    assert (events[S.TIME].drop_nulls().to_numpy() < end).all()


def test_mean_events_per_subject(events):
    assert events.height / SUBJECTS >= 100


# --- privacy and bad input -----------------------------------------------------------------------
def test_pseudonymise_and_opt_out(tmp_path):
    key = b"a-very-secret-pseudonym-key-0123456789"
    (tmp_path / "key").write_bytes(key)
    (tmp_path / "optout.txt").write_text("# opted out\n3\n7\n250\n")
    out = tmp_path / "priv"
    rc = cli(["simulate", "--subjects", "300", "--shard-size", "100", "--seed", "4", "--out", str(out),
              "--workers", "1", "--pseudonymise", "--key-file", str(tmp_path / "key"),
              "--opt-out", str(tmp_path / "optout.txt")])
    assert rc == 0
    ev = MEDSDataset(out).scan().collect()
    ids = set(ev[S.SUBJECT_ID].unique().to_list())
    assert len(ids) == 297 and not ids & set(range(1, 301))
    splits = MEDSDataset(out).splits()
    assert set(splits[S.SUBJECT_ID].to_list()) == ids
    for p in out.rglob("*"):
        if p.is_file():
            assert key not in p.read_bytes(), p
    meta = json.loads((out / S.DATASET_FILE).read_text())
    assert meta["privacy"]["pseudonymised"] and meta["privacy"]["opt_out_removed_subjects"] == 3
    assert meta["subjects"] == 297
    # Same key, same pseudonyms; the raw run has subjects 3, 7 and 250 that the private one lacks.
    raw = tmp_path / "raw"
    assert cli(["simulate", "--subjects", "300", "--shard-size", "100", "--seed", "4", "--out", str(raw),
                "--workers", "1"]) == 0
    raw_ids = set(MEDSDataset(raw).scan().select(S.SUBJECT_ID).unique().collect()[S.SUBJECT_ID].to_list())
    assert {3, 7, 250} <= raw_ids and len(raw_ids) == 300


@pytest.mark.parametrize("argv, message", [
    (["--subjects", "0"], "subjects"),
    (["--subjects", "10", "--start-date", "2005-13-01"], "start_date"),
    (["--subjects", "10", "--start-date", "2020-01-01", "--end-date", "2010-01-01"], "end_date"),
    (["--subjects", "10", "--shard-size", "-1"], "shard_size"),
])
def test_bad_input_clear_error_nothing_written(tmp_path, caplog, argv, message):
    out = tmp_path / "bad"
    assert cli(["simulate", "--out", str(out), *argv]) == 2
    assert message in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path, caplog):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli(["simulate", "--subjects", "20", "--out", str(out), "--workers", "1"]) == 2
    assert "already exists" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["ds"] and (out / "keep.txt").read_text() == "mine"
    assert cli(["simulate", "--subjects", "20", "--out", str(out), "--workers", "1", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / S.CODES_FILE).exists()


def test_unreadable_key_file(tmp_path, caplog):
    out = tmp_path / "ds"
    assert cli(["simulate", "--subjects", "20", "--out", str(out), "--pseudonymise",
                "--key-file", str(tmp_path / "missing.key")]) == 2
    assert "key file" in caplog.text and not out.exists()


def test_catalogue_is_consistent():
    table = C.codes_table()
    assert table[S.CODE].n_unique() == table.height == len(C.CODE_STRINGS)
    assert SimulatorConfig(subjects=25, shard_size=10).n_shards == 3
    with pytest.raises(ValueError, match="later_registrant_share"):
        SimulatorConfig(later_registrant_share=0.9)
