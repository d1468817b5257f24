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
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


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
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    m = float(v.mean())
    return max(0.0, m - half), min(1.0, m + half)


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
    if threshold < 0:
        raise ValueError(f"population_count: threshold must be >= 0, got {threshold}")
    expected = float(p.sum())
    if expected < threshold:
        return PopulationEstimate(len(p), None, None, None, True, threshold)
    mc = 0.0 if mc_variances is None else float(np.sum(mc_variances))
    half = Z95 * math.sqrt(float(np.sum(p * (1 - p))) + mc)
    lo, hi = max(0.0, expected - half), min(float(len(p)), expected + half)
    return PopulationEstimate(len(p), round(expected, 2), round(lo, 2), round(hi, 2), False, threshold)
