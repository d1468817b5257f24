"""What a planner reads: the aggregates as Markdown and as a chart (PNG), suppressed cells shown as
such, next to the observed and the oracle's counts where the job computed them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from nightingale.atomic import atomic_file
from nightingale.inference.population.aggregate import INTERVAL
from nightingale.inference.population.shard import ALL

SUPPRESSED = "suppressed"


def _fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def cell_text(r: dict[str, Any]) -> str:
    if r["suppressed"]:
        return f"{SUPPRESSED} ({r['suppressed']})"
    return f"{_fmt(r['expected'])} [{_fmt(r['lower'])}, {_fmt(r['upper'])}]"


def markdown(agg: pl.DataFrame, meta: dict[str, Any]) -> str:
    """The summary page: what was forecast for whom, then one table per outcome and horizon."""
    cfg = meta["config"]
    counts = meta["counts"]
    lines = [
        "# Population forecast",
        "",
        f"- Model: `{meta['model']}` (gate: {'passed' if meta['gate'].get('passed') else 'NOT PASSED'}"
        f"{', override' if meta['gate'].get('override') else ''})",
        f"- Dataset: `{meta['dataset']}`, split: {cfg['split'] or 'all'}, prediction time: {cfg['prediction_time']}",
        f"- Patients at risk: {counts.get('at_risk', 0):,} (left out: {counts.get('no_history', 0):,} without history "
        f"by then, {counts.get('dead_before', 0):,} dead by then, {counts.get('outside_split', 0):,} outside the split)",
        f"- Rollouts per patient: {cfg['rollouts']} ({cfg['estimator']} estimator, temperature 1, no truncation)",
        f"- Interval: {meta.get('interval', INTERVAL)}",
        f"- Counts under {cfg['small_count_threshold']} are suppressed, with one more cell where a single one "
        "would be recoverable from the total",
    ]
    for r in meta.get("calibration", {}).get("ratios", []):
        what = f"{r['outcome']} within {r['horizon_days']:g} days"
        lines.append(f"- Recalibrated from {meta['calibration']['time'][:10]}: {what} x {r['ratio']:.2f} "
                     f"[{r['ratio_lower']:.2f}, {r['ratio_upper']:.2f}] (observed / the model's expected count then)"
                     if r["applied"] else f"- Not recalibrated, {what}: {r['reason']}")
    if "coverage" in meta:
        cov = meta["coverage"]
        lines.append(f"- Backtest: the model's 95% intervals held the observed count in {cov.get('model', 0):.0%} of "
                     f"{cov['cells']} cells" + (f"; recalibrated, {cov['recalibrated']:.0%}" if "recalibrated" in cov else "")
                     + (f"; the oracle's in {cov['oracle']:.0%}" if "oracle" in cov else ""))
    backtest, oracle = "observed" in agg.columns, "oracle_expected" in agg.columns
    for (outcome, days), part in agg.group_by("outcome", "horizon_days", maintain_order=True):
        lines += ["", f"## {outcome} within {days:g} days", ""]
        head = ["group", "value", "patients", "expected [95%]"] + (["observed"] if backtest else []) + \
            (["oracle [95%]"] if oracle else [])
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in part.iter_rows(named=True):
            row = [r["group"], r["value"], _fmt(r["patients"], 0), cell_text(r)]
            if backtest:
                row.append(_fmt(r["observed"], 0))
            if oracle:
                row.append("–" if r["suppressed"] else
                           f"{_fmt(r['oracle_expected'])} [{_fmt(r['oracle_lower'])}, {_fmt(r['oracle_upper'])}]")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(agg: pl.DataFrame, path: str | Path) -> Path:
    """Expected counts by group with their 95% intervals (one panel per outcome x horizon and
    grouping); observed counts as dots, suppressed cells as empty slots marked 'suppressed'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = agg.filter(pl.col("group") != ALL).group_by("outcome", "horizon_days", "group", maintain_order=True)
    panels = [(k, p) for k, p in panels]
    n = max(len(panels), 1)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, ((outcome, days, group), part) in zip(axes.flat, panels):
        labels = part["value"].to_list()
        x = list(range(len(labels)))
        shown = part.with_row_index("_x").filter(pl.col("suppressed").is_null())
        ax.bar(shown["_x"], shown["expected"], color="#4c72b0", label="expected (model)")
        err = [(shown["expected"] - shown["lower"]).to_list(), (shown["upper"] - shown["expected"]).to_list()]
        ax.errorbar(shown["_x"], shown["expected"], yerr=err, fmt="none", ecolor="black", capsize=3, label="95% interval")
        if "oracle_expected" in part.columns:
            ax.plot(shown["_x"], shown["oracle_expected"], "_", markersize=22, mew=2.5, color="#55a868",
                    label="oracle (expected)")
        if "observed" in part.columns:
            ax.plot(shown["_x"], shown["observed"], "o", color="#dd8452", label="observed")
        for r in part.with_row_index("_x").filter(pl.col("suppressed").is_not_null()).iter_rows(named=True):
            ax.text(r["_x"], 0, SUPPRESSED, rotation=90, ha="center", va="bottom", fontsize=8, color="grey")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_title(f"{outcome} within {days:g} d, by {group}", fontsize=10)
        ax.set_ylabel("patients")
    if panels:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
