"""Time-gap tokens decode to the mean training gap of their rung, so decoded time keeps pace with
real time on held-out data (the rollout clock and MEDS decoding both read `gap_decode_s`)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.data.simulator import SimulatorConfig, simulate
from nightingale.tokenizer import Vocabulary
from nightingale.tokenizer import families as F
from nightingale.tokenizer.config import TokenizerConfig
from nightingale.tokenizer.decode import decode
from nightingale.tokenizer.encode import encode_events
from nightingale.tokenizer.fit import (
    dataset_parents,
    fit_gap_decode_for_dataset,
    fit_stats_for_dataset,
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> MEDSDataset:
    out = tmp_path_factory.mktemp("gaps") / "meds"
    simulate(SimulatorConfig(subjects=900, shard_size=300, seed=5), out, workers=1)
    return MEDSDataset(out)


def _elapsed_ratio(vocab: Vocabulary, ds: MEDSDataset) -> float:
    """Decoded / true elapsed time over the held-out subjects' encoded timelines."""
    held = ds.subjects(S.HELD_OUT)
    events = ds.scan().filter(pl.col(S.SUBJECT_ID).is_in(held.implode())).collect()
    enc = encode_events(vocab, events, dataset_parents(ds))
    decoded = true = 0.0
    for off, n in enc.index.select("offset", "length").iter_rows():
        toks, times = enc.tokens[off:off + n], enc.times[off:off + n]
        decoded += float(vocab.gap_decode_s[toks.astype(np.int64)].sum())
        true += (times.max() - times.min()) / 1e6
    assert true > 3.0e8  # years of follow-up: a figure that means something
    return decoded / true


def test_fitted_gap_values_keep_pace_with_real_time_and_midpoints_do_not(sim):
    cfg = TokenizerConfig()
    stats = fit_stats_for_dataset(sim, cfg)
    fitted = Vocabulary.fit(stats, cfg, dataset_parents(sim), fit_gap_decode_for_dataset(sim, cfg))
    midpoint = Vocabulary.fit(stats, cfg, dataset_parents(sim))
    ratio_fitted, ratio_mid = _elapsed_ratio(fitted, sim), _elapsed_ratio(midpoint, sim)
    assert abs(ratio_fitted - 1) <= 0.02, ratio_fitted
    assert ratio_mid > 1.03, ratio_mid  # what the midpoints did: a clock that runs fast
    # each rung's value lies inside its rung; the top rung decodes to exactly its length
    lo = np.asarray(cfg.ladder_seconds())
    vals = fitted.gap_decode_s[fitted.gap_ids]
    assert (vals[:-1] >= lo[:-1]).all() and (vals[:-1] < lo[1:]).all() and vals[-1] == lo[-1]


def test_saved_vocabulary_keeps_the_fitted_values_and_decode_uses_them(sim, tmp_path):
    cfg = TokenizerConfig()
    gaps = fit_gap_decode_for_dataset(sim, cfg)
    vocab = Vocabulary.fit(fit_stats_for_dataset(sim, cfg), cfg, dataset_parents(sim), gaps)
    vocab.save(tmp_path)
    again = Vocabulary.load(tmp_path)
    assert np.array_equal(again.gap_decode_s, vocab.gap_decode_s)
    month = vocab.token_to_id[F.TIME_GAP_PREFIX + "1mo"]
    frame, _ = decode(vocab, [F.SOT_ID, month, vocab.code_to_id[S.DEATH_CODE]], start_time=0)
    assert frame[S.TIME].cast(pl.Int64)[0] == round(gaps[cfg.time_ladder.index("1mo")] * 1e6)
    bad = dict(vocab.spec, gap_decode_s=[1.0] * len(gaps))  # outside their rungs
    with pytest.raises(ValueError, match="gap_decode_s"):
        Vocabulary(bad)
