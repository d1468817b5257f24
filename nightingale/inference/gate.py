"""The serving gate: a model is served only with a passing evaluation report in its directory.

The evaluation stage writes `gate_report.json` into the model directory:
``{"passed": bool, "failed": [check names], ...}``. Without a report, or with a failing one, the
model is refused (GateError) unless the caller sets an explicit override, which is logged as a
warning every time (development only; never in a deployment config).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nightingale.model.folder import GateReportError, ModelDir

log = logging.getLogger(__name__)


class GateError(RuntimeError):
    """The model has no passing gate report and no override was given."""


def check_gate(model_dir: ModelDir | str | Path, *, allow_ungated: bool = False) -> dict[str, Any]:
    """Return the gate status to serve under, or raise GateError.

    Returns {"passed": bool, "failed": [...], "override": bool, "report": report-or-None}. An
    unreadable report counts as no report (and is a GateError without the override).
    """
    model = model_dir if isinstance(model_dir, ModelDir) else ModelDir(model_dir)
    try:
        report = model.gate_report()
    except GateReportError as e:
        if not allow_ungated:
            raise GateError(str(e)) from e
        report = None
    if report is not None and report["passed"]:
        return {"passed": True, "failed": [], "override": False, "report": report}
    why = "has no gate report" if report is None else f"failed the gate: {report.get('failed', [])}"
    if not allow_ungated:
        raise GateError(
            f"model {model.path} {why}; run the evaluation stage, or set allow_ungated=true "
            f"(development only)"
        )
    log.warning("SERVING AN UNGATED MODEL: %s %s (allow_ungated override)", model.path, why)
    return {
        "passed": False,
        "failed": [] if report is None else list(report.get("failed", [])),
        "override": True,
        "report": report,
    }
