"""Metrics for binary risk predictions and next-token ranking, with honest edge cases.

Binary predictions (a label 0/1 and a probability per subject) get discrimination (AUROC, AUPRC
as average precision), accuracy of the probabilities (Brier score) and calibration (expected
calibration error, a reliability table with Wilson intervals), and percentile-bootstrap confidence
intervals over subjects. Inputs are validated: a bad argument raises `ValueError` naming it.

Where a metric is undefined it is NaN, not an exception: AUROC and AUPRC need both classes, so a
task or bootstrap resample with one class gives NaN, and the bootstrap drops such resamples.

Calibration bins are half-open, [lower, upper), the last closed so that p = 1 is counted; uniform
edges are k / n_bins, so p = 0.3 falls in [0.3, 0.4) with 10 bins. (scikit-learn's
`calibration_curve` closes bins on the right instead; the two agree unless p sits on an edge.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from nightingale.inference.risk import wilson_interval

Metric = Callable[[np.ndarray, np.ndarray], float]
STRATEGIES = ("uniform", "quantile")
_CHUNK = 2_000_000  # resample entries materialised at a time in the bootstrap (bounds memory)


# ---------------------------------------------------------------------------------------------
# validation


def check_binary(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """Validate paired labels and probabilities: returns labels as int64 0/1 and probabilities as
    float64, or raises ValueError naming the argument and what was expected."""
    y = np.asarray(y_true)
    try:
        p = np.asarray(y_prob, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"y_prob: expected numeric probabilities, got {err}") from None
    if y.ndim != 1:
        raise ValueError(f"y_true: expected a 1-D array, got shape {y.shape}")
    if p.ndim != 1:
        raise ValueError(f"y_prob: expected a 1-D array, got shape {p.shape}")
    if len(y) != len(p):
        raise ValueError(f"y_true and y_prob: expected the same length, got {len(y)} and {len(p)}")
    if len(y) == 0:
        raise ValueError("y_true: expected at least one sample, got none")
    if y.dtype != bool and (y.dtype.kind not in "iuf" or not np.all((y == 0) | (y == 1))):
        bad = y[~np.isin(y, [0, 1])][:3] if y.dtype.kind in "iuf" else y.dtype
        raise ValueError(f"y_true: expected labels 0/1 or bool, got {bad}")
    if not np.all(np.isfinite(p)):
        bad = int((~np.isfinite(p)).sum())
        raise ValueError(f"y_prob: expected finite probabilities, got {bad} NaN/inf")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"y_prob: expected probabilities in [0, 1], got [{p.min()}, {p.max()}]")
    return y.astype(np.int64), p


def _check_bins(n_bins: int, strategy: str) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins: expected an integer >= 1, got {n_bins!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")


# ---------------------------------------------------------------------------------------------
# point metrics


def auroc(y_true, y_prob) -> float:
    """Area under the ROC curve; NaN when only one class is present.

    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y, p = check_binary(y_true, y_prob)
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan


def auprc(y_true, y_prob) -> float:
    """Area under the precision-recall curve as average precision (no interpolation); NaN when
    only one class is present (with no negatives it would be 1 whatever the ranking)."""
    y, p = check_binary(y_true, y_prob)
    return float(average_precision_score(y, p)) if 0 < y.sum() < len(y) else math.nan


