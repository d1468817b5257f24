"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (as in nanoGPT, Chinchilla)."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based).

    Steps 0..warmup-1 ramp linearly to 1 (step 0 already trains, at 1/warmup); then a half
    cosine falls to `min_ratio` at `max_steps`, where it stays.

    >>> [round(lr_factor(s, warmup_steps=2, max_steps=6, min_ratio=0.1), 3) for s in range(7)]
    [0.5, 1.0, 1.0, 0.868, 0.55, 0.232, 0.1]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(max_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, max_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` over `lr_factor`; its state (the step count) is checkpointed with the engine."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, warmup_steps=warmup_steps, max_steps=max_steps, min_ratio=min_ratio),
    )
