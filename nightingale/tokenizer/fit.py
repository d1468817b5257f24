"""Train-split statistics for the vocabulary, computed shard by shard with bounded memory.

`shard_stats` reads one shard and keeps, per code, its event count, its static (null-time) count and
at most `max_values_per_code` evenly spaced order statistics of its finite values; `combine_stats`
merges shards, taking from each shard in proportion to its true value count so the quantiles stay
unbiased. No randomness: the same data always gives the same vocabulary. Memory is O(codes x max_values_per_code), whatever the number of events.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.tokenizer.config import TokenizerConfig

STATS_SCHEMA = {
    S.CODE: pl.String(),
    "count": pl.Int64(),
    "static_count": pl.Int64(),
    "n_values": pl.Int64(),
    "values": pl.List(pl.Float64()),
}


def shard_stats(
    events: pl.LazyFrame, train_subjects: pl.Series | None, config: TokenizerConfig
) -> pl.DataFrame:
    """Per-code statistics of the train subjects' events in one shard (all events if None)."""
    if train_subjects is not None:
        events = events.filter(pl.col(S.SUBJECT_ID).is_in(train_subjects.implode()))
    value = pl.col(S.NUMERIC_VALUE).cast(pl.Float64)
    finite = value.filter(value.is_finite())
    return (
        events.group_by(S.CODE)
        .agg(
            pl.len().cast(pl.Int64).alias("count"),
            pl.col(S.TIME).is_null().sum().cast(pl.Int64).alias("static_count"),
            finite.len().cast(pl.Int64).alias("n_values"),
            finite.sort().alias("values"),
        )
        .collect()
        .cast(STATS_SCHEMA)
        .with_columns(
            pl.col("values").map_elements(
                lambda v: _even_sample(v.to_numpy(), config.max_values_per_code).tolist(),
                return_dtype=STATS_SCHEMA["values"],
            )
        )
    )


def _even_sample(sorted_values: np.ndarray, k: int) -> np.ndarray:
    """At most `k` evenly spaced order statistics of already sorted values.

    Deterministic (same data, same vocabulary) and faithful to the quantiles, which a random
    sample of the same size is only in expectation.
    """
    n = len(sorted_values)
    if n <= k:
        return sorted_values
    return sorted_values[np.linspace(0, n - 1, k).round().astype(np.int64)]


def combine_stats(parts: Sequence[pl.DataFrame], config: TokenizerConfig) -> pl.DataFrame:
    """Merge per-shard statistics; values are subsampled to `max_values_per_code` in proportion
    to each shard's share of the code's finite values."""
    if not parts:
        return pl.DataFrame(schema=STATS_SCHEMA)
    df = pl.concat(parts)
    out = []
    cap = config.max_values_per_code
    for (code,), g in df.group_by(S.CODE, maintain_order=True):
        total = int(g["n_values"].sum())
        if len(g) == 1 or total <= cap:
            vals = [v for lst in g["values"].to_list() if lst for v in lst]
        else:
            vals = []
            for n, lst in zip(g["n_values"].to_list(), g["values"].to_list()):
                if lst:
                    k = min(len(lst), max(1, round(cap * n / total)))
                    vals.extend(_even_sample(np.asarray(lst), k).tolist())
        out.append((code, int(g["count"].sum()), int(g["static_count"].sum()), total, vals))
    return pl.DataFrame(out, schema=STATS_SCHEMA, orient="row").sort(S.CODE)


def dataset_parents(dataset: MEDSDataset) -> dict[str, list[str]]:
    """code -> parent codes (nearest first) from metadata/codes.parquet, empty lists dropped."""
    codes = dataset.codes()
    if codes.is_empty() or S.PARENT_CODES not in codes.columns:
        return {}
    rows = codes.select(S.CODE, S.PARENT_CODES).filter(pl.col(S.PARENT_CODES).list.len() > 0)
    return {c: list(p) for c, p in rows.iter_rows()}


def fit_stats_for_dataset(
    dataset: MEDSDataset, config: TokenizerConfig, shards: Sequence[Path] | None = None
) -> pl.DataFrame:
    """Statistics of the whole train split (one shard after another); for small data and tests.
    The prepare stage runs `shard_stats` per shard with `.done` markers instead."""
    train = train_subjects(dataset)
    parts = [
        shard_stats(pl.scan_parquet(p), train, config) for p in shards or dataset.shards()
    ]
    return combine_stats(parts, config)


def train_subjects(dataset: MEDSDataset) -> pl.Series:
    """Train subject ids; without a splits file, the subjects of shards under data/train/."""
    splits = dataset.splits()
    if not splits.is_empty():
        return splits.filter(pl.col(S.SPLIT) == S.TRAIN)[S.SUBJECT_ID]
    paths = [p for p in dataset.shards() if dataset.shard_name(p).split("/")[0] == S.TRAIN]
    if not paths:
        raise ValueError(f"{dataset.root}: no subject_splits.parquet and no data/{S.TRAIN}/ shards")
    return pl.scan_parquet(paths).select(pl.col(S.SUBJECT_ID).unique()).collect()[S.SUBJECT_ID]
