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

from nightingale import schema as S
from nightingale.evaluation.synthetic.events import EventsLike, load_events, subsample_subjects
from nightingale.evaluation.synthetic.ngrams import code_ids, copy_share
from nightingale.evaluation.synthetic.summary import feature_matrix, fit_top_codes, patient_summary

DEFAULT_NGRAM_LENGTH = 30


def dcr_features(
    synth: pl.DataFrame, train: pl.DataFrame, held_out: pl.DataFrame, *, top_codes: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pl.Series]:
    """Standardised summary features of the three cohorts (scaler and null fills from train),
    and the training subject id of each training row."""
    train_summary = patient_summary(train, top_codes)
    x_train, _, fill = feature_matrix(train_summary)
    x_synth, _, _ = feature_matrix(patient_summary(synth, top_codes), fill=fill)
    x_held, _, _ = feature_matrix(patient_summary(held_out, top_codes), fill=fill)
    scaler = StandardScaler().fit(x_train)
    return (scaler.transform(x_synth), scaler.transform(x_train), scaler.transform(x_held),
            train_summary[S.SUBJECT_ID])


class ClosestRecord:
    """A nearest-neighbour index over `reference` rows (a ball tree).

    A tree computes each distance from the coordinate differences, so a query row identical to a
    reference row is at distance exactly 0.0; brute-force search expands |x|^2 - 2xy + |y|^2 and
    leaves ~1e-7 of rounding on an exact copy, which made exact matches depend on the BLAS and
    library versions. Queries cost about log(n_reference) each instead of n_reference.
    """

    def __init__(self, reference: np.ndarray):
        self._nn = NearestNeighbors(n_neighbors=1, algorithm="ball_tree").fit(reference)

    def distances(self, query: np.ndarray) -> np.ndarray:
        """Euclidean distance from each `query` row to its nearest reference row."""
        if len(query) == 0:
            return np.zeros(0)
        return self._nn.kneighbors(query, return_distance=True)[0][:, 0]


def closest_distances(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance from each `query` row to its nearest `reference` row (exact zeros for
    identical rows; see ClosestRecord)."""
    return ClosestRecord(reference).distances(query)


def privacy_samples(
    synth: pl.DataFrame,
    train: pl.DataFrame,
    held_out: pl.DataFrame,
    max_subjects: int | None,
    seed: int,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The records the privacy checks compare: (synthetic queries, held-out queries, training
    members the membership attack scores), each at most `max_subjects` subjects drawn with
    `seed`. The *reference* a synthetic record is compared with is always the whole of train:
    a sample of it would miss the very record a synthetic patient copied."""
    return (
        subsample_subjects(synth, max_subjects, seed),
        subsample_subjects(held_out, max_subjects, seed + 2),
        subsample_subjects(train, max_subjects, seed + 1),
    )


def dcr_distances(
    synth: pl.DataFrame,
    train: pl.DataFrame,
    held_out: pl.DataFrame,
    *,
    top_codes: list[str],
    members: pl.DataFrame | None = None,
) -> dict[str, np.ndarray]:
    """Distances behind the DCR and membership checks (standardised summary space):
    `synth_to_train` and `held_out_to_train` (to the nearest of *all* `train` records),
    `train_to_synth` (each of `members`, training records the attack scores; default all of
    train) and `held_out_to_synth` (to the nearest synthetic record)."""
    x_synth, x_train, x_held, train_ids = dcr_features(synth, train, held_out, top_codes=top_codes)
    if members is None:
        x_members = x_train
    else:
        x_members = x_train[train_ids.is_in(members[S.SUBJECT_ID].unique().implode()).to_numpy()]
    to_train, to_synth = ClosestRecord(x_train), ClosestRecord(x_synth)
    return {
        "synth_to_train": to_train.distances(x_synth),
        "held_out_to_train": to_train.distances(x_held),
        "train_to_synth": to_synth.distances(x_members),
        "held_out_to_synth": to_synth.distances(x_held),
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
    `max_subjects`: the synthetic and held-out cohorts, and the training members the membership
    attack scores, are subsampled (with `seed`) to at most this many subjects; the reference
    every synthetic and held-out record is compared with is the whole training set (a
    ball-tree index keeps that fast), so a copy of a training record always reads as a copy.
    Distances are in units of training standard deviations (per feature, Euclidean over all
    features).

    Keys: dcr/{synth,held_out}_{median,p05}; dcr/median_ratio (synth / held-out median, ~1 when
    synthetic records are no closer to train than new patients); dcr/share_below_held_out_p05
    (share of synthetic records nearer than the held-out 5th percentile, ~0.05 without copying);
    dcr/exact_match_share (share of synthetic records whose summary equals some training
    record's: DCR exactly 0); mia/auc; ngram/length, ngram/copy_share_{synth,held_out} and
    ngram/eligible_{synth,held_out} (timelines with >= length events; the share is None
    without any); n_{synth,held_out} (subjects used), n_train (the whole reference), n_members
    (training records scored by the membership attack).
    """
    synth, train, held_out = (load_events(x) for x in (synth, train, held_out))
    synth, held_out, members = privacy_samples(synth, train, held_out, max_subjects, seed)
    codes = fit_top_codes(train, top_codes) if isinstance(top_codes, int) else list(top_codes)
    d = dcr_distances(synth, train, held_out, top_codes=codes, members=members)
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
        "dcr/exact_match_share": float(np.mean(synth_dcr == 0.0)),
        "mia/auc": membership_auc(d["train_to_synth"], d["held_out_to_synth"]),
        "ngram/length": int(ngram_length),
        "ngram/copy_share_synth": copy_synth["share"],
        "ngram/copy_share_held_out": copy_held["share"],
        "ngram/eligible_synth": copy_synth["eligible"],
        "ngram/eligible_held_out": copy_held["eligible"],
        "n_synth": len(synth_dcr),
        "n_train": int(train[S.SUBJECT_ID].n_unique()),
        "n_members": len(d["train_to_synth"]),
        "n_held_out": len(held_dcr),
    }
