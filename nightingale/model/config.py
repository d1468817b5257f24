"""ModelConfig: the shape of a Llama decoder, with named presets read from configs/model/*.yaml.

The presets are YAML so that Hydra composes them (`model=small`) and the library reads the very
same files (`ModelConfig.from_name("small")`), litgpt style. Derived quantities (parameter count,
FLOPs per token for MFU) are methods here, so they need no built model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from nightingale.config import build, check_ints

# configs/model/ of the checkout; NIGHTINGALE_CONFIGS points elsewhere (an installed package).
CONFIG_ROOT = Path(os.environ.get("NIGHTINGALE_CONFIGS", Path(__file__).resolve().parents[2] / "configs"))
PRESETS = ("tiny", "small", "base", "large")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A `LlamaForCausalLM` shape.

    hidden_size: model width d; n_layers: decoder blocks; n_heads: query heads (head_dim =
    hidden_size / n_heads); n_kv_heads: key/value heads (< n_heads: grouped-query attention);
    intermediate_size: SwiGLU width; context_length: tokens per training window (and the RoPE
    table length); vocab_size: None until bound to a fitted vocabulary (`with_vocab`), and when
    given in a preset it must equal the vocabulary's size.
    """

    name: str = "custom"
    hidden_size: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    intermediate_size: int = 384
    context_length: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        check_ints(self, ("hidden_size", "n_layers", "n_heads", "n_kv_heads", "intermediate_size", "context_length"),
                   "ModelConfig")
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"ModelConfig.hidden_size: {self.hidden_size} is not divisible by n_heads={self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_kv_heads: {self.n_kv_heads} must divide n_heads={self.n_heads}"
            )
        check_ints(self, ("vocab_size",), "ModelConfig", low=5, optional=True)
        if not self.rope_theta > 0 or not self.rms_norm_eps > 0 or not self.init_std > 0:
            raise ValueError("ModelConfig.rope_theta / rms_norm_eps / init_std: must be > 0")

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> ModelConfig:
        return build(cls, m, "ModelConfig")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset from configs/model/<name>.yaml (tiny, small, base, large), fields overridden."""
        path = CONFIG_ROOT / "model" / f"{name}.yaml"
        if not path.is_file():
            have = sorted(p.stem for p in (CONFIG_ROOT / "model").glob("*.yaml"))
            raise ValueError(f"ModelConfig.name: no preset {name!r} in {path.parent}; have {have}")
        return cls.from_mapping({**yaml.safe_load(path.read_text()), **overrides})

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        """This config bound to a vocabulary of `vocab_size` tokens; a preset that names a
        different size is an error (the model would index past, or waste, its embeddings)."""
        if self.vocab_size is not None and self.vocab_size != vocab_size:
            raise ValueError(
                f"model.vocab_size: config says {self.vocab_size} but the vocabulary/corpus has "
                f"{vocab_size} tokens; set model.vocab_size=null to take it from the vocabulary"
            )
        return dataclasses.replace(self, vocab_size=int(vocab_size))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- derived quantities -----------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    def _require_vocab(self) -> int:
        if self.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size: unset; bind a vocabulary with with_vocab(n)")
        return self.vocab_size

    def n_params(self, *, embeddings: bool = True) -> int:
        """Parameters of the built model (exactly `sum(p.numel())`), or without the token
        embedding/LM-head matrices (`embeddings=False`, the usual "non-embedding" count)."""
        d, f, L = self.hidden_size, self.intermediate_size, self.n_layers
        kv = self.n_kv_heads * self.head_dim
        per_layer = d * d * 2 + d * kv * 2 + 3 * d * f + 2 * d  # q,o; k,v; gate,up,down; 2 norms
        body = L * per_layer + d  # final norm
        if not embeddings:
            return body
        v = self._require_vocab()
        return body + v * d * (1 if self.tie_embeddings else 2)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12·L·H·Q·T.

        PaLM (Chowdhery et al. 2022, arXiv:2204.02311, Appendix B): N counts the parameters that
        take part in a matmul; here every parameter but the input embedding lookup (the LM head
        is a matmul, so tied weights are still counted once); 12·L·H·Q·T is the attention
        score and value matmuls with L layers, H heads, head dim Q and sequence length T.
        """
        v = self._require_vocab()
        t = self.context_length if seq_len is None else seq_len
        n = self.n_params(embeddings=False) + v * self.hidden_size  # + the LM head
        return 6.0 * n + 12.0 * self.n_layers * self.n_heads * self.head_dim * t
