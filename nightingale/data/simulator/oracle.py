"""Ground truth for simulated cohorts: the true risk of an outcome within a horizon.

For a subject's history up to a prediction time `t`, `oracle_risk` returns the probability under
the simulator's own process that the outcome happens in `(t, t + horizon]`. It is computed by
re-simulation, not by a formula:

1. The subject's batch is re-simulated from its seed (`SeedSequence([seed, batch])`) without building
   events; the engine draws random numbers identically whether or not it collects events, so this
   reproduces exactly the histories written to the dataset.
2. The full latent state (physiology, conditions, drugs, admission history) is copied at the start
   of the step that contains `t` (steps are 30.4375 days; see `step_start_time`), together with
   what that step put on the record up to `t`.
3. That state is replicated `n_samples` times and each copy is simulated forward with an independent
   RNG, past the window end if the horizon needs it. The risk is the share of copies in which the
   outcome occurs in `(t, t + horizon]`, among the copies that agree with the record up to `t`.

The process decides a step's events at the step's start, so a `t` inside a step needs the step's
events before `t`: an emergency admission (with its reason, and its discharge when that came
before `t`) and a new type 2 diabetes diagnosis recorded in the step up to `t` are made to happen
in every copy as recorded (`engine.Given`); a copy is discarded when it dies at or before `t`, has
an admission or diagnosis at or before `t` that the record does not, or dies in the step after a
discharge the record shows (a discharged patient survived the step). The outcomes' own history is
thus exact; what remains drawn afresh in the step before `t` is routine care (consultations,
measurements, prescriptions), which moves the latent state only through treatment and CKD staging.
At a step boundary (`step_start_time`) the answer is exact up to Monte-Carlo error (binomial,
s.e. sqrt(p(1-p)/n_samples)). Subject ids are the simulator's own (raw) ids,
`batch * shard_size + i + 1`: a pseudonymised dataset's ids cannot be mapped back without the key,
by design.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.data.simulator.config import STEP_DAYS, SimulatorConfig
from nightingale.data.simulator.engine import (
    EventSink,
    Given,
    StepOutcomes,
    run_shard,
    start_year,
    step,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """A named outcome: the codes whose occurrence in the horizon counts, and a default horizon.

    `new_only`: the outcome is a *first* occurrence (a subject with one of `codes` at or before the
    prediction time cannot have the outcome).
    """

    name: str
    codes: tuple[str, ...]
    default_horizon_days: float
    new_only: bool = False
    description: str = ""


OUTCOMES: dict[str, Outcome] = {
    "death": Outcome("death", (S.DEATH_CODE,), 365.0, description="death from any cause"),
    "emergency_admission": Outcome(
        "emergency_admission", ("ADMISSION//EMERGENCY",), 90.0, description="an emergency hospital admission"
    ),
    "diabetes_diagnosis": Outcome(
        "diabetes_diagnosis", ("ICD10//E11.9",), 730.0, new_only=True,
        description="a new type 2 diabetes diagnosis (0 if already diagnosed)",
    ),
}
_ENGINE_OUTPUT = {"death": 0, "emergency_admission": 1, "diabetes_diagnosis": 2}


def load_config(source: str | Path | SimulatorConfig) -> SimulatorConfig:
    """The simulator config of a simulated dataset (from its metadata/dataset.json)."""
    if isinstance(source, SimulatorConfig):
        return source
    path = Path(source) / S.DATASET_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; is {source} a simulated MEDS dataset?") from None
    if "simulator" not in meta:
        raise ValueError(f"{path}: no 'simulator' section; the oracle only knows simulated datasets")
    if meta.get("privacy", {}).get("pseudonymised"):
        log.warning("dataset %s is pseudonymised: the oracle takes raw simulator ids", source)
    sim = {k: v for k, v in meta["simulator"].items() if k not in ("step_days", "version")}
    return SimulatorConfig.from_dict(sim)


def _days(cfg: SimulatorConfig, times) -> np.ndarray:
    """Days from the window start to the *end* of each time's second: the dataset writes whole
    seconds, so an event the engine placed within that second is on the record at that time."""
    t = np.asarray(times, dtype="datetime64[us]").astype(np.int64)
    start = np.datetime64(cfg.start_date, "us").astype(np.int64)
    second = (t - start) // 1_000_000
    return (second + 0.5) / 86_400.0


def step_start_time(cfg: SimulatorConfig, k: int | np.ndarray) -> np.ndarray:
    """Start of step `k` as datetime64[us]: prediction times here make the oracle exact."""
    start = np.datetime64(cfg.start_date, "us").astype(np.int64)
    us = np.round(np.asarray(k) * STEP_DAYS * 86_400.0).astype(np.int64) * 1_000_000
    return (start + us).astype("datetime64[us]")


def oracle_risk(source: str | Path | SimulatorConfig, subject_ids: Sequence[int] | np.ndarray,
                prediction_times, outcome: str, horizon_days: float | None = None, *,
                n_samples: int = 1000, seed: int = 0, max_replicates: int = 400_000) -> np.ndarray:
    """True probability (float64, one per request) of `outcome` in `(t, t + horizon_days]`.

    source: a simulated dataset root or its `SimulatorConfig`.
    subject_ids, prediction_times: raw simulator ids and times (datetime64 or ISO strings), aligned.
    outcome: a key of `OUTCOMES`; horizon_days defaults to the outcome's default horizon.
    Returns NaN where the subject is not under observation at `t` (not yet registered, already dead,
    or `t` outside the window). Deterministic for `seed`. See the module docstring for the method.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome: {outcome!r} is not one of {sorted(OUTCOMES)}")
    if n_samples < 1:
        raise ValueError(f"n_samples: must be >= 1, got {n_samples}")
    cfg = load_config(source)
    horizon = float(OUTCOMES[outcome].default_horizon_days if horizon_days is None else horizon_days)
    if horizon <= 0:
        raise ValueError(f"horizon_days: must be > 0, got {horizon}")
    ids = np.asarray(subject_ids, dtype=np.int64)
    t = _days(cfg, prediction_times)
    if ids.shape != t.shape:
        raise ValueError("subject_ids and prediction_times must have the same length")
    if ids.size and (ids.min() < cfg.id_offset + 1 or ids.max() > cfg.id_offset + cfg.subjects):
        raise ValueError(f"subject_ids: raw simulator ids run from {cfg.id_offset + 1} to {cfg.id_offset + cfg.subjects}")
    risk = np.full(ids.size, np.nan)
    inside = (t >= 0) & (t < cfg.window_days)
    k_of = np.floor(t / STEP_DAYS).astype(np.int64)
    shard_of, local_of = (ids - cfg.id_offset - 1) // cfg.shard_size, (ids - cfg.id_offset - 1) % cfg.shard_size
    col = _ENGINE_OUTPUT[outcome]
    sy = start_year(cfg)
    for shard in np.unique(shard_of[inside]):
        req = np.flatnonzero(inside & (shard_of == shard))
        snaps = {int(k): np.unique(local_of[req[k_of[req] == k]]) for k in np.unique(k_of[req])}
        final, _, taken = run_shard(cfg, int(shard), emit=False, snapshots=snaps, until=max(snaps) + 1)
        for k, locs in snaps.items():
            rk = req[k_of[req] == k]
            pos = np.searchsorted(locs, local_of[rk])
            snap, done = taken[k]
            # Under observation at t: registered by t, and not dead at or before t.
            dd = final.death_day[local_of[rk]]
            ok = (snap.reg_day[pos] <= t[rk]) & snap.alive[pos] & ~(dd <= t[rk])
            rk, pos = rk[ok], pos[ok]
            if not rk.size:
                continue
            given = recorded_by(done.take(pos), t[rk])
            per_chunk = max(1, max_replicates // n_samples)
            for c0 in range(0, rk.size, per_chunk):
                r, p = rk[c0:c0 + per_chunk], pos[c0:c0 + per_chunk]
                rng = np.random.default_rng(np.random.SeedSequence([seed, cfg.seed, int(shard), k, c0, 0x0AC1E]))
                g = given.take(np.repeat(np.arange(c0, c0 + len(r)), n_samples))
                risk[r] = _forward(snap.take(np.repeat(p, n_samples)), k, t[r], horizon, col,
                                   n_samples, rng, sy, g)
    return risk


def recorded_by(done: StepOutcomes, t: np.ndarray) -> Given:
    """The facts of a step on the record at times `t` (one per subject of `done`)."""
    adm = done.admission <= t
    return Given(
        admission=np.where(adm, done.admission, np.nan),
        reason=np.where(adm, done.reason, -1),
        discharge=np.where(adm & (done.discharge <= t), done.discharge, np.nan),
        diabetes=np.where(done.diabetes <= t, done.diabetes, np.nan),
    )


def _forward(st, k0: int, t: np.ndarray, horizon: float, col: int, n_samples: int, rng, sy,
             given: Given) -> np.ndarray:
    """Simulate replicated states from step k0 (making `given` happen in it) until every horizon
    has passed; the share with the outcome among copies that agree with the record up to t."""
    t_rep = np.repeat(t, n_samples)
    hit = np.zeros(st.n, bool)
    sink = EventSink(enabled=False)
    last = int(np.floor((t.max() + horizon) / STEP_DAYS))
    first = step(st, k0, rng, sink, sy, None, given)
    disagree = (
        (first.death <= t_rep)
        | ((first.admission <= t_rep) & np.isnan(given.admission))
        | ((first.diabetes <= t_rep) & np.isnan(given.diabetes))
        | (~np.isnan(given.discharge) & ~np.isnan(first.death))
    )
    hit |= (first[col] > t_rep) & (first[col] <= t_rep + horizon)
    for k in range(k0 + 1, last + 1):
        if not st.alive.any():
            break
        d = step(st, k, rng, sink, sy, None)[col]
        hit |= (d > t_rep) & (d <= t_rep + horizon)
    valid = ~disagree
    hits = (hit & valid).reshape(-1, n_samples).sum(axis=1)
    n_valid = valid.reshape(-1, n_samples).sum(axis=1)
    return np.where(n_valid > 0, hits / np.maximum(n_valid, 1), np.nan)


def observed_labels(events: pl.DataFrame | pl.LazyFrame, subject_ids, prediction_times, outcome: str,
                    horizon_days: float | None = None) -> np.ndarray:
    """Whether `outcome` is recorded in `(t, t + horizon]` in MEDS `events` (bool, one per request).

    The label counterpart of `oracle_risk`, read from data rather than the process; usable on any
    MEDS dataset that uses the same codes. For `new_only` outcomes a code at or before `t` gives False.
    """
    spec = OUTCOMES[outcome]
    horizon = spec.default_horizon_days if horizon_days is None else horizon_days
    req = pl.DataFrame({
        S.SUBJECT_ID: np.asarray(subject_ids, np.int64),
        S.PREDICTION_TIME: np.asarray(prediction_times, dtype="datetime64[us]"),
    }).with_row_index("_row")
    ev = (events.lazy().filter(pl.col(S.CODE).is_in(list(spec.codes)) & pl.col(S.TIME).is_not_null())
          .select(S.SUBJECT_ID, S.TIME))
    end = pl.col(S.PREDICTION_TIME) + pl.duration(microseconds=round(horizon * 86_400e6))
    j = req.lazy().join(ev, on=S.SUBJECT_ID, how="left")
    agg = j.group_by("_row").agg(
        ((pl.col(S.TIME) > pl.col(S.PREDICTION_TIME)) & (pl.col(S.TIME) <= end)).any().alias("hit"),
        (pl.col(S.TIME) <= pl.col(S.PREDICTION_TIME)).any().alias("before"),
    ).collect().sort("_row")
    hit = agg["hit"].fill_null(False).to_numpy()
    if spec.new_only:
        hit &= ~agg["before"].fill_null(False).to_numpy()
    return hit
