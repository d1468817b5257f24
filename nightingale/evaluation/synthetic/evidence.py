"""The evidence a synthetic cohort carries: how it compares with the data its model learnt from,
whether it leaks it, whether it is useful, and whether it may be released.

`cohort_evidence` judges one generated cohort (a MEDS folder) against a reference MEDS dataset
whose `train` split is the model's training data and whose `held_out` split holds real patients
the model never saw (evaluate_synthetic: fidelity, privacy with attribute inference, utility as
TSTR/TRTR), runs the release check (release.py) and writes, into its own folder:

    evidence.json      every figure, the release verdict and its checks
    evidence.md        the headline figures and the verdict, for a reader
    plots/*.png        code prevalence, events per subject, distance to closest record

Only aggregate figures are written: no record, identifier or timeline of the reference data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nightingale import schema as S
from nightingale.atomic import atomic_file, write_json_atomic
from nightingale.evaluation.synthetic.events import load_events
from nightingale.evaluation.synthetic.release import ReleaseConfig, release_check
from nightingale.evaluation.synthetic.report import (
    SyntheticEvalConfig,
    evaluate_synthetic,
    plot_synthetic,
)

log = logging.getLogger(__name__)
HEADLINE = {
    "fidelity": ("prevalence/pearson", "cooccurrence/pearson", "events_per_subject/ks"),
    "privacy": ("dcr/exact_match_share", "dcr/median_ratio", "mia/auc", "ngram/copy_share_synth",
                "ngram/copy_share_held_out", "attribute/advantage"),
    "utility": ("utility/auc_tstr", "utility/auc_trtr", "utility/ratio", "utility/prevalence_synth",
                "utility/prevalence_train"),
}


def headline(evidence: dict[str, Any]) -> dict[str, float | None]:
    """The figures `GET /v1/cohorts/{id}` shows (rounded; None where undefined)."""
    out = {}
    for part, keys in HEADLINE.items():
        for k in keys:
            v = evidence.get(part, {}).get(k)
            out[k] = None if v is None else round(float(v), 4)
    return out


def markdown(head: dict[str, float | None], release: dict[str, Any], patients: int) -> str:
    verdict = "released" if release["released"] else "NOT released: " + "; ".join(release["reasons"])
    lines = [f"# Synthetic cohort: evidence ({patients} patients)", "", f"Release check: **{verdict}**", "",
             "| check | value | limit | passed |", "|---|---|---|---|"]
    lines += [f"| {c['check']} | {c['value']} | {c['limit']} | {'yes' if c['passed'] else 'NO'} |"
              for c in release["checks"]]
    lines += ["", "| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in head.items()]
    lines += ["", "Fidelity compares the cohort with the training data; privacy compares how close it lies to "
              "training patients with how close new (held-out) patients lie; utility is a model trained on "
              "the cohort and tested on held-out real patients (TSTR) against one trained on real data (TRTR).",
              "", "![prevalence](plots/prevalence.png) ![events](plots/events_per_subject.png) "
              "![dcr](plots/dcr.png)"]
    return "\n".join(lines) + "\n"


def cohort_evidence(cohort: str | Path, reference: str | Path, out_dir: str | Path, *,
                    release: ReleaseConfig | None = None, seed: int = 0, quality: bool = False) -> dict[str, Any]:
    """Judge `cohort` against `reference` (see the module docstring); returns {"headline": ...,
    "release": release_check(...)} after writing the files into `out_dir`."""
    release = release or ReleaseConfig()
    out = Path(out_dir)
    synth = load_events(cohort)
    train, held = load_events(reference, S.TRAIN), load_events(reference, S.HELD_OUT)
    if not train.height or not held.height:
        raise ValueError(f"reference {Path(reference).name}: needs subjects in both the train and held_out splits "
                         f"(have {train[S.SUBJECT_ID].n_unique()} and {held[S.SUBJECT_ID].n_unique()})")
    cfg = SyntheticEvalConfig(seed=seed, quality=quality)
    evidence = evaluate_synthetic(synth, train, held, cfg)
    plot_synthetic(synth, train, held, out / "plots", cfg)
    verdict = release_check(evidence["privacy"], release)
    head = headline(evidence)
    patients = synth[S.SUBJECT_ID].n_unique()
    write_json_atomic({"patients": patients, "headline": head, "release": verdict, "evidence": evidence,
                       "release_config": release.__dict__}, out / "evidence.json")
    with atomic_file(out / "evidence.md") as tmp:
        tmp.write_text(markdown(head, verdict, patients))
    log.info("cohort evidence: %d patients, release %s", patients, "passed" if verdict["released"] else "refused")
    return {"headline": head, "release": verdict}
