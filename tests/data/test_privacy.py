"""Pseudonymisation is keyed, stable and irreversible without the key; opt-outs are honoured."""

import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.privacy import PrivacyConfigError, PrivacyPolicy, read_key, read_opt_out

KEY = b"a-test-key-that-is-long-enough"


def _events():
    return pl.DataFrame({S.SUBJECT_ID: [10, 10, 11, 12], S.CODE: ["A", "B", "A", "C"]})


def test_pseudonyms_are_stable_per_key_and_differ_across_keys():
    a = PrivacyPolicy(key=KEY).apply(_events())
    b = PrivacyPolicy(key=KEY).apply(_events())
    c = PrivacyPolicy(key=KEY + b"x").apply(_events())
    assert a[S.SUBJECT_ID].to_list() == b[S.SUBJECT_ID].to_list()
    assert a[S.SUBJECT_ID].to_list() != c[S.SUBJECT_ID].to_list()
    assert a[S.SUBJECT_ID].dtype == pl.Int64 and (a[S.SUBJECT_ID] > 0).all()
    assert set(a[S.SUBJECT_ID]) & {10, 11, 12} == set()
    # one source id -> one pseudonym; rows stay with their subject
    assert a[S.SUBJECT_ID][0] == a[S.SUBJECT_ID][1] != a[S.SUBJECT_ID][2]


def test_opt_out_removes_subjects(tmp_path):
    f = tmp_path / "optout.txt"
    f.write_text("# national data opt-out\n11\n\n12  # asked in clinic\n")
    assert read_opt_out(f) == {"11", "12"}
    policy = PrivacyPolicy.from_options(opt_out_file=f)
    assert policy.apply(_events())[S.SUBJECT_ID].to_list() == [10, 10]
    d = policy.describe(removed_subjects=2)
    assert d["opt_out_removed_subjects"] == 2 and not d["pseudonymised"]


def test_describe_never_contains_key():
    d = PrivacyPolicy(key=KEY).describe()
    assert d["pseudonymised"] and KEY.decode() not in repr(d)


def test_key_sources_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("NG_TEST_KEY", KEY.decode())
    assert read_key(key_env="NG_TEST_KEY") == KEY
    monkeypatch.delenv("NG_TEST_KEY")
    with pytest.raises(PrivacyConfigError, match="NG_TEST_KEY"):
        read_key(key_env="NG_TEST_KEY")
    missing = tmp_path / "nope.key"
    with pytest.raises(PrivacyConfigError, match="nope.key"):
        read_key(key_file=missing)
    short = tmp_path / "short.key"
    short.write_text("abc")
    with pytest.raises(PrivacyConfigError, match="shorter than 16"):
        read_key(key_file=short)
