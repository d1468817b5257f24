"""Vocabulary fit (train only), fallbacks, persistence and the Hugging Face round trip."""

from __future__ import annotations

import numpy as np
import pytest

from nightingale.tokenizer import TokenizerConfig, Vocabulary
from nightingale.tokenizer import families as F
from nightingale.tokenizer.vocabulary import EXACT, PARENT, UNKNOWN, UNKNOWN_FAMILY, quantile_edges


def test_fitted_on_train_only(tiny_vocab):
    assert "HELDOUT//ONLY" not in tiny_vocab.code_to_id
    assert "UNK//HELDOUT" not in tiny_vocab.token_to_id  # families come from train too
    assert tiny_vocab.resolve("HELDOUT//ONLY") == (F.UNK_ID, UNKNOWN)


def test_layout_and_static(tiny_vocab):
    v = tiny_vocab
    assert v.tokens[: len(F.SPECIAL_TOKENS)] == list(F.SPECIAL_TOKENS)
    assert v.is_static[v.code_to_id["SEX//F"]] and not v.is_static[v.code_to_id["ICD10//E11"]]
    assert "MEDS_BIRTH" not in v.code_to_id and "MEDS_DEATH" in v.code_to_id
    assert v.n_bins[v.code_to_id["LOINC//4548-4"]] == 10


def test_rare_codes_fall_back(tiny_vocab):
    v = tiny_vocab
    assert "ATC//A10BA02X" not in v.code_to_id  # below min_count
    assert v.resolve("ATC//A10BA02X") == (v.code_to_id["ATC//A10BA02"], PARENT)  # codes.parquet
    assert v.resolve("ICD10//E11.9") == (v.code_to_id["ICD10//E11"], PARENT)  # stem rule
    assert v.resolve("ICD10//Z99") == (v.token_to_id["UNK//ICD10"], UNKNOWN_FAMILY)
    assert v.resolve("ICD10//E11")[1] == EXACT


def test_rare_children_roll_up_into_parent():
    import polars as pl

    from nightingale.tokenizer.fit import STATS_SCHEMA

    stats = pl.DataFrame(
        [(f"ICD10//E11.{k}", 2, 0, 0, []) for k in range(5)], schema=STATS_SCHEMA, orient="row"
    )
    v = Vocabulary.fit(stats, TokenizerConfig(min_count=5))
    assert "ICD10//E11" in v.code_to_id and "ICD10//E11.1" not in v.code_to_id


def test_save_load_and_hf_round_trip(tiny_vocab, tmp_path):
    tiny_vocab.save(tmp_path)
    again = Vocabulary.load(tmp_path)
    assert again.tokens == tiny_vocab.tokens and again.spec == tiny_vocab.spec
    hf = again.hf_tokenizer(tmp_path / "tokenizer.json")
    ids = np.random.default_rng(0).integers(0, len(again), 500).tolist()
    assert hf(again.to_text(ids), add_special_tokens=False)["input_ids"] == ids
    assert hf.convert_ids_to_tokens(ids) == [again.tokens[i] for i in ids]
    assert hf.pad_token_id == F.PAD_ID and len(hf) == len(again)


def test_whitespace_codes_survive_hf(tmp_path):
    import polars as pl

    from nightingale.tokenizer.fit import STATS_SCHEMA

    stats = pl.DataFrame([("Blood Pressure Lying", 9, 0, 0, []), ("X//a b", 9, 0, 0, [])], schema=STATS_SCHEMA, orient="row")
    v = Vocabulary.fit(stats, TokenizerConfig(min_count=1))
    v.save(tmp_path)
    hf = v.hf_tokenizer(tmp_path / "tokenizer.json")
    ids = [v.code_to_id["Blood Pressure Lying"], v.code_to_id["X//a b"]]
    assert hf(v.to_text(ids), add_special_tokens=False)["input_ids"] == ids


@pytest.mark.parametrize(
    "field,value",
    [("min_count", 0), ("n_value_bins", 0), ("time_ladder", ["1h", "5m"]), ("time_ladder", ["5x"]), ("age_band_years", 0)],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TokenizerConfig(**{field: value})


def test_quantile_edges_are_deduplicated_data_values():
    vals = np.array([1, 1, 1, 1, 1, 1, 2, 3], dtype=np.float32).astype(np.float64)
    edges = quantile_edges(vals, 10)
    assert edges[0] == 1 and edges[-1] == 3 and all(b > a for a, b in zip(edges[1:], edges[2:]))
