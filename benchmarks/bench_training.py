"""Training throughput: our DeepSpeed engine (ZeRO-2) against a minimal plain PyTorch DDP loop.

Same model (a preset), same batch, same AdamW + clipping, random token ids, N ranks on the CPU:

    .venv/bin/python benchmarks/bench_training.py                  # small preset, 2 ranks
    .venv/bin/python benchmarks/bench_training.py --preset tiny --context 256 --micro 8

`--zero-extra '{"reduce_scatter": false}'` tries other ZeRO settings. The parent process runs `torchrun` twice (one job per mode, one after the other) and prints
tokens/s of each and their ratio (goal: DeepSpeed >= 0.85 x plain DDP). Timed steps exclude the
warm-up steps. `--worker MODE` is the per-rank entry point (used by torchrun).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(args: argparse.Namespace) -> None:
    import torch
    import yaml

    from nightingale.model import ModelConfig, build_model
    from nightingale.training import distributed as dist
    from nightingale.training.config import TrainConfig

    env = dist.dist_env()
    dist.init_distributed(env)
    mcfg = ModelConfig.from_name(args.preset, context_length=args.context).with_vocab(args.vocab)
    model = build_model(mcfg, seed=0)
    gen = torch.Generator().manual_seed(env.rank)
    batches = [torch.randint(4, args.vocab, (args.micro, args.context), generator=gen) for _ in range(4)]

    if args.worker == "deepspeed":
        from nightingale.training.engine import build_engine

        zero = {**yaml.safe_load((REPO / "configs" / "deepspeed" / "zero2.yaml").read_text())["zero_optimization"],
                **json.loads(args.zero_extra)}
        cfg = TrainConfig(data_dir=".", run_dir=".", model=mcfg, max_steps=args.steps + args.warmup,
                          micro_batch_size=args.micro, warmup_steps=0, zero_stage=2,
                          deepspeed={"zero_optimization": zero})
        engine, _, _ = build_engine(model, cfg, env.world_size)

        def step(x):
            loss = engine(input_ids=x, labels=x).loss
            engine.backward(loss)
            engine.step()
    else:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model)
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

        def step(x):
            loss = ddp(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        step(batches[i % len(batches)])
    dist.barrier()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(batches[i % len(batches)])
    dist.barrier()
    elapsed = time.perf_counter() - t0
    if env.is_main:
        tokens = args.steps * args.micro * args.context * env.world_size
        print("RESULT " + json.dumps({"mode": args.worker, "tokens_per_s": tokens / elapsed,
                                      "s_per_step": elapsed / args.steps, "params": mcfg.n_params()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--context", type=int, default=512, help="tokens per window")
    p.add_argument("--micro", type=int, default=2, help="windows per rank per step")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--zero-extra", default="{}", help="JSON merged into configs/deepspeed/zero2.yaml's zero_optimization")
    p.add_argument("--modes", default="ddp,deepspeed", help="which loops to run")
    p.add_argument("--worker", choices=("deepspeed", "ddp"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled"}
    torchrun = Path(sys.executable).with_name("torchrun")
    results = {}
    for mode in args.modes.split(","):
        passthrough = [a for a in sys.argv[1:] if not a.startswith("--worker")]
        cmd = [str(torchrun), f"--nproc_per_node={args.nproc}", __file__, *passthrough, "--worker", mode]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if out.returncode or line is None:
            sys.exit(f"{mode} run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        results[mode] = json.loads(line[len("RESULT "):])
    if len(results) < 2:
        return print(json.dumps(results, indent=2))
    ratio = results["deepspeed"]["tokens_per_s"] / results["ddp"]["tokens_per_s"]
    print(json.dumps({"preset": args.preset, "context": args.context, "micro": args.micro,
                      "ranks": args.nproc, **{f"{m}_tokens_per_s": round(r["tokens_per_s"], 1)
                                              for m, r in results.items()},
                      "deepspeed_over_ddp": round(ratio, 3), "goal": ">= 0.85"}, indent=2))


if __name__ == "__main__":
    main()
