"""Checks for synthetic patient cohorts (MEDS events): fidelity, privacy, utility, a PAR baseline.

- `fidelity_report(synth, real)`: code prevalence and co-occurrence, events per subject, visit
  gaps, ages at events, SDMetrics quality of the per-patient summary table.
- `privacy_report(synth, train, held_out)`: distance to closest record, membership inference
  AUROC, copied code n-grams, each beside a held-out real reference.
- `utility_report(synth, train, held_out)`: train-on-synthetic, test-on-real AUROC against
  train-on-real for "does the record contain the outcome".
- `fit_par` / `sample_par`: SDV's PARSynthesizer as a classical baseline generator.
- `evaluate_synthetic` / `plot_synthetic`: all of the above, and figures, in one call.

SDV and SDMetrics are imported only by the functions that need them (they take seconds to load).
"""

from nightingale.evaluation.synthetic.events import load_events
from nightingale.evaluation.synthetic.fidelity import fidelity_report
from nightingale.evaluation.synthetic.parsynth import FittedPAR, fit_par, sample_par
from nightingale.evaluation.synthetic.privacy import privacy_report
from nightingale.evaluation.synthetic.report import (
    SyntheticEvalConfig,
    evaluate_synthetic,
    plot_synthetic,
)
from nightingale.evaluation.synthetic.summary import fit_top_codes, patient_summary
from nightingale.evaluation.synthetic.utility import utility_report

__all__ = [
    "FittedPAR",
    "SyntheticEvalConfig",
    "evaluate_synthetic",
    "fidelity_report",
    "fit_par",
    "fit_top_codes",
    "load_events",
    "patient_summary",
    "plot_synthetic",
    "privacy_report",
    "sample_par",
    "utility_report",
]
