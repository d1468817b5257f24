"""The one held-out loss: what every score of a model on windows counts as a target.

A target is every non-padding token after the first of a window (the first has nothing before
it in the window to be predicted from). The trainer's tuning and held-out losses, the intrinsic
evaluation and the n-gram baselines (`evaluation/baselines.py`, same targets) all score these.
"""

from __future__ import annotations

import torch

from nightingale.tokenizer import families as F


def target_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probabilities (float32, [k, V]) at the k targets of [n, L] windows `ids`,
    given the model's [n, L, V] logits, and the k target ids (row-major order)."""
    tgt = ids[:, 1:]
    keep = tgt != F.PAD_ID
    logp = torch.log_softmax(logits[:, :-1][keep].float(), dim=-1)
    return logp, tgt[keep]


def target_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (nats) of each target of [n, L] windows, [k] in row-major order."""
    logp, tgt = target_logprobs(logits, ids)
    return -logp.gather(1, tgt[:, None])[:, 0]
