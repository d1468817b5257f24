"""The ground-truth oracle reproduces the recorded histories and is calibrated against them.

The simulated record after a prediction time is one independent draw of the same process the
oracle re-simulates, so among requests with oracle risk in a band, the observed outcome rate must
match the band's mean oracle risk within binomial error. Bands are chosen with one oracle run and
the expected rate comes from a second run with another seed, so Monte-Carlo noise used to pick a
band does not bias the comparison. Prediction times sit both on step starts and inside steps (at a
discharge, an admission, a diagnosis), where what the step already put on the record must hold in
every replicate.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.data.simulator import SimulatorConfig, simulate
from nightingale.data.simulator.oracle import (
    OUTCOMES,
    load_config,
    observed_labels,
    oracle_risk,
    step_start_time,
)

SUBJECTS = 4000
STEPS = (48, 108, 168)  # 2009, 2014, 2019 (step starts: the oracle is exact there)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle") / "ds"
    simulate(SimulatorConfig(subjects=SUBJECTS, shard_size=2000, seed=21), out, workers=1)
    events = MEDSDataset(out).scan().collect()
    cfg = load_config(out)
    ids = np.repeat(np.arange(1, SUBJECTS + 1), len(STEPS))
    times = step_start_time(cfg, np.tile(np.array(STEPS), SUBJECTS))
    births = dict(events.filter(pl.col(S.CODE) == S.BIRTH_CODE).select(S.SUBJECT_ID, S.TIME).iter_rows())
    age = (times - np.array([births[i] for i in ids], dtype="datetime64[us]")) / np.timedelta64(365, "D")
    return out, events, ids, times, age


def _check_calibration(risk_a, risk_b, observed, n_bands=3, spread=5.0):
    """Overall and per-band observed vs expected, with binomial tolerance (z < 3.5)."""
    ok = ~np.isnan(risk_a)
    a, b, y = risk_a[ok], risk_b[ok], observed[ok]
    var = (b * (1 - b)).sum()
    z = (y.sum() - b.sum()) / np.sqrt(var)
    assert abs(z) < 3.5, f"overall observed {y.sum()} vs expected {b.sum():.1f} (z={z:.2f})"
    band = np.empty(a.size, int)  # equal-count bands by rank of the first run's risk
    band[np.argsort(a, kind="stable")] = np.arange(a.size) * n_bands // a.size
    rates = []
    for k in range(n_bands):
        m = band == k
        exp, obs = b[m].sum(), y[m].sum()
        sd = np.sqrt((b[m] * (1 - b[m])).sum() + 1e-9)
        assert abs(obs - exp) < 3.5 * sd + 2, f"band {k}: observed {obs} vs expected {exp:.1f} (n={m.sum()})"
        rates.append((obs / m.sum(), exp / m.sum()))
    # The oracle discriminates: high-risk band has far higher risk and far more outcomes.
    assert rates[-1][1] > spread * rates[0][1] and rates[-1][0] > 0.6 * spread * rates[0][0], rates
    return rates


def test_death_within_a_year_is_calibrated(cohort):
    out, events, ids, times, age = cohort
    sel = age >= 55  # where nearly all deaths are; keeps the test fast
    ids, times = ids[sel], times[sel]
    r1 = oracle_risk(out, ids, times, "death", n_samples=60, seed=1)
    r2 = oracle_risk(out, ids, times, "death", n_samples=60, seed=2)
    y = observed_labels(events, ids, times, "death")
    _check_calibration(r1, r2, y)


def test_emergency_admission_within_90_days_is_calibrated(cohort):
    out, events, ids, times, age = cohort
    sel = age >= 40
    ids, times = ids[sel], times[sel]
    r1 = oracle_risk(out, ids, times, "emergency_admission", n_samples=60, seed=1)
    r2 = oracle_risk(out, ids, times, "emergency_admission", n_samples=60, seed=2)
    y = observed_labels(events, ids, times, "emergency_admission")
    _check_calibration(r1, r2, y, spread=2.0)


def _record_times(events, codes, horizon_days, cfg):
    """(subject ids, times) of every event with one of `codes` whose horizon ends in the window:
    prediction times inside a step, where the record before t says more than the step's start."""
    end = np.datetime64(cfg.end_date, "us") - np.timedelta64(int(horizon_days), "D")
    rows = events.filter(pl.col(S.CODE).is_in(codes) & (pl.col(S.TIME) <= end)).select(S.SUBJECT_ID, S.TIME).unique()
    return rows[S.SUBJECT_ID].to_numpy(), rows[S.TIME].to_numpy().astype("datetime64[us]")


def test_readmission_after_a_discharge_is_calibrated(cohort):
    """At a discharge the admission of the same step is on the record: every copy must have it
    (with the readmission hazard it brings) and none may be admitted again before t. An oracle
    that restarts the step without it predicts about half the readmissions observed."""
    out, events, *_ = cohort
    ids, times = _record_times(events, ["DISCHARGE//HOME", "DISCHARGE//CARE_HOME"], 90, load_config(out))
    assert len(ids) > 400
    r1 = oracle_risk(out, ids, times, "emergency_admission", n_samples=60, seed=1)
    r2 = oracle_risk(out, ids, times, "emergency_admission", n_samples=60, seed=2)
    y = observed_labels(events, ids, times, "emergency_admission")
    assert not np.isnan(r1).any(), "a discharged patient is under observation"
    _check_calibration(r1, r2, y, n_bands=2, spread=1.5)


