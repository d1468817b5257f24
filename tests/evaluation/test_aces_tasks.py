"""Tasks from outside: ACES task configs (labels by es-aces itself) and MEDS label files.

Where the built-in format and ACES agree and where they differ (configs/eval/tasks/aces/README.md):
- on the prediction times both keep, the labels are identical;
- ACES keeps every trigger, and keeps survivors whose record ends before t + horizon as negatives,
  where the built-in format censors them: ACES's extra rows are exactly the built-in's censored ones.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import polars as pl
import pytest
import yaml

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset, write_meds_parquet
from nightingale.data.simulator import SimulatorConfig, simulate
from nightingale.evaluation.external_tasks import AcesTask, LabelFileTask
from nightingale.evaluation.tasks import Task, label_dataset, load_task, load_tasks

REPO = Path(__file__).resolve().parents[2]
ACES_DIR = REPO / "configs" / "eval" / "tasks" / "aces"
BUILTIN_DIR = REPO / "configs" / "eval" / "tasks"
KEY = [S.SUBJECT_ID, S.PREDICTION_TIME]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> MEDSDataset:
    out = tmp_path_factory.mktemp("aces") / "meds"
    simulate(SimulatorConfig(subjects=600, shard_size=300, seed=3), out, workers=1)
    return MEDSDataset(out)


def _aces_variant(tmp_path: Path, src: Path, **nightingale) -> AcesTask:
    """A copy of a shipped ACES config with metadata.nightingale changed."""
    cfg = yaml.safe_load(src.read_text())
    cfg["metadata"]["nightingale"].update(nightingale)
    path = tmp_path / src.name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    task = load_task(path)
    assert isinstance(task, AcesTask)
    return task


def test_shipped_aces_tasks_load_with_derived_outcomes_and_horizons():
    sim = load_tasks(ACES_DIR / "simulator")
    builtin = load_tasks(BUILTIN_DIR / "simulator")
    assert set(sim) == set(builtin)
    for name, task in sim.items():  # the same question as the built-in task asks the model
        assert (task.outcome_codes, task.horizon_days) == (builtin[name].outcome_codes, builtin[name].horizon_days)
        assert task.one_per_subject == builtin[name].one_per_subject
        assert task.draws_per_subject == builtin[name].draws_per_subject
        assert "derived from the ACES label window" in task.forecast_note
    mimic = load_tasks(ACES_DIR / "mimic")
    assert mimic["icu_mortality_30d"].horizon_days == 30.0  # window starts 24 h after the trigger
    assert mimic["readmission_30d"].outcome_codes == ("HOSPITAL_ADMISSION//*",)  # ^PREFIX regex
    in_unit = mimic["icu_mortality_in_unit"]  # event-bound label window: horizon given, and said
    assert in_unit.horizon_days == 30.0 and "approximates" in in_unit.forecast_note
    eunomia = load_tasks(ACES_DIR / "eunomia")
    assert set(eunomia) == set(load_tasks(BUILTIN_DIR / "eunomia"))
    assert eunomia["gi_bleed_90d_after_nsaid"].outcome_codes == ("SNOMED//74474003",)


def test_aces_and_builtin_agree_on_shared_rows_and_differ_only_by_censoring(sim, tmp_path):
    name = "emergency_admission_90d_after_discharge"
    builtin = dataclasses.replace(load_tasks(BUILTIN_DIR / "simulator")[name], one_per_subject=False)
    aces = _aces_variant(tmp_path, ACES_DIR / "simulator" / f"{name}.yaml", one_per_subject=False)
    ours, rep = label_dataset(builtin, sim, S.TRAIN, return_report=True)
    theirs, arep = label_dataset(aces, sim, S.TRAIN, return_report=True)
    assert rep.kept > 50 and rep.censored > 0 and rep.positives > 0

    both = ours.join(theirs, on=KEY, suffix="_aces")
    assert both.height == ours.height  # every built-in row is an ACES row ...
    assert (both[S.BOOLEAN_VALUE] == both[f"{S.BOOLEAN_VALUE}_aces"]).all()  # ... with the same label
    extra = theirs.join(ours, on=KEY, how="anti")
    assert extra.height == rep.censored == arep["kept"] - rep.kept  # ACES keeps what we censor
    assert not extra[S.BOOLEAN_VALUE].any()  # as negatives: the outcome never shows in the record


def test_one_per_subject_draws_like_the_builtin_task(sim, tmp_path):
    """Mortality: every built-in row (one drawn per subject) is among ACES's rows with its label;
    drawn from ACES's rows, the same seeded key picks the same time wherever the candidates agree."""
    builtin = dataclasses.replace(load_tasks(BUILTIN_DIR / "simulator")["mortality_1y"], draws_per_subject=1)
    every = _aces_variant(tmp_path, ACES_DIR / "simulator" / "mortality_1y.yaml", one_per_subject=False,
                          draws_per_subject=1)
    ours = label_dataset(builtin, sim, S.HELD_OUT)
    theirs = label_dataset(every, sim, S.HELD_OUT)
    both = ours.join(theirs, on=KEY, suffix="_aces")
    assert both.height == ours.height > 20
    assert (both[S.BOOLEAN_VALUE] == both[f"{S.BOOLEAN_VALUE}_aces"]).all()
    drawn = label_dataset(_aces_variant(tmp_path, ACES_DIR / "simulator" / "mortality_1y.yaml", draws_per_subject=1),
                          sim, S.HELD_OUT)
    # At most one row per subject (none where the drawn date falls after the subject's last
    # candidate), and where the candidates agree the same seeded date picks the same time.
    assert drawn[S.SUBJECT_ID].is_unique().all() and 0.5 * theirs[S.SUBJECT_ID].n_unique() < drawn.height
    same = drawn.join(ours, on=KEY)
    assert same.height >= 0.9 * ours.height


