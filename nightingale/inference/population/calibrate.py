"""Recalibration by backtest: correct a model's expected counts with what it got wrong just before.

A model that under- or over-predicts an outcome's rate (too little training, a population unlike
its training data, a secular trend) gives expected counts off by a factor, and 95% intervals that
miss. What it would have said one horizon earlier can be checked against what then happened, with
data known at the prediction time only: the job forecasts the same population at
t_c = t - (longest horizon), counts the outcomes in (t_c, t_c + h], and per outcome and horizon
takes the ratio k = O_c / E_c of the observed to the expected count of everyone at risk at t_c.
This is recalibration-in-the-large on the rate scale (a Poisson intercept: log mu = log p + log k).

Each cell's forecast then becomes k * sum p, with the prediction interval of the observed count

    Var = sum k p (1 - k p)           the outcomes given the recalibrated risks
        + k^2 sum Var_MC(p)           each risk's Monte-Carlo noise
        + (k sum p)^2 Var(log k)      the ratio's own uncertainty, Var(log k) = 1/O_c + sum_c Var_MC / E_c^2

(the first term is k sum p - k^2 (sum p - sum p(1-p)), so it comes from the shards' additive sums).
The ratio is not applied where the calibration window holds fewer than `MIN_EVENTS` events (or
fewer than the small-count threshold): there the model's own figures stand, and the job says why.
Per-patient risks are left as the model gave them; the job reports k beside them.
"""

from __future__ import annotations

import dataclasses
import math

import polars as pl

from nightingale.inference.population.shard import ALL
from nightingale.inference.risk import Z95

MIN_EVENTS = 10
INTERVAL = ("recalibrated: expected x k, k = observed / expected one longest horizon earlier, with "
            "(expected x k)^2 Var(log k) added to the variance")


@dataclasses.dataclass(frozen=True)
class Recalibration:
    """One outcome and horizon's ratio k = observed / expected in the calibration window, with
    Var(log k); `applied` False (and `reason`) where the window is too thin to trust it."""

    outcome: str
    horizon_days: float
    patients: int
    expected: float
    ratio: float
    log_var: float
    applied: bool
    reason: str | None = None

    def moments(self, sum_p: float, sum_pq: float, sum_mc: float) -> tuple[float, float, float]:
        """(expected, Bernoulli variance, other variance) of a cell from its additive sums."""
        if not self.applied:
            return sum_p, sum_pq, sum_mc
        k = self.ratio
        expected = k * sum_p
        bernoulli = max(0.0, expected - k * k * (sum_p - sum_pq))
        return expected, bernoulli, k * k * sum_mc + expected * expected * self.log_var

    def as_dict(self) -> dict:
        """What the job reports: the ratio and its 95% interval (no counts: the window's observed
        count is an aggregate like any other cell, and k with E_c would give it back)."""
        out = {"outcome": self.outcome, "horizon_days": self.horizon_days, "patients": self.patients,
               "applied": self.applied, "reason": self.reason}
        if self.applied:
            half = Z95 * math.sqrt(self.log_var)
            out.update(ratio=round(self.ratio, 3), ratio_lower=round(self.ratio * math.exp(-half), 3),
                       ratio_upper=round(self.ratio * math.exp(half), 3))
        return out


def fit(window: pl.DataFrame, threshold: int) -> dict[tuple[str, float], Recalibration]:
    """The ratio of every outcome and horizon from the calibration window's merged sums (its
    whole-population cells)."""
    need = max(MIN_EVENTS, threshold)
    out = {}
    for r in window.filter(pl.col("group") == ALL).iter_rows(named=True):
        key = (r["outcome"], float(r["horizon_days"]))
        observed, expected = float(r["observed"]), float(r["sum_p"])
        if observed < need or expected <= 0:
            why = (f"fewer than {need} events in the calibration window" if observed < need
                   else "the model expected no events in the calibration window")
            out[key] = Recalibration(*key, int(r["patients"]), expected, 1.0, 0.0, False, why)
            continue
        log_var = 1.0 / observed + float(r["sum_mc"]) / expected**2
        out[key] = Recalibration(*key, int(r["patients"]), expected, observed / expected, log_var, True)
    return out
