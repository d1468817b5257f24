"""The model: Llama presets, construction and export. Knows nothing of DeepSpeed (see training).

`ModelConfig` and `PRESETS` are plain Python; construction and export import torch and
transformers (~4 s), so they load on first use: a process that only reads model settings (a
federated site answering a vocabulary query, a data-preparation job) never pays for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from nightingale.model.config import PRESETS, ModelConfig

if TYPE_CHECKING:
    from nightingale.model.build import build_model, llama_config
    from nightingale.model.export import config_hash, export_model

_LAZY = {"build_model": "build", "llama_config": "build", "config_hash": "export", "export_model": "export"}
__all__ = ["PRESETS", "ModelConfig", "build_model", "config_hash", "export_model", "llama_config"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"nightingale.model.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'nightingale.model' has no attribute {name!r}")
