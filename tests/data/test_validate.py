"""MEDS validator and summary: the MIMIC-IV demo passes; broken copies fail with a located message."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from nightingale import cli
from nightingale import schema as S
from nightingale.data.meds_io import MEDSWriter, write_meds_parquet
from nightingale.data.validate import (
    MEDS_CHECK,
    NIGHTINGALE_CHECK,
    MEDSValidationError,
    summarise_meds,
    validate_meds,
)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """`nightingale validate ...` through the real dispatcher, limited to this verb so these tests do
    not depend on sibling verbs; returns (exit code, stdout + stderr)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("nightingale.data.validate_command",))

    def run(*argv: str) -> tuple[int, str]:
        code = cli.main(["validate", *argv])
        out = capsys.readouterr()
        return code, out.out + out.err

    return run


@pytest.fixture
def mimic_copy(mimic_demo, tmp_path) -> Path:
    dest = tmp_path / "mimic"
    shutil.copytree(mimic_demo, dest)
    return dest


def _shard(root: Path, split: str) -> Path:
    return root / S.DATA_DIR / split / "0.parquet"


def _rejected(root: Path, run_cli, *needles: str, strict_codes: bool = True) -> None:
    """Both the library and the CLI reject `root`, and the message holds every needle."""
    report = validate_meds(root, strict_codes=strict_codes)
    assert not report.ok
    text = "\n".join(str(e) for e in report.errors)
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    code, out = run_cli(str(root))
    assert code == 1
    for needle in needles:
        assert needle in out, f"{needle!r} not in CLI output {out!r}"
    with pytest.raises(MEDSValidationError):
        validate_meds(root, strict_codes=strict_codes, fail_fast=True)


# --- the real dataset ---------------------------------------------------------------------------
def test_mimic_demo_validates_with_right_summary(mimic_demo, run_cli):
    report = validate_meds(mimic_demo)
    assert report.ok, report.errors
    assert report.warnings == []
    s = report.summary
    assert s.n_events == 916_166 and s.n_subjects == 100

    # Independent computation over all shards at once.
    data = pl.read_parquet(mimic_demo / S.DATA_DIR / "**" / "*.parquet")
    per_subject = data.group_by(S.SUBJECT_ID).len()["len"]
    assert s.n_events == data.height
    assert s.n_subjects == data[S.SUBJECT_ID].n_unique()
    assert s.n_unique_codes == data[S.CODE].n_unique()
    assert s.n_static_events == data[S.TIME].null_count()
    assert s.n_timed_events == data.height - data[S.TIME].null_count()
    assert s.n_numeric_values == data[S.NUMERIC_VALUE].count()
    assert s.time_min == data[S.TIME].min() and s.time_max == data[S.TIME].max()
    eps = s.events_per_subject
    assert eps["min"] == per_subject.min() and eps["max"] == per_subject.max()
    assert eps["median"] == pytest.approx(per_subject.median())
    assert eps["mean"] == pytest.approx(per_subject.mean())
    assert eps["p95"] == pytest.approx(per_subject.quantile(0.95, interpolation="linear"))
    splits = pl.read_parquet(mimic_demo / S.SPLITS_FILE)
    assert s.subjects_per_split == dict(splits.group_by(S.SPLIT).len().iter_rows())
    assert summarise_meds(mimic_demo) == s

    code, out = run_cli(str(mimic_demo))
    assert code == 0
    for text in ("916,166", "100", "7,035", "train", "held_out", "valid MEDS dataset"):
        assert text in out


