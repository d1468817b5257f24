"""Synthetic patients: sample a static prefix, generate a timeline, decode to a MEDS dataset.

A training window starts `static codes, age band, [SOT], events...` (tokenizer/corpus.py), so a
synthetic patient is generated in the same order:
1. the first static code (the family in `first_static_family`, by default sex: `SEX` as the
   simulator and MEDS data code it, `Gender` as OMOP does): the requested one,
   or drawn from the training counts in the vocabulary (the model never predicts a window's first
   token, so it cannot sample it);
2. the other static codes and the age band, sampled *by the model* with sampling restricted to
   static codes and the allowed age bands (an age range narrows them), until an age token;
3. `[SOT]`, an optional starting condition, and the timeline, sampled until `MEDS_DEATH`,
   `[EOR]`, the end date or the token budget, with tokens that cannot occur in a body banned.
   A timeline longer than the context goes on in a sliding window laid out like a training
   window (`prompts.window_prompt`: static tokens, the age band at the first kept token, the
   history summary of what was cut, the most recent events), half a context at a time, so a
   synthetic patient lives as long as the model lets it (whole lifetimes, not one context);
4. `decode` to MEDS events (first event at `start_date`; birth from the age band).
Patients are generated and written shard by shard through `MEDSWriter` (atomic: the dataset
appears only when complete), so memory holds one shard whatever the cohort size. Every
subject goes to the `train` split; codes metadata lists every code written.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import functools
import logging
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.atomic import atomic_file
from nightingale.config import check_ints
from nightingale.data.meds_io import MEDSDataset, MEDSWriter
from nightingale.inference.engine import Engine, Sampling
from nightingale.inference.prompts import age_changes, body_banned_ids, changes_ahead, window_prompt
from nightingale.tokenizer import families as F
from nightingale.tokenizer.decode import decode

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CohortSpec:
    """n_patients; sex: a code suffix of the first static family (e.g. "F") or None; age range in
    years [age_min, age_max) selecting age bands; starting_code: a vocabulary code placed as the
    first event; seed; max_new_tokens: the token budget of one patient's whole timeline (across
    windows); start_date of the first event, or start_dates: each patient's first event on one
    of these, drawn per patient, with start_ages (years; NaN: unknown), when given, the age at
    each start, which then sets the patient's age band (cohort_calendar.calendar_window gives a
    dataset's own record starts and ages at start, so a cohort follows its data's calendar and
    age mix; an age range draws among the starts at ages inside it); end_date: no event after it
    (the timeline ends with `[EOR]` where its next event would pass it; None: the model decides);
    follow_to_end: with an end date, every living patient is followed to it, as in data that
    states its observation end: the model's own end of record is banned, so a timeline ends at
    death or the end date (False: the model may end a record earlier, as where follow-up is lost);
    shard_size: patients per output shard; batch_size: patients sampled concurrently."""

    n_patients: int
    sex: str | None = None
    age_min: float | None = None
    age_max: float | None = None
    starting_code: str | None = None
    seed: int = 0
    max_new_tokens: int = 8192
    temperature: float = 1.0
    start_date: dt.datetime = dt.datetime(2020, 1, 1)
    end_date: dt.datetime | None = None
    start_dates: tuple[dt.datetime, ...] = ()
    start_ages: tuple[float, ...] = ()
    follow_to_end: bool = True
    shard_size: int = 1000
    batch_size: int = 64
    first_static_family: str | None = None

    def __post_init__(self) -> None:
        check_ints(self, ("n_patients", "max_new_tokens", "shard_size", "batch_size"), "CohortSpec")
        if self.age_min is not None and self.age_max is not None and self.age_min >= self.age_max:
            raise ValueError(f"CohortSpec.age_min: {self.age_min} must be below age_max {self.age_max}")
        last = max(self.start_dates) if self.start_dates else self.start_date
        if self.end_date is not None and self.end_date <= last:
            raise ValueError(f"CohortSpec.end_date: {self.end_date.isoformat()} must be after every start date "
                             f"(the last is {last.isoformat()})")
        if self.start_ages and len(self.start_ages) != len(self.start_dates):
            raise ValueError(f"CohortSpec.start_ages: {len(self.start_ages)} ages for {len(self.start_dates)} "
                             "start dates (one per start, or none)")

    @functools.cached_property
    def _in_range(self) -> np.ndarray:
        """Per start: its age is known and inside [age_min, age_max) (no range: every known age)."""
        ages = np.asarray(self.start_ages or [np.nan] * len(self.start_dates), dtype=np.float64)
        lo = -np.inf if self.age_min is None else self.age_min
        hi = np.inf if self.age_max is None else self.age_max
        return np.isfinite(ages) & (ages >= lo) & (ages < hi)

    def _start_index(self, i: int) -> int | None:
        """Patient i's start: drawn among the starts in the age range where any is (all otherwise)."""
        if not self.start_dates:
            return None
        ranged = self.age_min is not None or self.age_max is not None
        pick = np.flatnonzero(self._in_range) if ranged and self._in_range.any() else np.arange(len(self.start_dates))
        return int(pick[np.random.default_rng([self.seed, i, 1]).integers(len(pick))])

    def patient_start(self, i: int) -> dt.datetime:
        """Patient i's first event date (the same for a given seed and i, whatever the order)."""
        k = self._start_index(i)
        return self.start_date if k is None else self.start_dates[k]

    def patient_age(self, i: int) -> float | None:
        """Patient i's age in years at its first event, where its start carries one (the same
        draw as `patient_start`); None leaves the age band to the model within the age range."""
        k = self._start_index(i)
        return float(self.start_ages[k]) if k is not None and self._in_range[k] else None


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


