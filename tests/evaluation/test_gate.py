"""The gate: thresholds over a report, wildcards, missing metrics, and the file the server reads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from nightingale.evaluation import metrics as M
from nightingale.evaluation.gate import Check, apply_gate, load_gate, parse_checks
from nightingale.evaluation.report import gate_file, markdown, write_gate
from nightingale.inference.gate import GateError, check_gate
from nightingale.model.folder import REQUIRED_FILES

REPO = Path(__file__).resolve().parents[2]
REPORT = {
    "intrinsic": {"loss_vs_bigram": 0.8, "next_event_top_k": {"10": 0.9}},
    "tasks": {
        "death": {"model": {"auroc": 0.81, "ece": 0.02}},
        "admission": {"model": {"auroc": 0.55, "ece": 0.2}},
        "rare": {"model": {"ece": 0.01}},  # one class: no AUROC key
    },
}


def test_thresholds_pass_and_fail_by_name():
    checks = [Check("bigram", "intrinsic.loss_vs_bigram", max=0.95),
              Check("top10", "intrinsic.next_event_top_k.10", min=0.95)]
    g = apply_gate(REPORT, checks)
    assert not g["passed"] and g["failed"] == ["top10"]
    assert g["checks"]["bigram"]["status"] == "passed"
    assert "outside >= 0.95" in g["checks"]["top10"]["why"]


def test_wildcard_needs_every_match_and_skips_absent_keys():
    g = apply_gate(REPORT, [Check("auroc", "tasks.*.model.auroc", min=0.6)])
    vals = {v["metric"]: v["passed"] for v in g["checks"]["auroc"]["values"]}
    assert vals == {"tasks.admission.model.auroc": False, "tasks.death.model.auroc": True}
    assert g["failed"] == ["auroc"]
    assert apply_gate(REPORT, [Check("auroc", "tasks.*.model.auroc", min=0.5)])["passed"]


@pytest.mark.parametrize("value", [None, math.nan, "0.9", True])
def test_missing_or_non_numeric_metric_fails_unless_optional(value):
    report = {"a": {"b": value}}
    g = apply_gate(report, [Check("x", "a.b", min=0.1)])
    assert g["failed"] == ["x"] and g["checks"]["x"]["status"] == "failed"
    g = apply_gate(report, [Check("x", "a.b", min=0.1, optional=True)])
    assert g["passed"] and g["skipped"] == ["x"]
    g = apply_gate({}, [Check("y", "nothing.here.*", max=1)])
    assert g["failed"] == ["y"] and "no such metric" in g["checks"]["y"]["why"]


def test_bad_gate_files_name_the_entry_and_field(tmp_path):
    with pytest.raises(ValueError, match=r"checks\[0\]: unknown field\(s\) \['maximum'\]"):
        parse_checks([{"name": "a", "metric": "m", "maximum": 1}], "g.yaml")
    with pytest.raises(ValueError, match=r"checks\[0\]: gate check .a.: needs min, max, above or below"):
        parse_checks([{"name": "a", "metric": "m"}], "g.yaml")
    with pytest.raises(ValueError, match=r"checks\[1\].name: 'a' is used twice"):
        parse_checks([{"name": "a", "metric": "m", "min": 0}, {"name": "a", "metric": "n", "min": 0}])
    with pytest.raises(ValueError, match=r"checks\[0\].min: expected a number"):
        parse_checks([{"name": "a", "metric": "m", "min": "high"}])
    f = tmp_path / "gate.yaml"
    f.write_text("thresholds: []\n")
    with pytest.raises(ValueError, match=str(f)):
        load_gate(f)


def test_default_gate_file_loads():
    checks = load_gate(REPO / "configs" / "eval" / "gates" / "default.yaml")
    assert {"beats_bigram", "task_discrimination", "cohort_privacy"} <= {c.name for c in checks}


def test_the_server_reads_what_the_gate_writes(tmp_path):
    for name in REQUIRED_FILES:  # an exported model folder's files (the gate check reads none)
        (tmp_path / name).write_text("{}")
    report = {"gate": apply_gate(REPORT, [Check("auroc", "tasks.*.model.auroc", min=0.6)]),
              "gate_file": "g.yaml", "model_dir": str(tmp_path), "evaluated_at": "now"}
    write_gate(tmp_path, report)
    with pytest.raises(GateError, match=r"failed the gate: \['auroc'\]"):
        check_gate(tmp_path)
    assert check_gate(tmp_path, allow_ungated=True)["failed"] == ["auroc"]
    report["gate"] = apply_gate(REPORT, [Check("auroc", "tasks.*.model.auroc", min=0.5)])
    write_gate(tmp_path, report)
    assert check_gate(tmp_path)["passed"]
    assert gate_file(report)["checks"]["auroc"]["status"] == "passed"
    assert "Gate **PASSED**" in markdown(report)


def test_the_default_gate_fails_a_model_that_loses_to_the_baseline_and_says_so():
    """Item 7 of issue 13: AUROC >= the baseline's less 0.03 and a Brier skill > 0, per gated task."""
    checks = [c for c in load_gate(REPO / "configs" / "eval" / "gates" / "default.yaml")
              if c.name in ("task_vs_baseline", "task_brier_skill")]
    assert len(checks) == 2

    def report(delta, skill):
        return {"tasks": {"death": {"gate_metrics": {"auroc_vs_baseline": delta, "brier_skill": skill}}}}

    assert apply_gate(report(-0.02, 0.05), checks)["passed"]
    g = apply_gate(report(-0.06, 0.05), checks)
    assert g["failed"] == ["task_vs_baseline"]
    assert g["checks"]["task_vs_baseline"]["why"] == "tasks.death.gate_metrics.auroc_vs_baseline outside >= -0.03"
    g = apply_gate(report(0.01, 0.0), checks)  # no better than the prevalence: strictly above 0 needed
    assert g["failed"] == ["task_brier_skill"] and "> 0" in g["checks"]["task_brier_skill"]["why"]
    # A gated task without a baseline cannot pass the comparison.
    assert apply_gate(report(math.nan, 0.05), checks)["failed"] == ["task_vs_baseline"]


