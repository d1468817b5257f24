"""Export a trained model as the directory everything downstream consumes (transformers, vLLM).

Layout of the exported folder (written atomically: a reader sees nothing or all of it):
  config.json, generation_config.json   standard LlamaForCausalLM config; bos/eos/pad = [SOT]/[EOR]/[PAD]
  model.safetensors                     consolidated float32 weights
  tokenizer.json, tokenizer_config.json the WordLevel tokenizer (PreTrainedTokenizerFast / AutoTokenizer)
  vocabulary.json                       the Nightingale vocabulary spec (encode/decode of MEDS)
  model_card.json, README.md            data, steps, tokens seen, losses, config hash
Nothing here knows how the weights were trained: the caller passes a full (gathered) state dict.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nightingale.atomic import atomic_dir
from nightingale.model.build import build_model
from nightingale.model.config import ModelConfig
from nightingale.model.folder import CARD_JSON, CARD_MD
from nightingale.tokenizer.vocabulary import HF_TOKENIZER_FILE, Vocabulary

log = logging.getLogger(__name__)


def config_hash(cfg: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of a config as sorted-key JSON (stable across runs)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def export_model(
    state_dict: Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    vocab: Vocabulary,
    out_dir: str | Path,
    card: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = True,
) -> Path:
    """Write the model folder `out_dir` from a full state dict of `build_model(cfg)`.

    card: facts for the model card (data, steps, tokens seen, losses, config, ...); the model
    shape, parameter count and a hash of `card["config"]` (when present) are added here.
    """
    if cfg.vocab_size != len(vocab):
        raise ValueError(f"export: model vocab_size {cfg.vocab_size} != vocabulary size {len(vocab)}")
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(dict(state_dict), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"export: state dict does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model = model.float().eval()
    full_card = {
        "architecture": "LlamaForCausalLM",
        "model": cfg.to_dict(),
        "n_params": cfg.n_params(),
        "n_params_non_embedding": cfg.n_params(embeddings=False),
        "vocabulary_size": len(vocab),
        **dict(card or {}),
    }
    if "config" in full_card:
        full_card["config_hash"] = config_hash(full_card["config"])
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        vocab.save(tmp)  # vocabulary.json + tokenizer.json
        vocab.hf_tokenizer(tmp / HF_TOKENIZER_FILE).save_pretrained(tmp)
        (tmp / CARD_JSON).write_text(json.dumps(full_card, indent=2, sort_keys=True, default=str) + "\n")
        (tmp / CARD_MD).write_text(_card_markdown(full_card))
    log.info("exported %s (%.2fM parameters) to %s", cfg.name, cfg.n_params() / 1e6, out_dir)
    return out_dir


def _card_markdown(card: Mapping[str, Any]) -> str:
    losses = card.get("losses", {})
    lines = [
        f"# Nightingale {card['model'].get('name', 'model')}",
        "",
        "A Llama-architecture decoder over Nightingale patient-timeline tokens (MEDS events).",
        "",
        f"- parameters: {card['n_params']:,} ({card['n_params_non_embedding']:,} non-embedding)",
        f"- vocabulary: {card['vocabulary_size']} tokens (`vocabulary.json`, `tokenizer.json`)",
        f"- data: {card.get('data', 'unknown')}",
        f"- steps: {card.get('steps', 'unknown')}, tokens seen: {card.get('tokens_seen', 'unknown')}",
        f"- config hash: {card.get('config_hash', 'unknown')}",
    ]
    lines += [f"- loss/{k}: {v:.4f}" for k, v in losses.items() if isinstance(v, (int, float))]
    lines += ["", "Load with `transformers.AutoModelForCausalLM.from_pretrained(dir)`; full facts in "
              "`model_card.json`.", ""]
    return "\n".join(lines)
