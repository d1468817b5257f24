"""Tokenizer benchmark: end-to-end encoding throughput (read parquet -> write corpus) and peak RSS.

    .venv/bin/python benchmarks/bench_tokenizer.py --sizes 10e6 50e6 --work /tmp/ng_bench

Data: `nightingale simulate` (events per subject measured once from a 1,000-subject run, then
the subject count sized to each target); the built-in generator below (the simulator's code
families) only when the simulator does not run, and the output says which. Datasets are cached
in --work between runs. For each size: fit the vocabulary, then time encode + merge in a fresh
process (2 encoding processes, one per core). "events" are MEDS rows read (static and birth rows
included). Reported: wall seconds, CPU seconds of the whole process tree (the machine is shared:
the load average is printed beside each run), and peak RSS: the main process's own high-water
mark (VmHWM, which unlike ru_maxrss does not inherit the forking parent's), the largest encoding
process, the upper bound main + workers x largest, and the sum over the process tree sampled
every 50 ms. Goals (issue 3, 2-core machine): >= 3M events/s; RSS grows < 20% from 10M to 50M.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S

EVENTS_PER_SHARD = 2_500_000  # built-in generator
SIM_SHARD_SUBJECTS = 10_000  # ~2.3M simulated events a shard
WORKERS = 2  # one encoding process per core
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic_meds(out: Path, n_events: int, seed: int = 0) -> Path:
    """A MEDS dataset of about `n_events` events in shards of 2.5M, with simulator-like codes."""
    from nightingale.data.meds_io import MEDSWriter

    rng = np.random.default_rng(seed)
    icd = [f"ICD10//{c}{k:02d}.{j}" for c in "EIJNC" for k in range(40) for j in range(5)]
    loinc = [f"LOINC//{1000 + k}-{k % 10}" for k in range(300)]
    atc = [f"ATC//A{k:02d}BA{j:02d}" for k in range(30) for j in range(10)]
    catalogue = np.array(icd + loinc + atc)
    weights = 1.0 / np.arange(1, len(catalogue) + 1) ** 1.1
    weights /= weights.sum()
    is_lab = np.array([c.startswith("LOINC") for c in catalogue])
    mean = rng.uniform(1, 200, len(catalogue))
    splits, sid0 = [], 0
    with MEDSWriter(out, overwrite=True) as w:
        for shard in range(max(1, round(n_events / EVENTS_PER_SHARD))):
            n_subj = EVENTS_PER_SHARD // 500
            per = rng.poisson(497, n_subj) + 1
            n = int(per.sum())
            sid = np.repeat(np.arange(sid0, sid0 + n_subj), per)
            code_ix = rng.choice(len(catalogue), n, p=weights)
            gaps = rng.choice([0, 0, 0, 600, 3600, 86400, 86400 * 30], n) * 1_000_000
            start = np.repeat(rng.integers(1.2e15, 1.5e15, n_subj), per)
            first = np.repeat(np.cumsum(per) - per, per)
            csum = np.cumsum(gaps)
            t = start + csum - csum[first]
            value = np.where(is_lab[code_ix], rng.normal(mean[code_ix], mean[code_ix] / 4), np.nan).astype(np.float32)
            subj = np.arange(sid0, sid0 + n_subj)
            birth = rng.integers(0, 1.2e15, n_subj)
            static = pl.DataFrame({
                S.SUBJECT_ID: np.concatenate([subj, subj, subj]),
                S.TIME: pl.Series(np.concatenate([np.zeros(2 * n_subj, np.int64), birth])).scatter(np.arange(2 * n_subj), None),
                S.CODE: np.concatenate([rng.choice(["SEX//F", "SEX//M"], n_subj), rng.choice(["ETHNICITY//White", "ETHNICITY//Asian", "ETHNICITY//Black"], n_subj), np.full(n_subj, S.BIRTH_CODE)]),
            })
            events = pl.DataFrame({S.SUBJECT_ID: sid, S.TIME: t, S.CODE: catalogue[code_ix], S.NUMERIC_VALUE: pl.Series(value).fill_nan(None)})
            dead = subj[rng.random(n_subj) < 0.1]
            death = events.group_by(S.SUBJECT_ID).agg(pl.col(S.TIME).max() + 86400_000_000).filter(pl.col(S.SUBJECT_ID).is_in(dead)).with_columns(pl.lit(S.DEATH_CODE).alias(S.CODE))
            df = pl.concat([static, events, death], how="diagonal").with_columns(pl.col(S.TIME).cast(pl.Datetime("us")))
            w.write_shard(f"{shard}", df)
            splits.append(pl.DataFrame({S.SUBJECT_ID: subj, S.SPLIT: rng.choice(list(S.SPLITS), n_subj, p=[0.8, 0.1, 0.1])}))
            sid0 += n_subj
        w.write_splits(pl.concat(splits))
    return out


def _nightingale() -> str:
    return str(Path(sys.executable).parent / "nightingale")


def simulator_works() -> bool:
    probe = subprocess.run([_nightingale(), "simulate", "--help"], check=False, capture_output=True)
    return probe.returncode == 0


def simulate(out: Path, n_subjects: int) -> None:
    cmd = [_nightingale(), "simulate", "--subjects", str(n_subjects), "--seed", "0", "--out", str(out)]
    cmd += ["--shard-size", str(SIM_SHARD_SUBJECTS), "--workers", str(WORKERS), "--overwrite"]
    subprocess.run(cmd, check=True, capture_output=True)


def events_per_subject(work: Path) -> float:
    """Simulated MEDS rows per subject, from a 1,000-subject run (cached in --work)."""
    cache = work / "sim_events_per_subject.json"
    if not cache.exists():
        simulate(work / "sim_1000", 1000)
        n = pl.scan_parquet(work / "sim_1000" / "data" / "**" / "*.parquet").select(pl.len()).collect().item()
        cache.write_text(json.dumps({"subjects": 1000, "events": n}))
    c = json.loads(cache.read_text())
    return c["events"] / c["subjects"]


def make_data(work: Path, n_events: int) -> tuple[Path, str]:
    """(MEDS folder of about `n_events` rows, source): the simulator when it runs, else the
    built-in generator; reused when already in `work`."""
    if simulator_works():
        n_subjects = round(n_events / events_per_subject(work))
        meds, source = work / f"sim_{n_subjects}", f"simulator ({n_subjects:,} subjects)"
        if not (meds / S.SPLITS_FILE).exists():
            simulate(meds, n_subjects)
    else:
        meds, source = work / f"meds_{n_events}", "built-in generator (nightingale simulate failed)"
        if not (meds / S.SPLITS_FILE).exists():
            synthetic_meds(meds, n_events)
    return meds, source


def _hwm_mib() -> float:
    """This process's peak RSS since exec (ru_maxrss would include the forking parent's)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def worker(meds: Path, out: Path) -> dict:
    """Encode + merge (the vocabulary is already in out/vocab): time, CPU and peak RSS."""
    from nightingale.tokenizer.prepare import PrepareConfig, Preparer

    p = Preparer(PrepareConfig(meds_dir=meds, out_dir=out, show_progress=False, workers=WORKERS))
    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p.run("encode")
    t_encode = time.perf_counter() - t
    report = p.merge()
    secs = time.perf_counter() - t
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(b, f) - getattr(a, f) for a, b in ((r0, r1), (c0, c1)) for f in ("ru_utime", "ru_stime"))
    main, child = _hwm_mib(), c1.ru_maxrss / 1024  # KiB -> MiB
    return {
        "events": report["counts"]["events_in"],
        "tokens": report["counts"]["tokens"],
        "seconds": secs,
        "encode_seconds": t_encode,
        "merge_seconds": secs - t_encode,
        "cpu_seconds": cpu,
        "peak_rss_main_mib": main,
        "peak_rss_worker_mib": child,
        "peak_rss_bound_mib": main + WORKERS * child,
    }


