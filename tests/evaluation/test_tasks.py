"""Task definitions -> MEDS labels: known answers on hand-built records, agreement with the
simulator's own outcome definitions (oracle.observed_labels), and the shipped task YAMLs."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.data.simulator import SimulatorConfig, simulate
from nightingale.data.simulator.oracle import OUTCOMES, observed_labels
from nightingale.evaluation.tasks import (
    LABEL_SCHEMA,
    Task,
    build_labels,
    draw_keys,
    label_dataset,
    load_task,
    load_tasks,
    match_codes,
    observation_end,
)

REPO = Path(__file__).resolve().parents[2]
TASKS_DIR = REPO / "configs" / "eval" / "tasks"
T0 = dt.datetime(2020, 1, 1)
# simulator task file -> the oracle outcome it must agree with
ORACLE_OUTCOME = {
    "mortality_1y": "death",
    "emergency_admission_90d_after_discharge": "emergency_admission",
    "diabetes_2y": "diabetes_diagnosis",
}


def at(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


def frame(*rows) -> pl.DataFrame:
    """MEDS events from (subject, day or None, code[, value]) tuples; birth 60 years before T0."""
    subjects = sorted({r[0] for r in rows})
    rows = [(s, -60 * 365.25, S.BIRTH_CODE) for s in subjects] + list(rows)
    return pl.DataFrame(
        {
            S.SUBJECT_ID: [r[0] for r in rows],
            S.TIME: [None if r[1] is None else at(r[1]) for r in rows],
            S.CODE: [r[2] for r in rows],
            S.NUMERIC_VALUE: [r[3] if len(r) > 3 else None for r in rows],
        },
        schema={c: S.DATA_SCHEMA[c] for c in (S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE)},
    )


def labels_of(df: pl.DataFrame) -> dict[tuple[int, dt.datetime], bool]:
    return {(s, t): v for s, t, v in df.iter_rows()}


MORTALITY = Task(name="mortality_1y", outcome_codes=(S.DEATH_CODE,), horizon_days=365)
READMISSION = Task(
    name="readmission_90d",
    outcome_codes=("ADMISSION//*",),
    horizon_days=90,
    prediction_time="trigger",
    trigger_codes=("DISCHARGE//*",),
    one_per_subject=False,
)


# --- known answers --------------------------------------------------------------------------------
def test_death_within_the_horizon_is_positive_and_censoring_is_by_record_end():
    events = frame(
        (1, 0, "GP"),
        (1, 200, S.DEATH_CODE),  # dies 200 days after its only prediction time
        (2, 0, "GP"),
        (2, 100, "GP"),  # record ends 100 days in, alive: every time censored
        (3, 0, "GP"),
        (3, 400, S.DEATH_CODE),  # dies after the horizon; record reaches it
        (4, None, "SEX//F"),
        (4, 30, S.DEATH_CODE),  # no event before death: no prediction time
    )
    labels, report = build_labels(MORTALITY, events, return_report=True)
    assert labels.schema == pl.Schema(LABEL_SCHEMA)
    assert labels_of(labels) == {(1, at(0)): True, (3, at(0)): False}
    assert (report.subjects, report.candidates, report.censored) == (4, 3, 1)
    assert (report.kept, report.positives, report.excluded_new_only) == (2, 1, 0)
    assert report.prevalence == pytest.approx(1 / 2)


MORTALITY_AT_GP = Task(name="mortality_at_gp", outcome_codes=(S.DEATH_CODE,), horizon_days=365,
                       prediction_time="trigger", trigger_codes=("GP",), one_per_subject=False)


def test_a_known_observation_end_keeps_survivors_whose_records_end_early():
    """With the dataset's observation end known, a survivor with no event after t + horizon is a
    negative, not censored, and a horizon that runs past the observation end is dropped whatever
    its outcome (keeping the deaths there and not the survivors would inflate the prevalence)."""
    events = frame(
        (1, 0, "GP"),
        (1, 200, S.DEATH_CODE),
        (2, 0, "GP"),
        (2, 100, "GP"),  # alive, record quiet after day 100
        (5, 500, "GP"),  # alive; t + 365 days runs past the observation end (day 700)
        (6, 500, "GP"),
        (6, 600, S.DEATH_CODE),  # dies before the end, but its horizon runs past it: dropped too
    )
    by_record, rep = build_labels(MORTALITY_AT_GP, events, return_report=True)
    assert labels_of(by_record) == {(1, at(0)): True, (6, at(500)): True}  # 2 and 5 censored
    assert rep.censoring == "on the last event of each record"
    known, rep = build_labels(MORTALITY_AT_GP, events, return_report=True, observation_end=at(700))
    assert labels_of(known) == {(1, at(0)): True, (2, at(0)): False, (2, at(100)): False}
    assert (rep.censored, rep.kept, rep.positives) == (2, 3, 1) and "observation end" in rep.censoring


def test_simulator_datasets_censor_on_their_end_date(tmp_path):
    """The simulator says where observation ends (dataset.json); labels use it: no kept horizon
    passes it, survivors are negatives rather than censored, and the report says so."""
    from nightingale.data.meds_io import MEDSDataset
    from nightingale.data.simulator import SimulatorConfig, simulate
    simulate(SimulatorConfig(subjects=600, shard_size=300, seed=2), tmp_path / "m", workers=1)
    ds = MEDSDataset(tmp_path / "m")
    end = observation_end(ds)
    assert end == dt.datetime(2026, 1, 1)
    known, rep = label_dataset(MORTALITY, ds, S.TRAIN, return_report=True)
    assert known[S.PREDICTION_TIME].max() + dt.timedelta(days=365) <= end
    assert rep.kept > 300 and 0 < rep.positives < rep.kept
    assert "observation end" in rep.censoring and "looks at no later event" in rep.draw
    _, old = build_labels(MORTALITY, ds.scan(), ds.subjects(S.TRAIN), return_report=True)
    assert old.censored > 0 and "unknown" in old.draw


def test_one_draw_per_subject_looks_at_no_later_event():
    """Where the observation end is known, the time drawn for a subject is a stopping time: what
    happens after it (more events, a death) cannot change it; the draw varies with the seed and
    repeats for the same seed."""
    events = frame(*[(1, d, "DISCHARGE//HOME") for d in (0, 100, 200, 300)], (1, 1000, "GP"))
    task = dataclasses.replace(READMISSION, one_per_subject=True)
    end = at(2000)
    picks = {}
    for seed in range(40):
        got = build_labels(dataclasses.replace(task, seed=seed), events, observation_end=end)
        if got.height:
            picks[seed] = got[S.PREDICTION_TIME].item()
    assert set(picks.values()) == {at(0), at(100), at(200), at(300)} or len(set(picks.values())) >= 3
    assert all(build_labels(dataclasses.replace(task, seed=k), events, observation_end=end)[S.PREDICTION_TIME].item()
               == t for k, t in list(picks.items())[:5])
    for seed, t in picks.items():
        later = (t - T0).days
        more = pl.concat([events, frame((1, later + 5, "DISCHARGE//HOME"), (1, later + 20, "ADMISSION//EMERGENCY"),
                                        (1, later + 30, S.DEATH_CODE)).filter(pl.col(S.CODE) != S.BIRTH_CODE)])
        again = build_labels(dataclasses.replace(task, seed=seed), more, observation_end=end)
        assert again[S.PREDICTION_TIME].item() == t


def test_drawn_labels_carry_the_true_risk_where_records_thicken_before_death():
    """A visible two-state process with a known answer: a subject falls ill (a SICK event) at
    0.1/year; death comes at 0.02/year while well and 1/year once ill, and an ill record has ten
    times as many events. The risk of death within a year given the record is one of two numbers
    (well or ill). Labels drawn at a random date (the first event after it) show those risks;
    drawing uniformly among a record's events, as before, lands late in ill records, where death
    is near, and overstates it (measured: mean label - mean true risk 0.000 here, +0.120 by the
    old draw; ill rows 0.64 and 0.78 against the true 0.63)."""
    rng = np.random.default_rng(0)
    n, years, sicken, die_well, die_ill = 5000, 20.0, 0.1, 0.02, 1.0
    rows = []
    for s in range(1, n + 1):
        ill = rng.exponential(1 / sicken)
        death = min(rng.exponential(1 / die_well), ill + rng.exponential(1 / die_ill) if ill < years else np.inf)
        well_end, stop = min(ill, death, years), min(death, years)
        times = np.r_[rng.uniform(0, well_end, rng.poisson(2 * well_end)),
                      rng.uniform(well_end, stop, rng.poisson(20 * (stop - well_end))) if stop > well_end else []]
        rows += [(s, 365.25 * t, "GP") for t in times]
        if ill < stop:
            rows.append((s, 365.25 * ill, "SICK"))
        if death < years:
            rows.append((s, 365.25 * death, S.DEATH_CODE))
    events = frame(*rows)
    a, b, c = die_well + sicken, die_ill, die_ill - die_well - sicken
    risk_well = 1 - np.exp(-a) - sicken * np.exp(-b) * (np.exp(c) - 1) / c
    risk_ill = 1 - np.exp(-die_ill)
    sick_at = events.filter(pl.col(S.CODE) == "SICK").select(S.SUBJECT_ID, pl.col(S.TIME).alias("_ill"))

    def check(labels: pl.DataFrame) -> tuple[float, float]:
        """(mean label - mean true risk over all rows, mean label among ill rows)."""
        ill = labels.join(sick_at, on=S.SUBJECT_ID, how="left").select(
            (pl.col("_ill") <= pl.col(S.PREDICTION_TIME)).fill_null(False)).to_series().to_numpy()
        y = labels[S.BOOLEAN_VALUE].to_numpy()
        return float(y.mean() - np.where(ill, risk_ill, risk_well).mean()), float(y[ill].mean())

    labels = build_labels(MORTALITY, events, observation_end=at(365.25 * years))
    gap, ill_rate = check(labels)
    assert labels.height > 2000
    assert abs(gap) < 0.015 and abs(ill_rate - risk_ill) < 0.08
    # The old draw (uniform over each record's event times) on the same records, same censoring.
    ev = events.filter(~pl.col(S.CODE).is_in([S.BIRTH_CODE, S.DEATH_CODE]))
    deaths = events.filter(pl.col(S.CODE) == S.DEATH_CODE).select(S.SUBJECT_ID, pl.col(S.TIME).alias("_d"))
    uniform = (ev.with_columns(pl.Series("_k", rng.random(ev.height))).sort("_k").unique(S.SUBJECT_ID, keep="first")
               .filter(pl.col(S.TIME) <= at(365.25 * (years - 1))).join(deaths, on=S.SUBJECT_ID, how="left")
               .select(S.SUBJECT_ID, pl.col(S.TIME).alias(S.PREDICTION_TIME),
                       (pl.col("_d") - pl.col(S.TIME) <= dt.timedelta(days=365)).fill_null(False).alias(S.BOOLEAN_VALUE)))
    old_gap, old_ill = check(uniform)
    assert old_gap > 0.05 and old_ill > risk_ill + 0.1


def test_death_without_the_outcome_is_a_known_negative():
    task = dataclasses.replace(READMISSION, horizon_days=365)
    events = frame(
        (1, 0, "DISCHARGE//HOME"),
        (1, 50, S.DEATH_CODE),  # dies, never readmitted: False, kept
        (2, 0, "DISCHARGE//HOME"),
        (2, 50, "GP"),  # alive, record ends: censored
        (3, 0, "DISCHARGE//HOME"),
        (3, 50, "ADMISSION//EMERGENCY"),
        (3, 60, S.DEATH_CODE),
    )
    labels, report = build_labels(task, events, return_report=True)
    assert labels_of(labels) == {(1, at(0)): False, (3, at(0)): True}
    assert report.censored == 1


def test_trigger_times_outcome_window_and_offset():
    events = frame(
        (1, 10, "DISCHARGE//HOME"),
        (1, 50, "ADMISSION//EMERGENCY"),
        (1, 100, "DISCHARGE//CARE_HOME"),
        (1, 300, "ADMISSION//EMERGENCY"),
        (1, 400, "GP"),
        # the outcome at exactly the prediction time does not count: (t, t + horizon]
        (2, 5, "DISCHARGE//HOME"),
        (2, 5, "ADMISSION//ELECTIVE"),
        (2, 95, "ADMISSION//ELECTIVE"),
        (3, 7, "DISCHARGE//HOME"),
        (3, 7, S.DEATH_CODE),  # dead at the trigger: not alive then
        (4, 0, "DISCHARGE//HOME"),
        (4, 90, "GP"),  # record ends exactly at t + horizon: followed
    )
    labels = build_labels(READMISSION, events)
    assert labels_of(labels) == {
        (1, at(10)): True,
        (1, at(100)): False,
        (2, at(5)): True,  # day 95 = t + 90 is inside the window
        (4, at(0)): False,
    }
    later = dataclasses.replace(READMISSION, offset_days=45)  # predict 45 days after discharge
    assert labels_of(build_labels(later, events)) == {
        (1, at(55)): False,
        (1, at(145)): False,  # day 50 admission is before t = day 55
        (2, at(50)): True,  # subject 4 (record ends day 90 < 45 + 90) is censored
    }


def test_new_only_excludes_prevalent_cases():
    task = Task(
        name="dm",
        outcome_codes=("ICD10//E11*",),
        horizon_days=730,
        new_only=True,
        prediction_time="trigger",
        trigger_codes=("REVIEW",),
    )
    events = frame(
        (1, 5, "ICD10//E11.9"),
        (1, 10, "REVIEW"),
        (1, 100, "ICD10//E11.9"),
        (1, 900, "GP"),
        (2, 10, "REVIEW"),
        (2, 10, "ICD10//E11.9"),
        (2, 900, "GP"),  # diagnosed at t: prior
        (3, 10, "REVIEW"),
        (3, 100, "ICD10//E11.65"),
        (3, 900, "GP"),  # new diagnosis: True
        (4, 10, "REVIEW"),
        (4, 100, "ICD10//E10.9"),
        (4, 900, "GP"),  # type 1: not the outcome
    )
    labels, report = build_labels(task, events, return_report=True)
    assert labels_of(labels) == {(3, at(10)): True, (4, at(10)): False}
    assert report.excluded_new_only == 2 and report.censored == 0
    old = dataclasses.replace(task, new_only=False)  # without new_only: later codes count
    assert labels_of(build_labels(old, events))[(1, at(10))] is True


def test_random_times_respect_history_and_survival():
    events = frame(
        *[(1, d, "GP") for d in (0, 10, 20, 30, 40)],
        (1, 45, S.DEATH_CODE),
        (1, 50, "LAB"),
    )
    task = dataclasses.replace(MORTALITY, min_history_events=3)
    picks = {
        build_labels(dataclasses.replace(task, seed=s), events)[S.PREDICTION_TIME].item()
        for s in range(40)
    }
    assert picks <= {at(20), at(30), at(40)} and len(picks) >= 2  # >= 3 events by then; alive; never birth/death


def test_labels_do_not_depend_on_row_order_or_other_subjects():
    rng = np.random.default_rng(0)
    rows = [(s, float(d), "GP") for s in range(1, 40) for d in rng.uniform(0, 3000, 12)]
    rows += [(s, 3100.0, S.DEATH_CODE) for s in range(1, 40, 3)]
    events = frame(*rows)
    labels = build_labels(MORTALITY, events)
    shuffled = build_labels(MORTALITY, events.sample(fraction=1.0, shuffle=True, seed=1))
    assert labels.equals(shuffled)
    some = build_labels(MORTALITY, events, subject_ids=[3, 4, 5, 99])
    assert some.equals(labels.filter(pl.col(S.SUBJECT_ID).is_in([3, 4, 5])))
    other = build_labels(dataclasses.replace(MORTALITY, seed=1), events)
    assert not other[S.PREDICTION_TIME].equals(labels[S.PREDICTION_TIME])
    assert build_labels(MORTALITY, events.head(0)).schema == pl.Schema(LABEL_SCHEMA)


def test_draw_keys_and_code_matching():
    keys = draw_keys(np.array([1, 1, 2]), np.array([0, 5, 0]), seed=0)
    assert keys.dtype == np.uint64 and len(set(keys.tolist())) == 3
    np.testing.assert_array_equal(keys, draw_keys(np.array([1, 1, 2]), np.array([0, 5, 0]), 0))
    assert not np.array_equal(keys, draw_keys(np.array([1, 1, 2]), np.array([0, 5, 0]), 1))
    codes = pl.DataFrame({S.CODE: ["ICD10//E11.9", "ICD10//E10", "MEDS_DEATH", "MEDS_DEATHX"]})
    hit = codes.filter(match_codes(["ICD10//E11*", "MEDS_DEATH"]))[S.CODE].to_list()
    assert hit == ["ICD10//E11.9", "MEDS_DEATH"]


# --- task files -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: x\noutcome_codes: [A]\nhorizon_days: 30\nhorizon: 5\n", "horizon"),
        ("name: x\noutcome_codes: [A]\n", "horizon_days"),
        ("name: x\noutcome_codes: [A]\nhorizon_days: -1\n", "horizon_days"),
        ("name: x\noutcome_codes: []\nhorizon_days: 30\n", "outcome_codes"),
        (
            "name: x\noutcome_codes: [A]\nhorizon_days: 30\nprediction_time: admission\n",
            "prediction_time",
        ),
        (
            "name: x\noutcome_codes: [A]\nhorizon_days: 30\nprediction_time: trigger\n",
            "trigger_codes",
        ),
        ("name: x\noutcome_codes: [A]\nhorizon_days: 30\nnew_only: maybe\n", "new_only"),
        ("name: x\noutcome_codes: [A]\nhorizon_days: 30\nseed: -1\n", "seed"),
        (
            "name: x\noutcome_codes: [A]\nhorizon_days: 30\nmin_history_events: 0\n",
            "min_history_events",
        ),
        ("name: x\noutcome_codes: [A*B]\nhorizon_days: 30\n", "outcome_codes"),
        ("name: x\noutcome_codes: [A]\nhorizon_days: 30\noffset_days: 2\n", "offset_days"),
        (
            "name: x\noutcome_codes: [A]\nhorizon_days: 30\nprediction_time: trigger\n"
            "trigger_codes: [B]\noffset_days: -1\n",
            "offset_days",
        ),
    ],
)
def test_bad_task_files_name_the_file_and_field(tmp_path, text, field):
    path = tmp_path / "bad_task.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"bad_task\.yaml.*'?{field}'?") as err:
        load_task(path)
    assert field in str(err.value)


def test_load_tasks_from_a_directory(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\noutcome_codes: MEDS_DEATH\nhorizon_days: 30\n")
    (tmp_path / "b.yml").write_text("name: b\noutcome_codes: [X]\nhorizon_days: 1.5\n")
    tasks = load_tasks(tmp_path)
    assert list(tasks) == ["a", "b"] and tasks["a"].outcome_codes == (S.DEATH_CODE,)
    assert tasks["b"].horizon_days == 1.5
    (tmp_path / "c.yaml").write_text("name: a\noutcome_codes: [X]\nhorizon_days: 1\n")
    with pytest.raises(ValueError, match="c.yaml.*defined twice"):
        load_tasks(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no task YAML"):
        load_tasks(tmp_path / "empty")


@pytest.mark.parametrize("dataset", ["simulator", "mimic", "eunomia"])
def test_shipped_task_files_load(dataset):
    files = sorted((TASKS_DIR / dataset).glob("*.yaml"))
    tasks = load_tasks(TASKS_DIR / dataset)
    assert [t.name for t in tasks.values()] == [f.stem for f in files]
    assert "mortality_1y" in tasks


def test_simulator_tasks_match_the_oracle_outcomes():
    tasks = load_tasks(TASKS_DIR / "simulator")
    assert set(tasks) == set(ORACLE_OUTCOME)
    codes = pl.DataFrame(
        {
            S.CODE: [
                "ICD10//E11.9",
                "ICD10//I10",
                "ADMISSION//EMERGENCY",
                "DISCHARGE//HOME",
                S.DEATH_CODE,
                S.BIRTH_CODE,
            ]
        }
    )
    for name, task in tasks.items():
        spec = OUTCOMES[ORACLE_OUTCOME[name]]
        assert task.horizon_days == spec.default_horizon_days and task.new_only == spec.new_only
        assert set(codes.filter(match_codes(task.outcome_codes))[S.CODE]) == set(spec.codes)


# --- simulated data -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> MEDSDataset:
    out = tmp_path_factory.mktemp("tasks") / "sim"
    simulate(SimulatorConfig(subjects=600, shard_size=600, seed=3), out, workers=1)
    return MEDSDataset(out)


@pytest.mark.parametrize("name", sorted(ORACLE_OUTCOME))
def test_labels_agree_with_the_oracle_definitions(simulated, name):
    task = load_task(TASKS_DIR / "simulator" / f"{name}.yaml")
    events = simulated.scan().collect()
    labels, report = build_labels(task, events, return_report=True)
    assert report.kept > 100 and report.positives > 0, report
    expected = observed_labels(
        events,
        labels[S.SUBJECT_ID].to_numpy(),
        labels[S.PREDICTION_TIME].to_numpy(),
        ORACLE_OUTCOME[name],
        task.horizon_days,
    )
    np.testing.assert_array_equal(labels[S.BOOLEAN_VALUE].to_numpy(), expected)
    if task.new_only:
        assert report.excluded_new_only > 0


def test_label_dataset_takes_one_split(simulated):
    splits = simulated.splits()
    labels = label_dataset(MORTALITY, simulated, S.HELD_OUT)
    held_out = set(splits.filter(pl.col(S.SPLIT) == S.HELD_OUT)[S.SUBJECT_ID])
    assert labels.height and set(labels[S.SUBJECT_ID]) <= held_out
    everyone = build_labels(MORTALITY, simulated.scan(), observation_end=observation_end(simulated))
    assert labels.equals(everyone.filter(pl.col(S.SUBJECT_ID).is_in(list(held_out))))
    with pytest.raises(ValueError, match="split"):
        label_dataset(MORTALITY, simulated, "test")


# --- real data ------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_mimic_tasks_build_labels(mimic_demo):
    ds = MEDSDataset(mimic_demo)
    for name, task in load_tasks(TASKS_DIR / "mimic").items():
        labels, report = build_labels(task, ds.scan(), return_report=True)
        assert report.kept > 10 and 0 < report.positives < report.kept, (name, report)
        assert labels.schema == pl.Schema(LABEL_SCHEMA)


@pytest.mark.shared_data
def test_eunomia_tasks_build_labels(eunomia_omop, tmp_path):
    from nightingale.data.omop import OMOPImportConfig, convert_omop

    out = tmp_path / "eunomia"
    convert_omop(OMOPImportConfig(cdm=eunomia_omop, out=out, max_time=dt.datetime(2026, 1, 1)))
    ds = MEDSDataset(out)
    reports = {
        name: build_labels(task, ds.scan(), return_report=True)[1]
        for name, task in load_tasks(TASKS_DIR / "eunomia").items()
    }
    assert reports["mortality_1y"].kept > 1000
    assert reports["mortality_1y"].positives == 0  # GiBleed has no death table
    bleed = reports["gi_bleed_90d_after_nsaid"]
    assert bleed.kept > 1000 and 0.05 < bleed.prevalence < 0.5, bleed


def test_several_draws_per_subject_extend_the_single_draw():
    rng = np.random.default_rng(3)
    events = frame(*[(s, float(d), "GP") for s in range(1, 30) for d in rng.uniform(0, 3000, 15)])
    end = at(3400)
    one = build_labels(MORTALITY, events, observation_end=end)
    four, rep = build_labels(dataclasses.replace(MORTALITY, draws_per_subject=4), events, observation_end=end,
                             return_report=True)
    per = four.group_by(S.SUBJECT_ID).len()["len"]
    assert per.max() <= 4 and four.height > 2 * one.height and rep.draw.startswith("4 draw(s)")
    assert one.join(four, on=[S.SUBJECT_ID, S.PREDICTION_TIME], how="anti").is_empty()  # draw 0 is the single draw
    assert four.equals(build_labels(dataclasses.replace(MORTALITY, draws_per_subject=4), events, observation_end=end))
    with pytest.raises(ValueError, match="draws_per_subject"):
        Task(name="x", outcome_codes=("A",), horizon_days=1, prediction_time="trigger", trigger_codes=("B",),
             one_per_subject=False, draws_per_subject=2)
