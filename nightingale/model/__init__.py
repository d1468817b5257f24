"""The model: Llama presets, construction and export. Knows nothing of DeepSpeed (see training)."""

from nightingale.model.build import build_model, llama_config
from nightingale.model.config import PRESETS, ModelConfig
from nightingale.model.export import config_hash, export_model

__all__ = ["PRESETS", "ModelConfig", "build_model", "config_hash", "export_model", "llama_config"]
