"""The PAR baseline (real SDV, no mocks) trains on a tiny cohort and samples valid MEDS."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.meds_io import MEDSWriter
from nightingale.data.simulator import SimulatorConfig, simulate
from nightingale.data.validate import validate_meds
from nightingale.evaluation.synthetic import fit_par, load_events, sample_par

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("par") / "real"
    simulate(SimulatorConfig(subjects=100, shard_size=100, seed=5), root, workers=1)
    train = load_events(root, S.TRAIN)
    # ~80 patients x 12 rows x 2 epochs: seconds, not a useful model, but the real code path.
    return train, fit_par(train, max_subjects=80, max_events=12, top_codes=15, epochs=2, seed=0)


def test_par_samples_valid_reproducible_meds(fitted, tmp_path):
    train, model = fitted
    assert model.info["subjects"] == 80 and model.info["rows"] <= 80 * 12
    assert len(model.codes) == 16 and S.DEATH_CODE in model.codes
    events = sample_par(model, 12, start_id=101)
    assert dict(events.schema) == S.DATA_SCHEMA
    assert events[S.SUBJECT_ID].unique().sort().to_list() == list(range(101, 113))
    # sorted by subject then time, static rows first
    assert events.equals(events.sort(S.SUBJECT_ID, S.TIME, nulls_last=False, maintain_order=True))
    static = events.filter(pl.col(S.TIME).is_null())
    assert set(static[S.CODE]) <= {"SEX//F", "SEX//M"}
    births = events.filter(pl.col(S.CODE) == S.BIRTH_CODE)
    assert births[S.SUBJECT_ID].sort().to_list() == list(range(101, 113))
    timed = events.filter(pl.col(S.TIME).is_not_null() & (pl.col(S.CODE) != S.BIRTH_CODE))
    assert set(timed[S.CODE]) <= set(model.codes)
    assert timed.height > 0
    first = (
        timed.group_by(S.SUBJECT_ID)
        .agg(pl.col(S.TIME).min())
        .join(births.select(S.SUBJECT_ID, pl.col(S.TIME).alias("birth")), on=S.SUBJECT_ID)
    )
    assert (first[S.TIME] >= first["birth"]).all()
    # a death, when sampled, ends its timeline
    last = timed.group_by(S.SUBJECT_ID, maintain_order=True).agg(pl.col(S.CODE).last())
    dead = timed.filter(pl.col(S.CODE) == S.DEATH_CODE)[S.SUBJECT_ID]
    assert dead.is_unique().all()
    assert set(dead) <= set(last.filter(pl.col(S.CODE) == S.DEATH_CODE)[S.SUBJECT_ID])
    # the same seed gives the same patients; another seed others
    assert sample_par(model, 12, start_id=101).equals(events)
    assert not sample_par(model, 12, start_id=101, seed=7).equals(events)
    # and the frame is a valid MEDS dataset
    codes = sorted(set(events[S.CODE]))
    with MEDSWriter(tmp_path / "par") as w:
        w.write_shard("train/0", events)
        w.write_codes(pl.DataFrame({S.CODE: codes}))
        ids = events[S.SUBJECT_ID].unique().sort()
        w.write_splits(pl.DataFrame({S.SUBJECT_ID: ids, S.SPLIT: [S.TRAIN] * len(ids)}))
    report = validate_meds(tmp_path / "par")
    assert report.ok, [str(e) for e in report.errors]
    assert not [w for w in report.warnings if "before" in w.message], report.warnings
    assert np.isfinite(timed[S.NUMERIC_VALUE].drop_nulls().to_numpy()).all()


def test_fit_par_rejects_bad_sizes(fitted):
    train, _ = fitted
    with pytest.raises(ValueError, match="epochs"):
        fit_par(train, epochs=0)
    with pytest.raises(ValueError, match="max_subjects"):
        fit_par(train, max_subjects=1)
