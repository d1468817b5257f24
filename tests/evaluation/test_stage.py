"""The evaluation stage end to end (eval/evaluate.py as a process, real vLLM CPU engine).

The session's tiny trained model (tests/inference/harness.py: 300 simulated subjects) against the
same architecture with random weights, both under the default gate. The held-out split is small
(~30 subjects), so no task reaches `min_class` labels of each outcome and the task checks cannot
pass there; what must hold is that the trained model passes every check that does not depend on
data size, that the random one fails the intrinsic ones by name, and that the outputs are complete.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from nightingale import schema as S
from nightingale.inference.gate import GateError, check_gate
from tests.inference import harness
from tests.meds_check import assert_meds_labels, assert_meds_predictions

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PREDICTION_COLUMNS = ["subject_id", "prediction_time", "boolean_value", "predicted_boolean_value",
                      "predicted_boolean_probability"]


def _evaluate(model_dir: Path, root: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "eval" / "evaluate.py"), "experiment=quick",
         f"model_dir={model_dir}", f"data_dir={root / 'prep'}", f"meds_dir={root / 'meds'}",
         "progress=false", "zeroshot.rollouts=8", "synthetic.patients=40", "intrinsic.max_windows=64",
         f"hydra.run.dir={tmp / 'hydra'}", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(trained copy, random-weights twin, data root) without touching the served model's folder."""
    from nightingale.model import ModelConfig, build_model, export_model
    from nightingale.tokenizer import Vocabulary

    # The same cached model the serving tests use (trained once per session).
    served = harness.build_model_dir(harness.artifacts_root(tmp_path_factory.getbasetemp() / "serving"))
    tmp = tmp_path_factory.mktemp("eval_stage")
    trained = tmp / "trained"
    shutil.copytree(served, trained, ignore=shutil.ignore_patterns("gate_report.json", "evaluation"))
    cfg_json = json.loads((served / "config.json").read_text())
    vocab = Vocabulary.load(served)
    cfg = ModelConfig(name="test-random", hidden_size=cfg_json["hidden_size"], n_layers=cfg_json["num_hidden_layers"],
                      n_heads=cfg_json["num_attention_heads"], n_kv_heads=cfg_json["num_key_value_heads"],
                      intermediate_size=cfg_json["intermediate_size"],
                      context_length=cfg_json["max_position_embeddings"]).with_vocab(len(vocab))
    rand = export_model(build_model(cfg, seed=123).state_dict(), cfg, vocab, tmp / "random")
    return trained, Path(rand), served.parent, tmp


def test_trained_model_passes_the_size_independent_checks_random_weights_fail(models):
    trained, rand, root, tmp = models
    good = _evaluate(trained, root, tmp / "good")
    report = json.loads((trained / "evaluation" / "report.json").read_text())
    checks = report["gate"]["checks"]
    for name in ("beats_bigram", "next_event_precision_at_10", "cohort_decodes", "cohort_privacy"):
        assert checks[name]["status"] == "passed", (name, checks[name], good.stdout[-2000:])
    # No task has min_class labels of each outcome in ~30 held-out subjects: not evaluable, so failed.
    assert set(report["gate"]["failed"]) <= {"task_discrimination", "task_vs_baseline", "task_brier_skill",
                                            "task_calibration", "task_calibration_in_the_large", "cohort_fidelity"}
    assert good.returncode == (0 if report["gate"]["passed"] else 1), good.stderr[-2000:]

    # Intrinsic checks only: no rollouts or cohort, so no engine start (the task checks then fail
    # as "no such metric", which the gate must also treat as a failure).
    bad = _evaluate(rand, root, tmp / "bad", "zeroshot.enabled=false", "synthetic.enabled=false")
    assert bad.returncode == 1, bad.stderr[-3000:]
    gate = json.loads((rand / "gate_report.json").read_text())
    assert not gate["passed"]
    assert {"beats_bigram", "next_event_precision_at_10"} <= set(gate["failed"])
    assert "[ failed] beats_bigram" in bad.stdout and "Gate FAILED" in bad.stdout
    assert {"task_discrimination", "task_calibration"} <= set(gate["failed"])
    assert {"cohort_decodes", "cohort_fidelity", "cohort_privacy"} <= set(gate["skipped"])
    with pytest.raises(GateError, match="beats_bigram"):
        check_gate(rand)
    rep = json.loads((rand / "evaluation" / "report.json").read_text())
    assert rep["intrinsic"]["loss_vs_bigram"] > 1.2 > report["intrinsic"]["loss_vs_bigram"]