SEX_FAMILIES = ("SEX", "Gender")  # the simulator's and MEDS ETLs' code, OMOP's (import-omop)


def sex_family(vocab, family: str | None) -> str:
    """The static family a cohort's first code (and `sex`) comes from: `family` when given, else
    the first of SEX_FAMILIES the vocabulary has static codes of ("" when none)."""
    if family:
        return family
    have = {F.family_of(vocab.codes[i] or "") for i in np.flatnonzero(vocab.is_static)}
    return next((f for f in SEX_FAMILIES if f in have), "")


def _static_ids(vocab, family: str) -> tuple[np.ndarray, np.ndarray]:
    """(first-family static token ids, the other static token ids)."""
    ids = np.flatnonzero(vocab.is_static)
    fam = np.array([F.family_of(vocab.codes[i] or "") == family for i in ids], dtype=bool)
    return ids[fam], ids[~fam]


def validate_spec(vocab, spec: CohortSpec) -> None:
    """ValueError naming the field when a spec cannot be honoured by this vocabulary."""
    family = sex_family(vocab, spec.first_static_family)
    first, _ = _static_ids(vocab, family)
    if spec.sex is not None:
        code = f"{family}{S.CODE_SEPARATOR}{spec.sex}"
        if code not in vocab.code_to_id or vocab.code_to_id[code] not in set(first.tolist()):
            have = [vocab.codes[i] for i in first]
            raise ValueError(f"sex: {spec.sex!r} is not a static code of this model; have {have}")
    if spec.starting_code is not None and spec.starting_code not in vocab.code_to_id:
        raise ValueError(f"starting_code: {spec.starting_code!r} is not in the model's vocabulary")
    allowed_age_ids(vocab, spec.age_min, spec.age_max)


