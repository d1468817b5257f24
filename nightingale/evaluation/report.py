"""The evaluation report on disk: JSON, Markdown with the plots, predictions, and the gate file.

Layout inside the model directory (written to a temporary folder and renamed: a failed or
interrupted evaluation leaves the previous report, or none, never half of one):

    <model_dir>/evaluation/report.json      every figure, the gate's verdict per check
    <model_dir>/evaluation/report.md        the same for people, with the plots
    <model_dir>/evaluation/plots/*.png      calibration, ROC, AUROC by rollouts, synthetic checks
    <model_dir>/evaluation/predictions/*.parquet   meds-evaluation columns, per task and predictor
    <model_dir>/evaluation/labels/*.parquet        the held-out labels scored (MEDS label schema)
    <model_dir>/evaluation/trajectories/*.parquet  with zeroshot.trajectories: the rollouts, one file
                                                   per sample index (MEDS generated trajectories)
    <model_dir>/gate_report.json            {"passed", "failed", ...}: what the server reads
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nightingale.atomic import write_json_atomic
from nightingale.evaluation import plots as P
from nightingale.model.folder import GATE_FILE

PREDICTORS = ("model", "baseline", "oracle")


def task_plots(name: str, entry: Mapping[str, Any], plot_dir: Path) -> dict[str, str]:
    """Calibration, ROC and AUROC-by-rollouts PNGs of one task; paths relative to the report."""
    out: dict[str, str] = {}
    curves = {k: entry[k]["calibration"] for k in PREDICTORS if entry.get(k) and entry[k].get("calibration")}
    if curves:
        P.plot_calibration(curves, plot_dir / f"{name}_calibration.png", title=f"{name}: calibration")
        out["calibration"] = f"plots/{name}_calibration.png"
    y, preds = entry.get("_preds", (None, {}))
    if y is not None and 0 < y.sum() < len(y):
        series = {}
        for k, p in preds.items():
            ok = np.isfinite(p)
            series[k] = (y[ok], p[ok])
        P.plot_roc(series, plot_dir / f"{name}_roc.png", title=f"{name}: ROC (held-out)")
        out["roc"] = f"plots/{name}_roc.png"
    by = entry.get("auroc_by_rollouts") or {}  # estimator -> {rollouts: AUROC}
    pts = {est: {int(k): v for k, v in curve.items() if v is not None and math.isfinite(v)}
           for est, curve in by.items()}
    xs = sorted(set().union(*pts.values())) if pts else []
    if len(xs) > 1 and all(set(c) == set(xs) for c in pts.values()):
        P.plot_lines(xs, {f"{est} estimator": [c[x] for x in xs] for est, c in pts.items()},
                     plot_dir / f"{name}_auroc_by_rollouts.png", xlabel="rollouts per prediction",
                     ylabel="AUROC", title=f"{name}: AUROC by rollouts")
        out["auroc_by_rollouts"] = f"plots/{name}_auroc_by_rollouts.png"
    return out


def _f(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _ci(m: Mapping[str, Any] | None, key: str) -> str:
    if not m or key not in m:
        return "n/a"
    ci = m.get(f"{key}_ci")
    return f"{_f(m[key])} [{_f(ci[0])}, {_f(ci[1])}]" if ci else _f(m[key])


def markdown(report: Mapping[str, Any]) -> str:
    g = report.get("gate", {})
    lines = [f"# Evaluation of `{report['model_dir']}`", "",
             f"Gate **{'PASSED' if g.get('passed') else 'FAILED'}** ({report.get('gate_file', '')})"
             + (f": failed {', '.join(g.get('failed', []))}" if g.get("failed") else ""), ""]
    if g.get("checks"):
        lines += ["| check | metric | rule | status | values |", "|---|---|---|---|---|"]
        for name, c in g["checks"].items():
            vals = ", ".join(f"{v['metric']}={_f(v['value'])}" for v in c["values"]) or c["why"]
            lines.append(f"| {name} | `{c['metric']}` | {c['rule']} | {c['status']} | {vals} |")
        lines.append("")
    if (i := report.get("intrinsic")):
        lines += ["## Intrinsic (held-out)", "",
                  f"Loss {_f(i['loss'])} nats/token (perplexity {_f(i['perplexity'], 2)}) on {i['targets']} targets "
                  f"of {i['windows']} windows; bigram baseline {_f(i.get('baselines', {}).get('bigram_loss'))}, "
                  f"unigram {_f(i.get('baselines', {}).get('unigram_loss'))}.", "",
                  "| family | targets | loss | perplexity |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['targets']} | {_f(v['loss'])} | {_f(v['perplexity'], 2)} |" for k, v in i["by_family"].items()]
        lines += ["", "| k | next token top-k | next event top-k (precision@k) |", "|---|---|---|"]
        lines += [f"| {k} | {_f(i['next_token_top_k'][k])} | {_f(i['next_event_top_k'][k])} |" for k in i["next_token_top_k"]]
        lines.append("")
    if (tasks := report.get("tasks")):
        lines += ["## Zero-shot tasks (held-out; 95% bootstrap intervals)", "",
                  "| task | labels scored (positive) | predictor | AUROC | AUPRC | Brier | Brier skill | ECE "
                  "| expected / observed events |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, t in tasks.items():
            for k in PREDICTORS:
                m = t.get(k)
                if m:  # the rows this predictor was scored on (a sample of the labels kept)
                    lines.append(f"| {name} | {m.get('n')} ({m.get('positives')}) | {k} | {_ci(m, 'auroc')} | "
                                 f"{_ci(m, 'auprc')} | {_ci(m, 'brier')} | {_ci(m, 'brier_skill')} | {_ci(m, 'ece')} "
                                 f"| {_ci(m, 'expected_over_observed')} |")
        lines.append("")
        for name, t in tasks.items():
            if t["labels"].get("rule"):  # ACES and label-file tasks say where their labels came from
                spec = t.get("task", {})
                lines.append(f"- {name}: labels: {t['labels']['rule']}; the model forecasts "
                             f"{', '.join(spec.get('outcome_codes', []))} within {_f(spec.get('horizon_days'), 1)} days"
                             + (f" ({spec['forecast_note']})" if spec.get("forecast_note") else ""))
            notes = sorted({t[k]["interval_note"] for k in PREDICTORS if t.get(k) and t[k].get("interval_note")})
            lines += [f"- {name}: {n}" for n in notes]
            if t.get("model_auroc_fraction_of_oracle") is not None:
                lines.append(f"- {name}: model AUROC = {_f(t['model_auroc_fraction_of_oracle'])} of the oracle's")
            for est, by in (t.get("auroc_by_rollouts") or {}).items():
                lines.append(f"- {name}: AUROC by rollouts ({est} estimator) "
                             + ", ".join(f"{k}: {_f(v)}" for k, v in by.items()))
            for kind, rel in t.get("plots", {}).items():
                lines.append(f"\n![{name} {kind}]({rel})")
        lines.append("")
    if (syn := report.get("synthetic")):
        lines += ["## Synthetic cohort vs real data", "", "| metric | " + " | ".join(syn) + " |",
                  "|---|" + "---|" * len(syn)]
        rows = [("fidelity", "prevalence/pearson"), ("fidelity", "cooccurrence/pearson"),
                ("fidelity", "events_per_subject/ks"), ("fidelity", "quality/score"),
                ("fidelity_reference", "prevalence/pearson"),
                ("privacy", "mia/auc"), ("privacy", "dcr/synth_median"), ("privacy", "dcr/held_out_median"),
                ("privacy", "dcr/share_below_held_out_p05"),
                ("privacy", "ngram/copy_share_synth"), ("privacy", "ngram/copy_share_held_out"),
                ("utility", "utility/auc_tstr"), ("utility", "utility/auc_trtr"), ("utility", "utility/ratio"),
                ("generation", "dropped_rate")]
        for sec, key in rows:
            vals = [_f((syn[s].get(sec) or {}).get(key)) for s in syn]
            if any(v != "n/a" for v in vals):
                lines.append(f"| {sec}.{key} | " + " | ".join(vals) + " |")
        for task in dict.fromkeys(t for s in syn.values() for t in (s.get("task_utility") or {})):
            for key in ("auc_tstr", "auc_trtr", "ratio"):
                vals = [_f(((syn[s].get("task_utility") or {}).get(task) or {}).get(key)) for s in syn]
                lines.append(f"| task_utility.{task}.{key} | " + " | ".join(vals) + " |")
        for s in syn.values():
            for kind, rel in (s.get("plots") or {}).items():
                lines.append(f"\n![{kind}]({rel})")
        lines.append("")
    if (tm := report.get("timings")):
        lines += ["## Timings (s)", "", ", ".join(f"{k} {v:.1f}" for k, v in tm.items()), ""]
    return "\n".join(lines) + "\n"


def gate_file(report: Mapping[str, Any]) -> dict[str, Any]:
    g = report["gate"]
    return {"passed": g["passed"], "failed": g["failed"], "skipped": g.get("skipped", []),
            "gate": report.get("gate_file"), "evaluated_at": report.get("evaluated_at"),
            "report": "evaluation/report.json",
            "checks": {k: {"status": c["status"], "rule": c["rule"], "values": c["values"]}
                       for k, c in g["checks"].items()}}


def write_outputs(work: Path, model_dir: Path, report: dict[str, Any]) -> None:
    """JSON + Markdown into `work` (the temporary evaluation folder), then the gate file."""
    write_json_atomic(report, work / "report.json")
    (work / "report.md").write_text(markdown(report))


def write_gate(model_dir: Path, report: Mapping[str, Any]) -> Path:
    path = Path(model_dir) / GATE_FILE
    write_json_atomic(gate_file(report), path)
    return path
