"""Evaluate a model directory end to end and apply the gate (what eval/evaluate.py calls).

`run_evaluation(EvalConfig.from_mapping(...))` returns the report; it writes
`<model_dir>/evaluation/` (atomically) and `<model_dir>/gate_report.json`. The caller (the stage)
turns a failed gate into a non-zero exit.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from nightingale.atomic import atomic_dir
from nightingale.evaluation.config import EvalConfig
from nightingale.evaluation.gate import apply_gate, load_gate
from nightingale.evaluation.harness import Harness, _clean
from nightingale.evaluation.report import task_plots, write_gate, write_outputs
from nightingale.evaluation.tasks import load_tasks
from nightingale.model.folder import ModelDir

log = logging.getLogger(__name__)
REPORT_DIR = "evaluation"


def run_evaluation(cfg: EvalConfig) -> dict[str, Any]:
    """Score the model, apply the gate and write the report; returns the report (its "gate" entry
    says passed and which checks failed)."""
    model_dir = ModelDir(cfg.model_dir).path  # refuses a folder without config, weights, tokenizer, vocabulary
    checks = load_gate(cfg.gate)  # a bad gate file fails before hours of evaluation
    all_tasks = load_tasks(cfg.task_dir) if cfg.task_dir else {}  # zero-shot scoring, and TSTR of cohorts
    task_defs = all_tasks if cfg.zeroshot else {}
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "model_dir": str(model_dir), "data_dir": str(cfg.data_dir), "meds_dir": str(cfg.meds_dir),
        "gate_file": str(cfg.gate), "evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_dir(model_dir / REPORT_DIR, overwrite=True) as work:
        h = Harness(model_dir, cfg.data_dir, cfg.meds_dir, work, engine_cfg=cfg.engine, progress=cfg.progress)
        try:
            if cfg.intrinsic:
                report["intrinsic"] = h.intrinsic(cfg.intrinsic)
            if task_defs:
                report["tasks"] = h.tasks(task_defs, cfg.zeroshot, cfg.task_scoring)
                for name, entry in report["tasks"].items():
                    entry["plots"] = task_plots(name, entry, work / "plots")
                    entry.pop("_preds", None)
            if cfg.synthetic:
                report["synthetic"] = h.synthetic(cfg.synthetic, all_tasks)
        finally:
            h.close()
        report["timings"] = {**h.timings, "total_s": time.perf_counter() - t_start}
        report = _clean(report)
        report["gate"] = apply_gate(report, checks)
        write_outputs(work, model_dir, report)
    write_gate(model_dir, report)
    g = report["gate"]
    log.info("gate %s (%d checks, failed: %s); report in %s", "PASSED" if g["passed"] else "FAILED",
             len(g["checks"]), g["failed"] or "none", model_dir / REPORT_DIR)
    return report
