"""Model presets: sizes, validation, FLOPs per token."""

from __future__ import annotations

import pytest

from nightingale.model import PRESETS, ModelConfig, build_model


@pytest.mark.parametrize(
    "name, vocab, lo, hi",
    [("tiny", 135, 0.5e6, 1.5e6), ("small", 1000, 20e6, 30e6), ("base", 16384, 100e6, 140e6),
     ("large", 16384, 0.9e9, 1.2e9)],
)
def test_preset_sizes(name, vocab, lo, hi):
    cfg = ModelConfig.from_name(name).with_vocab(vocab)
    assert cfg.name == name and lo <= cfg.n_params() <= hi
    assert cfg.n_params(embeddings=False) < cfg.n_params()


def test_presets_all_present():
    for name in PRESETS:
        ModelConfig.from_name(name)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_param_count_matches_built_model(name):
    cfg = ModelConfig.from_name(name).with_vocab(300)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params()
    assert model.config.bos_token_id == 2 and model.config.eos_token_id == 3 and model.config.pad_token_id == 0


def test_tied_embeddings_counted_once():
    cfg = ModelConfig.from_name("tiny", tie_embeddings=True).with_vocab(300)
    assert sum(p.numel() for p in build_model(cfg).parameters()) == cfg.n_params()


def test_flops_per_token_is_palm_formula():
    cfg = ModelConfig.from_name("tiny").with_vocab(135)
    n = cfg.n_params() - 135 * cfg.hidden_size  # all but the input embedding
    attn = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * cfg.context_length
    assert cfg.flops_per_token() == 6 * n + attn


@pytest.mark.parametrize(
    "override, field",
    [({"hidden_size": 100, "n_heads": 3}, "hidden_size"), ({"n_kv_heads": 3}, "n_kv_heads"),
     ({"n_layers": 0}, "n_layers"), ({"context_length": -1}, "context_length"), ({"bogus": 1}, "bogus")],
)
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_name("tiny", **override)


def test_unknown_preset():
    with pytest.raises(ValueError, match="no preset 'huge'"):
        ModelConfig.from_name("huge")


def test_vocab_size_mismatch_is_an_error():
    cfg = ModelConfig.from_name("tiny", vocab_size=500)
    with pytest.raises(ValueError, match="model.vocab_size: config says 500 but the vocabulary"):
        cfg.with_vocab(135)
    assert cfg.with_vocab(500).vocab_size == 500