def test_cli_json(mimic_demo, run_cli):
    code, out = run_cli(str(mimic_demo), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["valid"] is True and doc["errors"] == []
    assert doc["summary"]["n_events"] == 916_166
    assert doc["summary"]["subjects_per_split"] == {"train": 79, "tuning": 12, "held_out": 9}


# --- broken copies ------------------------------------------------------------------------------
def test_unsorted_shard(mimic_copy, run_cli):
    path = _shard(mimic_copy, "tuning")
    df = pl.read_parquet(path)
    # Swap the first pair of same-subject rows with strictly increasing times after row 1000.
    ok = (
        (pl.col(S.SUBJECT_ID) == pl.col(S.SUBJECT_ID).shift(-1))
        & (pl.col(S.TIME) < pl.col(S.TIME).shift(-1))
    )
    p = df.with_row_index("i").filter(ok & (pl.col("i") >= 1000))["i"][0]
    order = list(range(df.height))
    order[p], order[p + 1] = p + 1, p
    df[order].write_parquet(path)
    _rejected(mimic_copy, run_cli, "data/tuning/0.parquet", "column 'time'", f"row {p + 1}",
              "not sorted", str(df[S.SUBJECT_ID][p]))
    err = validate_meds(mimic_copy).errors[0]
    assert (err.file, err.column, err.row) == ("data/tuning/0.parquet", S.TIME, p + 1)


def test_static_row_after_timed_row_is_unsorted(mimic_copy):
    path = _shard(mimic_copy, "held_out")
    df = pl.read_parquet(path)
    assert df[S.TIME][0] is None  # the first subject's static row comes first
    df[[1, 0] + list(range(2, df.height))].write_parquet(path)
    err = validate_meds(mimic_copy).errors[0]
    assert (err.file, err.column, err.row) == ("data/held_out/0.parquet", S.TIME, 1)


def test_float_subject_id(mimic_copy, run_cli):
    path = _shard(mimic_copy, "train")
    pl.read_parquet(path).with_columns(pl.col(S.SUBJECT_ID).cast(pl.Float64)).write_parquet(path)
    _rejected(mimic_copy, run_cli, "data/train/0.parquet", "column 'subject_id'", "Float64",
              "expected Int64")
    # An unreadable shard stops the cross-shard checks instead of echoing its subjects.
    report = validate_meds(mimic_copy, reference="off")
    assert len(report.errors) == 1 and report.warnings == [] and report.summary is None
    # The `meds` package's own check finds it too, and says so separately.
    (ref,) = validate_meds(mimic_copy).by_check(MEDS_CHECK)
    assert ref.file == "data/train/0.parquet" and "subject_id (want int64, got double)" in ref.message
    with pytest.raises(MEDSValidationError, match="Float64"):
        summarise_meds(mimic_copy)


def test_missing_code_column(mimic_copy, run_cli):
    path = _shard(mimic_copy, "held_out")
    pl.read_parquet(path).drop(S.CODE).write_parquet(path)
    _rejected(mimic_copy, run_cli, "data/held_out/0.parquet", "column 'code'",
              "required column 'code' is missing")


def test_subject_in_two_shards(mimic_copy, run_cli):
    tuning, held_out = _shard(mimic_copy, "tuning"), _shard(mimic_copy, "held_out")
    tun = pl.read_parquet(tuning)
    sid = tun[S.SUBJECT_ID].min()
    merged = pl.concat([pl.read_parquet(held_out), tun.filter(pl.col(S.SUBJECT_ID) == sid)])
    merged = merged.sort(S.SUBJECT_ID, S.TIME, nulls_last=False, maintain_order=True)
    merged.write_parquet(held_out)
    row = merged.with_row_index("i").filter(pl.col(S.SUBJECT_ID) == sid)["i"][0]
    _rejected(mimic_copy, run_cli, f"subject {sid}", "data/held_out/0.parquet",
              "data/tuning/0.parquet", "exactly one shard", "column 'subject_id'", f"row {row}")


def test_code_missing_from_codes_metadata(mimic_copy, run_cli):
    train = pl.read_parquet(_shard(mimic_copy, "train"))
    code = train[S.CODE][500]
    codes = pl.read_parquet(mimic_copy / S.CODES_FILE)
    write_meds_parquet(codes.filter(pl.col(S.CODE) != code), mimic_copy / S.CODES_FILE,
                       S.MEDSCodeMetadataSchema)
    # The first shard (sorted by path) holding the code, and its first row there.
    for split in ("held_out", "train", "tuning"):
        rows = pl.read_parquet(_shard(mimic_copy, split)).with_row_index("i").filter(
            pl.col(S.CODE) == code)["i"]
        if rows.len():
            break
    _rejected(mimic_copy, run_cli, f"data/{split}/0.parquet", "column 'code'", f"row {rows[0]}",
              repr(code), S.CODES_FILE)

    lenient = validate_meds(mimic_copy, strict_codes=False)
    assert lenient.ok and any(repr(code) in str(w) for w in lenient.warnings)
    exit_code, out = run_cli(str(mimic_copy), "--no-strict-codes")
    assert exit_code == 0 and "warning:" in out and repr(code) in out


def test_subject_missing_from_splits(mimic_copy, run_cli):
    splits = pl.read_parquet(mimic_copy / S.SPLITS_FILE)
    tuning = pl.read_parquet(_shard(mimic_copy, "tuning")).with_row_index("i")
    sid = tuning[S.SUBJECT_ID][-1]
    row = tuning.filter(pl.col(S.SUBJECT_ID) == sid)["i"][0]
    splits.filter(pl.col(S.SUBJECT_ID) != sid).write_parquet(mimic_copy / S.SPLITS_FILE)
    _rejected(mimic_copy, run_cli, S.SPLITS_FILE, "column 'subject_id'", f"subject {sid}",
              f"first row {row} of data/tuning/0.parquet", "has no split")


def test_bad_split_name_and_extra_split_subject(mimic_copy, run_cli):
    splits = pl.read_parquet(mimic_copy / S.SPLITS_FILE)
    splits = splits.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("validation")).otherwise(pl.col(S.SPLIT))
        .alias(S.SPLIT))
    pl.concat([splits, pl.DataFrame({S.SUBJECT_ID: [1], S.SPLIT: [S.TRAIN]})]).write_parquet(
        mimic_copy / S.SPLITS_FILE)
    _rejected(mimic_copy, run_cli, S.SPLITS_FILE, "column 'split'", "row 3", "'validation'")
    report = validate_meds(mimic_copy)
    assert any("split but no data" in str(w) for w in report.warnings)


