"""MEDSWriter writes conforming, sorted shards atomically; MEDSDataset reads them lazily."""

import datetime as dt

import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset, MEDSWriter, conform_events


def _events():
    t = dt.datetime(2020, 1, 1)
    return pl.DataFrame(
        {
            S.SUBJECT_ID: [2, 1, 1, 1],
            S.TIME: [t, t + dt.timedelta(days=2), None, t],
            S.CODE: ["X", "B", "SEX//F", "A"],
            S.NUMERIC_VALUE: [None, 1.5, None, None],
        }
    )


def test_conform_casts_sorts_and_keeps_static_rows_first():
    df = conform_events(_events())
    assert dict(df.schema) == S.DATA_SCHEMA
    assert df[S.SUBJECT_ID].to_list() == [1, 1, 1, 2]
    assert df[S.CODE].to_list() == ["SEX//F", "A", "B", "X"]


def test_conform_names_missing_column():
    with pytest.raises(ValueError, match="code"):
        conform_events(_events().drop(S.CODE))


def test_writer_roundtrip(tmp_path):
    out = tmp_path / "meds"
    with MEDSWriter(out) as w:
        w.write_shard("train/0", _events())
        w.write_codes(pl.DataFrame({S.CODE: ["A", "B"], S.DESCRIPTION: ["a", "b"]}))
        w.write_splits(pl.DataFrame({S.SUBJECT_ID: [1, 2], S.SPLIT: [S.TRAIN, S.HELD_OUT]}))
        w.write_dataset_json({"dataset_name": "t"})
    ds = MEDSDataset(out)
    assert [ds.shard_name(p) for p in ds.shards()] == ["train/0"]
    assert ds.scan().collect().height == 4
    assert ds.codes().schema[S.PARENT_CODES] == pl.List(pl.String)
    assert ds.metadata()["meds_version"] == S.MEDS_VERSION
    assert sorted(ds.subjects(S.TRAIN).to_list()) == [1]


def test_writer_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "meds"
    with pytest.raises(ValueError, match="unknown split"), MEDSWriter(out) as w:
        w.write_shard("train/0", _events())
        w.write_splits(pl.DataFrame({S.SUBJECT_ID: [1], S.SPLIT: ["test"]}))
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_empty_dataset(tmp_path):
    with pytest.raises(ValueError, match="no shards"), MEDSWriter(tmp_path / "meds"):
        pass
    assert list(tmp_path.iterdir()) == []
