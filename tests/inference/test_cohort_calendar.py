"""A cohort's calendar: record starts and end of follow-up taken from its reference data."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.data.simulator import SimulatorConfig, simulate
from nightingale.inference.cohorts import CohortSpec, calendar_window


def test_the_calendar_is_the_datas_own_record_starts_and_follow_up(tmp_path):
    simulate(SimulatorConfig(subjects=60, shard_size=60, seed=2), tmp_path / "meds", workers=1)
    starts, end = calendar_window(tmp_path / "meds", S.TRAIN)
    ds = MEDSDataset(tmp_path / "meds")
    train = ds.subjects(S.TRAIN)
    first = (ds.scan().filter(pl.col(S.SUBJECT_ID).is_in(train.implode()) & pl.col(S.TIME).is_not_null()
                              & (pl.col(S.CODE) != S.BIRTH_CODE))
             .group_by(S.SUBJECT_ID).agg(pl.col(S.TIME).min()).collect()[S.TIME].sort().to_list())
    assert list(starts) == [t for t in first if t < end] and len(starts) >= len(train) - 2
    assert end == dt.datetime.fromisoformat(ds.metadata()["observation_end"])

    spec = CohortSpec(n_patients=40, seed=9, start_dates=starts, end_date=end)
    drawn = [spec.patient_start(i) for i in range(40)]
    assert drawn == [CohortSpec(n_patients=40, seed=9, start_dates=starts, end_date=end).patient_start(i)
                     for i in range(40)]  # the same draw whatever the order patients finish in
    assert set(drawn) <= set(starts) and len(set(drawn)) > 10
    with pytest.raises(ValueError, match="CohortSpec.end_date: .* must be after every start date"):
        CohortSpec(n_patients=1, start_dates=starts, end_date=starts[-1])