def test_death_after_an_admission_is_calibrated(cohort):
    """At an admission the patient may still die in hospital later in the step; the copies carry
    the admission (and its reason), so the raised death hazard of the next months is there too."""
    out, events, *_ = cohort
    ids, times = _record_times(events, ["ADMISSION//EMERGENCY"], 365, load_config(out))
    r1 = oracle_risk(out, ids, times, "death", n_samples=60, seed=1)
    r2 = oracle_risk(out, ids, times, "death", n_samples=60, seed=2)
    y = observed_labels(events, ids, times, "death")
    _check_calibration(r1, r2, y, n_bands=2, spread=2.0)


@pytest.mark.parametrize("codes,outcome,horizon", [
    (["DISCHARGE//HOME", "DISCHARGE//CARE_HOME"], "emergency_admission", 90),
    (["ADMISSION//EMERGENCY"], "death", 365),
])
def test_oracle_ranks_at_least_as_well_as_the_supervised_baseline(cohort, codes, outcome, horizon):
    """The oracle is the ceiling the evaluation compares against: on held-out rows it must rank
    outcomes at least as well as the logistic baseline fitted on the other subjects' rows."""
    from sklearn.metrics import roc_auc_score

    from nightingale.evaluation.baseline import fit_and_predict

    out, events, *_ = cohort
    ids, times = _record_times(events, codes, horizon, load_config(out))
    labels = pl.DataFrame({S.SUBJECT_ID: ids, S.PREDICTION_TIME: times,
                           S.BOOLEAN_VALUE: observed_labels(events, ids, times, outcome)})
    train, test = labels.filter(pl.col(S.SUBJECT_ID) % 2 == 1), labels.filter(pl.col(S.SUBJECT_ID) % 2 == 0)
    y = test[S.BOOLEAN_VALUE].to_numpy()
    assert y.sum() >= 100, "too few outcomes to compare rankings"
    baseline = fit_and_predict(events, train, test)
    oracle = oracle_risk(out, test[S.SUBJECT_ID].to_numpy(), test[S.PREDICTION_TIME].to_numpy(), outcome,
                         n_samples=400, seed=1)  # at 100, MC ties and noise cost the oracle 0.02 AUROC
    assert roc_auc_score(y, oracle) >= roc_auc_score(y, baseline), (roc_auc_score(y, oracle), roc_auc_score(y, baseline))


def test_oracle_respects_the_recorded_history(cohort):
    out, events, ids, times, age = cohort
    sel = (age >= 45) & (ids <= 1500)
    ids, times = ids[sel], times[sel]
    risk = oracle_risk(out, ids, times, "diabetes_diagnosis", horizon_days=365, n_samples=20, seed=3)
    first_dm = dict(events.filter(pl.col(S.CODE) == "ICD10//E11.9").group_by(S.SUBJECT_ID).agg(
        pl.col(S.TIME).min()).iter_rows())
    death = dict(events.filter(pl.col(S.CODE) == S.DEATH_CODE).select(S.SUBJECT_ID, S.TIME).iter_rows())
    diagnosed = np.array([i in first_dm and first_dm[i] <= t for i, t in zip(ids, times.tolist())])
    dead = np.array([i in death and death[i] <= t for i, t in zip(ids, times.tolist())])
    assert dead.any() and diagnosed.any()
    assert np.isnan(risk[dead]).all(), "risk given for a subject already dead"
    assert (risk[diagnosed & ~dead] == 0).all(), "new-diagnosis risk for someone already diagnosed"
    live = ~dead & ~diagnosed & ~np.isnan(risk)
    assert risk[live].max() > 0
    # Inside a step too: at the moment of the diagnosis it is on the record (the step's start is not).
    at_ids, at_times = _record_times(events, ["ICD10//E11.9"], 0, load_config(out))
    at = oracle_risk(out, at_ids[:200], at_times[:200], "diabetes_diagnosis", horizon_days=365, n_samples=20, seed=3)
    assert len(at) > 50 and (at[~np.isnan(at)] == 0).all(), "new-diagnosis risk at the diagnosis itself"
    # Deterministic for a seed (and the same requests).
    first = oracle_risk(out, ids[:40], times[:40], "diabetes_diagnosis", horizon_days=365, n_samples=20, seed=3)
    again = oracle_risk(out, ids[:40], times[:40], "diabetes_diagnosis", horizon_days=365, n_samples=20, seed=3)
    np.testing.assert_array_equal(again, first)


def test_outcomes_and_bad_requests(cohort):
    out, *_ = cohort
    assert OUTCOMES["death"].default_horizon_days == 365
    assert OUTCOMES["emergency_admission"].default_horizon_days == 90
    assert OUTCOMES["diabetes_diagnosis"].default_horizon_days == 730 and OUTCOMES["diabetes_diagnosis"].new_only
    before = oracle_risk(out, [1], np.array(["1990-01-01"], dtype="datetime64[us]"), "death", n_samples=5)
    assert np.isnan(before).all()
    with pytest.raises(ValueError, match="outcome"):
        oracle_risk(out, [1], np.array(["2010-01-01"], dtype="datetime64[us]"), "flu")
    with pytest.raises(ValueError, match="subject_ids"):
        oracle_risk(out, [SUBJECTS + 1], np.array(["2010-01-01"], dtype="datetime64[us]"), "death")
