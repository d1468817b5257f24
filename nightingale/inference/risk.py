"""Intervals for risks estimated from rollouts, and expected counts for populations.

Per patient (see forecast.py for the two estimators): a count k/n gets a Wilson score interval
(Wilson 1927): unlike the normal ("Wald") interval it stays inside [0, 1] and does not collapse to
a point at k = 0 or k = n (an outcome seen in no rollout still has an upper bound of about 3.8/n
at 95%). The probability estimator's mean of per-rollout sums gets a Student-t interval over
rollouts, clipped to [0, 1]; with one rollout there is none.

Per population (planners' question: how many of these patients will have the outcome?): the
expected count is sum_i p_i. Its 95% interval is a prediction interval for the realised count,
normal approximation with two variance terms: the outcomes themselves (independent Bernoulli,
sum p_i(1-p_i)) and the Monte-Carlo error of each p_i (its estimator's variance). Counts below the
small-count threshold (default 10, the NHS SDE rule) are suppressed: the estimate is withheld.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n trials.

    >>> [round(x, 4) for x in wilson_interval(0, 100)]
    [0.0, 0.037]
    >>> [round(x, 4) for x in wilson_interval(50, 100)]
    [0.4038, 0.5962]
    """
    if n <= 0:
        raise ValueError(f"wilson_interval: n must be > 0, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: k must be in [0, n], got {k} of {n}")
    lo, hi = _wilson(k / n, n, z)
    return float(lo), float(hi)


def _wilson(p, n: int, z: float):
    """Wilson bounds for shares `p` (floats or arrays) of n trials."""
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return np.maximum(0.0, centre - half), np.minimum(1.0, centre + half)


def _t_half(sd, n: int, level: float):
    """Half-width of the Student-t interval of a mean of n values with standard deviation sd."""
    return stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """Student-t interval for the mean of `values`, clipped to [0, 1]; (None, None) for fewer
    than two values.

    >>> [round(x, 3) for x in t_interval([0.1, 0.2, 0.3, 0.2])]
    [0.07, 0.33]
    >>> t_interval([0.5])
    (None, None)
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return None, None
    half = float(_t_half(v.std(ddof=1), len(v), level))
    m = float(v.mean())
    return max(0.0, m - half), min(1.0, m + half)


def estimates(values: np.ndarray, estimator: str, level: float = 0.95) -> tuple[np.ndarray, ...]:
    """Vectorised per-cell estimates from per-rollout values (last axis, n rollouts): the
    probability, its interval (Wilson for "count", Student-t clipped to [0, 1] for "probability";
    NaN where undefined: one rollout) and its Monte-Carlo variance, each shaped like
    `values[..., 0]`. `wilson_interval` and `t_interval` give the same figures one cell at a time.

    >>> p, lo, hi, var = estimates(np.array([[0.1, 0.2, 0.3, 0.2]]), "probability")
    >>> [round(float(x), 3) for x in (p[0], lo[0], hi[0])]
    [0.2, 0.07, 0.33]
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[-1]
    z = stats.norm.ppf(0.5 + level / 2)
    if estimator == "count":
        p = v.mean(axis=-1)
        return (p, *_wilson(p, n, z), p * (1 - p) / n)
    mean = v.mean(axis=-1)
    p = np.clip(mean, 0.0, 1.0)
    if n < 2:
        nan = np.full(p.shape, np.nan)
        return p, nan, nan, p * (1 - p)
    sd = v.std(axis=-1, ddof=1)
    half = _t_half(sd, n, level)
    return p, np.maximum(0.0, mean - half), np.minimum(1.0, mean + half), sd**2 / n


@dataclasses.dataclass(frozen=True)
class RiskEstimate:
    """One patient's risk: the estimate, its 95% Monte-Carlo interval (None where undefined),
    how many rollouts made it and how many of them ran out of tokens before the horizon, the
    estimator, and the estimate's Monte-Carlo variance (for population intervals)."""

    probability: float
    lower: float | None
    upper: float | None
    rollouts: int
    truncated: int
    estimator: str
    variance: float = 0.0


@dataclasses.dataclass(frozen=True)
class PopulationEstimate:
    """Expected count of patients with the outcome and its 95% prediction interval; None
    (suppressed) when the expected count is under the threshold."""

    patients: int
    expected: float | None
    lower: float | None
    upper: float | None
    suppressed: bool
    threshold: int


def population_count(probabilities: Sequence[float], mc_variances: Sequence[float] | None = None,
                     threshold: int = 10) -> PopulationEstimate:
    """Expected number of patients with the outcome (sum of their risks), with its interval.

    mc_variances: each risk's Monte-Carlo variance (RiskEstimate.variance); None: exact risks.

    >>> population_count([0.5] * 100).expected
    50.0
    >>> population_count([0.01] * 100).suppressed
    True
    """
    p = np.asarray(probabilities, dtype=np.float64)
    mc = 0.0 if mc_variances is None else float(np.sum(mc_variances))
    return count_from_sums(len(p), float(p.sum()), float(np.sum(p * (1 - p))), mc, threshold)


def count_from_sums(patients: int, expected: float, bernoulli_var: float, mc_var: float = 0.0,
                    threshold: int = 10) -> PopulationEstimate:
    """`population_count` from the sums it needs: sum p_i, sum p_i(1-p_i) and the sum of the
    Monte-Carlo variances. Sums add up across shards, so a population split over many jobs is
    aggregated exactly by adding its parts' sums (inference/population/aggregate.py)."""
    if threshold < 0:
        raise ValueError(f"population_count: threshold must be >= 0, got {threshold}")
    if expected < threshold:
        return PopulationEstimate(patients, None, None, None, True, threshold)
    half = Z95 * math.sqrt(max(bernoulli_var, 0.0) + max(mc_var, 0.0))
    lo, hi = max(0.0, expected - half), min(float(patients), expected + half)
    return PopulationEstimate(patients, round(expected, 2), round(lo, 2), round(hi, 2), False, threshold)
