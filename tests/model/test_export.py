"""Export: a folder that transformers loads as is (weights, config, tokenizer, card)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from nightingale.model import ModelConfig, build_model, export_model
from nightingale.tokenizer import families as F


@pytest.fixture(scope="module")
def exported(tiny_vocab, tmp_path_factory):
    cfg = ModelConfig.from_name("tiny", context_length=64).with_vocab(len(tiny_vocab))
    model = build_model(cfg, seed=1)
    out = tmp_path_factory.mktemp("export") / "model"
    card = {"steps": 7, "tokens_seen": 1234, "losses": {"train": 2.5}, "config": {"lr": 1e-3}}
    export_model(model.state_dict(), cfg, tiny_vocab, out, card)
    return out, model, cfg


def test_layout(exported):
    out, _, _ = exported
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "vocabulary.json", "model_card.json", "README.md", "generation_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (F.SOT_ID, F.EOR_ID, F.PAD_ID)
    card = json.loads((out / "model_card.json").read_text())
    assert card["steps"] == 7 and card["tokens_seen"] == 1234 and len(card["config_hash"]) == 16


def test_transformers_loads_and_generates(exported, tiny_vocab):
    out, model, cfg = exported
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.dtype == torch.float32
    ids = torch.tensor([[F.SOT_ID, 10, 11, 12]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits)
    gen = loaded.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape == (1, 9) and int(gen.max()) < len(tiny_vocab)
    for tok in (PreTrainedTokenizerFast.from_pretrained(out), AutoTokenizer.from_pretrained(out)):
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (F.SOT_ID, F.EOR_ID, F.PAD_ID)
        text = tiny_vocab.to_text(gen[0].tolist())
        assert tok(text, add_special_tokens=False)["input_ids"] == gen[0].tolist()


def test_wrong_state_dict_is_refused(tiny_vocab, tmp_path):
    cfg = ModelConfig.from_name("tiny").with_vocab(len(tiny_vocab))
    with pytest.raises(ValueError, match="does not fit the model"):
        export_model({"nonsense": torch.zeros(1)}, cfg, tiny_vocab, tmp_path / "m")
    assert not (tmp_path / "m").exists()
