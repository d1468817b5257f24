"""DeepSpeed around a plain model: config, optimizer, schedule, and gathering weights back.

The optimizer is a `torch.optim.AdamW` handed to `deepspeed.initialize` rather than a DeepSpeed
"optimizer" config entry, which would compile the fused Adam op (~100 s on a CPU machine) and is
no faster there; on GPUs `fused=True` gives the fused kernel anyway.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from nightingale.training.config import TrainConfig
from nightingale.training.schedule import cosine_with_warmup

log = logging.getLogger(__name__)


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict: batch sizes, clipping and precision from `cfg`, ZeRO stage and
    any extra entries from the `deepspeed` config group (which may not set an optimizer)."""
    extra = {k: v for k, v in dict(cfg.deepspeed).items() if k != "zero_stage"}
    if "optimizer" in extra:
        raise ValueError("deepspeed.optimizer: not supported; the trainer passes a torch AdamW (see engine.py)")
    zero = {**dict(extra.pop("zero_optimization", {}) or {}), "stage": cfg.zero_stage}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.windows_per_step(world_size),
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        **extra,
    }


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only; norms (and any bias) are not decayed (as in nanoGPT)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model: torch.nn.Module, cfg: TrainConfig, world_size: int):
    """(engine, optimizer, scheduler) from `deepspeed.initialize`."""
    import deepspeed

    use_fused = torch.cuda.is_available()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                  eps=1e-8, fused=use_fused)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                                   min_ratio=cfg.min_lr / cfg.lr)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, world_size),
    )
    return engine, optimizer, scheduler


def gathered_state_dict(engine, zero_stage: int, is_main: bool) -> dict[str, torch.Tensor] | None:
    """The full float32 state dict of the engine's module on rank 0 (None elsewhere). Under
    ZeRO-3 the parameter shards are gathered first (a collective: every rank must call this)."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()} if is_main else None
        return state
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()} if is_main else None
