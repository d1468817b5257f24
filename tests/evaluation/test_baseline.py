"""The supervised baseline: exact features on a hand-built record, the leakage guard (events after
the prediction time change nothing), and a held-out AUROC well above chance on simulated data."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.data.simulator import SimulatorConfig, simulate
from nightingale.evaluation.baseline import (
    C_GRID,
    Featurizer,
    SupervisedBaseline,
    fit_and_predict,
    history,
)
from nightingale.evaluation.tasks import Task, build_labels, label_dataset

T0 = dt.datetime(2020, 1, 1)
MORTALITY = Task(name="mortality_1y", outcome_codes=(S.DEATH_CODE,), horizon_days=365)
MIN_AUROC = 0.75  # measured 0.86-0.95 on simulator seeds 1, 2, 3 and 7 (this fixture: 0.948)


def at(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


def events_frame(rows) -> pl.DataFrame:
    """(subject, day or None, code, value) rows -> MEDS events."""
    return pl.DataFrame(
        {
            S.SUBJECT_ID: [r[0] for r in rows],
            S.TIME: [None if r[1] is None else at(r[1]) for r in rows],
            S.CODE: [r[2] for r in rows],
            S.NUMERIC_VALUE: [r[3] for r in rows],
        },
        schema={c: S.DATA_SCHEMA[c] for c in (S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE)},
    )


BEFORE = [
    (1, None, "SEX//F", None),
    (1, -60 * 365.25, S.BIRTH_CODE, None),
    (1, 0, "GP", None),
    (1, 5, "LAB//HB", 12.0),
    (1, 10, "GP", None),
    (1, 10, "LAB//HB", 13.0),  # at the prediction time: part of the history
    (2, None, "SEX//M", None),  # no birth, no numeric values
    (2, 0, "GP", None),
    (2, 3, "ICD10//I10", None),
]
AFTER = [  # everything here is after the prediction times
    (1, 30, "GP", None),
    (1, 30, "LAB//HB", 99.0),
    (1, 40, S.DEATH_CODE, None),
    (2, 100, "LAB//HB", 5.0),
]
LABELS = pl.DataFrame(
    {S.SUBJECT_ID: [1, 2], S.PREDICTION_TIME: [at(10), at(20)], S.BOOLEAN_VALUE: [True, False]},
    schema={
        S.SUBJECT_ID: pl.Int64,
        S.PREDICTION_TIME: pl.Datetime("us"),
        S.BOOLEAN_VALUE: pl.Boolean,
    },
)


def test_features_of_a_hand_built_record():
    events = events_frame(BEFORE + AFTER)
    feat = Featurizer().fit(events, LABELS)
    x = feat.transform(events, LABELS)
    names = feat.feature_names
    assert x.shape == (2, len(names))
    row = dict(zip(names, x[0], strict=True))
    assert feat.codes == ["GP", "ICD10//I10", "LAB//HB"]  # GP in 2 rows, then by name
    assert row["count//GP"] == pytest.approx(math.log1p(2))
    assert row["count//LAB//HB"] == pytest.approx(math.log1p(2))
    assert row["count//ICD10//I10"] == 0
    assert row["n_events"] == pytest.approx(math.log1p(5))  # birth, 2 GP, 2 LAB
    assert row["days_since_last"] == 0
    assert row["age_years"] == pytest.approx(60 + 10 / 365.25)
    assert (row["last//LAB//HB"], row["missing//LAB//HB"], row["missing//age"]) == (13.0, 0, 0)
    assert (row["static//SEX//F"], row["static//SEX//M"]) == (1, 0)
    other = dict(zip(names, x[1], strict=True))
    assert other["days_since_last"] == pytest.approx(math.log1p(17))
    assert (other["missing//age"], other["age_years"]) == (1, pytest.approx(row["age_years"]))
    assert (other["missing//LAB//HB"], other["last//LAB//HB"]) == (1, 13.0)  # training median
    assert (other["static//SEX//F"], other["static//SEX//M"]) == (0, 1)
    # a code unseen in training adds an event and nothing else
    extra = events_frame([*BEFORE, (1, 1, "NEW//CODE", 3.0)])
    diff = (feat.transform(extra, LABELS) != x).any(axis=0)
    assert [n for n, d in zip(names, diff, strict=True) if d] == ["n_events"]


def test_events_after_the_prediction_time_change_nothing():
    before = events_frame(BEFORE)
    after = events_frame(BEFORE + AFTER)
    feat = Featurizer().fit(after, LABELS)
    assert feat == Featurizer().fit(before, LABELS)  # the fit sees no future either
    np.testing.assert_array_equal(feat.transform(after, LABELS), feat.transform(before, LABELS))
    assert history(after, LABELS).equals(history(before, LABELS))
    # ...while a change at or before the prediction time does change the features
    changed = events_frame([*BEFORE[:-1], (1, 10, "LAB//HB", 14.0), *AFTER])
    assert not np.array_equal(feat.transform(changed, LABELS), feat.transform(after, LABELS))


def test_single_class_training_labels_name_the_task():
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="mortality_1y.*all False"):
        SupervisedBaseline("mortality_1y").fit(x, np.zeros(20, bool))
    negatives = LABELS.with_columns(pl.lit(False).alias(S.BOOLEAN_VALUE))
    with pytest.raises(ValueError, match="readmission.*all False"):
        fit_and_predict(events_frame(BEFORE), negatives, LABELS, name="readmission")
    with pytest.raises(ValueError, match="scaler"):
        SupervisedBaseline("t", scaler="robust")
    with pytest.raises(RuntimeError, match="before fit"):
        Featurizer().transform(events_frame(BEFORE), LABELS)


def test_the_regularisation_is_chosen_by_subject_folds_and_beats_a_fixed_one_on_few_positives():
    """Few positives, many noisy features: a fixed C of 1 overfits; the C chosen by cross-validation
    (folds by subject) is smaller and ranks new rows better. Too few positives to fold: the largest C."""
    rng = np.random.default_rng(3)

    def draw(n):
        x = rng.normal(size=(n, 120))
        return x, rng.random(n) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 4.5)))

    x, y = draw(600)  # ~30 positives, as a 1,000-patient synthetic cohort gives for mortality_1y
    x_test, y_test = draw(20_000)
    groups = np.arange(600) // 3  # three prediction times per subject
    tuned = SupervisedBaseline("t", C=C_GRID).fit(x, y, groups=groups)
    fixed = SupervisedBaseline("t", C=1.0).fit(x, y)
    assert tuned.chosen_C < 1.0 and fixed.chosen_C == 1.0
    assert roc_auc_score(y_test, tuned.predict_proba(x_test)) > roc_auc_score(y_test, fixed.predict_proba(x_test))
    two = np.zeros(600, bool)
    two[:2] = True
    assert SupervisedBaseline("t", C=C_GRID).fit(x, two, groups=groups).chosen_C == max(C_GRID)
    with pytest.raises(ValueError, match="C: must be > 0"):
        SupervisedBaseline("t", C=())


# --- simulated data -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> MEDSDataset:
    out = tmp_path_factory.mktemp("baseline") / "sim"
    simulate(SimulatorConfig(subjects=2000, shard_size=1000, seed=7), out, workers=1)
    return MEDSDataset(out)


def _labels(task: Task, ds: MEDSDataset, splits, seeds=range(3)) -> pl.DataFrame:
    """Up to len(seeds) random prediction times per subject (one per task seed)."""
    frames = [
        label_dataset(dataclasses.replace(task, seed=s), ds, sp) for s in seeds for sp in splits
    ]
    return pl.concat(frames).unique().sort(S.SUBJECT_ID, S.PREDICTION_TIME)


def test_simulated_features_ignore_the_future(simulated):
    events = simulated.scan().collect()
    labels = build_labels(MORTALITY, events, subject_ids=simulated.subjects(S.TUNING))
    cut = (  # drop every event after each subject's (single) prediction time
        events.join(labels.select(S.SUBJECT_ID, S.PREDICTION_TIME), on=S.SUBJECT_ID)
        .filter(pl.col(S.TIME).is_null() | (pl.col(S.TIME) <= pl.col(S.PREDICTION_TIME)))
        .drop(S.PREDICTION_TIME)
    )
    assert (
        cut.height
        < events.filter(pl.col(S.SUBJECT_ID).is_in(labels[S.SUBJECT_ID].implode())).height
    )
    feat = Featurizer().fit(events, labels)
    assert feat == Featurizer().fit(cut, labels)
    np.testing.assert_array_equal(feat.transform(events, labels), feat.transform(cut, labels))


@pytest.mark.slow
def test_baseline_beats_chance_on_held_out_subjects(simulated):
    events = simulated.scan()
    train = _labels(MORTALITY, simulated, [S.TRAIN])
    test = _labels(MORTALITY, simulated, [S.TUNING, S.HELD_OUT], seeds=range(8))
    assert not set(train[S.SUBJECT_ID]) & set(test[S.SUBJECT_ID])
    start = time.perf_counter()
    p = fit_and_predict(events, train, test, name="mortality_1y")
    seconds = time.perf_counter() - start
    y = test[S.BOOLEAN_VALUE].to_numpy()
    assert p.shape == y.shape and ((p >= 0) & (p <= 1)).all()
    auroc = roc_auc_score(y, p)
    print(
        f"mortality_1y: {train.height} train rows, {test.height} test rows ({y.sum()} positive), "
        f"AUROC {auroc:.3f}, featurise + fit + predict {seconds:.1f}s"
    )
    assert y.sum() >= 10 and auroc > MIN_AUROC  # ~0.6% of random times precede a death within a year
