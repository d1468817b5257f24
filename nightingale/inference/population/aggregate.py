"""Population aggregates from the shards' sums: expected counts by group with 95% intervals,
small counts suppressed, and (when backtesting) how the intervals covered what happened.

**Expected count** of a cell (a group's patients, one outcome, one horizon): E = sum_i p_i over
its patients. **Interval**: a 95% normal prediction interval for the count that will be observed,
E +/- 1.96 sqrt(sum_i p_i(1 - p_i) + sum_i Var_MC(p_i)): the outcomes are independent Bernoulli
draws given the risks (first term), and each risk is itself a Monte-Carlo estimate from a few
rollouts (second term). It assumes a calibrated model; `coverage` checks that on data that
continues past the horizon. The oracle's interval (simulated data) has the first term only.
With recalibration (calibrate.py) each cell's expected count is scaled by its outcome's ratio from
the calibration window and the interval widened by that ratio's uncertainty; `uncalibrated` keeps
the model's own sum.

**Suppression** (NHS SDE small-count rule, `small_count_threshold`, default 10): a cell whose
patients, expected count or observed count is under the threshold is withheld whole. Within each
grouping of one outcome and horizon, a single withheld cell could be recovered from the total
less the other cells, so the next smallest cell is withheld too (complementary suppression).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import polars as pl

from nightingale.inference.population.calibrate import Recalibration
from nightingale.inference.population.shard import ALL, PARTIAL_SCHEMA, SUMS
from nightingale.inference.risk import Z95, count_from_sums

INTERVAL = ("95% normal prediction interval for the observed count: expected +/- 1.96 sqrt(sum p(1-p) "
            "+ sum of the risks' Monte-Carlo variances), from the per-patient risks")
KEYS = ("outcome", "horizon_days", "group", "value")
Ratios = dict[tuple[str, float], Recalibration]


def _moments(row: dict, ratios: Ratios | None) -> tuple[float, float, float]:
    """A cell's (expected, Bernoulli variance, other variance), recalibrated where a ratio applies."""
    rec = (ratios or {}).get((row["outcome"], float(row["horizon_days"])))
    if rec is None:
        return row["sum_p"], row["sum_pq"], row["sum_mc"]
    return rec.moments(row["sum_p"], row["sum_pq"], row["sum_mc"])


