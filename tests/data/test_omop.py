"""OMOP CDM -> MEDS: Eunomia GiBleed (5.3), a hand-written 5.4 fixture, bad input and privacy."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import logging
from pathlib import Path

import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.omop import OMOPImportConfig, OMOPInputError, command, convert_omop
from nightingale.data.privacy import PrivacyConfigError, PrivacyPolicy
from tests.meds_check import assert_meds_dataset

log = logging.getLogger(__name__)
KEY = b"omop-test-key-0123456789abcdef"
T = dt.datetime


# --- a small OMOP 5.4 database ---------------------------------------------------------------------
def _cdm54_tables() -> dict[str, pl.DataFrame]:
    """Three persons; person 1 has one of everything, person 2 a pre-birth condition."""
    d, ts = dt.date, dt.datetime
    concept = pl.DataFrame(
        {
            "concept_id": [8532, 8507, 8527, 38003564, 9201, 201826, 201820, 1503297, 3004410,
                           8554, 3037110, 4181412, 4275495, 4230911, 321042],
            "concept_name": ["FEMALE", "MALE", "White", "Not Hispanic or Latino", "Inpatient Visit",
                             "Type 2 diabetes mellitus", "Diabetes mellitus", "metformin",
                             "Hemoglobin A1c", "percent", "Fasting glucose", "Present", "Smoker",
                             "Appendectomy", "Cardiac arrest"],
            "domain_id": ["Gender"] * 2 + ["Race", "Ethnicity", "Visit"] + ["Condition"] * 2
            + ["Drug", "Measurement", "Unit", "Measurement", "Meas Value", "Observation",
               "Procedure", "Condition"],
            "vocabulary_id": ["Gender", "Gender", "Race", "Ethnicity", "Visit", "SNOMED", "SNOMED",
                              "RxNorm", "LOINC", "UCUM", "LOINC", "SNOMED", "SNOMED", "SNOMED",
                              "SNOMED"],
            "concept_code": ["F", "M", "5", "Not Hispanic", "IP", "44054006", "73211009", "6809",
                             "4548-4", "%", "1558-6", "52101004", "77176002", "80146002",
                             "410429000"],
        }
    )  # fmt: skip
    return {
        "person": pl.DataFrame(
            {
                "person_id": [1, 2, 3],
                "gender_concept_id": [8532, 8507, 8532],
                "year_of_birth": [1980, 1990, 2000],
                "month_of_birth": [5, None, 1],
                "day_of_birth": [17, None, 1],
                "birth_datetime": [ts(1980, 5, 17, 8, 30), None, None],
                "race_concept_id": [8527, 0, 0],
                "ethnicity_concept_id": [0, 38003564, 0],
            }
        ),
        "visit_occurrence": pl.DataFrame(
            {
                "visit_occurrence_id": [10],
                "person_id": [1],
                "visit_concept_id": [9201],
                "visit_start_date": [d(2020, 1, 10)],
                "visit_start_datetime": [ts(2020, 1, 10, 9)],
                "visit_end_date": [d(2020, 1, 15)],
                "visit_end_datetime": [None],
                "visit_type_concept_id": [32817],
                "admitted_from_concept_id": [0],
                "discharged_to_concept_id": [0],
            },
            schema_overrides={"visit_end_datetime": pl.Datetime("us")},
        ),
        "condition_occurrence": pl.DataFrame(
            {
                "person_id": ["1", "1", "1", "2", "2", "3"],
                "condition_concept_id": ["201826", "0", "99999999", "201826", "201826", "201826"],
                "condition_start_date": [
                    "2020-01-10",
                    "2020-01-11",
                    "2020-01-13",
                    "1985-01-01",
                    "1990-01-01",
                    "2010-01-01",
                ],
                "condition_start_datetime": [None] * 6,
                "condition_source_value": ["E11.9", "E11.9", None, None, None, None],
            }
        ),
        "drug_exposure": pl.DataFrame(
            {
                "person_id": [1],
                "drug_concept_id": [1503297],
                "drug_exposure_start_date": [d(2020, 1, 12)],
                "drug_exposure_start_datetime": [ts(2020, 1, 12, 8)],
                "drug_source_value": ["metformin 500mg"],
            }
        ),
        "procedure_occurrence": pl.DataFrame(
            {
                "person_id": [2],
                "procedure_concept_id": [4230911],
                "procedure_date": [d(2019, 6, 1)],
                "procedure_datetime": [None],
                "procedure_end_date": [d(2019, 6, 1)],
            },
            schema_overrides={"procedure_datetime": pl.Datetime("us")},
        ),
        "measurement": pl.DataFrame(
            {
                "person_id": [1, 1, 999],
                "measurement_concept_id": [3004410, 3037110, 3004410],
                "measurement_date": [d(2020, 1, 10), d(2020, 1, 14), d(2020, 1, 1)],
                "measurement_datetime": [ts(2020, 1, 10, 10), None, None],
                "value_as_number": [7.5, None, 6.0],
                "value_as_concept_id": [0, 4181412, 0],
                "unit_concept_id": [8554, 0, 8554],
                "unit_source_value": ["%", None, "%"],
                "unit_source_concept_id": [0, 0, 0],
                "measurement_source_value": ["HbA1c", "glucose", "HbA1c"],
            }
        ),
        "observation": pl.DataFrame(
            {
                "person_id": [1],
                "observation_concept_id": [4275495],
                "observation_date": [d(2020, 1, 14)],
                "observation_datetime": [None],
                "value_as_number": [None],
                "value_as_string": ["current"],
                "value_as_concept_id": [0],
                "unit_concept_id": [0],
                "observation_source_value": ["smoker"],
                "value_source_value": ["current"],
            },
            schema_overrides={
                "observation_datetime": pl.Datetime("us"),
                "value_as_number": pl.Float64,
            },
        ),
        "death": pl.DataFrame(
            {
                "person_id": ["1"],
                "death_date": ["2021-03-01"],
                "death_datetime": [None],
                "cause_concept_id": ["321042"],
                "cause_source_value": ["I46.9"],
            }
        ),
        "concept": concept,
        "concept_ancestor": pl.DataFrame(
            {
                "ancestor_concept_id": [201820, 4000000, 201826],
                "descendant_concept_id": [201826, 201826, 201826],
                "min_levels_of_separation": [1, 2, 0],
                "max_levels_of_separation": [1, 2, 0],
            }
        ),
    }


CSV_TABLES = {"condition_occurrence", "death", "concept"}


def write_cdm54(root: Path, tables: dict[str, pl.DataFrame] | None = None) -> Path:
    """Write the 5.4 fixture: text tables as CSV (one gzipped), the rest as parquet."""
    root.mkdir(parents=True)
    for name, df in (tables or _cdm54_tables()).items():
        if name in CSV_TABLES:
            path = root / (f"{name}.csv.gz" if name == "death" else f"{name}.csv")
            df.write_csv(path, compression="gzip" if path.suffix == ".gz" else "uncompressed")
        else:
            df.write_parquet(root / f"{name}.parquet")
    return root


def write_duckdb(path: Path) -> Path:
    import duckdb

    con = duckdb.connect(str(path))
    for name, df in _cdm54_tables().items():
        arrow = df.rename({c: c.upper() for c in df.columns}).to_arrow()  # any case is fine
        con.register("src", arrow)
        con.execute(f"CREATE TABLE {name.upper()} AS SELECT * FROM src")
        con.unregister("src")
    con.close()
    return path


def _convert(cdm: Path, out: Path, policy: PrivacyPolicy | None = None, **kw) -> dict:
    cfg = OMOPImportConfig(cdm=cdm, out=out, max_time=T(2026, 1, 1), **kw)
    return convert_omop(cfg, policy)


def _events(root: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted((root / S.DATA_DIR).rglob("*.parquet")))


def check_meds(root: Path) -> pl.DataFrame:
    """Our own MEDS 0.4 checks and the `meds` package's schemas; returns all events."""
    assert_meds_dataset(root)
    shards = sorted((root / S.DATA_DIR).rglob("*.parquet"))
    seen: dict[int, str] = {}
    for shard in shards:
        df = pl.read_parquet(shard)
        assert {c: df.schema[c] for c in S.DATA_SCHEMA} == S.DATA_SCHEMA, shard
        assert df[S.CODE].null_count() == 0
        key = df.select(
            S.SUBJECT_ID,
            pl.col(S.TIME).is_not_null().alias("timed"),
            pl.col(S.TIME).fill_null(T(1, 1, 1)),
        )
        assert key.equals(key.sort(key.columns, maintain_order=True)), f"{shard} not sorted"
        for sid in df[S.SUBJECT_ID].unique():
            assert sid not in seen, f"subject {sid} in {seen.get(sid)} and {shard}"
            seen[sid] = shard.name
    events = _events(root)
    codes = pl.read_parquet(root / S.CODES_FILE)
    assert codes.schema[S.PARENT_CODES] == pl.List(pl.String)
    assert set(events[S.CODE].unique()) <= set(codes[S.CODE])
    splits = pl.read_parquet(root / S.SPLITS_FILE)
    assert set(splits[S.SUBJECT_ID]) == set(seen)
    assert set(splits[S.SPLIT]) <= set(S.SPLITS)
    for shard in shards:  # shard folder == the subject's split
        sub = pl.read_parquet(shard, columns=[S.SUBJECT_ID]).unique().join(splits, on=S.SUBJECT_ID)
        assert set(sub[S.SPLIT]) == {shard.parent.name}
    births = events.filter(pl.col(S.CODE) == S.BIRTH_CODE)
    assert births[S.SUBJECT_ID].n_unique() == len(seen) == births.height
    if importlib.util.find_spec("nightingale.data.validate") is not None:
        from nightingale.data.validate import validate_meds

        report = validate_meds(root)
        assert report.ok, [str(e) for e in report.errors]
    return events


