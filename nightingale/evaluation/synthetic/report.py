"""Judge a synthetic cohort against its training data and held-out real patients, in one call.

>>> report = evaluate_synthetic(synth, train, held_out, SyntheticEvalConfig())   # doctest: +SKIP
>>> report["privacy"]["mia/auc"], report["utility"]["utility/ratio"]             # doctest: +SKIP
>>> plot_synthetic(synth, train, held_out, "reports/synthetic")                  # doctest: +SKIP

Fidelity compares the synthetic cohort with train (what the generator learned from); the same
numbers for held-out vs train (`fidelity_reference`) show what "as good as new real patients"
looks like on data of this size. Privacy and utility carry their own real-data references.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from nightingale import schema as S
from nightingale.atomic import atomic_file
from nightingale.config import check_ints
from nightingale.evaluation.synthetic.attribute import attribute_inference
from nightingale.evaluation.synthetic.events import EventsLike, load_events
from nightingale.evaluation.synthetic.fidelity import (
    events_per_subject,
    fidelity_report,
    prevalence_table,
)
from nightingale.evaluation.synthetic.privacy import (
    DEFAULT_NGRAM_LENGTH,
    dcr_distances,
    privacy_report,
    privacy_samples,
)
from nightingale.evaluation.synthetic.summary import fit_top_codes
from nightingale.evaluation.synthetic.utility import utility_report

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SyntheticEvalConfig:
    """top_codes: code-count features of the per-patient summary for DCR and utility;
    quality_top_codes: the (smaller) set for the SDMetrics quality table, whose pair-trend
    property grows with columns**2; cooccurrence_codes: codes whose pairs are compared;
    ngram_length: codes in a run counted as copied (see privacy.py for the choice);
    quality: run SDMetrics; quality_max_rows: rows per table given to it; max_subjects: cap per
    cohort for the nearest-neighbour searches; outcome_codes: the utility task's outcome;
    reference: also report held-out vs train fidelity; seed: every subsample and model."""

    top_codes: int = 50
    quality_top_codes: int = 20
    cooccurrence_codes: int = 30
    ngram_length: int = DEFAULT_NGRAM_LENGTH
    quality: bool = True
    quality_max_rows: int = 2000
    max_subjects: int | None = 20_000
    outcome_codes: tuple[str, ...] = (S.DEATH_CODE,)
    reference: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome_codes", tuple(self.outcome_codes))
        check_ints(self, ("top_codes", "quality_top_codes", "cooccurrence_codes"), "SyntheticEvalConfig", low=0)
        check_ints(self, ("ngram_length", "quality_max_rows"), "SyntheticEvalConfig")
        if self.max_subjects is not None and self.max_subjects < 10:
            raise ValueError(
                "SyntheticEvalConfig.max_subjects: must be >= 10 or None, "
                f"got {self.max_subjects!r}"
            )
        if not self.outcome_codes:
            raise ValueError("SyntheticEvalConfig.outcome_codes: name at least one outcome code")


def evaluate_synthetic(
    synth: EventsLike,
    train: EventsLike,
    held_out: EventsLike,
    cfg: SyntheticEvalConfig | None = None,
) -> dict[str, Any]:
    """Fidelity, privacy and utility of `synth` (plain JSON-able values; None where undefined).

    Returns {"fidelity": fidelity_report(synth, train), "fidelity_reference":
    fidelity_report(held_out, train) (when cfg.reference), "privacy": privacy_report(...) with
    attribute_inference(...)'s keys,
    "utility": utility_report(...), "seconds": {...}, "config": {...}}.
    """
    cfg = cfg or SyntheticEvalConfig()
    synth, train, held_out = (load_events(x) for x in (synth, train, held_out))
    quality_codes = fit_top_codes(train, cfg.quality_top_codes)
    fid = dict(
        top_codes=quality_codes,
        cooccurrence_codes=cfg.cooccurrence_codes,
        quality=cfg.quality,
        quality_max_rows=cfg.quality_max_rows,
        seed=cfg.seed,
    )
    out: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    steps = [("fidelity", lambda: fidelity_report(synth, train, **fid))]
    if cfg.reference:
        steps.append(("fidelity_reference", lambda: fidelity_report(held_out, train, **fid)))
    steps += [
        (
            "privacy",
            lambda: privacy_report(
                synth,
                train,
                held_out,
                ngram_length=cfg.ngram_length,
                top_codes=cfg.top_codes,
                max_subjects=cfg.max_subjects,
                seed=cfg.seed,
            ),
        ),
        (
            "utility",
            lambda: utility_report(
                synth,
                train,
                held_out,
                outcome_codes=cfg.outcome_codes,
                top_codes=cfg.top_codes,
                seed=cfg.seed,
            ),
        ),
    ]
    steps.append(("attribute", lambda: attribute_inference(synth, train, held_out, max_subjects=cfg.max_subjects,
                                                             seed=cfg.seed)))
    for name, step in steps:
        start = time.perf_counter()
        out[name] = step()
        seconds[name] = round(time.perf_counter() - start, 3)
        log.info("synthetic evaluation: %s done in %.1f s", name, seconds[name])
    out["privacy"].update(out.pop("attribute"))
    out["seconds"] = seconds
    out["config"] = {**dataclasses.asdict(cfg), "outcome_codes": list(cfg.outcome_codes)}
    return out


# --- figures --------------------------------------------------------------------------------------
_FIGSIZE, _DPI = (6.0, 4.5), 100


def _save(fig: Figure, path: Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return path


def plot_histograms(
    samples: dict[str, np.ndarray],
    path: str | os.PathLike,
    *,
    xlabel: str,
    title: str = "",
    log_x: bool = False,
    integer: bool = False,
    bins: int = 40,
) -> Path:
    """Overlaid step histograms, one per sample, of the share of its values in each bin; the
    bins are shared, log-spaced with `log_x` (values <= 0 are then left out and counted on the
    plot) and, with `integer`, cut half-way between integers so every bin holds an integer.
    Written atomically as PNG."""
    fig = Figure(figsize=_FIGSIZE, layout="constrained")
    ax = fig.subplots()
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in samples.items()}
    arrays = {k: v[np.isfinite(v)] for k, v in arrays.items()}
    if log_x:
        dropped = sum(int((v <= 0).sum()) for v in arrays.values())
        arrays = {k: v[v > 0] for k, v in arrays.items()}
        if dropped:
            ax.annotate(
                f"{dropped} values <= 0 not shown",
                xy=(0.02, 0.98),
                xycoords="axes fraction",
                va="top",
                fontsize="small",
            )
    pooled = np.concatenate([v for v in arrays.values()] or [np.zeros(0)])
    if pooled.size:
        lo, hi = pooled.min(), pooled.max()
        hi = hi if hi > lo else lo + 1.0
        edges = np.geomspace(lo, hi, bins + 1) if log_x else np.linspace(lo, hi, bins + 1)
        if integer:
            edges = np.unique(np.round(np.r_[edges, hi + 1])) - 0.5
        for name, v in arrays.items():
            if v.size:
                ax.hist(
                    v,
                    bins=edges,
                    weights=np.full(v.size, 1.0 / v.size),
                    histtype="step",
                    linewidth=1.5,
                    label=f"{name} (n={v.size}, median {np.median(v):.3g})",
                )
        if log_x:
            ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share per bin")
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_synthetic(
    synth: EventsLike,
    train: EventsLike,
    held_out: EventsLike,
    out_dir: str | os.PathLike,
    cfg: SyntheticEvalConfig | None = None,
) -> dict[str, Path]:
    """Write prevalence.png (code prevalence, synthetic vs train), events_per_subject.png
    (histograms for train, held-out and synthetic) and dcr.png (distance to the closest training
    record, synthetic vs held-out) into `out_dir`; returns {name: path}."""
    from nightingale.evaluation.plots import plot_scatter

    cfg = cfg or SyntheticEvalConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    synth, train, held_out = (load_events(x) for x in (synth, train, held_out))
    prev = prevalence_table(synth, train)
    paths = {
        "prevalence": plot_scatter(
            prev["real"].to_numpy(),
            prev["synth"].to_numpy(),
            out / "prevalence.png",
            xlabel="share of train subjects with code",
            ylabel="share of synthetic subjects",
            title=f"Code prevalence ({prev.height} codes)",
        ),
        "events_per_subject": plot_histograms(
            {
                "train": events_per_subject(train),
                "held-out": events_per_subject(held_out),
                "synthetic": events_per_subject(synth),
            },
            out / "events_per_subject.png",
            xlabel="clinical events per subject",
            log_x=True,
            integer=True,
            title="Events per subject",
        ),
    }
    q_synth, q_held, members = privacy_samples(synth, train, held_out, cfg.max_subjects, cfg.seed)
    dist = dcr_distances(q_synth, train, q_held, top_codes=fit_top_codes(train, cfg.top_codes), members=members)
    paths["dcr"] = plot_histograms(
        {
            "synthetic -> train": dist["synth_to_train"],
            "held-out -> train": dist["held_out_to_train"],
        },
        out / "dcr.png",
        xlabel="distance to closest training record (standardised)",
        title="Distance to closest record",
    )
    return paths
