"""Training data: per-rank batches of windows from the prepared corpus (`tokenizer/prepared.py`).

Every rank holds the same seeded `WindowSampler` and draws the whole step's windows, keeping only
its own slice. Windows are cheap (memory-mapped slices) next to a forward pass, and it makes the
sampler state identical on all ranks: one state to checkpoint, and a resume is exact whatever the
world size of the restarted run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from nightingale.tokenizer import families as F
from nightingale.tokenizer.corpus import PackedSampler, WindowSampler

log = logging.getLogger(__name__)
IGNORE_INDEX = -100  # transformers' ignore index: padding is never a target


def to_batch(windows: np.ndarray, device: torch.device, positions: np.ndarray | None = None) -> dict[str, Any]:
    """input_ids and labels (padding -> IGNORE_INDEX) of [batch, context_length] rows. Rows are
    right-padded and attention is causal, so real tokens never attend to padding.

    positions: packed rows' position ids (`StepBatches`), restarting at 0 where each window
    starts; transformers then attends within each window only (a block-diagonal causal mask),
    and a window's first token is no target (nothing before it in the row is its record). It
    does so only without a KV cache, so packed batches turn the cache off."""
    ids = torch.as_tensor(np.asarray(windows, dtype=np.int64))
    labels = ids.masked_fill(ids == F.PAD_ID, IGNORE_INDEX)
    batch = {"input_ids": ids.to(device)}
    if positions is not None:
        pos = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        labels = labels.masked_fill(pos == 0, IGNORE_INDEX)
        batch["position_ids"] = pos.to(device)
        batch["use_cache"] = False
    batch["labels"] = labels.to(device)
    return batch


class StepBatches:
    """Rows of one optimizer step for one rank: `grad_accum` micro-batches of `micro` rows, each
    a (ids, position ids) pair of [micro, context_length] arrays.

    From a `WindowSampler` a row is one window, right-padded. From a `PackedSampler` a row holds
    several whole windows back to back, each with positions from 0 (see `to_batch`): a record
    shorter than the context then costs its own length rather than a full context of padding,
    so a step of the same compute sees more tokens."""

    def __init__(self, sampler: WindowSampler, micro: int, grad_accum: int, rank: int, world: int):
        self.sampler, self.micro, self.accum, self.rank, self.world = sampler, micro, grad_accum, rank, world

    def _row(self) -> tuple[np.ndarray, np.ndarray]:
        ctx = self.sampler.context_length
        if isinstance(self.sampler, PackedSampler):
            windows = self.sampler.next_row()
        else:
            w = self.sampler.next()["input_ids"]
            windows = [w[w != F.PAD_ID]]
        ids, pos, used = np.full(ctx, F.PAD_ID, np.int64), np.zeros(ctx, np.int64), 0
        for w in windows:
            ids[used : used + len(w)], pos[used : used + len(w)] = w, np.arange(len(w))
            used += len(w)
        if used < ctx:  # padding continues the last window's positions (no window of its own)
            pos[used:] = (pos[used - 1] + 1 if used else 0) + np.arange(ctx - used)
        return ids, pos

    def next(self) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
        """This rank's micro-batches and the non-padding tokens of the whole step (all ranks)."""
        n = self.micro * self.accum * self.world
        rows = [self._row() for _ in range(n)]
        ids, pos = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
        tokens = int((ids != F.PAD_ID).sum())
        # Global layout [accum, world, micro]: rank r takes [:, r] (a fixed, world-aware split).
        ctx = ids.shape[1]
        mine_ids = ids.reshape(self.accum, self.world, self.micro, ctx)[:, self.rank]
        mine_pos = pos.reshape(self.accum, self.world, self.micro, ctx)[:, self.rank]
        return list(zip(mine_ids, mine_pos)), tokens
