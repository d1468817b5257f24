"""Risk of an outcome within a horizon, from Monte-Carlo rollouts, with honest intervals.

Per patient: the outcome (a set of code tokens) occurs within horizon h in a rollout when one of
its tokens is generated at elapsed time <= h. The estimate is the share k/n of rollouts in which it
occurs, with a Wilson score interval (Wilson 1927): unlike the normal ("Wald") interval it stays
inside [0, 1] and does not collapse to a point at k = 0 or k = n, which matter here (an outcome
seen in no rollout still has an upper bound of about 3.8/n at 95%).

Per population (planners' question: how many of these patients will have the outcome?): the
expected count is sum_i p_i. Its 95% interval is a prediction interval for the realised count,
normal approximation with two variance terms: the outcomes themselves (independent Bernoulli,
sum p_i(1-p_i)) and the Monte-Carlo error of each p_i (p_i(1-p_i)/n). Counts below the
small-count threshold (default 10, the NHS SDE rule) are suppressed: the estimate is withheld.

Rollouts that ran out of tokens before the horizon (end == max_tokens) count as "no outcome"
after that point and are reported (`truncated`), so a caller can see when budgets bias risks down.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

from nightingale.inference.rollouts import MAX_TOKENS, Rollout

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


def outcome_hits(rollouts: Sequence[Rollout], outcome_ids: Iterable[int], horizon_s: float) -> np.ndarray:
    """Bool per rollout: did one of `outcome_ids` occur at elapsed time <= horizon_s?"""
    ids = np.fromiter(outcome_ids, dtype=np.int64)
    return np.array(
        [bool(np.any(np.isin(r.tokens, ids) & (r.elapsed_s <= horizon_s))) for r in rollouts], dtype=bool
    )


@dataclasses.dataclass(frozen=True)
class RiskEstimate:
    probability: float
    lower: float
    upper: float
    events: int  # rollouts with the outcome
    rollouts: int
    truncated: int  # rollouts that ran out of tokens before the horizon


def patient_risk(hits: np.ndarray, rollouts: Sequence[Rollout] | None = None) -> RiskEstimate:
    """Share of rollouts with the outcome and its Wilson 95% interval."""
    n, k = len(hits), int(hits.sum())
    lo, hi = wilson_interval(k, n)
    trunc = sum(r.end == MAX_TOKENS for r in rollouts) if rollouts is not None else 0
    return RiskEstimate(k / n, lo, hi, k, n, trunc)


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


def population_count(probabilities: Sequence[float], n_rollouts: int, threshold: int = 10) -> PopulationEstimate:
    """Expected number of patients with the outcome (sum of their risks), with its interval.

    >>> population_count([0.5] * 100, 64).expected
    50.0
    >>> population_count([0.01] * 100, 64).suppressed
    True
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if threshold < 0:
        raise ValueError(f"population_count: threshold must be >= 0, got {threshold}")
    expected = float(p.sum())
    if expected < threshold:
        return PopulationEstimate(len(p), None, None, None, True, threshold)
    var = float(np.sum(p * (1 - p)) * (1 + 1 / max(n_rollouts, 1)))
    half = Z95 * math.sqrt(var)
    lo, hi = max(0.0, expected - half), min(float(len(p)), expected + half)
    return PopulationEstimate(len(p), round(expected, 2), round(lo, 2), round(hi, 2), False, threshold)