# --- Eunomia GiBleed (CDM 5.3) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def eunomia_meds(eunomia_omop, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eunomia") / "meds"
    meta = _convert(eunomia_omop, out, shard_size=1000)
    return out, meta


@pytest.mark.shared_data
def test_eunomia_converts_to_valid_meds(eunomia_meds):
    root, meta = eunomia_meds
    events = check_meds(root)
    per_subject = events.group_by(S.SUBJECT_ID).len()["len"]
    q = {p: per_subject.quantile(p) for p in (0.0, 0.1, 0.5, 0.9, 1.0)}
    log.info("Eunomia: %d subjects, %d events, quantiles %s", per_subject.len(), events.height, q)
    assert per_subject.len() == meta["subjects"] == 2694
    assert meta["cdm_version"] == "5.3" and meta["events"] == events.height
    assert 30 <= q[0.5] <= 200 and q[0.0] >= 3  # birth + sex + at least one clinical event
    assert events.filter(pl.col(S.CODE) == S.DEATH_CODE).is_empty()  # GiBleed has no death table
    sexes = events.filter(pl.col(S.CODE).str.starts_with("Gender//"))
    assert sexes[S.SUBJECT_ID].n_unique() == 2694 and set(sexes[S.CODE]) == {
        "Gender//F",
        "Gender//M",
    }
    assert (
        events.filter(pl.col(S.TIME).is_null())[S.CODE]
        .str.contains("^(Gender|Race|Ethnicity)//")
        .all()
    )
    codes = pl.read_parquet(root / S.CODES_FILE)
    gi_bleed = codes.filter(pl.col(S.CODE) == "SNOMED//74474003").row(0, named=True)
    assert gi_bleed[S.DESCRIPTION] == "Gastrointestinal hemorrhage" and gi_bleed[S.PARENT_CODES]
    assert len(meta["shards"]) >= 3 and meta["table_rows"]["condition_occurrence"] == 65332


