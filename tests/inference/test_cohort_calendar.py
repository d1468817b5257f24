"""A cohort's calendar: record starts, ages at start and end of follow-up taken from its reference data."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.data.simulator import SimulatorConfig, simulate
from nightingale.inference.cohort_calendar import calendar_window
from nightingale.inference.cohorts import CohortSpec


def test_the_calendar_is_the_datas_own_record_starts_ages_and_follow_up(tmp_path):
    simulate(SimulatorConfig(subjects=60, shard_size=60, seed=2), tmp_path / "meds", workers=1)
    cal = calendar_window(tmp_path / "meds", S.TRAIN)
    ds = MEDSDataset(tmp_path / "meds")
    train = ds.subjects(S.TRAIN)
    ev = ds.scan().filter(pl.col(S.SUBJECT_ID).is_in(train.implode()) & pl.col(S.TIME).is_not_null()).collect()
    birth = dict(ev.filter(pl.col(S.CODE) == S.BIRTH_CODE).select(S.SUBJECT_ID, S.TIME).iter_rows())
    first = (ev.filter(pl.col(S.CODE) != S.BIRTH_CODE).group_by(S.SUBJECT_ID).agg(pl.col(S.TIME).min())
             .sort(S.TIME).iter_rows())
    pairs = sorted((t, (t - birth[s]).total_seconds() / (365.25 * 86_400)) for s, t in first)
    assert cal.end == dt.datetime.fromisoformat(ds.metadata()["observation_end"]) and cal.observed_end
    assert [(t, round(a, 6)) for t, a in zip(cal.starts, cal.ages, strict=True)] == \
        [(t, round(a, 6)) for t, a in pairs if t < cal.end] and len(cal.starts) >= len(train) - 2
    assert cal.spec_fields()["follow_to_end"] is True  # the simulator states its observation end

    spec = CohortSpec(n_patients=40, seed=9, **cal.spec_fields())
    drawn = [(spec.patient_start(i), spec.patient_age(i)) for i in range(40)]
    assert drawn == [(again.patient_start(i), again.patient_age(i))
                     for again in [CohortSpec(n_patients=40, seed=9, **cal.spec_fields())]
                     for i in range(40)]  # the same draw whatever the order patients finish in
    assert set(drawn) <= set(zip(cal.starts, cal.ages, strict=True)) and len(set(drawn)) > 10  # date and age of one record

    # an age range draws among the records that started at an age inside it
    old = CohortSpec(n_patients=40, seed=9, age_min=50, age_max=80, **cal.spec_fields())
    ages = [old.patient_age(i) for i in range(40)]
    assert all(50 <= a < 80 for a in ages) and len({old.patient_start(i) for i in range(40)}) >= 1
    assert np.mean([a for _, a in drawn]) < np.mean(ages)

    later = cal.until(cal.starts[-1])  # the records that start before the last one does
    assert max(later.starts) < later.end and len(later.ages) == len(later.starts) < len(cal.starts)
    with pytest.raises(ValueError, match="CohortSpec.end_date: .* must be after every start date"):
        CohortSpec(n_patients=1, start_dates=cal.starts, end_date=cal.starts[-1])
    with pytest.raises(ValueError, match="CohortSpec.start_ages: 1 ages for"):
        CohortSpec(n_patients=1, start_dates=cal.starts, start_ages=(30.0,))
