"""Build a `transformers.LlamaForCausalLM` from a ModelConfig; single-device code, no DeepSpeed.

The special token ids come from the vocabulary's fixed layout (families.py): bos = [SOT],
eos = [EOR], pad = [PAD], so generation stops at end of record and vLLM reads them from
config.json as is.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nightingale.model.config import ModelConfig
from nightingale.tokenizer import families as F


def llama_config(cfg: ModelConfig, *, gradient_checkpointing: bool = False) -> LlamaConfig:
    """The standard Hugging Face `LlamaConfig` of `cfg` (vocab_size must be bound)."""
    vocab_size = cfg._require_vocab()
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.context_length,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        rms_norm_eps=cfg.rms_norm_eps,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        bos_token_id=F.SOT_ID,
        eos_token_id=F.EOR_ID,
        pad_token_id=F.PAD_ID,
        use_cache=not gradient_checkpointing,
    )


def build_model(
    cfg: ModelConfig, *, seed: int | None = None, gradient_checkpointing: bool = False
) -> LlamaForCausalLM:
    """A freshly initialised model, float32. `seed` makes the initial weights reproducible
    (every data-parallel rank must start from the same weights)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(cfg, gradient_checkpointing=gradient_checkpointing))
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
