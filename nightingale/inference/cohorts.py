"""Synthetic patients: sample a static prefix, generate a timeline, decode to a MEDS dataset.

A training window starts `static codes, age band, [SOT], events...` (tokenizer/corpus.py), so a
synthetic patient is generated in the same order:
1. the first static code (the family in `first_static_family`, by default sex): the requested one,
   or drawn from the training counts in the vocabulary (the model never predicts a window's first
   token, so it cannot sample it);
2. the other static codes and the age band, sampled *by the model* with sampling restricted to
   static codes and the allowed age bands (an age range narrows them), until an age token;
3. `[SOT]`, an optional starting condition, and the timeline, sampled until `MEDS_DEATH`,
   `[EOR]` or the token budget, with tokens that cannot occur in a body banned;
4. `decode` to MEDS events (first event at `start_date`; birth from the age band).
Patients are generated and written shard by shard through `MEDSWriter` (atomic: the dataset
appears only when complete), so memory holds one shard whatever the cohort size. Every
subject goes to the `train` split; codes metadata lists every code written.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import logging
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.atomic import atomic_file
from nightingale.config import check_ints
from nightingale.data.meds_io import MEDSDataset, MEDSWriter
from nightingale.inference.engine import Engine, Sampling
from nightingale.inference.prompts import body_banned_ids
from nightingale.tokenizer import families as F
from nightingale.tokenizer.decode import decode

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CohortSpec:
    """n_patients; sex: a code suffix of the first static family (e.g. "F") or None; age range in
    years [age_min, age_max) selecting age bands; starting_code: a vocabulary code placed as the
    first event; seed; max_new_tokens per patient; start_date of the first event; shard_size:
    patients per output shard; batch_size: patients sampled concurrently."""

    n_patients: int
    sex: str | None = None
    age_min: float | None = None
    age_max: float | None = None
    starting_code: str | None = None
    seed: int = 0
    max_new_tokens: int = 256
    temperature: float = 1.0
    start_date: dt.datetime = dt.datetime(2020, 1, 1)
    shard_size: int = 1000
    batch_size: int = 64
    first_static_family: str = "SEX"

    def __post_init__(self) -> None:
        check_ints(self, ("n_patients", "max_new_tokens", "shard_size", "batch_size"), "CohortSpec")
        if self.age_min is not None and self.age_max is not None and self.age_min >= self.age_max:
            raise ValueError(f"CohortSpec.age_min: {self.age_min} must be below age_max {self.age_max}")


def allowed_age_ids(vocab, age_min: float | None, age_max: float | None) -> list[int]:
    """Age-band tokens overlapping [age_min, age_max) (all bands when both are None)."""
    w = vocab.config.age_band_years
    out = []
    for k, tid in enumerate(vocab.age_ids):
        lo, hi = k * w, (k + 1) * w if k < len(vocab.age_ids) - 1 else float("inf")
        if (age_max is None or lo < age_max) and (age_min is None or hi > age_min):
            out.append(int(tid))
    if not out:
        raise ValueError(f"age_min/age_max: no age band overlaps [{age_min}, {age_max})")
    return out


def _static_ids(vocab, family: str) -> tuple[np.ndarray, np.ndarray]:
    """(first-family static token ids, the other static token ids)."""
    ids = np.flatnonzero(vocab.is_static)
    fam = np.array([F.family_of(vocab.codes[i] or "") == family for i in ids], dtype=bool)
    return ids[fam], ids[~fam]


def validate_spec(vocab, spec: CohortSpec) -> None:
    """ValueError naming the field when a spec cannot be honoured by this vocabulary."""
    first, _ = _static_ids(vocab, spec.first_static_family)
    if spec.sex is not None:
        code = f"{spec.first_static_family}{S.CODE_SEPARATOR}{spec.sex}"
        if code not in vocab.code_to_id or vocab.code_to_id[code] not in set(first.tolist()):
            have = [vocab.codes[i] for i in first]
            raise ValueError(f"sex: {spec.sex!r} is not a static code of this model; have {have}")
    if spec.starting_code is not None and spec.starting_code not in vocab.code_to_id:
        raise ValueError(f"starting_code: {spec.starting_code!r} is not in the model's vocabulary")
    allowed_age_ids(vocab, spec.age_min, spec.age_max)


async def _prefixes(engine: Engine, spec: CohortSpec, ids: range, rng: np.random.Generator) -> list[list[int]]:
    vocab = engine.vocab
    first, others = _static_ids(vocab, spec.first_static_family)
    ages = allowed_age_ids(vocab, spec.age_min, spec.age_max)
    if spec.sex is not None:
        heads = [[vocab.code_to_id[f"{spec.first_static_family}{S.CODE_SEPARATOR}{spec.sex}"]]] * len(ids)
    elif len(first):
        counts = np.array([vocab.spec["counts"].get(vocab.codes[i], 0) for i in first], dtype=np.float64) + 1
        heads = [[int(first[k])] for k in rng.choice(len(first), size=len(ids), p=counts / counts.sum())]
    else:
        heads = [[] for _ in ids]
    n_fam = len({F.family_of(vocab.codes[i] or "") for i in others})
    out = []
    todo = [k for k, h in enumerate(heads) if h]
    if todo:
        sampling = [
            Sampling(n=1, max_tokens=n_fam + 1, temperature=spec.temperature, seed=spec.seed * 1_000_003 + ids[k],
                     stop_token_ids=tuple(ages), allowed_token_ids=tuple(int(t) for t in others) + tuple(ages))
            for k in todo
        ]
        comps = await engine.sample([heads[k] for k in todo], sampling)
        for k, c in zip(todo, comps):
            heads[k] = heads[k] + list(c[0].token_ids)
    for h in heads:
        if not h or h[-1] not in ages:  # no age sampled within budget: draw one uniformly
            h = [t for t in h if t not in ages] + [int(rng.choice(ages))]
        out.append(h)
    return out


async def generate_cohort(
    engine: Engine,
    spec: CohortSpec,
    out_dir: str | Path,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Generate `spec.n_patients` synthetic patients into the MEDS dataset `out_dir` (atomic).
    Returns a report: patients, events, tokens, dropped tokens by reason and the dropped rate,
    how timelines ended. `progress(done, total)` is called after every batch."""
    import asyncio

    vocab = engine.vocab
    validate_spec(vocab, spec)
    rng = np.random.default_rng(spec.seed)
    death = vocab.code_to_id.get(S.DEATH_CODE)
    stops = tuple(t for t in (death, F.EOR_ID) if t is not None)
    banned = body_banned_ids(vocab)
    start = [vocab.code_to_id[spec.starting_code]] if spec.starting_code else []
    max_new = min(spec.max_new_tokens, engine.max_model_len - 1 - len(start) - 16)
    report: Counter = Counter()
    codes_seen: set[str] = set()
    done = 0
    with MEDSWriter(out_dir) as writer:
        shard_no = 0
        while done < spec.n_patients:
            n_shard = min(spec.shard_size, spec.n_patients - done)
            frames = []
            for b0 in range(done, done + n_shard, spec.batch_size):
                ids = range(b0, min(b0 + spec.batch_size, done + n_shard))
                prefixes = await _prefixes(engine, spec, ids, rng)
                prompts = [p + [F.SOT_ID] + start for p in prefixes]
                comps = await engine.sample(prompts, [
                    Sampling(n=1, max_tokens=max_new, temperature=spec.temperature, seed=spec.seed * 7_919 + i,
                             stop_token_ids=stops, banned_token_ids=banned)
                    for i in ids
                ])
                for i, p, c in zip(ids, prompts, comps):
                    gen = list(c[0].token_ids)
                    frame, rep = decode(vocab, p + gen, start_time=spec.start_date, subject_id=i + 1, seed=spec.seed + i)
                    report.update({k: v for k, v in rep.items() if k.startswith("dropped_") or k in ("events", "tokens_in")})
                    report["generated_tokens"] += len(gen)
                    end = "death" if gen and gen[-1] == death else "end_of_record" if gen and gen[-1] == F.EOR_ID else "max_tokens"
                    report[f"ended_{end}"] += 1
                    frames.append(frame)
                if progress is not None:
                    progress(ids[-1] + 1, spec.n_patients)
            shard = pl.concat(frames)
            codes_seen.update(shard[S.CODE].unique().to_list())
            await asyncio.to_thread(writer.write_shard, f"train/{shard_no}", shard)
            shard_no += 1
            done += n_shard
        writer.write_splits(pl.DataFrame({
            S.SUBJECT_ID: pl.Series(range(1, spec.n_patients + 1), dtype=pl.Int64),
            S.SPLIT: [S.TRAIN] * spec.n_patients,
        }))
        codes = sorted(codes_seen)
        writer.write_codes(pl.DataFrame({
            S.CODE: codes,
            S.DESCRIPTION: [None] * len(codes),
            S.PARENT_CODES: [vocab.parents.get(c, []) for c in codes],
        }, schema=S.CODES_SCHEMA))
        writer.write_dataset_json({"dataset_name": "nightingale-synthetic", "synthetic": True,
                                   "model": str(engine.model_dir.name), "seed": spec.seed})
    out = {k: int(v) for k, v in sorted(report.items())}
    out["patients"] = spec.n_patients
    out["dropped_rate"] = round(report["dropped_total"] / max(report["tokens_in"], 1), 6)
    log.info("cohort of %d patients: %d events, dropped rate %.4f", spec.n_patients, out.get("events", 0), out["dropped_rate"])
    return out


def zip_dataset(root: str | Path, zip_path: str | Path) -> Path:
    """The dataset folder as one zip (parquet is already compressed: stored, not deflated)."""
    root = Path(root)
    with atomic_file(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(root).as_posix())
    return Path(zip_path)


def dataset_to_csv(root: str | Path, csv_path: str | Path) -> Path:
    """All events of a MEDS dataset as one CSV (subject_id,time,code,numeric_value), written
    shard by shard (memory holds one shard)."""
    ds = MEDSDataset(root)
    cols = [S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE]
    with atomic_file(csv_path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerow(cols)
        for _, lf in ds.iter_shards():
            f.write(lf.select(cols).collect().write_csv(include_header=False))
    return Path(csv_path)
