"""Property tests: decode(encode(timeline)) restores codes and order, times within the ladder's
resolution, values within their bin; decode survives any integer sequence."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nightingale import schema as S
from nightingale.tokenizer import families as F
from nightingale.tokenizer.decode import decode
from nightingale.tokenizer.encode import US_PER_S, encode_events

from .conftest import PLAIN_CODES, STATIC_CODES, VALUE_CODES

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
GAPS_S = st.one_of(
    st.just(0), st.integers(0, 600), st.integers(0, 86400 * 3), st.integers(0, 86400 * 365 * 4)
)
EVENT = st.tuples(
    GAPS_S,
    st.sampled_from(PLAIN_CODES + VALUE_CODES),
    st.floats(-1e4, 1e4, allow_nan=False, width=32),
)


def timeline(events, statics, birth_years) -> pl.DataFrame:
    t = dt.datetime(2001, 3, 4, 5, 6, 7)
    rows = [(7, None, c, None) for c in statics]
    if birth_years is not None:
        rows.append((7, t - dt.timedelta(days=365.25 * birth_years), S.BIRTH_CODE, None))
    for gap, code, value in events:
        t += dt.timedelta(seconds=gap)
        rows.append((7, t, code, value if code in VALUE_CODES else None))
    schema = {S.SUBJECT_ID: pl.Int64, S.TIME: pl.Datetime("us"), S.CODE: pl.String, S.NUMERIC_VALUE: pl.Float32}
    return pl.DataFrame(rows, schema=schema, orient="row")


def gap_bound_us(vocab, gap_us: np.ndarray) -> np.ndarray:
    """Largest decode error of a gap: half its rung's width, or the first rung below it."""
    ladder = np.round(vocab.ladder_s * US_PER_S).astype(np.int64)
    rem = gap_us % ladder[-1]
    k = np.searchsorted(ladder, rem, side="right") - 1
    widths = np.diff(ladder) / 2
    return np.where(k < 0, ladder[0], widths[np.clip(k, 0, len(widths) - 1)]) + 1


@SETTINGS
@given(
    events=st.lists(EVENT, min_size=1, max_size=60),
    statics=st.lists(st.sampled_from(STATIC_CODES), max_size=2, unique=True),
    birth_years=st.one_of(st.none(), st.floats(0, 100)),
    value_mode=st.sampled_from(["uniform", "centre"]),
)
def test_decode_inverts_encode(tiny_vocab, events, statics, birth_years, value_mode):
    v = tiny_vocab
    df = timeline(events, statics, birth_years)
    enc = encode_events(v, df)
    t0 = int(enc.times[0])
    birth = enc.index["birth_time"][0]
    ids = np.concatenate([enc.static, [v.age_token(birth, t0)], enc.tokens]).astype(np.int64)
    out, rep = decode(v, ids, start_time=t0, subject_id=7, value_mode=value_mode, seed=1)
    assert rep["dropped_total"] == 0
    timed = df.filter(pl.col(S.TIME).is_not_null() & (pl.col(S.CODE) != S.BIRTH_CODE))
    got = out.filter(pl.col(S.TIME).is_not_null() & (pl.col(S.CODE) != S.BIRTH_CODE))
    # Codes and order exactly; statics as the static rows.
    assert got[S.CODE].to_list() == timed[S.CODE].to_list()
    assert out.filter(pl.col(S.TIME).is_null())[S.CODE].to_list() == statics
    # Times: every gap within its rung's resolution.
    true_gap = np.diff(timed[S.TIME].cast(pl.Int64).to_numpy())
    dec_gap = np.diff(got[S.TIME].cast(pl.Int64).to_numpy())
    assert np.all(np.abs(dec_gap - true_gap) <= gap_bound_us(v, true_gap))
    # Values: same bin (re-encoding the decoded timeline gives the same tokens: codes, bins, gaps).
    assert got[S.NUMERIC_VALUE].is_null().to_list() == timed[S.NUMERIC_VALUE].is_null().to_list()
    # Age-band changes may move: decoding merges times closer than the first rung, so a birthday
    # that fell between two such events cannot be placed between them again.
    again = encode_events(v, out)
    no_age = lambda ids: [t for t in ids.tolist() if v.kinds[t] != F.KIND_AGE]  # noqa: E731
    assert no_age(again.tokens) == no_age(enc.tokens)
    # Values inside the train range decode inside their bin's edges.
    for (code, x), y in zip(timed.select(S.CODE, S.NUMERIC_VALUE).iter_rows(), got[S.NUMERIC_VALUE]):
        if x is not None:
            e = v.edges[v.code_to_id[code]]
            if e[0] <= x <= e[v.n_bins[v.code_to_id[code]]]:
                k = int(np.sum(x >= e[1 : v.n_bins[v.code_to_id[code]]]))
                assert e[k] <= y <= e[k + 1]
    # Birth: placed from the age band, within one band of the truth.
    if birth_years is not None:
        birth = out.filter(pl.col(S.CODE) == S.BIRTH_CODE)[S.TIME].cast(pl.Int64).to_numpy()
        true = df.filter(pl.col(S.CODE) == S.BIRTH_CODE)[S.TIME].cast(pl.Int64).to_numpy()
        band_us = v.config.age_band_years * 365.25 * 86400 * US_PER_S
        if birth_years < v.config.max_age_years:
            assert abs(int(birth[0]) - int(true[0])) <= band_us


@SETTINGS
@given(ids=st.lists(st.integers(-3, 200), max_size=300), mode=st.sampled_from(["uniform", "centre"]))
def test_decode_never_crashes(tiny_vocab, ids, mode):
    out, rep = decode(tiny_vocab, ids, value_mode=mode, start_time=dt.datetime(2000, 1, 1))
    assert set(out.columns) >= {S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE}
    assert rep["events"] + rep["static_events"] <= len(ids)
    assert rep["dropped_total"] >= rep["dropped_invalid_id"] == sum(1 for i in ids if not 0 <= i < len(tiny_vocab))


def test_decode_counts_malformed(tiny_vocab):
    v = tiny_vocab
    code = v.code_to_id["LOINC//4548-4"]
    plain = v.code_to_id["ICD10//E11"]
    q1 = int(v.bin_ids[0])
    gap = int(v.gap_ids[3])
    ids = [F.SOT_ID, q1, code, q1, q1, plain, q1, gap, gap, 99999, F.PAD_ID, v.age_unknown_id, F.EOR_ID, plain]
    out, rep = decode(v, ids, value_mode="centre")
    assert out[S.CODE].to_list() == ["LOINC//4548-4", "ICD10//E11"]
    assert rep["dropped_orphan_value_bin"] == 3  # before any code, a repeat, after a code without bins
    assert rep["dropped_invalid_id"] == 1 and rep["dropped_padding"] == 1
    assert rep["dropped_misplaced_age"] == 1 and rep["dropped_after_end_of_record"] == 1
    assert out[S.NUMERIC_VALUE][0] is not None