def brier_score(y_true, y_prob) -> float:
    """Mean squared difference between probability and outcome (0 is perfect, 0.25 is p = 0.5)."""
    y, p = check_binary(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


def _bin_edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    q = np.arange(n_bins + 1) / n_bins  # k / n exactly: 0.3 is an edge, not 0.30000000000000004
    return q if strategy == "uniform" else np.quantile(p, q)


def _bin_ids(p: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each probability: [edge_i, edge_i+1), the last bin closed on the right."""
    return np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)


def expected_calibration_error(y_true, y_prob, n_bins: int = 10,
                               strategy: str = "uniform") -> float:
    """ECE: mean over non-empty bins of |mean predicted - observed rate|, weighted by the share
    of samples in the bin (Naeini et al. 2015; Guo et al. 2017). Bins are uniform on [0, 1] or,
    with strategy="quantile", hold about equal numbers of samples.

    >>> round(expected_calibration_error([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], n_bins=2), 6)
    0.0875
    """
    _check_bins(n_bins, strategy)
    y, p = check_binary(y_true, y_prob)
    ids = _bin_ids(p, _bin_edges(p, n_bins, strategy))
    # sum_b (n_b / n) * |sum_b(p) / n_b - sum_b(y) / n_b| = sum_b |sum_b(p - y)| / n
    return float(np.abs(np.bincount(ids, weights=p - y, minlength=n_bins)).sum() / len(p))


def calibration_table(y_true, y_prob, n_bins: int = 10, strategy: str = "uniform") -> list[dict]:
    """One row per non-empty bin: edges `lower`/`upper`, `count`, `positives`, `mean_predicted`,
    `observed_rate` and its Wilson 95% interval `observed_low`/`observed_high`."""
    _check_bins(n_bins, strategy)
    y, p = check_binary(y_true, y_prob)
    edges = _bin_edges(p, n_bins, strategy)
    ids = _bin_ids(p, edges)
    rows = []
    for b in np.unique(ids):
        in_bin = ids == b
        count, positives = int(in_bin.sum()), int(y[in_bin].sum())
        low, high = wilson_interval(positives, count)
        rows.append({
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "count": count,
            "positives": positives,
            "mean_predicted": float(p[in_bin].mean()),
            "observed_rate": positives / count,
            "observed_low": low,
            "observed_high": high,
        })
    return rows


def brier_skill(y_true, y_prob) -> float:
    """Brier skill score against the labels' prevalence: 1 - Brier / (q (1 - q)), q the share of
    positives, i.e. against predicting q for everyone (> 0: better than that; NaN with one class).

    >>> round(brier_skill([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]), 3)
    0.9
    >>> brier_skill([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5])
    0.0
    """
    y, p = check_binary(y_true, y_prob)
    q = float(y.mean())
    if q in (0.0, 1.0):
        return float("nan")
    return 1.0 - brier_score(y, p) / (q * (1.0 - q))


def expected_over_observed(y_true, y_prob) -> float:
    """Calibration in the large: the events the predictions expect (the sum of the risks) over
    the events that happened; 1 when as many are predicted as happened, 0.5 when half as many
    (NaN without an event). ECE cannot show this for a rare outcome: predicting 3% where 9%
    happen is an ECE of only 0.06, and an expected/observed of 0.33.

    >>> expected_over_observed([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.825
    """
    y, p = check_binary(y_true, y_prob)
    return float(p.sum() / y.sum()) if y.sum() else math.nan


def binary_metrics(y_true, y_prob) -> dict:
    """n, positives, prevalence, mean_predicted, expected_over_observed, auroc, auprc, brier,
    brier_skill (against the prevalence) and ece (10 uniform bins) of one task."""
    y, p = check_binary(y_true, y_prob)
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "prevalence": float(y.mean()),
        "mean_predicted": float(p.mean()),
        "expected_over_observed": expected_over_observed(y, p),
        "auroc": auroc(y, p),
        "auprc": auprc(y, p),
        "brier": brier_score(y, p),
        "brier_skill": brier_skill(y, p),
        "ece": expected_calibration_error(y, p),
    }


# ---------------------------------------------------------------------------------------------
# bootstrap: resample subjects with replacement; a resample is a count per subject (weights W)


def _resamples(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Index matrices [chunk, n] of subjects drawn with replacement, n_boot rows in all."""
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // n)
    for start in range(0, n_boot, step):
        yield rng.integers(0, n, size=(min(step, n_boot - start), n))


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each subject appears in each resample: [B, n] float64."""
    flat = (idx + n * np.arange(len(idx))[:, None]).ravel()
    return np.bincount(flat, minlength=idx.size).reshape(len(idx), n).astype(np.float64)


def _score_groups(w: np.ndarray, y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight per distinct score, in ascending score order: [B, m] each."""
    order = np.argsort(p, kind="stable")
    ps = p[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    ws, ys = w[:, order], y[order]
    return np.add.reduceat(ws * ys, starts, axis=1), np.add.reduceat(ws * (1 - ys), starts, axis=1)


def _auroc_w(w, y, p) -> np.ndarray:
    """AUROC of each weighted resample (Mann-Whitney: ties between classes count half)."""
    pos, neg = _score_groups(w, y, p)
    neg_below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (neg_below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))


def _auprc_w(w, y, p) -> np.ndarray:
    """Average precision of each weighted resample: sum over thresholds of recall step x
    precision, as scikit-learn's average_precision_score."""
    pos, neg = _score_groups(w, y, p)
    pos, neg = pos[:, ::-1], neg[:, ::-1]  # thresholds from the highest score down
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (pos * precision).sum(1) / n_pos
    return np.where((n_pos > 0) & (n_neg > 0), ap, np.nan)


def _brier_w(w, y, p) -> np.ndarray:
    return w @ ((p - y) ** 2) / len(p)


def _ece_w(w, y, p) -> np.ndarray:
    onehot = np.eye(10)[_bin_ids(p, _bin_edges(p, 10, "uniform"))]  # [n, 10]
    return np.abs(w @ (onehot * (p - y)[:, None])).sum(1) / len(p)


def _eo_w(w, y, p) -> np.ndarray:
    events = w @ y
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(events > 0, (w @ p) / events, np.nan)


# Metrics with a vectorised resample form; they give the same numbers as the plain call.
_VECTORISED = {auroc: _auroc_w, auprc: _auprc_w, brier_score: _brier_w,
               expected_calibration_error: _ece_w, expected_over_observed: _eo_w}


def _replicates(y: np.ndarray, p: np.ndarray, metric: Metric, n_boot: int, seed: int,
                groups: np.ndarray | None = None) -> np.ndarray:
    """Metric values over resamples of rows, or of whole groups of rows (a subject's several
    prediction times) where `groups` gives each row's group: [n_boot]."""
    fast = _VECTORISED.get(metric)
    if groups is None:
        member, n_units = np.arange(len(y)), len(y)
    else:
        _, member = np.unique(groups, return_inverse=True)
        n_units = int(member.max()) + 1 if len(member) else 0
    out = []
    for idx in _resamples(n_units, n_boot, seed):
        w = _counts(idx, n_units)[:, member]  # [B, rows]: a row counts as often as its group
        if fast is not None:
            out.append(fast(w, y, p))
        else:
            rows = [np.repeat(np.arange(len(y)), wi.astype(np.int64)) for wi in w]
            out.append(np.array([metric(y[r], p[r]) for r in rows], dtype=np.float64))
    return np.concatenate(out)


def _check_groups(groups, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups: expected one group id per row ({n}), got shape {g.shape}")
    return g


def _percentiles(reps: np.ndarray, alpha: float) -> tuple[float, float]:
    valid = reps[~np.isnan(reps)]
    if 2 * len(valid) < len(reps):
        return math.nan, math.nan
    low, high = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _check_boot(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot: expected >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a level in (0, 1), got {alpha}")


def bootstrap_ci(y_true, y_prob, metric: Metric, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0, groups=None) -> tuple[float, float]:
    """Percentile-bootstrap (1 - alpha) interval of metric(y, p), resampling rows (one per
    subject) or, with `groups` (a subject id per row), whole subjects with replacement, so that
    several prediction times of one subject do not pass for independent evidence. Resamples
    where the metric is NaN (one class) are dropped; when fewer than half remain the interval is
    (nan, nan). This module's auroc, auprc, brier_score, expected_calibration_error (default
    bins) and expected_over_observed run vectorised; any other callable runs per resample.
    """
    _check_boot(n_boot, alpha)
    y, p = check_binary(y_true, y_prob)
    return _percentiles(_replicates(y, p, metric, n_boot, seed, _check_groups(groups, len(y))), alpha)


def bootstrap_metrics(y_true, y_prob, n_boot: int = 1000, alpha: float = 0.05,
                      seed: int = 0, groups=None) -> dict[str, dict[str, float]]:
    """{metric: {"value", "low", "high"}} for auroc, auprc, brier, ece and expected_over_observed,
    every metric computed on the same resamples (of subjects where `groups` is given, see
    `bootstrap_ci`)."""
    _check_boot(n_boot, alpha)
    y, p = check_binary(y_true, y_prob)
    g = _check_groups(groups, len(y))
    out = {}
    for name, fn in (("auroc", auroc), ("auprc", auprc), ("brier", brier_score),
                     ("ece", expected_calibration_error), ("expected_over_observed", expected_over_observed)):
        low, high = _percentiles(_replicates(y, p, fn, n_boot, seed, g), alpha)
        out[name] = {"value": fn(y, p), "low": low, "high": high}
    return out


# ---------------------------------------------------------------------------------------------
# next-token ranking and comparison with a reference


def top_k_accuracy(scores, targets, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Share of rows whose target is among the k highest scores, for each k.

    Ties are broken at random, in expectation: a target with g scores strictly above it and e
    scores equal to it (itself included) is in the top k with probability clip((k - g) / e, 0, 1).
    So constant scores give exactly k / V (chance), where counting ties as hits would give 1 and
    as misses 0; with low-precision logits ties are common. Rows with a negative target (the -100
    ignore index) are left out; with no rows left every accuracy is NaN.

    >>> top_k_accuracy([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], [1, 0, -100], ks=(1, 2))
    {1: 0.75, 2: 1.0}
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets)
    if s.ndim != 2:
        raise ValueError(f"scores: expected a 2-D array [rows, classes], got shape {s.shape}")
    if t.ndim != 1 or len(t) != len(s):
        raise ValueError(f"targets: expected a 1-D array of {len(s)} rows, got shape {t.shape}")
    if len(t) and t.dtype.kind not in "iu":
        raise ValueError(f"targets: expected integer class ids, got dtype {t.dtype}")
    if np.any(t >= s.shape[1]):
        raise ValueError(f"targets: expected ids < {s.shape[1]} classes, got {int(t.max())}")
    if np.isnan(s).any():
        raise ValueError("scores: expected no NaN")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"ks: expected integers >= 1, got {ks}")
    keep = t >= 0
    s, t = s[keep], t[keep].astype(np.int64)
    if len(t) == 0:
        return {k: math.nan for k in ks}
    own = s[np.arange(len(t)), t][:, None]  # each row's target score
    greater, equal = np.empty(len(t)), np.empty(len(t))
    step = max(1, _CHUNK // s.shape[1])
    for a in range(0, len(t), step):  # in row chunks: [rows, V] comparisons can be large
        rows = slice(a, a + step)
        greater[rows] = (s[rows] > own[rows]).sum(1)
        equal[rows] = (s[rows] == own[rows]).sum(1)
    return {k: float(np.clip((k - greater) / equal, 0, 1).mean()) for k in ks}


def auroc_ratio(model_auroc: float | None, reference_auroc: float | None) -> float:
    """model / reference AUROC (e.g. 0.93 = the model keeps 93% of the reference's AUROC); NaN
    when either is missing or NaN or the reference is not positive. Note it is a ratio of raw
    AUROCs: a chance model (0.5) against a 0.8 reference scores 0.625, not 0.

    >>> auroc_ratio(0.76, 0.8)
    0.95
    >>> auroc_ratio(float("nan"), 0.8)
    nan
    """
    if model_auroc is None or reference_auroc is None:
        return math.nan
    m, r = float(model_auroc), float(reference_auroc)
    if not (math.isfinite(m) and math.isfinite(r)) or r <= 0:
        return math.nan
    return m / r


def auroc_difference(model_auroc: float | None, reference_auroc: float | None) -> float:
    """model - reference AUROC (e.g. -0.02: two points below a supervised baseline); NaN when
    either is missing or NaN, so a gate on it cannot pass without both.

    >>> round(auroc_difference(0.88, 0.91), 2)
    -0.03
    >>> auroc_difference(0.8, None)
    nan
    """
    if model_auroc is None or reference_auroc is None:
        return math.nan
    return float(model_auroc) - float(reference_auroc)
