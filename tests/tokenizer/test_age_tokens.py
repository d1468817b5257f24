"""The current age inside timelines: an age-band token wherever a subject's band changes, so a
model never reads a stale age (issue 13, item 2)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.inference.prompts import Event, body_banned_ids, build_prompt
from nightingale.tokenizer import Vocabulary
from nightingale.tokenizer import families as F
from nightingale.tokenizer.decode import decode
from nightingale.tokenizer.encode import encode_events

BIRTH = dt.datetime(1980, 6, 15)
SCHEMA = {S.SUBJECT_ID: pl.Int64, S.TIME: pl.Datetime("us"), S.CODE: pl.String, S.NUMERIC_VALUE: pl.Float32}


def _frame(ages_years: list[float], birth: dt.datetime | None = BIRTH, subject: int = 1) -> pl.DataFrame:
    rows = [(subject, None, "SEX//F", None)]
    if birth is not None:
        rows.append((subject, birth, S.BIRTH_CODE, None))
    rows += [(subject, BIRTH + dt.timedelta(days=365.25 * a), "ICD10//I10", None) for a in ages_years]
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def _vocab(tiny_vocab: Vocabulary, **config) -> Vocabulary:
    spec = dict(tiny_vocab.spec)
    spec["config"] = {**spec["config"], **config}
    return Vocabulary(spec)


def test_an_age_token_marks_each_band_change_before_its_event(tiny_vocab):
    v = tiny_vocab
    ages = [38.0, 39.5, 40.2, 41.0, 44.9, 45.1, 52.0]  # bands 35-40, 35-40, 40-45, 40-45, 40-45, 45-50, 50-55
    enc = encode_events(v, _frame(ages))
    toks = enc.tokens
    age_pos = np.flatnonzero(v.kinds[toks] == F.KIND_AGE)
    assert [v.tokens[t] for t in toks[age_pos]] == ["AGE//40-45", "AGE//45-50", "AGE//50-55"]
    # Each sits just before the code of the first event in its band, after that event's gaps,
    # and carries that event's time (times stay non-decreasing: token_position still works).
    code_pos = np.flatnonzero(v.kinds[toks] == F.KIND_CODE)
    assert list(age_pos + 1) == [int(code_pos[i]) for i in (2, 5, 6)]
    assert all(v.kinds[toks[p - 1]] == F.KIND_TIME_GAP for p in age_pos)
    assert np.all(enc.times[age_pos] == enc.times[age_pos + 1])
    assert np.all(np.diff(enc.times) >= 0)
    assert enc.report["age_tokens"] == 3


def test_no_age_tokens_without_a_birth_or_for_older_vocabularies(tiny_vocab):
    ages = [38.0, 40.2, 45.1]
    enc = encode_events(tiny_vocab, _frame(ages, birth=None))
    assert not (tiny_vocab.kinds[enc.tokens] == F.KIND_AGE).any()
    old = _vocab(tiny_vocab, age_in_timeline=False)
    enc = encode_events(old, _frame(ages))
    assert not (old.kinds[enc.tokens] == F.KIND_AGE).any()
    # A spec written before the option existed reads as "off": its model never saw such tokens.
    spec = dict(tiny_vocab.spec)
    spec["config"] = {k: val for k, val in spec["config"].items() if k != "age_in_timeline"}
    assert Vocabulary(spec).config.age_in_timeline is False


def test_prompt_at_a_later_time_reads_the_current_band(tiny_vocab):
    """A prompt that keeps the whole record starts with the band of its first event, and the body
    says where the age moved on: the last age token before the prediction time is the band then."""
    v = tiny_vocab
    ages = [30.0, 36.0, 41.0, 47.0, 47.5]
    events = [Event(BIRTH + dt.timedelta(days=365.25 * a), "ICD10//I10") for a in ages]
    p = build_prompt(v, events, birth=BIRTH, statics=["SEX//F"], max_tokens=256)
    assert v.tokens[p.prefix[-1]] == "AGE//30-35"
    body_ages = [v.tokens[t] for t in p.body if v.kinds[t] == F.KIND_AGE]
    assert body_ages == ["AGE//35-40", "AGE//40-45", "AGE//45-50"]
    # Rollouts may write the next band themselves; AGE//UNK never appears inside a body.
    banned = set(body_banned_ids(v))
    assert v.age_unknown_id in banned and not banned & {int(i) for i in v.age_ids}
    assert set(body_banned_ids(_vocab(v, age_in_timeline=False))) >= {int(i) for i in v.age_ids}


def test_decode_dates_the_birth_from_a_band_change(tiny_vocab):
    """With a band change in the body the decoded birth lies within the gap around the change
    (here about 8 months), where the prefix band's middle alone would be 2.4 years off."""
    v = tiny_vocab
    ages = [40.1, 44.2, 44.9, 45.6, 46.0]
    enc = encode_events(v, _frame(ages))
    t0 = int(enc.times[0])
    ids = np.concatenate([enc.static, [v.age_token(int(enc.index["birth_time"][0]), t0)], enc.tokens])
    out, rep = decode(v, ids, start_time=t0, subject_id=1)
    assert rep["dropped_total"] == 0 and rep["age_tokens"] == 1
    birth = out.filter(pl.col(S.CODE) == S.BIRTH_CODE)[S.TIME][0]
    assert abs((birth - BIRTH).days) < 365.25 * 0.5
    # An older vocabulary counts an age token in the body as misplaced.
    _, rep = decode(_vocab(v, age_in_timeline=False), ids, start_time=t0)
    assert rep["dropped_misplaced_age"] == 1


def test_a_generated_band_that_contradicts_the_prefix_does_not_move_the_birth(tiny_vocab):
    """A cohort's prefix band is what was asked for; a model that writes an unrelated band in the
    body (here 40-45 after 60-65) leaves the birth where the prefix puts it."""
    v = tiny_vocab
    code = v.code_to_id["ICD10//I10"]
    ids = [v.age_ids[12], F.SOT_ID, code, int(v.gap_ids[-1]), int(v.age_ids[8]), code]
    out, rep = decode(v, ids, start_time=dt.datetime(2020, 1, 1))
    birth = out.filter(pl.col(S.CODE) == S.BIRTH_CODE)[S.TIME][0]
    assert 60 <= (dt.datetime(2020, 1, 1) - birth).days / 365.25 < 65
    assert rep["age_tokens_ignored"] == 1 and rep["dropped_total"] == 0