# --- the 5.4 fixture ---------------------------------------------------------------------------------
EXPECTED_PERSON_1 = [
    (None, "Gender//F", None, None, None),
    (None, "Race//5", None, None, None),
    (T(1980, 5, 17, 8, 30), S.BIRTH_CODE, None, None, None),
    (T(2020, 1, 10), "SNOMED//44054006", None, None, None),
    (T(2020, 1, 10, 9), "Visit//IP//START", None, None, None),
    (T(2020, 1, 10, 10), "LOINC//4548-4", 7.5, None, "%"),
    (T(2020, 1, 11), "SOURCE//condition//E11.9", None, None, None),
    (T(2020, 1, 12, 8), "RxNorm//6809", None, None, None),
    (T(2020, 1, 13), "OMOP//99999999", None, None, None),
    (T(2020, 1, 14), "LOINC//1558-6", None, "Present", None),
    (T(2020, 1, 14), "SNOMED//77176002", None, "current", None),
    (T(2020, 1, 15), "Visit//IP//END", None, None, None),
    (T(2021, 3, 1), S.DEATH_CODE, None, None, None),
    (T(2021, 3, 1), "SNOMED//410429000", None, None, None),
]
COLS = [S.TIME, S.CODE, S.NUMERIC_VALUE, S.TEXT_VALUE, S.UNIT]


