"""TrainConfig: every knob of a pretraining run, validated before any process group starts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nightingale.config import check_choice, check_fields, check_ints, field_names
from nightingale.model.config import ModelConfig

PRECISIONS = ("fp32", "bf16")
WANDB_MODES = ("online", "offline", "disabled")
ZERO_STAGES = (0, 1, 2, 3)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A run. Units: steps are optimizer steps; batch sizes are windows of context_length tokens.

    data_dir: the preparation stage's out_dir (holds vocab/ and corpus/{train,tuning,held_out}/).
    run_dir: checkpoints/, metrics.jsonl, config.yaml, wandb/; a rerun resumes from it.
    export_dir: the model folder written at the end (None: <run_dir>/model).
    micro_batch_size: rows per rank per forward; grad_accum: micro-batches per step, so a step
        computes micro_batch_size * grad_accum * world_size rows of context_length positions.
    pack: a row holds as many whole windows as fit, each attending only to itself
        (training/data.py StepBatches), rather than one right-padded window.
    lr, min_lr, warmup_steps: linear warm-up to lr, then cosine decay to min_lr at max_steps.
    eval_every / eval_windows: tuning-split loss every N steps over a fixed set of windows.
    checkpoint_every / keep_checkpoints: periodic checkpoints, the latest k kept.
    peak_flops: peak FLOP/s of one device for MFU; None looks the device up (GPUs) or skips MFU.
    zero_stage, deepspeed: ZeRO stage and extra DeepSpeed config entries (configs/deepspeed/).
    """

    data_dir: Path
    run_dir: Path
    model: ModelConfig = ModelConfig()
    export_dir: Path | None = None
    seed: int = 0
    max_steps: int = 100
    micro_batch_size: int = 8
    grad_accum: int = 1
    pack: bool = True
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 10
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    precision: str = "fp32"
    activation_checkpointing: bool = False
    zero_stage: int = 2
    deepspeed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eval_every: int = 50
    eval_windows: int = 64
    log_every: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    verify_checksums: bool = True
    peak_flops: float | None = None
    wandb_mode: str = "offline"
    wandb_project: str = "nightingale"
    wandb_name: str | None = None
    progress: bool = True
    export: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if self.export_dir is not None:
            object.__setattr__(self, "export_dir", Path(self.export_dir))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        check_ints(self, ("max_steps", "micro_batch_size", "grad_accum", "eval_every", "eval_windows",
                          "log_every", "checkpoint_every", "keep_checkpoints"), "train")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"train.warmup_steps: an integer in [0, max_steps={self.max_steps}], got {self.warmup_steps!r}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"train.lr / train.min_lr: need lr > 0 and 0 <= min_lr <= lr, got {self.lr}, {self.min_lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas: two numbers in [0, 1), got {self.betas!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("train.weight_decay / train.grad_clip: must be >= 0 (grad_clip 0 = off)")
        if not isinstance(self.pack, bool):
            raise ValueError(f"train.pack: true or false, got {self.pack!r}")
        check_choice("train.precision", self.precision, PRECISIONS)
        check_choice("deepspeed.zero_stage", self.zero_stage, ZERO_STAGES)
        check_choice("wandb.mode", self.wandb_mode, WANDB_MODES)
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ValueError(f"train.peak_flops: null or > 0 FLOP/s, got {self.peak_flops!r}")

    @property
    def model_dir(self) -> Path:
        return self.export_dir if self.export_dir is not None else self.run_dir / "model"

    def windows_per_step(self, world_size: int) -> int:
        return self.micro_batch_size * self.grad_accum * world_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        d["deepspeed"] = dict(self.deepspeed)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> TrainConfig:
        """From a plain mapping (Hydra's resolved config, flattened by train/train.py)."""
        check_fields(m, field_names(cls), "TrainConfig")
        model = m.get("model", ModelConfig())
        if isinstance(model, str):
            model = ModelConfig.from_name(model)
        elif isinstance(model, Mapping):
            model = ModelConfig.from_mapping(model)
        return cls(**{**m, "model": model})
