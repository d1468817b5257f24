"""Encode MEDS events into token ids, vectorised with numpy (no per-event Python loop).

A subject's token stream is ``[SOT] event... [EOR]``; each event is its code token, then a shared
value-bin token when it has a finite numeric value and its code has bins; time-gap tokens sit
between consecutive distinct timestamps (gaps shorter than the first rung get none; gaps of several
years repeat the top rung, then one rung for the remainder). Where the subject's age band changes
between two events (birth known, `TokenizerConfig.age_in_timeline`), the new band's age token
sits after the gaps and before the event's code: ``gaps... AGE//45-50 code [bin]``, so the model
always sees the current age. Static (null-time) rows and the birth time do not enter the stream:
they go to the subject index, and the corpus prefixes every window with the static tokens and the
age band at the window's first token (see `corpus.py`).

Every token carries a time (microseconds since the epoch): a code or bin token its event's time, a
gap token the time of the event it leads to, SOT the first event's and EOR the last event's, so
times are non-decreasing and "tokens known at time T" is a `searchsorted` (corpus.token_position).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nightingale import schema as S
from nightingale.tokenizer import families as F
from nightingale.tokenizer import vocabulary as V

US_PER_S = 1_000_000
US_PER_YEAR = 365.25 * 86400 * US_PER_S
HOW = (V.EXACT, V.PARENT, V.UNKNOWN_FAMILY, V.UNKNOWN)
_BIRTH_HOW = -1  # code_how marker for MEDS_BIRTH rows (consumed into the age token)
CHUNK_ROWS = 1 << 18  # rows encoded at once at most (see iter_shard_chunks)


@dataclasses.dataclass
class EventArrays:
    """One chunk of MEDS rows as numpy columns; rows of a subject are contiguous."""

    subject_id: np.ndarray  # int64
    time: np.ndarray  # int64 microseconds; meaningless where ~has_time
    has_time: np.ndarray  # bool
    code_id: np.ndarray  # int32 token id of the resolved code
    code_how: np.ndarray  # int8 index into HOW, or _BIRTH_HOW
    value: np.ndarray  # float64, NaN where null
    has_value: np.ndarray  # bool (non-null numeric_value; may still be NaN/inf)

    def __len__(self) -> int:
        return len(self.subject_id)

    def take(self, idx: np.ndarray | slice) -> EventArrays:
        return EventArrays(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))

    @staticmethod
    def concat(parts: list[EventArrays]) -> EventArrays:
        return EventArrays(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(EventArrays))
        )


@dataclasses.dataclass
class Encoded:
    """Token stream of whole subjects, with the subject index and counts."""

    tokens: np.ndarray  # token ids (vocab.token_dtype)
    times: np.ndarray  # int64 microseconds, one per token
    index: pl.DataFrame  # subject_id, offset, length, static_offset, static_length, birth_time
    static: np.ndarray  # static token ids, flat; index.static_offset/static_length point in
    report: Counter

    def select(self, keep: np.ndarray) -> Encoded:
        """The subjects where `keep` (bool, one per index row), offsets renumbered: the same
        arrays that encoding those subjects alone gives (subjects are encoded independently), so
        a chunk is encoded once and then split by split. The report stays with the whole."""
        lengths = self.index["length"].to_numpy()
        static_lengths = self.index["static_length"].to_numpy()
        tok, st = np.repeat(keep, lengths), np.repeat(keep, static_lengths)
        lengths, static_lengths = lengths[keep], static_lengths[keep]
        index = self.index.filter(pl.Series(keep)).with_columns(
            pl.Series("offset", np.cumsum(lengths) - lengths, pl.Int64),
            pl.Series("static_offset", np.cumsum(static_lengths) - static_lengths, pl.Int64),
        )
        return Encoded(self.tokens[tok], self.times[tok], index, self.static[st], Counter())


INDEX_SCHEMA = {
    S.SUBJECT_ID: pl.Int64(),
    "offset": pl.Int64(),
    "length": pl.Int64(),
    "static_offset": pl.Int64(),
    "static_length": pl.Int64(),
    "birth_time": pl.Int64(),  # microseconds since the epoch; null without MEDS_BIRTH
}


class CodeLookup:
    """Maps code strings to (token id, how) once per distinct code (cached across chunks)."""

    def __init__(self, vocab: V.Vocabulary, parents: Mapping[str, list[str]] | None = None):
        self.vocab, self.parents, self.cache = vocab, parents, {}
        # The cache again as arrays, for `lookup_arrow`: codes seen so far and their (id, how).
        self._known = pa.nulls(0, pa.string())  # (pa.array would import pandas: 0.4 s a process)
        self._ids, self._hows = np.empty(0, np.int32), np.empty(0, np.int8)

    def __call__(self, codes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, hows = np.empty(len(codes), np.int32), np.empty(len(codes), np.int8)
        for i, code in enumerate(codes):  # distinct codes only, not events
            hit = self.cache.get(code)
            if hit is None:
                if code in F.CONSUMED_CODES:
                    hit = (F.PAD_ID, _BIRTH_HOW)
                else:
                    tid, how = self.vocab.resolve(code, self.parents)
                    hit = (tid, HOW.index(how))
                self.cache[code] = hit
            ids[i], hows[i] = hit
        return ids, hows

    def lookup_arrow(self, codes: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """`__call__` for an Arrow string array (a chunk's code dictionary): a hash join against
        the codes seen before, so only new codes reach Python (each batch brings ~1,000)."""
        codes = codes.cast(pa.string()) if codes.type != pa.string() else codes
        pos = pc.index_in(codes, value_set=self._known)
        if pos.null_count:
            new = pc.unique(codes.filter(pc.is_null(pos)))
            ids, hows = self(new.to_pylist())
            self._known = pa.concat_arrays([self._known, new])
            self._ids = np.concatenate([self._ids, ids])
            self._hows = np.concatenate([self._hows, hows])
            pos = pc.index_in(codes, value_set=self._known)
        ix = _numpy(pos)
        return self._ids[ix], self._hows[ix]


def _column(table: pa.Table | pa.RecordBatch, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


_NUMPY_TYPES = {
    pa.from_numpy_dtype(np.dtype(n)): np.dtype(n)
    for n in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8")
}


def _numpy(arr: pa.Array, fill: float | None = None) -> np.ndarray:
    """A numpy view of a fixed-width Arrow array (booleans via one cast); nulls become `fill`.
    Not `Array.to_numpy` or `pc.fill_null`: in pyarrow 26 they import pandas, 0.4 s in every
    encoding process."""
    if pa.types.is_boolean(arr.type) and not arr.null_count:
        return _numpy(arr.cast(pa.uint8())).view(np.bool_)
    dtype = _NUMPY_TYPES.get(arr.type)
    if dtype is None or (arr.null_count and fill is None):
        return arr.to_numpy(zero_copy_only=False)
    if arr.null_count == len(arr):  # may have no value buffer at all
        return np.full(len(arr), fill, dtype)
    out = np.frombuffer(arr.buffers()[1], dtype, len(arr), arr.offset * dtype.itemsize)
    return np.where(_numpy(pc.is_valid(arr)), out, fill) if arr.null_count else out


def arrays_from_arrow(table: pa.Table | pa.RecordBatch, lookup: CodeLookup) -> EventArrays:
    """Convert MEDS columns (any timestamp unit; code plain or dictionary) to EventArrays."""
    code = _column(table, S.CODE)
    if not pa.types.is_dictionary(code.type):
        code = pc.dictionary_encode(code)
    lut_id, lut_how = lookup.lookup_arrow(code.dictionary)
    idx = _numpy(code.indices)
    time = _column(table, S.TIME).cast(pa.timestamp("us"))
    value = _column(table, S.NUMERIC_VALUE).cast(pa.float64())
    return EventArrays(
        subject_id=_numpy(_column(table, S.SUBJECT_ID)).astype(np.int64, copy=False),
        time=_numpy(time.cast(pa.int64()), fill=0),
        has_time=_numpy(pc.is_valid(time)),
        code_id=lut_id[idx],
        code_how=lut_how[idx],
        value=_numpy(value, fill=np.nan),
        has_value=_numpy(pc.is_valid(value)),
    )


def iter_shard_chunks(path: str | Path, lookup: CodeLookup, batch_rows: int = 1 << 20) -> Iterator[EventArrays]:
    """Read a shard in chunks of whole subjects, gathering row groups up to `CHUNK_ROWS` rows or
    `batch_rows`, whichever is smaller, so memory is bounded by the batch size, not by the shard
    size. Encoding costs ~2 ms a chunk plus a fixed cost per row: beyond ~256K rows a chunk saves
    no time (measured on simulator shards) and only adds memory."""
    pf = pq.ParquetFile(path, read_dictionary=[S.CODE])
    columns = [S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE]
    batch_rows = min(batch_rows, CHUNK_ROWS)
    # One thread: the prepare stage already runs one process per core.
    batches = pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)
    parts: list[EventArrays] = []
    n = 0
    for batch in batches:
        parts.append(arrays_from_arrow(batch, lookup))
        n += len(parts[-1])
        if n < batch_rows:
            continue
        arr = parts[0] if len(parts) == 1 else EventArrays.concat(parts)
        last = np.flatnonzero(arr.subject_id != arr.subject_id[-1])
        cut = int(last[-1]) + 1 if len(last) else 0  # rows of the last subject may continue
        parts = [arr.take(slice(cut, None))]
        n = len(parts[0])
        if cut:
            yield arr.take(slice(0, cut))
    if n:
        yield parts[0] if len(parts) == 1 else EventArrays.concat(parts)


def _sort(ev: EventArrays) -> EventArrays:
    """Sort by subject, static rows first, then time (stable), unless already so."""
    key = np.where(ev.has_time, ev.time, np.iinfo(np.int64).min)
    same = ev.subject_id[1:] == ev.subject_id[:-1]
    if np.all(np.diff(ev.subject_id) >= 0) and np.all(~same | (key[1:] >= key[:-1])):
        return ev
    return ev.take(np.lexsort((key, ev.subject_id)))


def encode_arrays(vocab: V.Vocabulary, ev: EventArrays) -> Encoded:
    """Encode whole subjects (see the module docstring for the layout)."""
    rep: Counter = Counter()
    ev = _sort(ev)
    n = len(ev)
    rep["events_in"] += n
    new_subj = np.ones(n, bool)
    new_subj[1:] = ev.subject_id[1:] != ev.subject_id[:-1]
    subj = np.cumsum(new_subj) - 1  # subject ordinal per row
    subject_ids = ev.subject_id[new_subj]
    n_subj = len(subject_ids)
    rep["subjects_in"] += n_subj

    is_birth = ev.code_how == _BIRTH_HOW
    birth = np.full(n_subj, np.iinfo(np.int64).min)
    rows = np.flatnonzero(is_birth & ev.has_time)[::-1]  # reversed: the first birth row wins
    birth[subj[rows]] = ev.time[rows]
    has_birth = np.zeros(n_subj, bool)
    has_birth[subj[rows]] = True

    static_mask = ~ev.has_time & ~is_birth
    ev_mask = ev.has_time & ~is_birth
    n_events = np.bincount(subj[ev_mask], minlength=n_subj)
    keep_subj = n_events > 0
    rep["subjects_without_events"] += int((~keep_subj).sum())
    rep["subjects_without_birth"] += int((keep_subj & ~has_birth).sum())
    static_mask &= keep_subj[subj]
    static = ev.code_id[static_mask].astype(vocab.token_dtype)
    static_len = np.bincount(subj[static_mask], minlength=n_subj)[keep_subj]
    rep["static_tokens"] += len(static)

    e = ev.take(ev_mask)
    esubj = subj[ev_mask]
    m = len(e)
    for k, how in enumerate(HOW):
        rep[f"codes_{how}"] += int(np.count_nonzero(e.code_how == k))
    first = np.ones(m, bool)
    first[1:] = esubj[1:] != esubj[:-1]
    last = np.ones(m, bool)
    last[:-1] = first[1:]
    # Time gaps (microseconds) to the previous event of the subject.
    delta = np.zeros(m, np.int64)
    delta[1:] = np.diff(e.time)
    delta[first] = 0
    # Gaps of several top rungs are rare and same-time events common: divide and search only
    # where needed (the searchsorted over every event was an eighth of the encoding time).
    ladder = np.round(vocab.ladder_s * US_PER_S).astype(np.int64)
    n_top = np.zeros(m, np.int64)
    rest = delta
    big = np.flatnonzero(delta >= ladder[-1])
    if len(big):
        n_top[big] = delta[big] // ladder[-1]
        rest = delta.copy()
        rest[big] -= n_top[big] * ladder[-1]
    rung = np.full(m, -1, np.int64)
    gap = np.flatnonzero(rest >= ladder[0])
    rung[gap] = np.searchsorted(ladder, rest[gap], side="right") - 1
    n_gap = n_top + (rung >= 0)
    # Age-band changes: an age token before the first event of each new band (not the first
    # event of a subject: the window's prefix carries its band).
    has_age = np.zeros(m, bool)
    if vocab.config.age_in_timeline and m:
        born = has_birth[esubj]
        band = np.where(born, vocab.age_band(np.where(born, birth[esubj], 0), e.time), -1)
        has_age[1:] = born[1:] & ~first[1:] & (band[1:] != band[:-1])
    # Value bins.
    finite = e.has_value & np.isfinite(e.value)
    rep["values_nan_dropped"] += int(np.count_nonzero(e.has_value & np.isnan(e.value)))
    rep["values_inf_dropped"] += int(np.count_nonzero(e.has_value & np.isinf(e.value)))
    has_bins = vocab.n_bins[e.code_id] > 0
    rep["values_without_bins_dropped"] += int(np.count_nonzero(finite & ~has_bins))
    has_bin = finite & has_bins
    b_rows = np.flatnonzero(has_bin)
    b_val, b_code = e.value[b_rows], e.code_id[b_rows]
    bin_k = np.zeros(len(b_rows), np.int64)
    for j in range(vocab.inner_edges.shape[1]):
        bin_k += b_val >= vocab.inner_edges[b_code, j]
    rep["value_tokens"] += len(b_rows)

    # Lay tokens out: per event [SOT] gaps... [AGE] code [bin] [EOR].
    count = first + n_gap + has_age + 1 + has_bin + last
    end = np.cumsum(count)
    start = end - count
    total = int(end[-1]) if m else 0
    tokens = np.empty(total, vocab.token_dtype)
    tokens[start[first]] = F.SOT_ID
    code_pos = start + first + n_gap + has_age
    if has_age.any():
        tokens[code_pos[has_age] - 1] = vocab.age_ids[band[has_age]]
    tokens[code_pos[gap] - 1 - has_age[gap]] = vocab.gap_ids[rung[gap]]  # the remainder's rung
    t_rows = np.flatnonzero(n_top)  # then n_top top rungs from the first gap slot
    if len(t_rows):
        k = n_top[t_rows]
        g_rows = np.repeat(t_rows, k)
        g_pos = np.arange(len(g_rows)) - np.repeat(np.cumsum(k) - k, k)
        tokens[start[g_rows] + first[g_rows] + g_pos] = vocab.gap_ids[-1]
    tokens[code_pos] = e.code_id
    tokens[code_pos[b_rows] + 1] = vocab.bin_ids[bin_k]
    tokens[end[last] - 1] = F.EOR_ID
    times = np.repeat(e.time, count)
    rep["events_encoded"] += m
    rep["time_gap_tokens"] += int(n_gap.sum())
    rep["age_tokens"] += int(has_age.sum())
    rep["tokens"] += total

    offsets = start[first]
    lengths = end[last] - offsets
    index = pl.DataFrame(
        {
            S.SUBJECT_ID: subject_ids[keep_subj],
            "offset": offsets,
            "length": lengths,
            "static_offset": np.cumsum(static_len) - static_len,
            "static_length": static_len,
            "birth_time": np.where(has_birth, birth, 0)[keep_subj],
        },
        schema=INDEX_SCHEMA,
    ).with_columns(
        pl.when(pl.Series(has_birth[keep_subj])).then(pl.col("birth_time")).otherwise(None).alias("birth_time")
    )
    rep["subjects_encoded"] += len(index)
    return Encoded(tokens, times, index, static, rep)


def encode_events(vocab: V.Vocabulary, events: pl.DataFrame, parents: Mapping[str, list[str]] | None = None) -> Encoded:
    """Encode an in-memory MEDS frame (all its subjects, whatever their split): for tests and
    small data; the prepare stage streams shards through `iter_shard_chunks` instead."""
    cols = {c: events[c] for c in (S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE) if c in events.columns}
    if S.NUMERIC_VALUE not in cols:
        cols[S.NUMERIC_VALUE] = pl.Series(S.NUMERIC_VALUE, [None] * len(events), pl.Float32)
    table = pl.DataFrame(cols).to_arrow()
    return encode_arrays(vocab, arrays_from_arrow(table, CodeLookup(vocab, parents)))