def merge_partials(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Sum the shards' partial sums cell by cell."""
    if not parts:
        return pl.DataFrame(schema=PARTIAL_SCHEMA)
    return pl.concat(parts).group_by(*KEYS).agg(*(pl.col(k).sum() for k in SUMS)).sort(*KEYS)


def _order(row: dict, groups: Sequence[str]) -> tuple:
    """Cells in reading order: each outcome and horizon, the whole population first, then each
    grouping in `groups` order with its values by their leading number (age bands 5-9 before
    10-14), else by name."""
    m = re.match(r"\d+", row["value"])
    rank = -1 if row["group"] == ALL else (groups.index(row["group"]) if row["group"] in groups else len(groups))
    return (row["outcome"], row["horizon_days"], rank, row["group"],
            (0, int(m.group()), row["value"]) if m else (1, 0, row["value"]))


def _primary(row: dict, threshold: int, backtest: bool, ratios: Ratios | None) -> bool:
    small = [row["patients"], row["sum_p"], _moments(row, ratios)[0]] + ([row["observed"]] if backtest else [])
    return any(x < threshold for x in small)


def aggregate(sums: pl.DataFrame, threshold: int, *, backtest: bool, oracle: bool,
              groups: Sequence[str] = (), ratios: Ratios | None = None) -> pl.DataFrame:
    """One row per cell: patients, expected [lower, upper], and observed / oracle_expected
    [oracle_lower, oracle_upper] / covered where asked; suppressed cells hold nulls and
    `suppressed` says why (small, or complementary); groupings in `groups` order. With `ratios`
    (calibrate.fit) the expected counts are recalibrated and `uncalibrated` holds the model's."""
    rows = sorted(sums.to_dicts(), key=lambda r: _order(r, list(groups)))
    why = {}
    for r in rows:
        if _primary(r, threshold, backtest, ratios):
            why[tuple(r[k] for k in KEYS)] = "small count"
    by_grouping: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["group"] != ALL:
            by_grouping.setdefault((r["outcome"], r["horizon_days"], r["group"]), []).append(r)
    for cells in by_grouping.values():
        hidden = [c for c in cells if tuple(c[k] for k in KEYS) in why]
        shown = sorted((c for c in cells if tuple(c[k] for k in KEYS) not in why), key=lambda c: c["patients"])
        if len(hidden) == 1 and shown:
            why[tuple(shown[0][k] for k in KEYS)] = "complementary"
    out = []
    for r in rows:
        key = tuple(r[k] for k in KEYS)
        cell = {k: r[k] for k in KEYS}
        est = count_from_sums(int(r["patients"]), *_moments(r, ratios), threshold=0)
        values = {"patients": int(r["patients"]), "expected": est.expected, "lower": est.lower, "upper": est.upper}
        if ratios is not None:
            values["uncalibrated"] = round(r["sum_p"], 2)
        if backtest:
            values["observed"] = int(r["observed"])
            values["covered"] = bool(est.lower <= r["observed"] <= est.upper)
        if oracle:
            half = Z95 * math.sqrt(r["oracle_pq"])
            values.update(oracle_expected=round(r["oracle_sum"], 2), oracle_lower=round(max(0.0, r["oracle_sum"] - half), 2),
                          oracle_upper=round(min(r["patients"], r["oracle_sum"] + half), 2))
            if backtest:
                values["oracle_covered"] = bool(values["oracle_lower"] <= r["observed"] <= values["oracle_upper"])
        hidden = key in why
        cell.update({k: (None if hidden else v) for k, v in values.items()})
        cell["suppressed"] = why.get(key)
        out.append(cell)
    schema = {"outcome": pl.String, "horizon_days": pl.Float64, "group": pl.String, "value": pl.String,
              "patients": pl.Int64, "expected": pl.Float64, "lower": pl.Float64, "upper": pl.Float64,
              **({"uncalibrated": pl.Float64} if ratios is not None else {}),
              **({"observed": pl.Int64, "covered": pl.Boolean} if backtest else {}),
              **({"oracle_expected": pl.Float64, "oracle_lower": pl.Float64, "oracle_upper": pl.Float64}
                 if oracle else {}),
              **({"oracle_covered": pl.Boolean} if oracle and backtest else {}),
              "suppressed": pl.String}
    return pl.DataFrame(out, schema=schema, orient="row") if out else pl.DataFrame(schema=schema)


def coverage(sums: pl.DataFrame, *, oracle: bool, ratios: Ratios | None = None) -> dict:
    """How often the 95% intervals held the observed count, over every cell (suppressed ones
    included: only the rate leaves the job, never a cell's figures): the model's own (`model`),
    recalibrated (`recalibrated`, with `ratios`) and the oracle's."""
    rows = sums.to_dicts()
    out = {"cells": len(rows)}
    if not rows:
        return out

    def rate(exp, var) -> float:
        hits = [abs(r["observed"] - exp(r)) <= Z95 * math.sqrt(var(r)) for r in rows]
        return round(sum(hits) / len(hits), 3)

    out["model"] = rate(lambda r: r["sum_p"], lambda r: r["sum_pq"] + r["sum_mc"])
    if ratios is not None:
        out["recalibrated"] = rate(lambda r: _moments(r, ratios)[0], lambda r: sum(_moments(r, ratios)[1:]))
    if oracle:
        out["oracle"] = rate(lambda r: r["oracle_sum"], lambda r: r["oracle_pq"])
    return out
