"""The prepare stage: shard by shard, resumable, one shard alone, merge; Hydra entry point; MIMIC."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nightingale.tokenizer import TokenizerConfig, Vocabulary
from nightingale.tokenizer import prepare as P
from nightingale.tokenizer.corpus import TokenCorpus

REPO = Path(__file__).resolve().parents[2]


def _cfg(meds, out):
    return P.PrepareConfig(meds_dir=meds, out_dir=out, tokenizer=TokenizerConfig(min_count=3), show_progress=False)


def test_stage_resumes_and_runs_one_shard(tiny_meds, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    prep = P.Preparer(_cfg(tiny_meds, out))
    prep.run("fit")
    assert prep.run("encode", shard="train/0")["report"]["subjects_encoded"] == 30
    with pytest.raises(RuntimeError, match="not encoded"):
        prep.run("merge")
    calls = []
    real = P.encode_arrays
    monkeypatch.setattr(P, "encode_arrays", lambda v, ev: calls.append(1) or real(v, ev))
    report = prep.run("all")
    assert calls and prep.encode_shard("train/0") is None  # finished shards are not redone
    n_calls = len(calls)
    P.Preparer(_cfg(tiny_meds, out)).run("all")
    assert len(calls) == n_calls
    assert report["splits"]["train"]["subjects"] == 30 and report["counts"]["codes_unknown"] == 1
    c = TokenCorpus(out / "corpus" / "held_out")
    assert len(c) == 5 and c.lengths.sum() == report["splits"]["held_out"]["tokens"]
    assert json.loads((out / P.REPORT_FILE).read_text())["vocabulary_size"] == len(Vocabulary.load(out / "vocab"))


def test_stale_shard_is_redone_after_refit(tiny_meds, tmp_path):
    out = tmp_path / "prep"
    prep = P.Preparer(_cfg(tiny_meds, out))
    prep.run("all")
    assert prep.shard_done("tuning/0")
    (out / "vocab" / "vocabulary.json").write_text((out / "vocab" / "vocabulary.json").read_text() + " ")
    assert not prep.shard_done("tuning/0")


def test_bad_stage_and_shard(tiny_meds, tmp_path):
    prep = P.Preparer(_cfg(tiny_meds, tmp_path / "p"))
    with pytest.raises(ValueError, match="stage"):
        prep.run("nope")
    prep.run("fit")
    with pytest.raises(ValueError, match="shard"):
        prep.run("encode", shard="train/99")


def test_hydra_entry_point(tiny_meds, tmp_path):
    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(REPO / "data_prep"))
    try:
        import prepare as entry
    finally:
        sys.path.pop(0)
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("prepare", overrides=["data=meds", f"data.path={tiny_meds}", "data.strict_codes=false", f"out_dir={tmp_path}/o", "progress=false", "tokenizer.min_count=3"])
    report = entry.run(cfg)
    assert report["splits"]["tuning"]["subjects"] == 5


@pytest.mark.shared_data
def test_mimic_demo_prepares(mimic_demo, tmp_path):
    report = P.prepare(P.PrepareConfig(meds_dir=mimic_demo, out_dir=tmp_path / "m", show_progress=False))
    assert report["counts"]["subjects_encoded"] == 100
    assert 1000 < report["vocabulary_size"] < 10000
    vocab = Vocabulary.load(tmp_path / "m" / "vocab")
    hf = vocab.hf_tokenizer(tmp_path / "m" / "vocab" / "tokenizer.json")
    c = TokenCorpus(tmp_path / "m" / "corpus" / "train")
    ids = c.tokens[:2000].tolist()
    assert hf(vocab.to_text(ids), add_special_tokens=False)["input_ids"] == ids
