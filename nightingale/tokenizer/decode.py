"""Decode token ids back to MEDS events, vectorised and tolerant of malformed sequences.

Expected layout (what `encode`/the corpus produce and what a model continues): an optional prefix
of static code tokens, an age token and SOT, then the body. In the body, time-gap tokens advance
the clock from `start_time` (each rung decodes to its mean training gap, `gap_decode_s`, the top rung to
exactly its length, so a repeated top rung adds whole years); a code token is an event at the
current time; a value-bin token right after a code with bins gives that event a value drawn
uniformly within the bin (or its centre). An age-band token in the body (a band change, see
`encode.py`) dates the birth: the birthday that starts the band lies between the events around
it. Anything else cannot be placed and is dropped *and counted* in the report: ids outside the
vocabulary, padding, value bins with no code before them, unknown-code tokens, SOT and AGE//UNK
in the body (any age token there when the vocabulary has no in-timeline ages), everything after
EOR. Decoding never raises on any sequence of integers.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.tokenizer import families as F
from nightingale.tokenizer.encode import US_PER_S, US_PER_YEAR
from nightingale.tokenizer.vocabulary import Vocabulary

VALUE_MODES = ("uniform", "centre")


def _as_us(t: dt.datetime | int | np.datetime64 | None) -> int | None:
    if t is None:
        return None
    if isinstance(t, dt.datetime):
        return int((t - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1))
    if isinstance(t, np.datetime64):
        return int(t.astype("datetime64[us]").astype(np.int64))
    return int(t)


def decode(
    vocab: Vocabulary,
    ids: np.ndarray | list[int],
    *,
    start_time: dt.datetime | int | None = None,
    subject_id: int = 0,
    value_mode: str = "uniform",
    seed: int | None = 0,
) -> tuple[pl.DataFrame, Counter]:
    """Token ids -> (MEDS events frame, report of what was decoded and dropped).

    start_time: time of the first body event (datetime, or microseconds since the epoch); None
        puts the timeline at the epoch. With an age token, a MEDS_BIRTH row is placed at
        start_time minus the band's middle age, or, where the body changes band, at the time of
        that change less the new band's lower age.
    value_mode: "uniform" draws within the bin (seeded), "centre" takes the bin's middle.
    """
    if value_mode not in VALUE_MODES:
        raise ValueError(f"decode value_mode: {value_mode!r}; allowed {VALUE_MODES}")
    rep: Counter = Counter()
    ids = np.asarray(ids, dtype=np.int64).ravel()
    rep["tokens_in"] = len(ids)
    ok = (ids >= 0) & (ids < len(vocab))
    rep["dropped_invalid_id"] = int((~ok).sum())
    ids = ids[ok]
    eor = np.flatnonzero(ids == F.EOR_ID)
    if len(eor):
        rep["dropped_after_end_of_record"] = len(ids) - int(eor[0]) - 1
        rep["end_of_record"] = 1
        ids = ids[: eor[0]]
    kinds = vocab.kinds[ids]
    is_code = kinds == F.KIND_CODE
    # Prefix: leading static codes, age tokens, SOT and padding.
    in_prefix = (is_code & vocab.is_static[ids]) | (kinds == F.KIND_AGE) | (ids == F.SOT_ID) | (ids == F.PAD_ID)
    not_prefix = np.flatnonzero(~in_prefix)
    p_end = int(not_prefix[0]) if len(not_prefix) else len(ids)
    pre, body = ids[:p_end], ids[p_end:]
    bk = kinds[p_end:]
    t0 = _as_us(start_time) or 0

    static_codes = pre[is_code[:p_end]]
    ages = pre[vocab.kinds[pre] == F.KIND_AGE]
    rep["dropped_padding"] = int((pre == F.PAD_ID).sum() + (body == F.PAD_ID).sum())
    rep["dropped_extra_age"] = max(len(ages) - 1, 0)
    birth = None
    if len(ages) and ages[0] != vocab.age_unknown_id:
        mid = vocab.age_lower_years[ages[0]] + vocab.config.age_band_years / 2
        birth = t0 - int(round(mid * US_PER_YEAR))

    # Body: clock from the gap tokens; codes are events; bins attach to the code just before.
    clock = t0 + np.cumsum(np.round(vocab.gap_decode_s[body] * US_PER_S).astype(np.int64))
    ev = np.flatnonzero(bk == F.KIND_CODE)
    is_bin = bk == F.KIND_VALUE_BIN
    prev = np.concatenate([[F.PAD_ID], body[:-1]]).astype(np.int64)
    prev_is_code = np.concatenate([[False], bk[:-1] == F.KIND_CODE])
    b_idx = vocab.bin_index[body].astype(np.int64)
    good_bin = is_bin & prev_is_code & (b_idx < vocab.n_bins[prev])
    rep["dropped_orphan_value_bin"] = int((is_bin & ~good_bin).sum())
    rep["dropped_unknown_code"] = int((bk == F.KIND_UNKNOWN).sum())
    body_age = (bk == F.KIND_AGE) & (body != vocab.age_unknown_id) & vocab.config.age_in_timeline
    rep["dropped_misplaced_age"] = int(((bk == F.KIND_AGE) & ~body_age).sum())
    rep["age_tokens"] = int(body_age.sum())
    if birth is not None and body_age.any():
        # The first band change dates the birth, where it is the band after the prefix's (a
        # generated timeline may write any band; a conditioned prefix has the last word).
        i = int(np.flatnonzero(body_age)[0])
        band = vocab.age_lower_years[body[i]]
        if band == vocab.age_lower_years[ages[0]] + vocab.config.age_band_years:
            before = np.flatnonzero(ev < i)
            since = int(clock[ev[before[-1]]]) if len(before) else t0  # the last event before the change
            refined = (since + int(clock[i])) // 2 - int(round(band * US_PER_YEAR))
            # ... and the prefix band still holds at the start
            oldest = t0 - int(round(band * US_PER_YEAR)) + 1
            youngest = t0 - int(round((band - vocab.config.age_band_years) * US_PER_YEAR))
            birth = min(max(refined, oldest), youngest)
        else:
            rep["age_tokens_ignored"] = 1
    rep["dropped_misplaced_start"] = int((body == F.SOT_ID).sum())
    rep["time_gap_tokens"] = int((bk == F.KIND_TIME_GAP).sum())

    values = np.full(len(body), np.nan, dtype=np.float32)
    gb = np.flatnonzero(good_bin)
    lo = vocab.edges[prev[gb], b_idx[gb]]
    hi = vocab.edges[prev[gb], b_idx[gb] + 1]
    if value_mode == "uniform":
        u = np.random.default_rng(seed).random(len(gb))
    else:
        u = np.full(len(gb), 0.5)
    v = (lo + u * (hi - lo)).astype(np.float32)
    # Stay strictly below an upper edge that belongs to the next bin (float32 rounding).
    below = np.nextafter(hi.astype(np.float32), np.float32(-np.inf))
    v = np.where((hi > lo) & (v >= hi), below, v)
    values[gb - 1] = v  # onto the code token just before

    n_static = len(static_codes)
    codes = [vocab.codes[i] for i in static_codes]
    times: list[int | None] = [None] * n_static
    vals: list[float | None] = [None] * n_static
    if birth is not None:
        codes.append(S.BIRTH_CODE), times.append(birth), vals.append(None)
    codes += [vocab.codes[i] for i in body[ev]]
    ev_vals = values[ev]
    frame = pl.DataFrame(
        {
            S.SUBJECT_ID: pl.Series([subject_id] * len(codes), dtype=pl.Int64),
            S.TIME: pl.Series(times + clock[ev].tolist(), dtype=pl.Int64).cast(pl.Datetime("us")),
            S.CODE: pl.Series(codes, dtype=pl.String),
            S.NUMERIC_VALUE: pl.Series(vals + [None if np.isnan(x) else float(x) for x in ev_vals], dtype=pl.Float32),
        }
    )
    rep["static_events"] = n_static
    rep["events"] = len(ev)
    rep["values"] = len(gb)
    rep["dropped_total"] = sum(v for k, v in rep.items() if k.startswith("dropped_"))
    return frame, rep