def test_report_files_predictions_and_plots(models):
    trained, _, _, _ = models
    out = trained / "evaluation"
    if not (out / "report.json").is_file():
        pytest.skip("needs the evaluation of the test above")
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert "## Intrinsic (held-out)" in md and "## Zero-shot tasks" in md and "## Synthetic cohort" in md
    for rel in [p for t in report["tasks"].values() for p in t.get("plots", {}).values()]:
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({rel})" in md
    preds = sorted((out / "predictions").glob("*.parquet"))
    assert preds, "no predictions written"
    for p in preds:
        frame = pl.read_parquet(p)
        assert frame.columns == PREDICTION_COLUMNS
        assert frame["predicted_boolean_probability"].is_between(0, 1).all()
        assert_meds_predictions(p)  # meds-evaluation's PredictionSchema, exactly
    labels = sorted((out / "labels").glob("*.parquet"))
    assert {p.stem for p in labels} == set(report["tasks"])
    for p in labels:
        assert_meds_labels(p)
    mort = report["tasks"]["mortality_1y"]
    assert mort["labels"]["evaluated"] == mort["model"]["n"]
    assert "oracle" in mort and mort["oracle"]["outcome"] == "death"
    assert not list(trained.glob(".evaluation.*")), "temporary report folder left behind"


def test_bad_inputs_exit_2_and_leave_no_report(models, tmp_path):
    trained, _, root, _ = models
    gate = tmp_path / "gate.yaml"
    gate.write_text("checks:\n  - {name: x, metric: intrinsic.loss, maximum: 1}\n")
    before = (trained / "gate_report.json").read_bytes() if (trained / "gate_report.json").exists() else None
    r = _evaluate(trained, root, tmp_path, f"gate={gate}")
    assert r.returncode == 2
    assert "unknown field(s) ['maximum']" in r.stderr + r.stdout and str(gate) in r.stderr + r.stdout
    after = (trained / "gate_report.json").read_bytes() if (trained / "gate_report.json").exists() else None
    assert before == after
    r = _evaluate(tmp_path / "nope", root, tmp_path)
    assert r.returncode == 2 and "is not a folder" in r.stderr + r.stdout
    # An ACES task whose predicate matches nothing in the data, and a label file with training subjects:
    # refused by name before any rollout, and the previous report is left as it was.
    typo = (REPO / "configs" / "eval" / "tasks" / "aces" / "simulator" / "mortality_1y.yaml").read_text()
    (tmp_path / "typo.yaml").write_text(typo.replace("code: MEDS_DEATH", "code: MEDS_DAETH"))
    r = _evaluate(trained, root, tmp_path, f"task_dir={tmp_path / 'typo.yaml'}")
    assert r.returncode == 2 and "typo.yaml: field 'predicates.death'" in r.stderr + r.stdout
    from nightingale.data.meds_io import MEDSDataset, write_meds_parquet
    from nightingale.evaluation.tasks import label_dataset, load_task

    train = label_dataset(load_task(REPO / "configs" / "eval" / "tasks" / "simulator" / "mortality_1y.yaml"),
                          MEDSDataset(root / "meds"), "train")
    write_meds_parquet(train, tmp_path / "train_rows.parquet", S.MEDSLabelSchema)
    (tmp_path / "mine.yaml").write_text("name: mine\nlabels: train_rows.parquet\noutcome_codes: [MEDS_DEATH]\n"
                                        "horizon_days: 365\n")
    r = _evaluate(trained, root, tmp_path, f"task_dir={tmp_path / 'mine.yaml'}")
    assert r.returncode == 2 and "train_rows.parquet: field 'subject_id'" in r.stderr + r.stdout
    after = (trained / "gate_report.json").read_bytes() if (trained / "gate_report.json").exists() else None
    assert before == after
    broken = tmp_path / "no_tokenizer"
    shutil.copytree(trained, broken)
    (broken / "tokenizer.json").unlink()
    r = _evaluate(broken, root, tmp_path)
    assert r.returncode == 2 and "has no tokenizer.json" in r.stderr + r.stdout


