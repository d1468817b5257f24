"""A patient's timeline (MEDS-like events, sex, birth date) -> the token prompt a model continues.

The prompt has the layout of a training window (tokenizer/corpus.py): static tokens, the age band
at the window's first body token, then the body `[SOT] event ...` *without* the final `[EOR]`, so the
model continues the record after its last event. Encoding is the tokenizer's own vectorised
`encode_events` (codes outside the vocabulary fall back to parents/unknown tokens exactly as in
training). A body longer than the context keeps its most recent tokens, starting at an event.

Forecasts are anchored at the last event at or before the prediction time: events after it are
ignored, and horizons count from that event (the gap between the last event and a later
prediction time is not encoded, because in training a gap token is always followed by an event).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.data.codes import CodePattern
from nightingale.tokenizer import families as F
from nightingale.tokenizer.corpus import IndexedTokens, window_room
from nightingale.tokenizer.encode import US_PER_YEAR, encode_events
from nightingale.tokenizer.summary import history_summary
from nightingale.tokenizer.vocabulary import Vocabulary

EPOCH = dt.datetime(1970, 1, 1)


def to_us(t: dt.datetime | dt.date) -> int:
    """Microseconds since the epoch of a naive datetime or a date (time zones are dropped)."""
    if not isinstance(t, dt.datetime):
        t = dt.datetime(t.year, t.month, t.day)
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return (t - EPOCH) // dt.timedelta(microseconds=1)


@dataclasses.dataclass(frozen=True)
class Event:
    time: dt.datetime
    code: str
    numeric_value: float | None = None


@dataclasses.dataclass
class Prompt:
    """Token prompt of one patient. prefix: static + age tokens + the history summary of what was
    cut (tokenizer/summary.py; none when the whole record fits); body: [SOT]? events...;
    anchor_us: time of the last encoded event (horizons count from it); codes: how the
    patient's codes were resolved (exact/parent/unknown_family/unknown counts); birth_us: the
    birth time where known (continuations then get their age-band changes from the clock)."""

    prefix: list[int]
    body: list[int]
    anchor_us: int
    codes: Counter
    birth_us: int | None = None

    def age_years(self) -> float | None:
        """Age at the anchor, in years (None without a birth)."""
        return None if self.birth_us is None else (self.anchor_us - self.birth_us) / US_PER_YEAR

    @property
    def ids(self) -> list[int]:
        return self.prefix + self.body

    def window(self, extra: Sequence[int] = (), room: int | None = None) -> list[int]:
        """prefix + (body + extra), keeping the last `room - len(prefix)` body tokens."""
        body = list(self.body) + list(extra)
        if room is not None and len(self.prefix) + len(body) > room:
            body = body[len(self.prefix) + len(body) - room :]
        return self.prefix + body


def static_codes(sex: str | None, extra: Iterable[str] = (), sex_prefix: str = "SEX//") -> list[str]:
    """The static codes of a patient: `SEX//<sex>` (when given) then any extra static codes."""
    out = [f"{sex_prefix}{sex}"] if sex else []
    return out + [c for c in extra if c not in out]



def _body_start(vocab: Vocabulary, tokens: np.ndarray, n_static: int, max_tokens: int) -> int:
    """First body token kept so that static + age (+ the summary's room, when the record must be
    cut) + body fit in `max_tokens`: the most recent tokens, starting at an event (a code token),
    not inside one."""
    if len(tokens) <= max_tokens - n_static - 1:  # the whole record fits: no summary needed
        return 0
    room = window_room(vocab, max_tokens, n_static)
    if room < 2:
        raise ValueError(f"static: {n_static} static tokens (+ age and a {vocab.config.summary_tokens}-token "
                         f"history summary) leave no room in a {max_tokens}-token prompt")
    start = len(tokens) - room
    first_code = np.flatnonzero(vocab.kinds[tokens[start:]] == F.KIND_CODE)
    return start + (int(first_code[0]) if len(first_code) else 0)


def _prefix(vocab: Vocabulary, static: list[int], age: int, tokens: np.ndarray, start: int) -> list[int]:
    """static + age + the history summary of the body tokens cut (the training windows' rule)."""
    return static + [age] + [int(t) for t in history_summary(vocab, tokens[:start])]

def build_prompt(
    vocab: Vocabulary,
    events: Sequence[Event],
    *,
    birth: dt.datetime | dt.date | None = None,
    statics: Sequence[str] = (),
    prediction_time: dt.datetime | None = None,
    max_tokens: int,
) -> Prompt:
    """Encode one patient's events (any order; sorted here) into a Prompt of at most `max_tokens`.

    Raises ValueError (naming the field) when no event is at or before `prediction_time`, or when
    the static prefix alone does not fit.
    """
    evs = [e for e in events if prediction_time is None or to_us(e.time) <= to_us(prediction_time)]
    if not evs:
        raise ValueError("events: no event at or before prediction_time; a forecast needs at least one")
    rows = [(0, None, c, None) for c in statics]
    if birth is not None:
        rows.append((0, to_us(birth), S.BIRTH_CODE, None))
    rows += [(0, to_us(e.time), e.code, e.numeric_value) for e in evs]
    frame = pl.DataFrame(
        rows,
        schema={S.SUBJECT_ID: pl.Int64, S.TIME: pl.Int64, S.CODE: pl.String, S.NUMERIC_VALUE: pl.Float64},
        orient="row",
    ).with_columns(pl.col(S.TIME).cast(pl.Datetime("us")), pl.col(S.NUMERIC_VALUE).cast(pl.Float32))
    enc = encode_events(vocab, frame)
    tokens, times = enc.tokens.astype(np.int64), enc.times
    assert len(tokens) and tokens[-1] == F.EOR_ID, "encode_events ends every subject with [EOR]"
    tokens, times = tokens[:-1], times[:-1]
    static = [int(t) for t in enc.static]
    start = _body_start(vocab, tokens, len(static), max_tokens)
    birth_us = None if birth is None else to_us(birth)
    age = vocab.age_token(birth_us, int(times[start]))
    codes = Counter({k: v for k, v in enc.report.items() if k.startswith("codes_")})
    return Prompt(_prefix(vocab, static, age, tokens, start), [int(t) for t in tokens[start:]], int(times[-1]), codes,
                  birth_us)


def window_prompt(vocab: Vocabulary, static: Sequence[int], body: Sequence[int], max_tokens: int,
                  age_at: Callable[[int], int]) -> list[int]:
    """A generated timeline's next prompt, laid out like a training window: static tokens, the age
    band at the first kept body token (`age_at(start)`), the history summary of the body cut, then
    the most recent body tokens from an event on, all within `max_tokens`. Cohorts use it to go
    on generating past the context (a sliding window); a body that fits is kept whole."""
    tokens = np.asarray(body, dtype=np.int64)
    start = _body_start(vocab, tokens, len(static), max_tokens)
    return _prefix(vocab, [int(t) for t in static], age_at(start), tokens, start) + tokens[start:].tolist()


def resolve_outcome_codes(vocab: Vocabulary, codes: Sequence[str]) -> dict[str, list[int]]:
    """Token ids of outcome codes: an exact vocabulary code, or a prefix ending in ``*``
    (``ICD10//I2*``: every code token starting ``ICD10//I2``). Codes matching nothing map to []."""
    return {c: CodePattern(c).ids(vocab.code_to_id) for c in codes}


def body_banned_ids(vocab: Vocabulary) -> tuple[int, ...]:
    """Tokens that cannot appear inside a timeline body: [PAD], [SOT], AGE//UNK, static codes,
    unknown tokens (no model should invent an unknown code) and the age bands unless the
    vocabulary writes band changes into timelines. Banned while sampling continuations, so
    generated timelines decode cleanly."""
    kinds = vocab.kinds
    bad = (kinds == F.KIND_UNKNOWN) | vocab.is_static
    if not vocab.config.age_in_timeline:
        bad |= kinds == F.KIND_AGE
    bad[[F.PAD_ID, F.SOT_ID, vocab.age_unknown_id]] = True
    return tuple(int(i) for i in np.flatnonzero(bad))


def code_names(vocab: Vocabulary, ids: Iterable[int]) -> list[str]:
    return [vocab.codes[i] or vocab.tokens[i] for i in ids]


def as_events(rows: Iterable[Mapping]) -> list[Event]:
    """Events from mappings with time/code/numeric_value keys (request bodies, test fixtures)."""
    return [Event(r["time"], r["code"], r.get("numeric_value")) for r in rows]


def corpus_prompt(corpus: IndexedTokens, vocab: Vocabulary, subject_id: int, time_us: int, max_tokens: int) -> Prompt:
    """The Prompt of a subject of a token corpus (a TokenCorpus, or encoded events in memory) at `time_us`: the
    tokens known then (corpus.token_position), laid out like `build_prompt`'s (static, age band at
    the first kept body token, body without [EOR], cut to the most recent tokens at an event).
    Evaluation uses it on held-out subjects, so it runs the same rollouts as the API without
    re-encoding MEDS. Raises ValueError when no event of the subject is at or before `time_us`."""
    tokens, times = corpus.subject_tokens(subject_id)
    pos = int(np.searchsorted(times, int(time_us), side="right"))
    tokens, times = tokens[:pos].astype(np.int64), times[:pos]
    if len(tokens) and tokens[-1] == F.EOR_ID:
        tokens, times = tokens[:-1], times[:-1]
    if not (vocab.kinds[tokens] == F.KIND_CODE).any():
        raise ValueError(f"subject {subject_id}: no event at or before the prediction time")
    static = [int(t) for t in corpus.static_tokens(subject_id)]
    start = _body_start(vocab, tokens, len(static), max_tokens)
    row = corpus.row(subject_id)
    age = corpus.age_token(vocab, row, int(times[start]))
    return Prompt(_prefix(vocab, static, age, tokens, start), [int(t) for t in tokens[start:]], int(times[-1]),
                  Counter(), corpus.birth_us(row))


def age_changes(vocab: Vocabulary, years: float | None, span_s: float | None) -> list[tuple[float, int]]:
    """The age-band changes of a patient `years` old now: (seconds from now, band token id) for
    each band after the current one, up to the open last band and `span_s`. Empty where the
    vocabulary keeps no ages in timelines or the age is unknown (age_clock.AgeClock writes them)."""
    if not vocab.config.age_in_timeline or years is None:
        return []
    w = vocab.config.age_band_years
    k0 = min(int(years // w), len(vocab.age_ids) - 1)
    out = []
    for k in range(k0 + 1, len(vocab.age_ids)):
        t = (k * w - years) * US_PER_YEAR / 1e6
        if span_s is not None and t > span_s:
            break
        out.append((t, int(vocab.age_ids[k])))
    return out


def changes_ahead(vocab: Vocabulary, changes: Sequence[tuple[float, int]], generated: Sequence[int],
                  elapsed_s: float) -> tuple[tuple[float, int], ...]:
    """The changes of `changes` a continuation still has to write, timed from its own start: those
    after the last band already in `generated`, less the `elapsed_s` the generated tokens took."""
    ages = [t for t in generated if vocab.kinds[t] == F.KIND_AGE]
    last = vocab.age_lower_years[ages[-1]] if ages else -1.0
    return tuple((t - elapsed_s, a) for t, a in changes if vocab.age_lower_years[a] > last)
