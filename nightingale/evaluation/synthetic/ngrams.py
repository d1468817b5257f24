"""Code n-grams of patient timelines, hashed so that copying can be checked at scale.

A timeline is a subject's clinical codes in time order (static rows and `MEDS_BIRTH` removed;
events at the same time keep the order they were written in). An n-gram is `length` consecutive
codes of one timeline; it never spans two subjects. Each n-gram is hashed with two polynomial
hashes modulo primes just below 2**31 (so every product fits in int64) packed into one 62-bit
key: for a million distinct n-grams the chance of any collision is about 1e-7. The work is
`length` vectorised numpy passes over the events, so thousands of subjects x hundreds of events
take well under a second.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.evaluation.synthetic.events import timed_events

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd (2**64 / golden ratio)
_SEED = 20_240_611


def code_ids(*frames: pl.DataFrame) -> dict[str, int]:
    """One integer (from 1) per code appearing in any of `frames`, shared by all of them."""
    codes = pl.concat([f.select(S.CODE) for f in frames]).unique()[S.CODE].sort().to_list()
    return {c: i + 1 for i, c in enumerate(codes)}


def ngram_hashes(
    events: pl.DataFrame, length: int, ids: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes of every `length`-gram of every timeline of `events`.

    `events` must hold each subject's rows together, in time order (as `load_events` returns).
    Returns (subjects, window_subject, hashes): the subject ids in order, each window's row in
    `subjects`, and each window's 64-bit hash (uint64). `ids` maps every code to an integer (see
    `code_ids`).
    """
    if length < 1:
        raise ValueError(f"length: an n-gram has at least one code, got {length}")
    clinical = timed_events(events)
    # Rows are grouped by subject (load_events sorts them), so a run id is a subject's row.
    run = clinical.select(pl.col(S.SUBJECT_ID).rle_id())[S.SUBJECT_ID].to_numpy().astype(np.int64)
    first = np.flatnonzero(np.diff(run, prepend=-1))
    subjects = clinical[S.SUBJECT_ID].to_numpy()[first]
    values = np.random.default_rng(_SEED).integers(
        0, 2**64 - 1, size=max(ids.values(), default=0) + 1, dtype=np.uint64, endpoint=True
    )
    tok = values[clinical[S.CODE].replace_strict(ids, return_dtype=pl.Int64).to_numpy()]
    n_win = len(tok) - length + 1
    if n_win <= 0:
        return subjects, np.zeros(0, np.int64), np.zeros(0, np.uint64)
    # Hash every window (contiguous slices, no gathers), then keep those inside one subject.
    h = np.zeros(n_win, np.uint64)
    for j in range(length):
        h *= _MULT
        h += tok[j : j + n_win]
    starts = np.flatnonzero(run[:n_win] == run[length - 1 :])
    return subjects, run[starts], h[starts]


def copy_share(
    query: pl.DataFrame, reference: pl.DataFrame, length: int, ids: dict[str, int] | None = None
) -> dict[str, float]:
    """Share of `query` timelines holding at least one `length`-gram that occurs in some
    `reference` timeline, among query timelines with at least `length` clinical events.

    Returns {"share": ..., "eligible": number of such timelines}; share is None without any.
    """
    ids = ids if ids is not None else code_ids(query, reference)
    _, _, ref = ngram_hashes(reference, length, ids)
    subjects, row, hashes = ngram_hashes(query, length, ids)
    eligible = np.zeros(len(subjects), bool)
    eligible[row] = True
    hit = np.zeros(len(subjects), bool)
    seen = pl.Series(hashes).is_in(pl.Series(ref).unique().implode()).to_numpy()
    hit[row[seen]] = True
    n = int(eligible.sum())
    return {"share": float(hit.sum() / n) if n else None, "eligible": n}