def test_aces_task_label_file_trajectories_and_meds_evaluation(models, tmp_path):
    """MEDS tools in and out, through the real stage: an ACES task (labels by es-aces) and a MEDS
    label file scored on exactly its rows; predictions that `meds-evaluation` scores to the report's
    AUROC; rollouts as generated trajectories that MEDS_trajectory_evaluation's ZSACES_label reads."""
    from nightingale.data.meds_io import MEDSDataset, write_meds_parquet
    from nightingale.evaluation.tasks import label_dataset, load_task

    trained, _, root, _ = models
    model = tmp_path / "model"
    shutil.copytree(trained, model, ignore=shutil.ignore_patterns("gate_report.json", "evaluation"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    aces_src = REPO / "configs" / "eval" / "tasks" / "aces" / "simulator" / "mortality_1y.yaml"
    shutil.copy(aces_src, tasks / "mortality_1y.yaml")
    # The label file: emergency admission within a year of a random time (deaths are too rare among
    # these ~30 held-out subjects to give both classes; the comparison with meds-evaluation needs both).
    builtin = dataclasses.replace(load_task(REPO / "configs" / "eval" / "tasks" / "simulator" / "mortality_1y.yaml"),
                                  name="my_admission", outcome_codes=("ADMISSION//EMERGENCY",))
    meds = MEDSDataset(root / "meds")
    held = label_dataset(builtin, meds, "held_out")
    write_meds_parquet(held, tmp_path / "labels" / "held_out.parquet", S.MEDSLabelSchema)
    write_meds_parquet(label_dataset(builtin, meds, "train"), tmp_path / "labels" / "train.parquet", S.MEDSLabelSchema)
    (tasks / "my_admission.yaml").write_text(
        "name: my_admission\nlabels: ../labels/held_out.parquet\ntrain_labels: ../labels/train.parquet\n"
        "outcome_codes: [ADMISSION//EMERGENCY]\nhorizon_days: 365\n")
    r = _evaluate(model, root, tmp_path, f"task_dir={tasks}", "zeroshot.rollouts=4", "zeroshot.trajectories=true",
                  "intrinsic.enabled=false", "synthetic.enabled=false", "task_scoring.max_labels=null")
    out = model / "evaluation"
    assert r.returncode in (0, 1) and (out / "report.json").is_file(), r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    aces, mine = report["tasks"]["mortality_1y"], report["tasks"]["my_admission"]
    assert aces["labels"]["source"] == "aces" and aces["task"]["source"] == "aces"
    assert aces["labels"]["kept"] == aces["model"]["n"] > 10  # one row drawn per held-out subject
    assert mine["model"]["n"] == held.height and mine["baseline"] is not None  # exactly the file's rows
    assert "labels: labels extracted by es-aces" in (out / "report.md").read_text()

    # meds-evaluation, the community's scorer, on the files we wrote: the same AUROC to 1e-6
    compared = 0
    for name, entry in report["tasks"].items():
        for who in ("model", "baseline"):
            pred = out / "predictions" / f"{name}.{who}.parquet"
            assert_meds_predictions(pred)
            if "auroc" not in entry[who]:  # one class among these few held-out subjects' labels
                continue
            compared += 1
            res = tmp_path / f"{name}.{who}.json"
            ev = subprocess.run([str(Path(sys.executable).with_name("meds-evaluation-cli")), f"predictions_path={pred}",
                                 f"output_file={res}"], capture_output=True, text=True, timeout=300)
            assert ev.returncode == 0, ev.stderr[-2000:]
            theirs = json.loads(res.read_text())["samples_equally_weighted"]["roc_auc_score"]
            assert abs(theirs - entry[who]["auroc"]) <= 1e-6, (name, who, theirs, entry[who]["auroc"])
    assert compared >= 2

    # generated trajectories: one file per sample index, the tools' own schema, then their labeller
    from MEDS_trajectory_evaluation.schema import GeneratedTrajectorySchema

    files = sorted((out / "trajectories").glob("*.parquet"))
    assert [p.stem for p in files] == ["0", "1", "2", "3"]
    keys = pl.concat([held.select(S.SUBJECT_ID, S.PREDICTION_TIME),
                      pl.read_parquet(out / "labels" / "mortality_1y.parquet").select(S.SUBJECT_ID, S.PREDICTION_TIME)]
                     ).unique()
    for p in files:
        GeneratedTrajectorySchema.validate(pq.read_table(p))
        traj = pl.read_parquet(p)
        assert (traj[S.TIME] >= traj[S.PREDICTION_TIME]).all()
        assert traj.select(S.SUBJECT_ID, S.PREDICTION_TIME).unique().join(keys, on=[S.SUBJECT_ID, S.PREDICTION_TIME],
                                                                           how="anti").is_empty()
    criteria = REPO / "configs" / "eval" / "trajectory_tasks" / "death_365d.yaml"
    zs = subprocess.run([str(Path(sys.executable).with_name("ZSACES_label")), f"task.criteria_fp={criteria}",
                         f"trajectories_dir={out / 'trajectories'}", f"output_dir={tmp_path / 'zs'}"],
                        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert zs.returncode == 0, zs.stderr[-3000:]
    for p in files:  # their labels are what our files say: a death in (t + 1 s, t + 365 d + 1 s]
        traj = pl.read_parquet(p)
        t, second = pl.col(S.PREDICTION_TIME), pl.duration(seconds=1)
        died = (traj.group_by(S.SUBJECT_ID, S.PREDICTION_TIME)
                .agg(((pl.col(S.CODE) == S.DEATH_CODE) & (pl.col(S.TIME) > t + second)
                      & (pl.col(S.TIME) <= t + pl.duration(days=365) + second)).any().alias("died")))
        labelled = pl.read_parquet(tmp_path / "zs" / p.name).join(died, on=[S.SUBJECT_ID, S.PREDICTION_TIME])
        assert labelled.height == died.height > 0 and labelled["determinable"].all()
        assert (labelled["label"] == labelled["died"]).all()


@pytest.mark.shared_data
def test_aces_mortality_on_the_mimic_demo_end_to_end(mimic_demo, tmp_path):
    """The shipped ACES MIMIC-IV task through eval/evaluate.py on the real demo: prepare it, export a
    (random-weights) model with its vocabulary, score the task's held-out rows and the baseline.
    What is checked is the path, not the figures: 100 patients cannot say how good a model is."""
    from nightingale.model import ModelConfig, build_model, export_model
    from nightingale.tokenizer import Vocabulary
    from nightingale.tokenizer import prepare as P

    prep = tmp_path / "prep"
    P.prepare(P.PrepareConfig(meds_dir=mimic_demo, out_dir=prep, show_progress=False))
    vocab = Vocabulary.load(prep / "vocab")
    # head_dim 32: vLLM's CPU attention has no kernel for 16
    cfg = ModelConfig(name="test-mimic", hidden_size=64, n_layers=1, n_heads=2, n_kv_heads=2,
                      intermediate_size=128, context_length=256).with_vocab(len(vocab))
    model = Path(export_model(build_model(cfg, seed=0).state_dict(), cfg, vocab, tmp_path / "model"))
    task = REPO / "configs" / "eval" / "tasks" / "aces" / "mimic" / "mortality_1y.yaml"
    r = subprocess.run(
        [sys.executable, str(REPO / "eval" / "evaluate.py"), "experiment=quick", f"model_dir={model}",
         f"data_dir={prep}", f"meds_dir={mimic_demo}", f"task_dir={task}", "progress=false",
         "zeroshot.rollouts=2", "zeroshot.max_new_tokens=128", "intrinsic.enabled=false",
         "synthetic.enabled=false", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert r.returncode in (0, 1) and (model / "evaluation" / "report.json").is_file(), r.stderr[-3000:]
    report = json.loads((model / "evaluation" / "report.json").read_text())
    mort = report["tasks"]["mortality_1y"]
    assert mort["labels"]["source"] == "aces" and mort["labels"]["kept"] == mort["model"]["n"] > 0
    assert mort["task"]["outcome_codes"] == ["MEDS_DEATH"] and mort["task"]["horizon_days"] == 365.0
    assert_meds_labels(model / "evaluation" / "labels" / "mortality_1y.parquet")
    assert_meds_predictions(model / "evaluation" / "predictions" / "mortality_1y.model.parquet")