def test_the_default_gate_fails_a_model_that_predicts_too_few_or_too_many_events():
    """A rare outcome predicted at a third of its rate passes the ECE check (0.06) but not the
    calibration in the large: expected / observed events within a factor of 1.5."""
    (check,) = [c for c in load_gate(REPO / "configs" / "eval" / "gates" / "default.yaml")
                if c.name == "task_calibration_in_the_large"]
    (ece,) = [c for c in load_gate(REPO / "configs" / "eval" / "gates" / "default.yaml") if c.name == "task_calibration"]
    y = np.r_[np.ones(9), np.zeros(91)]
    under = np.full(100, 0.03)  # 3 events expected, 9 happened
    metrics = {"expected_over_observed": M.expected_over_observed(y, under), "ece": M.expected_calibration_error(y, under)}
    g = apply_gate({"tasks": {"readmission": {"gate_metrics": metrics}}}, [check, ece])
    assert g["failed"] == ["task_calibration_in_the_large"]
    assert "expected_over_observed outside >= 0.67 and <= 1.5" in g["checks"]["task_calibration_in_the_large"]["why"]
    for share, passed in ((0.09, True), (0.12, True), (0.15, False)):
        ok = apply_gate({"tasks": {"t": {"gate_metrics": {"expected_over_observed":
                                                           M.expected_over_observed(y, np.full(100, share))}}}}, [check])
        assert ok["passed"] is passed, share


def test_strict_bounds():
    assert Check("x", "a", above=0).rule == "> 0" and Check("x", "a", min=0, below=1).rule == ">= 0 and < 1"
    assert apply_gate({"a": 0.5}, [Check("x", "a", above=0, below=1)])["passed"]
    assert not apply_gate({"a": 1.0}, [Check("x", "a", above=0, below=1)])["passed"]
    with pytest.raises(ValueError, match="needs min, max, above or below"):
        Check("x", "a")
