"""A vocabulary fitted across sites from what each site may share: suppressed counts and sketches.

A site computes its train split's statistics with the usual per-shard code (`tokenizer/fit.py`),
then `site_sketch` keeps only aggregates that are safe to send:
- per code: event count, static (null-time) count and finite-value count, each suppressed below
  the threshold (default 10): a code seen fewer times is not sent at all;
- per code with enough values: its quantiles at fixed levels 1%..99% (linear interpolation; never
  the minimum or maximum, the values that most often belong to one person);
- per time-gap rung: how many gaps it encoded and their total seconds (suppressed below threshold);
- the parents of the codes sent (from `metadata/codes.parquet`: an ontology, not patient data).

The coordinator's `merge_sketches` sums counts, mixes value sketches in proportion to each site's
true value count, and fits one spec with `Vocabulary.fit` (same format, same fallback rules as a
central fit). Sketches are merged in an order fixed by their content, so the same inputs give the
same vocabulary whatever order the sites answer in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.tokenizer import fit as fit_mod
from nightingale.tokenizer.config import TokenizerConfig
from nightingale.tokenizer.vocabulary import Vocabulary

SKETCH_VERSION = 1
QUANTILE_LEVELS = np.linspace(0.01, 0.99, 99)
MERGED_POINTS = 2_000  # value points per code after mixing the sites' sketches


class SiteDataError(ValueError):
    """A site's data cannot join the federation; the message names the site and what is wrong."""


def site_sketch(stats: pl.DataFrame, gaps: pl.DataFrame, parents: Mapping[str, list[str]],
                train_subjects: int, *, threshold: int, site: str) -> dict[str, Any]:
    """What one site sends for the vocabulary (see the module docstring).

    `stats`/`gaps`: the site's combined train statistics (`fit.combine_stats`, and the rows of
    `fit.shard_gap_stats` summed per rung). Raises `SiteDataError` when the site has fewer train
    subjects than the threshold: suppression could not hide them.
    """
    if train_subjects < threshold:
        raise SiteDataError(
            f"site {site!r}: {train_subjects} train subjects, fewer than the suppression threshold "
            f"({threshold}); a federation needs at least that many at every site")
    codes = []
    for code, count, static, n_values, values in stats.select(
            S.CODE, "count", "static_count", "n_values", "values").iter_rows():
        if count < threshold:
            continue
        quantiles: list[float] = []
        if n_values >= threshold and values:
            quantiles = [float(q) for q in np.quantile(np.asarray(values, np.float64), QUANTILE_LEVELS)]
        codes.append([code, int(count), int(static) if static >= threshold else 0,
                      int(n_values) if quantiles else 0, quantiles])
    codes.sort(key=lambda row: row[0])
    gap_rows = (gaps.group_by("rung").agg(pl.col("n").sum(), pl.col("sum_s").sum()).sort("rung")
                if gaps.height else gaps)
    gap_list = [[int(r), int(n), float(s)] if n >= threshold else [int(r), 0, 0.0]
                for r, n, s in gap_rows.select("rung", "n", "sum_s").iter_rows()]
    sent = {row[0] for row in codes}
    return {
        "version": SKETCH_VERSION,
        "threshold": int(threshold),
        "train_subjects": int(train_subjects),
        "codes": codes,
        "gaps": gap_list,
        "parents": {c: list(p) for c, p in sorted(parents.items()) if c in sent and p},
    }


def sketch_digest(sketch: Mapping[str, Any]) -> str:
    """A content hash of a sketch (its canonical JSON), which fixes the merge order."""
    return hashlib.sha256(json.dumps(sketch, sort_keys=True).encode()).hexdigest()


def spec_hash(spec: Mapping[str, Any]) -> str:
    """The vocabulary's identity across sites: a hash of its spec's canonical JSON."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _mix_values(parts: Sequence[tuple[int, list[float]]]) -> list[float]:
    """Value points standing for the union of the sites' values: each site's quantile function
    sampled at a number of points proportional to its true value count."""
    parts = [(n, q) for n, q in parts if n and q]
    total = sum(n for n, _ in parts)
    out: list[float] = []
    for n, q in parts:
        k = max(1, round(MERGED_POINTS * n / total))
        levels = (np.arange(k) + 0.5) / k
        out.extend(np.interp(levels, QUANTILE_LEVELS, np.asarray(q, np.float64)).tolist())
    return sorted(out)


def merge_sketches(sketches: Sequence[Mapping[str, Any]], config: TokenizerConfig) -> Vocabulary:
    """One vocabulary from the sites' sketches (see the module docstring)."""
    if not sketches:
        raise ValueError("merge_sketches: no site sent a sketch")
    for sk in sketches:
        if sk.get("version") != SKETCH_VERSION:
            raise ValueError(f"vocabulary sketch version {sk.get('version')!r}; expected {SKETCH_VERSION}")
    ordered = sorted(sketches, key=sketch_digest)
    by_code: dict[str, list[Any]] = {}
    for sk in ordered:
        for code, count, static, n_values, quantiles in sk["codes"]:
            row = by_code.setdefault(code, [0, 0, []])
            row[0] += count
            row[1] += static
            row[2].append((n_values, quantiles))
    rows = [(code, c, st, sum(n for n, _ in parts), _mix_values(parts))
            for code, (c, st, parts) in sorted(by_code.items())]
    stats = pl.DataFrame(rows, schema=fit_mod.STATS_SCHEMA, orient="row")
    gap_frames = [pl.DataFrame(sk["gaps"], schema=fit_mod.GAP_STATS_SCHEMA, orient="row")
                  for sk in ordered if sk["gaps"]]
    gap_decode_s = fit_mod.combine_gap_stats(gap_frames, config)
    parents: dict[str, list[str]] = {}
    for sk in ordered:
        for code, p in sk["parents"].items():
            parents.setdefault(code, list(p))
    return Vocabulary.fit(stats, config, parents, gap_decode_s)
