"""Atomic writes leave either the finished thing or nothing."""

import json

import pytest

from nightingale.atomic import atomic_dir, atomic_file, write_json_atomic


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.json"
    write_json_atomic({"x": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_dir_removes_partial_output(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "part.parquet").write_text("x")
            raise ValueError("bad input")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_unless_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_dir(target):
            pass
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