def test_bad_aces_configs_name_the_file_and_field(sim, tmp_path):
    src = yaml.safe_load((ACES_DIR / "simulator" / "mortality_1y.yaml").read_text())

    broken = dict(src, trigger="nope")  # a trigger naming no predicate
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(ValueError, match=r"broken\.yaml: not a valid ACES task config"):
        load_task(tmp_path / "broken.yaml")

    typo = yaml.safe_load(yaml.safe_dump(src))
    typo["predicates"]["death"]["code"] = "MEDS_DAETH"
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(typo))
    task = load_task(tmp_path / "typo.yaml")  # parses: the code is only wrong for this data
    with pytest.raises(ValueError, match=r"typo\.yaml: field 'predicates\.death': code 'MEDS_DAETH' matches no code"):
        label_dataset(task, sim, S.HELD_OUT)

    event_bound = yaml.safe_load(yaml.safe_dump(src))
    event_bound["windows"]["target"]["end"] = "start -> death"
    (tmp_path / "event_bound.yaml").write_text(yaml.safe_dump(event_bound))
    with pytest.raises(ValueError, match=r"metadata\.nightingale\.horizon_days': needed because the label "
                                         r"window 'target' is bound to an event"):
        load_task(tmp_path / "event_bound.yaml")

    unknown = yaml.safe_load(yaml.safe_dump(src))
    unknown["metadata"]["nightingale"]["horizon"] = 5
    (tmp_path / "unknown.yaml").write_text(yaml.safe_dump(unknown))
    with pytest.raises(ValueError, match=r"unknown\.yaml: field 'metadata\.nightingale': unknown field\(s\) \['horizon'\]"):
        load_task(tmp_path / "unknown.yaml")


