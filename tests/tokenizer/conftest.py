"""Tiny MEDS data and a fitted vocabulary shared by the tokenizer tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset, MEDSWriter
from nightingale.tokenizer import TokenizerConfig, Vocabulary
from nightingale.tokenizer.fit import dataset_parents, fit_stats_for_dataset

T0 = dt.datetime(2020, 1, 1)
PLAIN_CODES = ["ICD10//E11", "ICD10//I10", "ATC//A10BA02", "SNOMED//1234", "VISIT", S.DEATH_CODE]
VALUE_CODES = ["LOINC//4548-4", "LOINC//2345-7"]
STATIC_CODES = ["SEX//F", "SEX//M", "ETHNICITY//White"]


def make_events(n_subjects: int, seed: int, start_id: int = 1, extra: dict | None = None) -> pl.DataFrame:
    """Subjects with static rows, a birth, and ~40 timed events each (sorted MEDS rows)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(start_id, start_id + n_subjects):
        rows.append((s, None, STATIC_CODES[s % 2], None))
        rows.append((s, None, STATIC_CODES[2], None))
        t = T0 - dt.timedelta(days=int(rng.integers(20, 80) * 365))
        rows.append((s, t, S.BIRTH_CODE, None))
        t = T0 + dt.timedelta(days=int(rng.integers(0, 300)))
        for _ in range(40):
            t += dt.timedelta(seconds=int(rng.choice([0, 0, 120, 1800, 7200, 86400 * 3, 86400 * 400])))
            if rng.random() < 0.4:
                rows.append((s, t, VALUE_CODES[int(rng.integers(2))], float(rng.normal(100, 20))))
            else:
                rows.append((s, t, PLAIN_CODES[int(rng.integers(5))], None))
    df = pl.DataFrame(rows, schema={S.SUBJECT_ID: pl.Int64, S.TIME: pl.Datetime("us"), S.CODE: pl.String, S.NUMERIC_VALUE: pl.Float32}, orient="row")
    return df


def write_dataset(root: Path, splits: dict[str, pl.DataFrame], codes: pl.DataFrame | None = None) -> Path:
    with MEDSWriter(root) as w:
        split_rows = []
        for name, df in splits.items():
            w.write_shard(f"{name}/0", df)
            split_rows += [(int(s), name) for s in df[S.SUBJECT_ID].unique().to_list()]
        w.write_splits(pl.DataFrame(split_rows, schema={S.SUBJECT_ID: pl.Int64, S.SPLIT: pl.String}, orient="row"))
        if codes is not None:
            w.write_codes(codes)
    return root


@pytest.fixture(scope="session")
def tiny_meds(tmp_path_factory) -> Path:
    """train (30 subjects), tuning (5), held_out (5, with a code seen nowhere else)."""
    root = tmp_path_factory.mktemp("meds") / "tiny"
    train = make_events(30, seed=1, start_id=1)
    tuning = make_events(5, seed=2, start_id=100)
    held = make_events(5, seed=3, start_id=200)
    held = pl.concat([held, pl.DataFrame({S.SUBJECT_ID: [200], S.TIME: [T0], S.CODE: ["HELDOUT//ONLY"], S.NUMERIC_VALUE: [None]}, schema=held.schema)])
    # A rare train code with a catalogued parent, and a rare ICD-10 child with a stem in vocabulary.
    rare = pl.DataFrame(
        {S.SUBJECT_ID: [1, 2], S.TIME: [T0, T0], S.CODE: ["ATC//A10BA02X", "ICD10//E11.9"], S.NUMERIC_VALUE: [None, None]},
        schema=train.schema,
    )
    codes = pl.DataFrame({S.CODE: ["ATC//A10BA02X"], S.DESCRIPTION: ["rare"], S.PARENT_CODES: [["ATC//A10BA02"]]})
    return write_dataset(root, {"train": pl.concat([train, rare]), "tuning": tuning, "held_out": held}, codes)


@pytest.fixture(scope="session")
def tiny_vocab(tiny_meds) -> Vocabulary:
    ds = MEDSDataset(tiny_meds)
    cfg = TokenizerConfig(min_count=3)
    return Vocabulary.fit(fit_stats_for_dataset(ds, cfg), cfg, dataset_parents(ds))