def test_empty_data_folder(mimic_copy, run_cli):
    for shard in (mimic_copy / S.DATA_DIR).rglob("*.parquet"):
        shard.unlink()
    _rejected(mimic_copy, run_cli, "data/", "no parquet shards", "empty")


def test_missing_metadata(mimic_copy, run_cli):
    (mimic_copy / S.CODES_FILE).unlink()
    (mimic_copy / S.DATASET_FILE).unlink()
    _rejected(mimic_copy, run_cli, S.CODES_FILE, "missing")
    assert any(S.DATASET_FILE in str(w) for w in validate_meds(mimic_copy).warnings)


# --- tiny written datasets ----------------------------------------------------------------------
def _tiny_events() -> pl.DataFrame:
    t = dt.datetime(2020, 1, 1)
    return pl.DataFrame({
        S.SUBJECT_ID: [1, 1, 1, 2, 2, 2],
        S.TIME: [None, t, t + dt.timedelta(days=3), None, t, t],
        S.CODE: ["SEX//F", S.BIRTH_CODE, "LOINC//4548-4", "SEX//M", S.BIRTH_CODE, S.DEATH_CODE],
        S.NUMERIC_VALUE: [None, None, 48.0, None, None, None],
    })


def _write_tiny(out: Path, events: pl.DataFrame, *, conform: bool = True) -> Path:
    """A two-subject dataset; with conform=False the shards are then overwritten exactly as
    given (polars' own writer: large_string codes, whatever dtypes `events` has)."""
    codes = pl.DataFrame({S.CODE: events[S.CODE].drop_nulls().unique().sort()})
    shards = {"train/0": events.filter(pl.col(S.SUBJECT_ID) == 1),
              "held_out/0": events.filter(pl.col(S.SUBJECT_ID) == 2)}
    with MEDSWriter(out) as w:
        for name, frame in shards.items():
            w.write_shard(name, frame.with_columns(pl.col(S.CODE).fill_null("X")))
        w.write_codes(codes)
        w.write_splits(pl.DataFrame({S.SUBJECT_ID: [1, 2], S.SPLIT: [S.TRAIN, S.HELD_OUT]}))
        w.write_dataset_json({"dataset_name": "tiny"})
    if not conform:
        for name, frame in shards.items():
            frame.write_parquet(out / S.DATA_DIR / f"{name}.parquet")
    return out


def test_tiny_writer_dataset_validates(tmp_path, run_cli):
    root = _write_tiny(tmp_path / "tiny", _tiny_events())
    report = validate_meds(root)
    assert report.ok and report.warnings == [], (report.errors, report.warnings)
    s = report.summary
    assert (s.n_subjects, s.n_events, s.n_static_events, s.n_unique_codes) == (2, 6, 2, 5)
    assert s.subjects_per_split == {S.TRAIN: 1, S.TUNING: 0, S.HELD_OUT: 1}
    assert s.events_per_subject == {"min": 3, "median": 3, "mean": 3, "p95": 3, "max": 3}
    assert run_cli(str(root))[0] == 0


