"""Intrinsic quality on held-out subjects: loss/perplexity overall and by token family, next-token
top-k accuracy, next-*event* top-k accuracy (Foresight's precision@k), and the n-gram baselines.

Scored on one fixed set of held-out windows (`tokenizer/prepared.py` `fixed_windows`: the windows
the n-gram baselines use), every target of `model/loss.py`: each non-padding token after the first
of a window. A target's family is its token kind: `code`, `value_bin` (a numeric value's quantile bin),
`time_gap`, and `special` ([EOR]). Next-event accuracy counts only positions where the target is
a code token, the prediction restricted to code tokens: "is the next event among the model's k
most likely events?".
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from nightingale.evaluation.baselines import baseline_losses
from nightingale.evaluation.metrics import top_k_accuracy
from nightingale.model.folder import ModelDir
from nightingale.model.loss import target_logprobs
from nightingale.tokenizer import families as F
from nightingale.tokenizer.prepared import fixed_windows, load_prepared

log = logging.getLogger(__name__)
KS = (1, 5, 10)


@dataclasses.dataclass(frozen=True)
class IntrinsicConfig:
    """max_windows: held-out windows scored (None = one full epoch of the held-out split);
    batch_size: windows per forward pass; baselines: also score the unigram/bigram models."""

    max_windows: int | None = 512
    batch_size: int = 16
    baselines: bool = True
    seed: int = 0


def load_causal_lm(model_dir: str | Path, device: str = "cpu"):
    """The exported model as a float32 transformers causal LM in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()


def score_windows(model, windows: np.ndarray, kinds: np.ndarray, batch_size: int = 16,
                  device: str = "cpu") -> dict[str, Any]:
    """Per-target NLL sums by family and top-k hits over [n, L] windows (see the module docstring)."""
    import torch

    is_code = torch.as_tensor(kinds == F.KIND_CODE)
    nll_sum: dict[str, float] = {}
    count: dict[str, int] = {}
    tok_hits = {k: 0.0 for k in KS}
    ev_hits = {k: 0.0 for k in KS}
    n_tok = n_ev = 0
    with torch.inference_mode():
        for b in range(0, len(windows), batch_size):
            ids = torch.as_tensor(np.asarray(windows[b : b + batch_size], dtype=np.int64), device=device)
            logp, t = target_logprobs(model(input_ids=ids).logits.cpu(), ids.cpu())
            nll = -logp.gather(1, t[:, None])[:, 0].numpy()
            fam = kinds[t.numpy()]
            for kind in np.unique(fam):
                name = F.KIND_NAMES[int(kind)]
                nll_sum[name] = nll_sum.get(name, 0.0) + float(nll[fam == kind].sum())
                count[name] = count.get(name, 0) + int((fam == kind).sum())
            acc = top_k_accuracy(logp.numpy(), t.numpy(), KS)
            for k in KS:
                tok_hits[k] += acc[k] * len(t)
            n_tok += len(t)
            ev = is_code[t]
            if ev.any():
                code_scores = logp[ev].masked_fill(~is_code[None, :], -math.inf).numpy()
                acc = top_k_accuracy(code_scores, t[ev].numpy(), KS)
                for k in KS:
                    ev_hits[k] += acc[k] * int(ev.sum())
                n_ev += int(ev.sum())
    return {"nll_sum": nll_sum, "count": count, "token_hits": tok_hits, "tokens": n_tok,
            "event_hits": ev_hits, "events": n_ev}


def evaluate_intrinsic(model_dir: str | Path, data_dir: str | Path, cfg: IntrinsicConfig = IntrinsicConfig(),
                       device: str = "cpu") -> dict[str, Any]:
    """Held-out loss, perplexity (overall and by family), top-k accuracies and baseline losses of
    the model in `model_dir` on the prepared corpus `data_dir`."""
    ctx = ModelDir(model_dir).context_length
    data = load_prepared(data_dir, ctx)
    if data.held_out is None or len(data.held_out) == 0:
        raise ValueError(f"{data_dir}: no held_out split to evaluate on")
    windows = fixed_windows(data.held_out, data.vocab, ctx, cfg.max_windows, seed=cfg.seed)
    model = load_causal_lm(model_dir, device)
    s = score_windows(model, windows, data.vocab.kinds, cfg.batch_size, device)
    total = sum(s["count"].values())
    loss = sum(s["nll_sum"].values()) / total
    out: dict[str, Any] = {
        "held_out_subjects": len(data.held_out), "windows": len(windows), "targets": total,
        "loss": loss, "perplexity": math.exp(loss),
        "by_family": {name: {"targets": s["count"][name], "loss": s["nll_sum"][name] / s["count"][name],
                             "perplexity": math.exp(s["nll_sum"][name] / s["count"][name])}
                      for name in sorted(s["count"])},
        "next_token_top_k": {str(k): s["token_hits"][k] / max(s["tokens"], 1) for k in KS},
        "next_event_top_k": {str(k): s["event_hits"][k] / max(s["events"], 1) for k in KS},
        "next_events_scored": s["events"],
    }
    if cfg.baselines and data.train is not None:
        train = fixed_windows(data.train, data.vocab, ctx, None, seed=cfg.seed)
        tuning = (fixed_windows(data.tuning, data.vocab, ctx, None, seed=cfg.seed)
                  if data.tuning is not None else windows[:0])
        base = baseline_losses(train, tuning, windows, len(data.vocab))
        out["baselines"] = {"unigram_loss": base["unigram"], "bigram_loss": base["bigram"],
                            "bigram_lambda": base["bigram_lambda"]}
        out["loss_vs_bigram"] = loss / base["bigram"]
    return out
