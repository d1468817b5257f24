"""Benchmark the cohort simulator end to end (simulate + write sharded MEDS).

    python benchmarks/bench_simulator.py --subjects 100000 --workers 2
    nohup python benchmarks/bench_simulator.py --subjects 1000000 > /tmp/bench_1m.txt 2>&1 &

Prints subjects/s, events/s, total and mean events per subject, wall time, and peak RSS summed over
this process and its worker processes (sampled every 0.2 s with psutil; the kernel's
RUSAGE_CHILDREN max is printed too), with ratios to the goal: 1,000,000 subjects in < 600 s with
peak RSS < 8 GB on a 2-core machine.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from nightingale.data.simulator import SimulatorConfig, simulate

GOAL_SUBJECTS, GOAL_SECONDS, GOAL_RSS_GB = 1_000_000, 600.0, 8.0


class RssSampler(threading.Thread):
    """Peak of (this process + all its children) resident memory, sampled periodically."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.peak, self._halt = interval, 0, threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._halt.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _cpu_seconds() -> float:
    me = psutil.Process().cpu_times()
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.user + me.system + ch.ru_utime + ch.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="output folder (default: a temporary folder, removed afterwards)")
    args = ap.parse_args(argv)
    tmp = None if args.out else tempfile.mkdtemp(prefix="bench_sim_")
    out = Path(args.out) if args.out else Path(tmp) / "sim"
    cfg = SimulatorConfig(subjects=args.subjects, seed=args.seed, shard_size=args.shard_size)
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    done = [0]

    def progress(res) -> None:
        done[0] += 1
        el = time.perf_counter() - t0
        print(f"  shard {done[0]}/{cfg.n_shards}  {el:7.1f} s  rss peak {sampler.peak / 2**30:.2f} GiB",
              file=sys.stderr, flush=True)

    summary = simulate(cfg, out, workers=args.workers, overwrite=True, on_shard=progress)
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    sampler.stop()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    ru_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(
        resource.RUSAGE_CHILDREN).ru_maxrss
    rss_gb = sampler.peak / 1e9
    projected = wall * GOAL_SUBJECTS / args.subjects
    print(f"subjects            {summary.subjects:,}")
    print(f"events              {summary.events:,}")
    print(f"events/subject      {summary.events_per_subject:.1f}")
    print(f"wall time           {wall:.1f} s")
    print(f"CPU time            {cpu:.1f} s (self + workers); on {args.workers} idle cores ~ {cpu / args.workers:.1f} s")
    print(f"subjects/s          {summary.subjects / wall:,.0f}")
    print(f"events/s            {summary.events / wall:,.0f}")
    print(f"peak RSS (sum)      {rss_gb:.2f} GB  (max self + max child by getrusage: {ru_kb / 1e6:.2f} GB)")
    print(f"output size         {size / 1e9:.2f} GB in {cfg.n_shards} batches")
    print(f"goal ratio (time)   {projected / GOAL_SECONDS:.2f}  (projected {projected:.0f} s for 1M; goal < 600 s)")
    cpu_proj = cpu / args.workers * GOAL_SUBJECTS / args.subjects
    print(f"goal ratio (CPU)    {cpu_proj / GOAL_SECONDS:.2f}  (CPU-time projection on idle cores: {cpu_proj:.0f} s)")
    print(f"goal ratio (RSS)    {rss_gb / GOAL_RSS_GB:.2f}  (goal < 8 GB)")
    print(f"events/subject goal {'met' if summary.events_per_subject >= 100 else 'NOT met'} (>= 100)")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
