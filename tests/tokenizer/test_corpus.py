"""Corpus windows (static + age prefix), resumable sampling, and time -> token position."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.tokenizer import families as F
from nightingale.tokenizer.corpus import (
    CorpusWriter,
    IndexedTokens,
    TokenCorpus,
    WindowSampler,
    merge_split,
)
from nightingale.tokenizer.encode import encode_events
from nightingale.tokenizer.summary import history_summary
from nightingale.tokenizer.vocabulary import Vocabulary

from .conftest import make_events


@pytest.fixture(scope="module")
def corpus(tiny_vocab, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    parts = []
    for k, seed in enumerate((5, 6)):  # two shards, merged
        enc = encode_events(tiny_vocab, make_events(4, seed=seed, start_id=10 * (k + 1)))
        w = CorpusWriter(root / f"part{k}", tiny_vocab.token_dtype)
        w.append(enc)
        w.close()
        parts.append(root / f"part{k}")
    merge_split(parts, root / "train")
    return TokenCorpus(root / "train")


def test_merge_keeps_every_subject(corpus, tiny_vocab):
    assert corpus.subject_ids.tolist() == [10, 11, 12, 13, 20, 21, 22, 23]
    toks, times = corpus.subject_tokens(20)
    assert toks[0] == F.SOT_ID and toks[-1] == F.EOR_ID and np.all(np.diff(times) >= 0)
    assert corpus.static_tokens(21).tolist() == [tiny_vocab.code_to_id["SEX//M"], tiny_vocab.code_to_id["ETHNICITY//White"]]


def with_summary(vocab: Vocabulary, k: int) -> Vocabulary:
    """The same vocabulary with a k-token history summary (small, to fit these tiny windows)."""
    return Vocabulary({**vocab.spec, "config": {**vocab.spec["config"], "summary_tokens": k}})


@pytest.mark.parametrize("k", [0, 4])
def test_window_prefix_summary_and_padding(corpus, tiny_vocab, k):
    v = with_summary(tiny_vocab, k)
    sampler = WindowSampler(corpus, v, context_length=20, seed=3)
    seen = summarised = 0
    for _ in range(len(sampler)):
        w = sampler.next()
        ids, row = w["input_ids"], corpus.row(w[S.SUBJECT_ID])
        st = corpus.static_tokens(w[S.SUBJECT_ID])
        assert ids[: len(st)].tolist() == st.tolist()
        r0 = corpus.offsets[row]
        t = int(corpus.times[r0 + w["start"]])
        assert ids[len(st)] == v.age_token(int(corpus.birth[row]), t)
        # then what fell out of the window: distinct codes without values, most recent last
        earlier = np.asarray(corpus.tokens[r0 : r0 + w["start"]], dtype=np.int64)
        want = history_summary(v, earlier)
        assert len(want) <= k and (k or not len(want))
        assert ids[len(st) + 1 : len(st) + 1 + len(want)].tolist() == want.tolist()
        assert set(want.tolist()) <= set(earlier.tolist()) and not v.is_static[want].any()
        assert (v.n_bins[want] == 0).all()
        if len(want):
            last_seen = [int(np.flatnonzero(earlier == c).max()) for c in want]
            assert last_seen == sorted(last_seen)
        summarised += len(want)
        seen += w["n_tokens"] - len(st) - 1 - len(want)
    assert seen == corpus.lengths.sum()  # an epoch covers every body token exactly once
    assert (summarised > 0) == (k > 0)


def test_sampler_resumes_exactly(corpus, tiny_vocab):
    tiny_vocab = with_summary(tiny_vocab, 4)
    a = WindowSampler(corpus, tiny_vocab, context_length=16, seed=7)
    first = [a.next()["input_ids"] for _ in range(len(a) + 5)]  # crosses an epoch boundary
    b = WindowSampler(corpus, tiny_vocab, context_length=16, seed=7)
    for _ in range(len(b) - 3):
        b.next()
    state = b.state_dict()
    c = WindowSampler(corpus, tiny_vocab, context_length=16, seed=7)
    c.load_state_dict(state)
    rest = [c.next()["input_ids"] for _ in range(8)]
    assert all(np.array_equal(x, y) for x, y in zip(first[len(b) - 3 :], rest))


def test_context_too_short_is_rejected(corpus, tiny_vocab):
    with pytest.raises(ValueError, match="context_length"):
        WindowSampler(corpus, tiny_vocab, context_length=3)


def test_token_position(corpus):
    toks, times = corpus.subject_tokens(11)
    t = int(times[len(times) // 2])
    pos = corpus.token_position(11, t)
    assert times[pos - 1] <= t and (pos == len(times) or times[pos] > t)
    assert corpus.token_position(11, int(times[0]) - 1) == 0
    assert corpus.token_position(11, np.datetime64(int(times[-1]), "us")) == len(times)


def test_memory_and_disk_read_alike_and_a_missing_birth_is_unknown(tiny_vocab, tmp_path):
    """IndexedTokens over an in-memory Encoded (population forecasts) reads what the memory-mapped
    corpus reads; a subject without MEDS_BIRTH has no birth time and the AGE//UNK band."""
    events = make_events(3, seed=9, start_id=1)
    events = events.filter(~((pl.col(S.SUBJECT_ID) == 2) & (pl.col(S.CODE) == S.BIRTH_CODE)))
    enc = encode_events(tiny_vocab, events)
    w = CorpusWriter(tmp_path / "part", tiny_vocab.token_dtype)
    w.append(enc)
    w.close()
    merge_split([tmp_path / "part"], tmp_path / "train")
    disk, memory = TokenCorpus(tmp_path / "train"), IndexedTokens(enc.index, enc.tokens, enc.times, enc.static, "memory")
    t = int(events[S.TIME].drop_nulls().max().timestamp() * 1e6)
    for s in (1, 2, 3):
        for a, b in zip(disk.subject_tokens(s), memory.subject_tokens(s)):
            assert a.tolist() == b.tolist()
        assert disk.static_tokens(s).tolist() == memory.static_tokens(s).tolist()
        assert disk.birth_us(disk.row(s)) == memory.birth_us(memory.row(s))
    assert disk.birth_us(disk.row(2)) is None
    assert disk.age_token(tiny_vocab, disk.row(2), t) == tiny_vocab.token_to_id[F.AGE_UNKNOWN]
    born = disk.birth_us(disk.row(1))
    assert isinstance(born, int) and disk.age_token(tiny_vocab, disk.row(1), t) == tiny_vocab.age_token(born, t)
    with pytest.raises(KeyError, match="subject 99 is not in corpus memory"):
        memory.row(99)