async def _prefix(engine: Engine, spec: CohortSpec, i: int) -> list[int]:
    """Patient i's static codes and age band (steps 1-2 of the module docstring), drawn with its
    own generator, so a patient is the same whatever the order patients run in."""
    vocab = engine.vocab
    rng = np.random.default_rng([spec.seed, i])
    family = sex_family(vocab, spec.first_static_family)
    first, others = _static_ids(vocab, family)
    ages = allowed_age_ids(vocab, spec.age_min, spec.age_max)
    if (years := spec.patient_age(i)) is not None:  # the age its start had in the reference data
        ages = [int(vocab.age_ids[int(vocab.age_band(0, int(years * 365.25 * 86_400 * 1e6)))])]
    if spec.sex is not None:
        head = [vocab.code_to_id[f"{family}{S.CODE_SEPARATOR}{spec.sex}"]]
    elif len(first):
        counts = np.array([vocab.spec["counts"].get(vocab.codes[k], 0) for k in first], dtype=np.float64) + 1
        head = [int(first[rng.choice(len(first), size=1, p=counts / counts.sum())[0]])]
    else:
        head = []
    if head:
        n_fam = len({F.family_of(vocab.codes[k] or "") for k in others})
        ((c, *_),) = await engine.sample([head], Sampling(
            n=1, max_tokens=n_fam + 1, temperature=spec.temperature, seed=spec.seed * 1_000_003 + i,
            stop_token_ids=tuple(ages), allowed_token_ids=tuple(int(t) for t in others) + tuple(ages)))
        head = head + list(c.token_ids)
    if not head or head[-1] not in ages:  # no age sampled within budget: draw one uniformly
        head = [t for t in head if t not in ages] + [int(rng.choice(ages))]
    return head


