"""The fast encoding path gives the same tokens as the plain one: a chunk encoded once and cut by
split, the Arrow code lookup, and the chunk size (issue 3, throughput goal)."""

from __future__ import annotations

import filecmp

import numpy as np
import polars as pl
import pyarrow as pa

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.tokenizer import TokenizerConfig
from nightingale.tokenizer import prepare as P
from nightingale.tokenizer.encode import CodeLookup, encode_events

from .conftest import make_events, write_dataset


def test_select_equals_encoding_those_subjects_alone(tiny_meds, tiny_vocab):
    events = MEDSDataset(tiny_meds).scan().collect()
    whole = encode_events(tiny_vocab, events)
    ids = whole.index[S.SUBJECT_ID].to_numpy()
    keep = np.random.default_rng(0).random(len(ids)) < 0.5
    part = whole.select(keep)
    alone = encode_events(tiny_vocab, events.filter(pl.col(S.SUBJECT_ID).is_in(ids[keep].tolist())))
    assert np.array_equal(part.tokens, alone.tokens) and np.array_equal(part.times, alone.times)
    assert np.array_equal(part.static, alone.static) and part.index.equals(alone.index)


def test_arrow_lookup_equals_python_lookup(tiny_vocab):
    codes = ["ICD10//E11", "ICD10//E11.9", "NOPE//1", S.BIRTH_CODE, "SEX//F", "ICD10//E11"]
    ids, hows = CodeLookup(tiny_vocab)(codes)
    lookup = CodeLookup(tiny_vocab)
    lookup.lookup_arrow(pa.array(codes[:2]))  # a second call meets known and new codes
    a_ids, a_hows = lookup.lookup_arrow(pa.array(codes))
    assert np.array_equal(ids, a_ids) and np.array_equal(hows, a_hows)


def test_chunk_size_and_mixed_split_shards_do_not_change_the_corpus(tmp_path):
    # One shard holding all three splits, so chunks are cut by split after encoding.
    events = make_events(12, seed=7)
    root = tmp_path / "meds"
    splits = pl.DataFrame({S.SUBJECT_ID: list(range(1, 13)), S.SPLIT: (list(S.SPLITS) * 4)})
    write_dataset(root, {"train": events})
    splits.write_parquet(root / S.SPLITS_FILE)
    outs = []
    for batch_rows in (7, 1 << 20):
        out = tmp_path / f"prep{batch_rows}"
        cfg = P.PrepareConfig(root, out, TokenizerConfig(min_count=1), batch_rows=batch_rows, show_progress=False)
        report = P.prepare(cfg)
        assert {k: v["subjects"] for k, v in report["splits"].items()} == {s: 4 for s in S.SPLITS}
        outs.append(out / "corpus")
    for split in S.SPLITS:
        for name in ("tokens.bin", "times.bin", "static.bin"):
            assert filecmp.cmp(outs[0] / split / name, outs[1] / split / name, shallow=False)
        assert pl.read_parquet(outs[0] / split / "index.parquet").equals(pl.read_parquet(outs[1] / split / "index.parquet"))
