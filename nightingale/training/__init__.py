"""Pretraining on DeepSpeed: the loop, checkpoints, metrics, baselines. Wraps `nightingale.model`."""

from nightingale.training.config import TrainConfig

__all__ = ["TrainConfig"]