# --- MEDS label files ---------------------------------------------------------------------------
def _label_task(tmp_path: Path, labels: Path, **extra) -> LabelFileTask:
    spec = {"name": "my_mortality", "labels": str(labels), "outcome_codes": ["MEDS_DEATH"], "horizon_days": 365,
            **extra}
    path = tmp_path / "my_mortality.yaml"
    path.write_text(yaml.safe_dump(spec))
    task = load_task(path)
    assert isinstance(task, LabelFileTask)
    return task


def test_label_file_gives_exactly_its_rows(sim, tmp_path):
    want = label_dataset(load_tasks(BUILTIN_DIR / "simulator")["mortality_1y"], sim, S.HELD_OUT).head(25)
    folder = tmp_path / "labels"
    write_meds_parquet(want.head(10), folder / "a.parquet", S.MEDSLabelSchema)
    write_meds_parquet(want.slice(10), folder / "part" / "b.parquet", S.MEDSLabelSchema)
    task = _label_task(tmp_path, folder)
    got, rep = label_dataset(task, sim, S.HELD_OUT, return_report=True)
    assert got.equals(want.sort(KEY)) and rep["kept"] == 25 and rep["source"] == "label_file"
    with pytest.raises(ValueError, match="no train labels given"):  # no baseline without train rows
        label_dataset(task, sim, S.TRAIN)


@pytest.mark.parametrize(("change", "needle"), [
    (lambda f: f.drop(S.BOOLEAN_VALUE), "field 'boolean_value' is missing"),
    (lambda f: f.with_columns(pl.col(S.SUBJECT_ID).cast(pl.String)), "field 'subject_id' is String; expected an integer"),
    (lambda f: f.with_columns(pl.col(S.BOOLEAN_VALUE).cast(pl.Int8)), "field 'boolean_value' is Int8; expected boolean"),
    (lambda f: f.with_columns(pl.col(S.PREDICTION_TIME).dt.replace_time_zone("UTC")),
     "field 'prediction_time' is Datetime(time_unit='us', time_zone='UTC'); expected a naive timestamp"),
    (lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col(S.BOOLEAN_VALUE))
                              .alias(S.BOOLEAN_VALUE)), "field 'boolean_value' has 1 null value(s)"),
])
def test_bad_label_files_name_the_file_and_field(sim, tmp_path, change, needle):
    good = label_dataset(load_tasks(BUILTIN_DIR / "simulator")["mortality_1y"], sim, S.HELD_OUT).head(5)
    path = tmp_path / "bad.parquet"
    change(good).write_parquet(path)
    with pytest.raises(ValueError, match=r"bad\.parquet: ") as e:
        label_dataset(_label_task(tmp_path, path), sim, S.HELD_OUT)
    assert needle in str(e.value)


def test_label_file_with_training_subjects_is_refused(sim, tmp_path):
    train = label_dataset(load_tasks(BUILTIN_DIR / "simulator")["mortality_1y"], sim, S.TRAIN).unique(
        S.SUBJECT_ID, keep="first", maintain_order=True).head(3)
    held = label_dataset(load_tasks(BUILTIN_DIR / "simulator")["mortality_1y"], sim, S.HELD_OUT).head(3)
    path = tmp_path / "mixed.parquet"
    pl.concat([held, train]).write_parquet(path)
    with pytest.raises(ValueError, match=r"mixed\.parquet: field 'subject_id': 3 subject\(s\) are not in the "
                                         r"held_out split .* \(first at row 3\)"):
        label_dataset(_label_task(tmp_path, path), sim, S.HELD_OUT)
    with pytest.raises(ValueError, match=r"field 'labels': .*missing\.parquet does not exist"):
        _label_task(tmp_path, tmp_path / "missing.parquet")


def test_builtin_tasks_still_load_as_before():
    task = load_task(BUILTIN_DIR / "simulator" / "mortality_1y.yaml")
    assert isinstance(task, Task) and task.prediction_time == "random_event"
    assert dt.timedelta(days=task.horizon_days) == dt.timedelta(days=365)