def _check_fixture_output(root: Path, meta: dict) -> None:
    events = check_meds(root)
    p1 = events.filter(pl.col(S.SUBJECT_ID) == 1).select(COLS)
    assert p1.rows() == EXPECTED_PERSON_1
    p2 = events.filter(pl.col(S.SUBJECT_ID) == 2).select(S.TIME, S.CODE).rows()
    assert p2 == [
        (None, "Ethnicity//Not Hispanic"),
        (None, "Gender//M"),
        (T(1990, 1, 1), "SNOMED//44054006"),  # within a year before birth: kept
        (T(1990, 7, 1), S.BIRTH_CODE),  # no month/day: 1 July
        (T(2019, 6, 1), "SNOMED//80146002"),
    ]
    assert meta["cdm_version"] == "5.4" and meta["subjects"] == 3
    assert meta["dropped_events"] == {
        "condition_occurrence": {"before_birth": 1},
        "measurement": {"unknown_person": 1},
    }
    codes = pl.read_parquet(root / S.CODES_FILE)
    t2dm = codes.filter(pl.col(S.CODE) == "SNOMED//44054006").row(0, named=True)
    assert t2dm[S.DESCRIPTION] == "Type 2 diabetes mellitus"
    assert t2dm[S.PARENT_CODES] == ["SNOMED//73211009"]  # direct parent only
    visit = codes.filter(pl.col(S.CODE) == "Visit//IP//START").row(0, named=True)
    assert visit[S.DESCRIPTION] == "Inpatient Visit start"


def test_cdm54_folder_converts_exactly(tmp_path):
    cdm = write_cdm54(tmp_path / "cdm")
    meta = _convert(cdm, tmp_path / "meds")
    _check_fixture_output(tmp_path / "meds", meta)
    assert meta["source"]["kind"] == "folder" and meta["table_rows"]["death"] == 1


def test_cdm54_duckdb_gives_the_same_events(tmp_path):
    meta = _convert(write_duckdb(tmp_path / "cdm.duckdb"), tmp_path / "meds")
    _check_fixture_output(tmp_path / "meds", meta)
    assert meta["source"]["kind"] == "duckdb"
    _convert(write_cdm54(tmp_path / "cdm"), tmp_path / "meds2")
    assert _events(tmp_path / "meds").equals(_events(tmp_path / "meds2"))


def test_upper_case_file_and_column_names(tmp_path):
    tables = {n: df.rename({c: c.upper() for c in df.columns}) for n, df in _cdm54_tables().items()}
    root = tmp_path / "cdm"
    root.mkdir()
    for name, df in tables.items():
        df.write_parquet(root / f"{name.upper()}.parquet")
    meta = _convert(root, tmp_path / "meds")
    _check_fixture_output(tmp_path / "meds", meta)


def test_splits_are_deterministic_and_sharded(tmp_path):
    cdm = write_cdm54(tmp_path / "cdm")
    a = _convert(cdm, tmp_path / "a", shard_size=1, seed=3)
    b = _convert(cdm, tmp_path / "b", shard_size=1, seed=3)
    assert a["shards"] == b["shards"] and len(a["shards"]) == 3
    sa, sb = (pl.read_parquet(tmp_path / x / S.SPLITS_FILE) for x in "ab")
    assert sa.equals(sb)


