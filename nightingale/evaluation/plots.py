"""Figures for evaluation reports: reliability diagrams, ROC curves, line and scatter plots.

Figures are built with `matplotlib.figure.Figure` directly, never pyplot, so no backend is
selected, no global figure registry keeps them alive, and plotting works in threads and on
headless machines. Every file is written atomically (`nightingale.atomic.atomic_file`): a plot
that fails leaves no half-written image. The format follows the path's suffix (PNG by default).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from nightingale.atomic import atomic_file
from nightingale.evaluation.metrics import auroc, check_binary

DPI = 100
FIGSIZE = (6.0, 4.5)  # inches; a figure is FIGSIZE * DPI pixels
CALIBRATION_FIGSIZE = (6.0, 6.0)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI)
    return path


def _finish(ax, title: str, xlabel: str, ylabel: str, legend: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)


def plot_calibration(curves: Mapping[str, Sequence[Mapping]], path: str | os.PathLike,
                     title: str = "") -> Path:
    """Reliability diagram: observed rate against mean predicted probability, one line per name
    (rows of `metrics.calibration_table`), Wilson 95% intervals as error bars, the diagonal of
    perfect calibration, and beneath it the number of predictions in each bin."""
    fig = Figure(figsize=CALIBRATION_FIGSIZE, layout="constrained")
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    for name, rows in curves.items():
        if not rows:
            continue
        pred = np.array([r["mean_predicted"] for r in rows])
        obs = np.array([r["observed_rate"] for r in rows])
        err = np.array([[r["observed_rate"] - r["observed_low"] for r in rows],
                        [r["observed_high"] - r["observed_rate"] for r in rows]]).clip(min=0.0)
        # clip: at a rate of exactly 0 or 1 the interval's edge can sit 1e-16 inside it
        line = ax.errorbar(pred, obs, yerr=err, marker="o", markersize=4, capsize=2, label=name)
        lower = [r["lower"] for r in rows]
        widths = [r["upper"] - r["lower"] for r in rows]
        hist.bar(lower, [r["count"] for r in rows], width=widths, align="edge", fill=False,
                 edgecolor=line[0].get_color())
    ax.set(xlim=(0, 1), ylim=(0, 1))
    _finish(ax, title, "", "observed rate")
    _finish(hist, "", "predicted probability", "count", legend=False)
    return _save(fig, path)


def plot_roc(series: Mapping[str, tuple], path: str | os.PathLike, title: str = "") -> Path:
    """ROC curves, one per name from (y_true, y_prob), with AUROC in the legend. A series with
    one class has no curve and is listed as such."""
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for name, (y_true, y_prob) in series.items():
        y, p = check_binary(y_true, y_prob)
        area = auroc(y, p)
        if np.isnan(area):
            ax.plot([], [], label=f"{name} (one class: no ROC)")
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {area:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    _finish(ax, title, "false positive rate", "true positive rate")
    return _save(fig, path)


def plot_lines(x: Sequence[float], series: Mapping[str, Sequence[float]], path: str | os.PathLike,
               xlabel: str, ylabel: str, title: str = "") -> Path:
    """One line per name over shared x values (e.g. AUROC against the number of rollouts);
    NaN values leave gaps."""
    x = np.asarray(x, dtype=np.float64)
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.subplots()
    for name, values in series.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != x.shape:
            raise ValueError(f"series[{name!r}]: expected {x.shape} values like x, got {values.shape}")
        ax.plot(x, values, marker="o", markersize=3, label=name)
    _finish(ax, title, xlabel, ylabel)
    return _save(fig, path)


def plot_scatter(x: Sequence[float], y: Sequence[float], path: str | os.PathLike, xlabel: str,
                 ylabel: str, title: str = "", diagonal: bool = True, log: bool = False) -> Path:
    """Scatter of paired values (e.g. code prevalence synthetic vs real, model vs oracle risk)
    with the y = x line. On log axes points with a value <= 0 cannot be drawn; how many were
    left out is written on the plot rather than silently dropped."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y: expected 1-D arrays of one length, got {x.shape} and {y.shape}")
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.subplots()
    shown = np.isfinite(x) & np.isfinite(y) & ((x > 0) & (y > 0) if log else True)
    ax.scatter(x[shown], y[shown], s=10, alpha=0.6)
    if diagonal and shown.any():
        lo = min(x[shown].min(), y[shown].min())
        hi = max(x[shown].max(), y[shown].max())
        ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=1, label="y = x")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    if (~shown).any():
        reason = "non-finite or <= 0 on log axes" if log else "non-finite"
        ax.annotate(f"{int((~shown).sum())} of {len(x)} points not shown ({reason})",
                    xy=(0.02, 0.98), xycoords="axes fraction", va="top", fontsize="small")
    _finish(ax, title, xlabel, ylabel)
    return _save(fig, path)
