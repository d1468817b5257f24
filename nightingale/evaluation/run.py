"""Evaluate a model directory end to end and apply the gate (what eval/evaluate.py calls).

`run_evaluation` returns the report; it writes `<model_dir>/evaluation/` (atomically) and
`<model_dir>/gate_report.json`. The caller (the stage) turns a failed gate into a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nightingale.atomic import atomic_dir
from nightingale.evaluation.gate import apply_gate, load_gate
from nightingale.evaluation.harness import Harness, SyntheticConfig, TasksConfig, _clean
from nightingale.evaluation.intrinsic import IntrinsicConfig
from nightingale.evaluation.report import task_plots, write_gate, write_outputs
from nightingale.evaluation.tasks import load_tasks
from nightingale.evaluation.zeroshot import ZeroShotConfig
from nightingale.model.folder import ModelDir

log = logging.getLogger(__name__)
REPORT_DIR = "evaluation"


def _section(cls, m: Mapping[str, Any] | None, name: str):
    if m is None:
        return None
    m = dict(m)
    enabled = m.pop("enabled", True)
    if not enabled:
        return None
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(m) - known)
    if unknown:
        raise ValueError(f"eval.{name}: unknown field(s) {unknown}; allowed {sorted(known | {'enabled'})}")
    return cls(**m)


def run_evaluation(model_dir: str | Path, data_dir: str | Path, meds_dir: str | Path, *,
                   tasks: str | Path | None, gate: str | Path,
                   intrinsic: Mapping[str, Any] | None = None, zeroshot: Mapping[str, Any] | None = None,
                   task_scoring: Mapping[str, Any] | None = None, synthetic: Mapping[str, Any] | None = None,
                   engine: Mapping[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    model_dir = ModelDir(model_dir).path  # refuses a folder without config, weights, tokenizer, vocabulary
    checks = load_gate(gate)  # a bad gate file fails before hours of evaluation
    icfg = _section(IntrinsicConfig, intrinsic, "intrinsic")
    zcfg = _section(ZeroShotConfig, zeroshot, "zeroshot")
    tcfg = _section(TasksConfig, task_scoring or {}, "task_scoring") or TasksConfig()
    scfg = _section(SyntheticConfig, synthetic, "synthetic")
    task_defs = load_tasks(tasks) if (tasks and zcfg) else {}
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "model_dir": str(model_dir), "data_dir": str(data_dir), "meds_dir": str(meds_dir),
        "gate_file": str(gate), "evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_dir(model_dir / REPORT_DIR, overwrite=True) as work:
        h = Harness(model_dir, data_dir, meds_dir, work, engine_cfg=engine, progress=progress)
        try:
            if icfg:
                report["intrinsic"] = h.intrinsic(icfg)
            if task_defs:
                report["tasks"] = h.tasks(task_defs, zcfg, tcfg)
                for name, entry in report["tasks"].items():
                    entry["plots"] = task_plots(name, entry, work / "plots")
                    entry.pop("_preds", None)
            if scfg:
                report["synthetic"] = h.synthetic(scfg)
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
