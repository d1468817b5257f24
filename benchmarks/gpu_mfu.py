"""Training tokens/s and MFU of the ~120M `base` preset on one GPU, in bf16. Self-contained:
needs only torch and transformers (no DeepSpeed, no vLLM, no nightingale), so it can be copied
to a GPU box as is.

    python benchmarks/gpu_mfu.py                         # one CUDA GPU, bf16 autocast, compiled
    python benchmarks/gpu_mfu.py --no-compile --micro 8
    python benchmarks/gpu_mfu.py --device cpu --steps 2  # smoke test of the script itself

MFU = achieved model FLOP/s / peak dense bf16 FLOP/s, with model FLOPs per token = 6N + 12·L·H·Q·T
(PaLM, Chowdhery et al. 2022, arXiv:2204.02311, App. B; N = parameters in matmuls, i.e. all but
the input embedding). The shape below mirrors configs/model/base.yaml.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
            intermediate_size=2304)
# Peak dense bf16 tensor FLOP/s by device-name substring (vendor data sheets); first match wins.
PEAK_BF16 = (("GH200", 989e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12))


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((p for key, p in PEAK_BF16 if key in name), None)


def flops_per_token(cfg: LlamaConfig, n_params: int, seq: int) -> float:
    n = n_params - cfg.vocab_size * cfg.hidden_size  # minus the input embedding lookup
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return 6.0 * n + 12.0 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * seq


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--micro", type=int, default=16, help="sequences per step")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--param-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="fp32 weights + bf16 autocast (mixed precision), or weights stored in bf16")
    args = p.parse_args()
    if args.device == "cpu":  # a smoke test of the script: short, fp32 (CPU bf16 is emulated, slow)
        args.warmup, args.context, args.micro = 0, min(args.context, 128), 1

    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = LlamaConfig(vocab_size=args.vocab, max_position_embeddings=args.context, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                      attn_implementation="sdpa", use_cache=False, **BASE)
    model = LlamaForCausalLM(cfg).to(device)
    if args.param_dtype == "bf16":
        model = model.to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")
    fwd = model if args.no_compile or device.type != "cuda" else torch.compile(model)
    x = torch.randint(4, args.vocab, (args.micro, args.context), device=device)

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()  # .item() syncs
    elapsed = time.perf_counter() - t0
    tps = args.steps * args.micro * args.context / elapsed
    name, peak = peak_flops(device)
    fpt = flops_per_token(cfg, n_params, args.context)
    print(json.dumps({
        "device": name, "params": n_params, "context": args.context, "micro": args.micro,
        "compiled": fwd is not model, "param_dtype": args.param_dtype, "tokens_per_s": round(tps, 1), "flops_per_token": fpt,
        "achieved_tflops": round(tps * fpt / 1e12, 2), "peak_tflops": peak and peak / 1e12,
        "mfu": round(tps * fpt / peak, 4) if peak else None, "loss": round(loss, 3),
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }, indent=2))


if __name__ == "__main__":
    main()