def _age_at(vocab, age0: int, body: np.ndarray, start: int) -> int:
    """The age band at body[start]: the last band change written before it (vocabularies with the
    age in the timeline), else the starting band moved on by the time the gaps before it add up to."""
    if vocab.config.age_in_timeline:
        ages = np.flatnonzero(vocab.kinds[body[:start]] == F.KIND_AGE)
        return int(body[ages[-1]]) if len(ages) else age0
    if age0 not in set(vocab.age_ids.tolist()):
        return age0
    w = vocab.config.age_band_years
    years = float(vocab.gap_decode_s[body[:start]].sum()) / (365.25 * 86_400)
    k = int(np.flatnonzero(vocab.age_ids == age0)[0])
    return int(vocab.age_ids[min(int((k * w + w / 2 + years) // w), len(vocab.age_ids) - 1)])


async def _timeline(engine: Engine, spec: CohortSpec, head: list[int], i: int, stops: tuple[int, ...],
                    banned: tuple[int, ...], start: dt.datetime) -> tuple[list[int], str, int]:
    """Generate patient i's timeline (head: static + age + [SOT] + start) to its end: (generated
    ids, how it ended, windows used). The first window continues the head; each next one is
    `window_prompt` over everything so far, with room for half a context of new tokens. Every
    window has its own seed, from the cohort's seed, the patient's number and the window's.
    The patient's exact age at its first event is drawn within its band (uniformly: no real
    patient's birth is copied), and the engine writes its band changes at their times
    (age_clock.AgeClock), so the age the model reads back is its true age."""
    vocab = engine.vocab
    ctx = engine.max_model_len
    room = ctx - max(ctx // 2, 16)  # prompt tokens of a continuing window
    m = head.index(F.SOT_ID) - 1  # static tokens before the age band
    span_s = None if spec.end_date is None else (spec.end_date - start).total_seconds()
    known = head[m] != vocab.age_unknown_id
    years = float(vocab.age_lower_years[head[m]]) + vocab.config.age_band_years * float(
        np.random.default_rng([spec.seed, i, 2]).random()) if known else None
    changes = age_changes(vocab, years, span_s)
    gen: list[int] = []
    windows = 0
    while True:
        if not gen or len(head) + len(gen) <= room:
            prompt = head + gen
        else:
            body = np.asarray(head[m + 1:] + gen, dtype=np.int64)
            prompt = window_prompt(vocab, head[:m], body, room, partial(_age_at, vocab, head[m], body))
        elapsed = float(vocab.gap_decode_s[gen].sum())
        horizon = None if span_s is None else span_s - elapsed
        ((c, *_),) = await engine.sample([prompt], Sampling(
            n=1, max_tokens=min(spec.max_new_tokens - len(gen), ctx - len(prompt) - 1),
            temperature=spec.temperature, seed=(spec.seed * 7_919 + i) * 1_009 + windows,
            stop_token_ids=stops, banned_token_ids=banned, horizon_s=horizon,
            age_changes=changes_ahead(vocab, changes, gen, elapsed) if known and vocab.config.age_in_timeline else None))
        new = list(c.token_ids)
        gen += new
        windows += 1
        if new and new[-1] in stops:
            if new[-1] != F.EOR_ID:
                return gen, "death", windows
            # the end date's [EOR] (horizon.HorizonStop) comes where the next gap would cross it
            left = None if span_s is None else span_s - float(vocab.gap_decode_s[gen].sum())
            at_end = left is not None and left < float(vocab.gap_decode_s.max())
            return gen, "end_date" if at_end else "end_of_record", windows
        if not new or len(gen) >= spec.max_new_tokens:
            return gen, "max_tokens", windows


async def generate_cohort(
    engine: Engine,
    spec: CohortSpec,
    out_dir: str | Path,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Generate `spec.n_patients` synthetic patients into the MEDS dataset `out_dir` (atomic).
    Returns a report: patients, events, tokens, dropped tokens by reason and the dropped rate,
    how timelines ended (`ended_death`, `ended_end_date`, `ended_end_of_record` (the model's own
    end, before the end date), `ended_max_tokens`), windows per timeline. `progress(done, total)` after every batch."""
    import asyncio

    vocab = engine.vocab
    validate_spec(vocab, spec)
    death = vocab.code_to_id.get(S.DEATH_CODE)
    stops = tuple(t for t in (death, F.EOR_ID) if t is not None)
    banned = body_banned_ids(vocab)
    if spec.end_date is not None and spec.follow_to_end:  # followed to the end date or death
        banned = tuple(sorted({*banned, F.EOR_ID}))
    start = [vocab.code_to_id[spec.starting_code]] if spec.starting_code else []
    report: Counter = Counter()
    codes_seen: set[str] = set()
    running = asyncio.Semaphore(spec.batch_size)
    done = finished = 0

    async def patient(i: int) -> pl.DataFrame:
        """One synthetic patient, start to end; up to `batch_size` of them run at once, and each
        that ends makes room for the next, so a long timeline holds up no batch."""
        nonlocal finished
        async with running:
            head = await _prefix(engine, spec, i) + [F.SOT_ID] + start
            first = spec.patient_start(i)
            gen, end, windows = await _timeline(engine, spec, head, i, stops, banned, first)
        frame, rep = decode(vocab, head + gen, start_time=first, subject_id=i + 1, seed=spec.seed + i)
        report.update({k: v for k, v in rep.items() if k.startswith("dropped_") or k in ("events", "tokens_in")})
        report["generated_tokens"] += len(gen)
        report[f"ended_{end}"] += 1
        report["windows"] += windows
        report["windows_max"] = max(report["windows_max"], windows)
        report["generated_tokens_max"] = max(report["generated_tokens_max"], len(gen))
        finished += 1
        if progress is not None and (finished % 16 == 0 or finished == spec.n_patients):
            progress(finished, spec.n_patients)
        return frame

    with MEDSWriter(out_dir) as writer:
        shard_no = 0
        while done < spec.n_patients:
            n_shard = min(spec.shard_size, spec.n_patients - done)
            shard = pl.concat(await asyncio.gather(*(patient(i) for i in range(done, done + n_shard))))
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
    out["truncated_share"] = round(report["ended_max_tokens"] / spec.n_patients, 4)
    log.info("cohort of %d patients: %d events, dropped rate %.4f, %d ended at the token budget", spec.n_patients,
             out.get("events", 0), out["dropped_rate"], report["ended_max_tokens"])
    return out


def zip_dataset(root: str | Path, zip_path: str | Path, extra: Sequence[Path] = ()) -> Path:
    """The dataset folder as one zip (parquet is already compressed: stored, not deflated), and
    each folder in `extra` under its own name beside it (a cohort's evidence)."""
    root = Path(root)
    with atomic_file(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for base, prefix in [(root, ""), *((Path(e), Path(e).name + "/") for e in extra)]:
            for p in sorted(base.rglob("*")):
                if p.is_file():
                    z.write(p, prefix + p.relative_to(base).as_posix())
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
