"""Train-split statistics for the vocabulary, computed shard by shard with bounded memory.

`shard_stats` reads one shard and keeps, per code, its event count, its static (null-time) count and
at most `max_values_per_code` evenly spaced order statistics of its finite values; `combine_stats`
merges shards, taking from each shard in proportion to its true value count so the quantiles stay
unbiased. No randomness: the same data always gives the same vocabulary. Memory is O(codes x max_values_per_code), whatever the number of events.

`shard_gap_stats` measures what each time-gap token stands for: encoding floors a gap to its rung
(after taking out whole top rungs), so the token's honest decoded value is the mean of the
remainders it stood for in the training data, not the midpoint to the next rung (gaps are skewed
towards the lower edge: `GAP//1mo` covered ~50 days on average, against a midpoint of ~61, which
made rollout clocks run ~9% fast). `combine_gap_stats` merges shards into per-rung means.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.tokenizer.config import TokenizerConfig

GAP_STATS_SCHEMA = {"rung": pl.Int32(), "n": pl.Int64(), "sum_s": pl.Float64()}
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


def shard_gap_stats(
    events: pl.LazyFrame, train_subjects: pl.Series | None, config: TokenizerConfig
) -> pl.DataFrame:
    """Per rung of the time ladder: how many gaps (remainders after whole top rungs) of the train
    subjects' timed events it encoded in this shard, and their sum in seconds (as encode does:
    consecutive distinct times of a subject; gaps below the first rung get no token)."""
    from nightingale.tokenizer import families as F

    if train_subjects is not None:
        events = events.filter(pl.col(S.SUBJECT_ID).is_in(train_subjects.implode()))
    times = (events.filter(pl.col(S.TIME).is_not_null() & ~pl.col(S.CODE).is_in(list(F.CONSUMED_CODES)))
             .select(S.SUBJECT_ID, pl.col(S.TIME).cast(pl.Datetime("us")).cast(pl.Int64)).unique()
             .sort(S.SUBJECT_ID, S.TIME).collect())
    sid, t = times[S.SUBJECT_ID].to_numpy(), times[S.TIME].to_numpy()
    same = sid[1:] == sid[:-1]
    delta = (t[1:] - t[:-1])[same]
    ladder = np.round(np.asarray(config.ladder_seconds()) * 1e6).astype(np.int64)
    rest = delta % ladder[-1]  # whole top rungs are repeated top-rung tokens, decoded exactly
    rung = np.searchsorted(ladder, rest, side="right") - 1
    ok = rung >= 0
    n = np.bincount(rung[ok], minlength=len(ladder))
    total = np.bincount(rung[ok], weights=rest[ok] / 1e6, minlength=len(ladder))
    return pl.DataFrame({"rung": np.arange(len(ladder)), "n": n, "sum_s": total}, schema=GAP_STATS_SCHEMA)


def combine_gap_stats(parts: Sequence[pl.DataFrame], config: TokenizerConfig) -> list[float]:
    """Decoded seconds per rung: the mean training remainder of each rung; the top rung decodes to
    exactly its length (it only ever stands for whole top rungs); a rung no training gap used
    keeps the midpoint to the next rung."""
    ladder = config.ladder_seconds()
    mids = [(a + b) / 2 for a, b in zip(ladder, ladder[1:])] + [ladder[-1]]
    n = np.zeros(len(ladder))
    total = np.zeros(len(ladder))
    for part in parts:
        for rung, k, s in part.select("rung", "n", "sum_s").iter_rows():
            n[rung] += k
            total[rung] += s
    return [float(total[k] / n[k]) if n[k] and k < len(ladder) - 1 else float(mids[k]) for k in range(len(ladder))]


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


def fit_gap_decode_for_dataset(
    dataset: MEDSDataset, config: TokenizerConfig, shards: Sequence[Path] | None = None
) -> list[float]:
    """Per-rung decoded seconds from the whole train split (small data and tests)."""
    train = train_subjects(dataset)
    return combine_gap_stats(
        [shard_gap_stats(pl.scan_parquet(p), train, config) for p in shards or dataset.shards()], config)


def train_subjects(dataset: MEDSDataset) -> pl.Series:
    """Train subject ids; without a splits file, the subjects of shards under data/train/."""
    splits = dataset.splits()
    if not splits.is_empty():
        return splits.filter(pl.col(S.SPLIT) == S.TRAIN)[S.SUBJECT_ID]
    paths = [p for p in dataset.shards() if dataset.shard_name(p).split("/")[0] == S.TRAIN]
    if not paths:
        raise ValueError(f"{dataset.root}: no subject_splits.parquet and no data/{S.TRAIN}/ shards")
    return pl.scan_parquet(paths).select(pl.col(S.SUBJECT_ID).unique()).collect()[S.SUBJECT_ID]
