"""Does a synthetic cohort leak its training patients? Three complementary checks.

1. Distance to closest record (DCR): each synthetic patient's distance to the nearest training
   patient, in standardised per-patient summary space (`summary.feature_matrix`, scaler fitted on
   train), against the same distance for held-out real patients, who were never trained on and
   so show how close a *new* patient from the same population naturally lands. Synthetic records
   much closer than held-out ones are near-copies (Park et al., "Data synthesis based on GANs",
   VLDB 2018; Platzer & Reutterer, "Holdout-based fidelity and privacy assessment", 2021).
2. Membership inference: an attacker holding the synthetic cohort scores each real record by its
   distance to the closest synthetic record (closer = "was in training"); the AUROC of telling
   train from held-out records is 0.5 when nothing leaks, 1.0 for a copied training set.
3. N-gram copying: the share of synthetic timelines that contain a run of `ngram_length`
   consecutive codes also found in some training timeline, beside the same share for held-out
   real timelines, since common care pathways recur naturally between real patients.

Choice of `ngram_length` (30): on the simulated demo cohort (2,000 subjects, 75 codes, median
105 events) the share of held-out timelines sharing an n-gram with train is 99% at 10 codes,
47% at 20, 9% at 30 and 1.5% at 50, while 80% of held-out timelines still have >= 30 events.
At 10 the check cannot tell copying from routine care; at 30 a shared run is already unusual
for a new patient and most timelines are long enough to be tested. Richer vocabularies (real
EHRs have thousands of codes) make natural sharing rarer still, so 30 errs on the strict side.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from nightingale.evaluation.synthetic.events import EventsLike, load_events, subsample_subjects
from nightingale.evaluation.synthetic.ngrams import code_ids, copy_share
from nightingale.evaluation.synthetic.summary import feature_matrix, fit_top_codes, patient_summary

DEFAULT_NGRAM_LENGTH = 30


def dcr_features(
    synth: pl.DataFrame, train: pl.DataFrame, held_out: pl.DataFrame, *, top_codes: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardised summary features of the three cohorts (scaler and null fills from train)."""
    x_train, _, fill = feature_matrix(patient_summary(train, top_codes))
    x_synth, _, _ = feature_matrix(patient_summary(synth, top_codes), fill=fill)
    x_held, _, _ = feature_matrix(patient_summary(held_out, top_codes), fill=fill)
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_synth), scaler.transform(x_train), scaler.transform(x_held)


def closest_distances(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance from each `query` row to its nearest `reference` row."""
    nn = NearestNeighbors(n_neighbors=1).fit(reference)
    return nn.kneighbors(query, return_distance=True)[0][:, 0]


def dcr_distances(
    synth: pl.DataFrame, train: pl.DataFrame, held_out: pl.DataFrame, *, top_codes: list[str]
) -> dict[str, np.ndarray]:
    """Distances behind the DCR and membership checks: `synth_to_train`, `held_out_to_train`,
    `train_to_synth`, `held_out_to_synth` (standardised summary space)."""
    x_synth, x_train, x_held = dcr_features(synth, train, held_out, top_codes=top_codes)
    return {
        "synth_to_train": closest_distances(x_synth, x_train),
        "held_out_to_train": closest_distances(x_held, x_train),
        "train_to_synth": closest_distances(x_train, x_synth),
        "held_out_to_synth": closest_distances(x_held, x_synth),
    }


def membership_auc(train_to_synth: np.ndarray, held_out_to_synth: np.ndarray) -> float:
    """AUROC of calling a record a training member the closer it lies to a synthetic record."""
    labels = np.r_[np.ones(len(train_to_synth)), np.zeros(len(held_out_to_synth))]
    return float(roc_auc_score(labels, -np.r_[train_to_synth, held_out_to_synth]))


def privacy_report(
    synth: EventsLike,
    train: EventsLike,
    held_out: EventsLike,
    *,
    ngram_length: int = DEFAULT_NGRAM_LENGTH,
    top_codes: int | list[str] = 50,
    max_subjects: int | None = 20_000,
    seed: int = 0,
) -> dict[str, float | int | None]:
    """DCR, membership-inference AUROC and n-gram copying of `synth` against `train`, with
    held-out real patients as the reference (see the module docstring).

    `top_codes`: a list of codes for the summary features, or how many to fit on train.
    `max_subjects`: each cohort is subsampled (with `seed`) to at most this many subjects before
    the nearest-neighbour searches, which grow as n_query x n_reference. Distances are in units
    of training standard deviations (per feature, Euclidean over all features).

    Keys: dcr/{synth,held_out}_{median,p05}; dcr/median_ratio (synth / held-out median, ~1 when
    synthetic records are no closer to train than new patients); dcr/share_below_held_out_p05
    (share of synthetic records nearer than the held-out 5th percentile, ~0.05 without copying);
    dcr/exact_match_share (DCR < 1e-8); mia/auc; ngram/length, ngram/copy_share_{synth,held_out}
    and ngram/eligible_{synth,held_out} (timelines with >= length events; the share is None
    without any); n_{synth,train,held_out} (subjects used).
    """
    synth, train, held_out = (load_events(x) for x in (synth, train, held_out))
    synth = subsample_subjects(synth, max_subjects, seed)
    train = subsample_subjects(train, max_subjects, seed + 1)
    held_out = subsample_subjects(held_out, max_subjects, seed + 2)
    codes = fit_top_codes(train, top_codes) if isinstance(top_codes, int) else list(top_codes)
    d = dcr_distances(synth, train, held_out, top_codes=codes)
    synth_dcr, held_dcr = d["synth_to_train"], d["held_out_to_train"]
    held_p05 = float(np.quantile(held_dcr, 0.05))
    held_median = float(np.median(held_dcr))
    ids = code_ids(synth, train, held_out)
    copy_synth = copy_share(synth, train, ngram_length, ids)
    copy_held = copy_share(held_out, train, ngram_length, ids)
    return {
        "dcr/synth_median": float(np.median(synth_dcr)),
        "dcr/synth_p05": float(np.quantile(synth_dcr, 0.05)),
        "dcr/held_out_median": held_median,
        "dcr/held_out_p05": held_p05,
        "dcr/median_ratio": float(np.median(synth_dcr) / held_median) if held_median > 0 else None,
        "dcr/share_below_held_out_p05": float(np.mean(synth_dcr < held_p05)),
        "dcr/exact_match_share": float(np.mean(synth_dcr < 1e-8)),
        "mia/auc": membership_auc(d["train_to_synth"], d["held_out_to_synth"]),
        "ngram/length": int(ngram_length),
        "ngram/copy_share_synth": copy_synth["share"],
        "ngram/copy_share_held_out": copy_held["share"],
        "ngram/eligible_synth": copy_synth["eligible"],
        "ngram/eligible_held_out": copy_held["eligible"],
        "n_synth": len(synth_dcr),
        "n_train": len(d["train_to_synth"]),
        "n_held_out": len(held_dcr),
    }