def test_warnings_do_not_fail(tmp_path):
    events = _tiny_events().with_columns(
        pl.Series(S.NUMERIC_VALUE, [None, None, float("nan"), None, None, None], pl.Float64),
        pl.col(S.TIME).dt.cast_time_unit("ns"),
    )
    root = _write_tiny(tmp_path / "tiny", events, conform=False)
    report = validate_meds(root, reference="warn")
    assert report.ok, report.errors
    text = "\n".join(str(w) for w in report.warnings)
    assert "NaN/inf" in text and "Float64" in text and "time_unit='ns'" in text
    assert "optional column 'text_value' is absent" in text
    # The `meds` package is exact where we are lenient: as errors (the default) these fail it.
    strict = validate_meds(root)
    assert not strict.ok and strict.by_check(NIGHTINGALE_CHECK) == []
    ref = "\n".join(str(e) for e in strict.by_check(MEDS_CHECK))
    assert "[meds] data/train/0.parquet" in ref and "code (want string, got large_string)" in ref
    assert "numeric_value (want float, got double)" in ref


def test_null_code_is_an_error(tmp_path):
    events = _tiny_events().with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(None).otherwise(pl.col(S.CODE)).alias(S.CODE))
    report = validate_meds(_write_tiny(tmp_path / "tiny", events, conform=False))
    err = next(e for e in report.errors if e.column == S.CODE)
    assert err.file == "data/train/0.parquet" and err.row == 2 and "null code" in err.message


def test_many_shards_summary(tmp_path):
    """Subjects spread over many small shards: counts add up and nothing is flagged."""
    n = 40
    events = pl.concat([
        _tiny_events().with_columns(pl.col(S.SUBJECT_ID) + 10 * i) for i in range(n)
    ])
    splits = pl.DataFrame({S.SUBJECT_ID: events[S.SUBJECT_ID].unique()}).with_columns(
        pl.lit(S.TRAIN).alias(S.SPLIT))
    with MEDSWriter(tmp_path / "many") as w:
        for i in range(n):
            w.write_shard(f"train/{i}", events.filter(pl.col(S.SUBJECT_ID) // 10 == i))
        w.write_codes(pl.DataFrame({S.CODE: events[S.CODE].unique()}))
        w.write_splits(splits)
    s = summarise_meds(tmp_path / "many")
    assert (s.n_shards, s.n_subjects, s.n_events) == (n, 2 * n, 6 * n)


def test_meds_schema_rejects_null_created_at_and_writer_refuses_it(tmp_path, run_cli):
    root = _write_tiny(tmp_path / "tiny", _tiny_events())
    meta = json.loads((root / S.DATASET_FILE).read_text())
    assert dt.datetime.fromisoformat(meta["created_at"]).tzinfo is not None and meta["etl_version"]
    meta["created_at"] = None
    (root / S.DATASET_FILE).write_text(json.dumps(meta))
    report = validate_meds(root)
    assert report.by_check(NIGHTINGALE_CHECK) == []
    (err,) = report.by_check(MEDS_CHECK)
    assert err.file == S.DATASET_FILE and "field 'created_at'" in err.message
    code, out = run_cli(str(root))
    assert code == 1 and "[meds] metadata/dataset.json" in out and "created_at" in out
    assert "meds package schema validation: 1 error(s)" in out
    # as warnings (reading someone else's data) it passes; off, it is not run at all
    assert validate_meds(root, reference="warn").ok
    assert validate_meds(root, reference="off").warnings == []
    # our writer never produces it: the same metadata is refused before anything is written
    with pytest.raises(ValueError, match="created_at"):
        _write_tiny_meta(tmp_path / "refused", {"created_at": None})
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob(".refused*"))


def _write_tiny_meta(out: Path, meta: dict) -> None:
    events = _tiny_events()
    with MEDSWriter(out) as w:
        w.write_shard("train/0", events)
        w.write_codes(pl.DataFrame({S.CODE: events[S.CODE].unique()}))
        w.write_splits(pl.DataFrame({S.SUBJECT_ID: [1, 2], S.SPLIT: [S.TRAIN, S.HELD_OUT]}))
        w.write_dataset_json(meta)