def _tree_rss_mib(pid: int) -> float:
    """Current RSS of a process and its descendants (found by parent id: this kernel has no
    /proc/<pid>/task/<tid>/children)."""
    rss, parent = {}, {}
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit():
                stat = (d / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
                parent[int(d.name)], rss[int(d.name)] = int(fields[1]), int(fields[21]) * PAGE_MIB
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, pp in parent.items() if pp == p and c not in tree]
    return sum(rss.get(p, 0.0) for p in tree)


def bench(n_events: int, work: Path) -> dict:
    from nightingale.tokenizer.prepare import PrepareConfig, Preparer

    t = time.perf_counter()
    meds, source = make_data(work, n_events)
    print(f"[{n_events:.0e}] data: {source} in {meds} ({time.perf_counter() - t:.1f}s)", flush=True)
    out = work / f"prep_{meds.name}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    Preparer(PrepareConfig(meds_dir=meds, out_dir=out, show_progress=False)).run("fit")
    fit_s = time.perf_counter() - t
    load = os.getloadavg()[0]
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", str(meds), str(out)], stdout=subprocess.PIPE, text=True
    )
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mib(proc.pid))
        time.sleep(0.05)
    stdout = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"benchmark worker failed ({proc.returncode})")
    r = json.loads(stdout.strip().splitlines()[-1])
    r.update(source=source, fit_seconds=fit_s, events_per_s=r["events"] / r["seconds"], load_before=load)
    r.update(peak_rss_sampled_mib=peak, load_after=os.getloadavg()[0])
    print(f"[{n_events:.0e}] {json.dumps(r)}", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=float, default=[10e6, 50e6])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ng_bench"))
    ap.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    results = [bench(int(n), args.work) for n in args.sizes]
    print(f"\n{'events':>12} {'tokens':>12} {'wall s':>7} {'encode':>7} {'merge':>6} {'events/s':>10} "
          f"{'CPU s':>6} {'ev/CPU-s':>9} {'RSS main':>8} {'worker':>7} {'bound':>6} {'sampled':>7} {'load':>5}")
    for r in results:
        print(f"{r['events']:>12,} {r['tokens']:>12,} {r['seconds']:>7.2f} {r['encode_seconds']:>7.2f} "
              f"{r['merge_seconds']:>6.2f} {r['events_per_s']:>10,.0f} {r['cpu_seconds']:>6.1f} "
              f"{r['events'] / r['cpu_seconds']:>9,.0f} {r['peak_rss_main_mib']:>8.0f} {r['peak_rss_worker_mib']:>7.0f} "
              f"{r['peak_rss_bound_mib']:>6.0f} {r['peak_rss_sampled_mib']:>7.0f} {r['load_before']:>5.1f}")
    print(f"RSS in MiB: main process, largest of the {WORKERS} encoding processes, bound = main + {WORKERS} x "
          f"largest, sampled = process tree every 50 ms; load = 1-min load average before the run")
    if len(results) > 1:
        a, b = results[0], results[-1]
        x = b["events"] / a["events"]
        print(f"RSS ratio at {x:.1f}x events: bound {b['peak_rss_bound_mib'] / a['peak_rss_bound_mib']:.3f}, "
              f"sampled {b['peak_rss_sampled_mib'] / a['peak_rss_sampled_mib']:.3f} (goal < 1.20)")
    print("throughput (goal >= 3M events/s): " + ", ".join(f"{r['events_per_s'] / 1e6:.2f}M" for r in results))


if __name__ == "__main__":
    main()
