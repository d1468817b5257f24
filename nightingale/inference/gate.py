"""The serving gate: a model is served only with a passing evaluation report in its directory.

The evaluation stage writes `gate_report.json` into the model directory:
``{"passed": bool, "failed": [check names], ...}``. Without a report, or with a failing one, the
model is refused (GateError) unless the caller sets an explicit override, which is logged as a
warning every time (development only; never in a deployment config).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
GATE_FILE = "gate_report.json"


class GateError(RuntimeError):
    """The model has no passing gate report and no override was given."""


def read_gate_report(model_dir: str | Path) -> dict[str, Any] | None:
    """The gate report of a model directory, or None when there is none. A report that is not a
    JSON object with a boolean `passed` and a list `failed` is an error (a gate that cannot be
    read must not pass)."""
    path = Path(model_dir) / GATE_FILE
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GateError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(report, dict) or not isinstance(report.get("passed"), bool):
        raise GateError(f"{path}: expected an object with a boolean 'passed'")
    if not isinstance(report.get("failed", []), list):
        raise GateError(f"{path}: 'failed' must be a list of check names")
    return report


def check_gate(model_dir: str | Path, *, allow_ungated: bool = False) -> dict[str, Any]:
    """Return the gate status to serve under, or raise GateError.

    Returns {"passed": bool, "failed": [...], "override": bool, "report": report-or-None}.
    """
    model_dir = Path(model_dir)
    try:
        report = read_gate_report(model_dir)
    except GateError:
        if not allow_ungated:
            raise
        report = None
    if report is not None and report["passed"]:
        return {"passed": True, "failed": [], "override": False, "report": report}
    why = "has no gate report" if report is None else f"failed the gate: {report.get('failed', [])}"
    if not allow_ungated:
        raise GateError(
            f"model {model_dir} {why}; run the evaluation stage, or set allow_ungated=true "
            f"(development only)"
        )
    log.warning("SERVING AN UNGATED MODEL: %s %s (allow_ungated override)", model_dir, why)
    return {
        "passed": False,
        "failed": [] if report is None else list(report.get("failed", [])),
        "override": True,
        "report": report,
    }
