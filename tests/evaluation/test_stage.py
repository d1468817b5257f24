"""The evaluation stage end to end (eval/evaluate.py as a process, real vLLM CPU engine).

The session's tiny trained model (tests/inference/harness.py: 300 simulated subjects) against the
same architecture with random weights, both under the default gate. The held-out split is small
(~30 subjects), so no task reaches `min_class` labels of each outcome and the task checks cannot
pass there; what must hold is that the trained model passes every check that does not depend on
data size, that the random one fails the intrinsic ones by name, and that the outputs are complete.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from nightingale.inference.gate import GateError, check_gate
from tests.inference import harness

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PREDICTION_COLUMNS = ["subject_id", "prediction_time", "boolean_value", "predicted_boolean_value",
                      "predicted_boolean_probability"]


def _evaluate(model_dir: Path, root: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "eval" / "evaluate.py"), "--config-name", "quick",
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
    assert set(report["gate"]["failed"]) <= {"task_discrimination", "task_calibration", "cohort_fidelity"}
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
    broken = tmp_path / "no_tokenizer"
    shutil.copytree(trained, broken)
    (broken / "tokenizer.json").unlink()
    r = _evaluate(broken, root, tmp_path)
    assert r.returncode == 2 and "has no tokenizer.json" in r.stderr + r.stdout