# --- bad input: a clear error and no output ------------------------------------------------------------
def _assert_fails(tmp_path, cdm, match, policy=None):
    out = tmp_path / "meds"
    with pytest.raises((OMOPInputError, PrivacyConfigError), match=match):
        _convert(cdm, out, policy)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".meds")], (
        "temporary left behind"
    )


def test_missing_person_table(tmp_path):
    cdm = write_cdm54(tmp_path / "cdm")
    (cdm / "person.parquet").unlink()
    _assert_fails(tmp_path, cdm, r"required table 'person' is missing")


def test_missing_required_column(tmp_path):
    tables = _cdm54_tables()
    tables["person"] = tables["person"].drop("year_of_birth")
    cdm = write_cdm54(tmp_path / "cdm", tables)
    _assert_fails(
        tmp_path,
        cdm,
        r"table person \(.*person\.parquet\): required column\(s\) \['year_of_birth'\]",
    )


def test_unparsable_date(tmp_path):
    tables = _cdm54_tables()
    cond = tables["condition_occurrence"]
    tables["condition_occurrence"] = cond.with_columns(
        pl.when(pl.int_range(pl.len()) == 1).then(pl.lit("2020-13-45"))
        .otherwise(pl.col("condition_start_date")).alias("condition_start_date")
    )  # fmt: skip
    cdm = write_cdm54(tmp_path / "cdm", tables)
    _assert_fails(
        tmp_path,
        cdm,
        r"condition_occurrence .*condition_start_date: cannot read '2020-13-45' .*row 2",
    )


def test_empty_person_table(tmp_path):
    tables = _cdm54_tables()
    tables["person"] = tables["person"].head(0)
    _assert_fails(tmp_path, write_cdm54(tmp_path / "cdm", tables), r"table person .*no rows.*empty")


def test_unreadable_key_file(tmp_path):
    cdm = write_cdm54(tmp_path / "cdm")
    with pytest.raises(PrivacyConfigError, match=r"key file .*missing\.key"):
        PrivacyPolicy.from_options(pseudonymise=True, key_file=tmp_path / "missing.key")
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    out = tmp_path / "meds"
    argv = ["import-omop", "--cdm", str(cdm), "--out", str(out), "--pseudonymise",
            "--key-file", str(tmp_path / "missing.key")]  # fmt: skip
    args = parser.parse_args(argv)
    assert args.func(args) == 2 and not out.exists()


# --- privacy --------------------------------------------------------------------------------------------
def test_pseudonymise_and_opt_out(tmp_path, monkeypatch):
    cdm = write_cdm54(tmp_path / "cdm")
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    opt_out = tmp_path / "optout.txt"
    opt_out.write_text("3  # asked to leave\n")
    policy = PrivacyPolicy.from_options(pseudonymise=True, key_file=key_file, opt_out_file=opt_out)
    meta = _convert(cdm, tmp_path / "a", policy)
    monkeypatch.setenv("NIGHTINGALE_PSEUDONYM_KEY", KEY.decode())
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(
        ["import-omop", "--cdm", str(cdm), "--out", str(tmp_path / "b"), "--pseudonymise"]
    )
    assert args.func(args) == 0

    a, b = _events(tmp_path / "a"), _events(tmp_path / "b")
    ids = set(a[S.SUBJECT_ID])
    assert len(ids) == 2 and not ids & {1, 2, 3}
    assert set(b[S.SUBJECT_ID]) >= ids  # same key -> same pseudonyms (b keeps person 3)
    check_meds(tmp_path / "a")
    splits = pl.read_parquet(tmp_path / "a" / S.SPLITS_FILE)
    assert set(splits[S.SUBJECT_ID]) == ids
    assert meta["privacy"]["pseudonymised"] and meta["privacy"]["opt_out_removed_subjects"] == 1
    for f in (tmp_path / "a").rglob("*"):
        if f.is_file():
            assert KEY not in f.read_bytes(), f
    # person 3 had one condition and a birth; both are gone
    assert a.filter(pl.col(S.TIME) == T(2000, 1, 1)).is_empty()
    assert json.loads((tmp_path / "a" / S.DATASET_FILE).read_text())["subjects"] == 2
