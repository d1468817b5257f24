"""The vectorised engine: one monthly step for a whole batch of subjects at once.

Time is discrete for the *process* (steps of a twelfth of a year, `STEP_DAYS`): hazards, latent
drift and decisions are evaluated once per step from the state at the step's start. Each event gets
a continuous time inside its step (an offset drawn uniformly in the subject's part of the step), so
timelines look continuous. A death in a step is placed last in that step: every other event of the
subject in the step is drawn before it.

Random numbers are drawn in a fixed order that depends only on the state, never on whether events
are being collected, so the oracle can replay a shard without building events and land on exactly
the same histories. There is no per-subject or per-event Python loop: every operation is on arrays
of the batch (or of the subjects an event touches).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nightingale.data.simulator import codes as C
from nightingale.data.simulator import model as M
from nightingale.data.simulator.config import STEP_DAYS, SimulatorConfig
from nightingale.data.simulator.state import (
    CohortState,
    advance_latents,
    init_state,
    pick_cancer_site,
)
from nightingale.data.simulator.treatment import escalate, start_for_conditions, start_statin

DT_YEARS = 1.0 / 12.0  # one step, in years
f32 = np.float32
_I = C.IDX
DX_CODES = np.array([_I[f"ICD10//{c}"] for c in ("E11.9", "I10", "J44.9", "I50.9", "I48.9", "F03")])
DEMENTIA_CODES = np.array([_I["ICD10//F03"], _I["ICD10//G30.9"]])
CANCER_CODES = np.array([-1] + [_I[f"ICD10//{c}"] for c in ("C34.9", "C50.9", "C61", "C18.9")])
CKD_CODES = np.array([-1, -1, -1, _I["ICD10//N18.3"], _I["ICD10//N18.4"], _I["ICD10//N18.5"]])
DRUG_CODES = np.array([_I[f"ATC//{d}"] for d in M.DRUGS])
REASON_CODES = np.array([_I[f"ICD10//{r}"] for r in M.ADMISSION_REASONS])
SMOKE_CODES = np.array([_I[f"SNOMED//{c}"] for c in ("266919005", "8517006", "77176002")])
HBA1C, EGFR, CREAT, CHOL = (_I[f"LOINC//{c}"] for c in ("59261-8", "62238-1", "14682-9", "14647-2"))
SBP, DBP, BMI = (_I[f"LOINC//{c}"] for c in ("8480-6", "8462-4", "39156-5"))
SODIUM, POTASSIUM, HAEMOGLOBIN, CRP = (_I[f"LOINC//{c}"] for c in ("2951-2", "2823-3", "718-7", "1988-5"))
FACE_TO_FACE, TELEPHONE, FOLLOW_UP = (_I[f"SNOMED//{c}"] for c in ("185345009", "185317003", "390906007"))
ADMISSION, DISCHARGE_HOME, DISCHARGE_CARE = (
    _I["ADMISSION//EMERGENCY"], _I["DISCHARGE//HOME"], _I["DISCHARGE//CARE_HOME"])
DEATH = _I["MEDS_DEATH"]
_AKI, _HF_REASON, _MI, _STROKE = (M.ADMISSION_REASONS.index(r) for r in ("N17.9", "I50.9", "I21.9", "I63.9"))


class EventSink:
    """Events as numpy arrays: local subject index, day (from the window start), code index, value."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(self, sub, day, code, value=None) -> None:
        if not self.enabled or len(sub) == 0:
            return
        n = len(sub)
        self._parts.append((
            np.asarray(sub, np.int32),
            np.asarray(day, np.float64),
            np.full(n, code, np.int16) if np.ndim(code) == 0 else np.asarray(code, np.int16),
            np.full(n, np.nan, f32) if value is None else np.asarray(value, f32),
        ))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self._parts:
            return (np.empty(0, np.int32), np.empty(0), np.empty(0, np.int16), np.empty(0, f32))
        return tuple(np.concatenate(p) for p in zip(*self._parts))  # type: ignore[return-value]


def measure(st: CohortState, rng, sink: EventSink, idx, day, age, *, bp=None, bmi=None, a1c=None,
            renal=None, chol=None, stage_ckd: bool = True, step: int = 0):
    """Emit measurements for subjects `idx` at `day` (masks aligned with idx say which).

    Values are latent + measurement noise, rounded as a lab reports them. Creatinine (umol/L) is
    measured and eGFR is computed from it with CKD-EPI 2021, so the two always agree. A measured
    eGFR below 60 may lead to a CKD diagnosis (or a stage change). Returns the measured HbA1c,
    systolic BP and cholesterol aligned with idx (NaN where not measured), for treatment decisions.
    """
    n = len(idx)
    out = np.full((3, n), np.nan, f32)
    z = rng.standard_normal((6, n), dtype=f32)
    if bp is not None and (sel := np.flatnonzero(bp)).size:
        i = idx[sel]
        s = np.round(st.sbp[i] + 6.0 * z[0, sel])
        d = np.round(0.45 * st.sbp[i] + 22.0 + st.dbp_off[i] - 0.15 * np.maximum(age[i] - 60, 0) + 5.0 * z[1, sel])
        sink.add(i, day[sel], SBP, s)
        sink.add(i, day[sel], DBP, d)
        out[1, sel] = s
    if bmi is not None and (sel := np.flatnonzero(bmi)).size:
        i = idx[sel]
        sink.add(i, day[sel], BMI, np.round(st.bmi[i] + 0.4 * z[2, sel], 1))
    if a1c is not None and (sel := np.flatnonzero(a1c)).size:
        i = idx[sel]
        v = np.maximum(np.round(st.a1c[i] + 1.5 * z[3, sel]), 20.0)
        sink.add(i, day[sel], HBA1C, v)
        out[0, sel] = v
    if chol is not None and (sel := np.flatnonzero(chol)).size:
        i = idx[sel]
        v = np.maximum(np.round(st.chol[i] + 0.25 * z[4, sel], 1), 1.5)
        sink.add(i, day[sel], CHOL, v)
        out[2, sel] = v
    if renal is not None and (sel := np.flatnonzero(renal)).size:
        i = idx[sel]
        cr = np.round(M.creatinine_from_egfr(st.egfr[i], age[i], st.male[i]) * np.exp(0.05 * z[5, sel]))
        eg = np.round(M.egfr_from_creatinine(cr, age[i], st.male[i]))
        sink.add(i, day[sel], CREAT, cr)
        sink.add(i, day[sel], EGFR, eg)
        if stage_ckd:
            stage = np.where(eg < 15, 5, np.where(eg < 30, 4, np.where(eg < 60, 3, 0)))
            up = (stage > st.ckd[i]) & (age[i] >= 18)
            if up.any():
                j = i[up]
                st.ckd[j] = stage[up]
                sink.add(j, day[sel][up], CKD_CODES[stage[up]])
    return out


class StepOutcomes(NamedTuple):
    """What one step did to each subject of the batch (float64 days from the window start, NaN if
    none; reason: index into `model.ADMISSION_REASONS`, -1 if none): the oracle's outcomes and
    the facts it conditions on. The first three are indexed by the oracle's outcome columns."""

    death: np.ndarray
    admission: np.ndarray
    diabetes: np.ndarray
    reason: np.ndarray
    discharge: np.ndarray  # NaN also for an admission that ends in death

    def take(self, idx: np.ndarray) -> StepOutcomes:
        return StepOutcomes(*(a[idx] for a in self))


class Given(NamedTuple):
    """Facts of the current step already on the record at a prediction time, per subject (the
    oracle's conditioning; NaN / -1 where the record shows none): an emergency admission (day,
    reason index, discharge day if discharged by then) and a new type 2 diabetes diagnosis (day).
    `step` makes these happen as recorded instead of drawing them; everything else is drawn."""

    admission: np.ndarray
    reason: np.ndarray
    discharge: np.ndarray
    diabetes: np.ndarray

    def take(self, idx: np.ndarray) -> Given:
        return Given(*(a[idx] for a in self))


def _pick(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    cw = np.cumsum(weights, axis=1)
    return np.minimum((u[:, None] * cw[:, -1:] > cw).sum(axis=1), weights.shape[1] - 1)


def step(st: CohortState, k: int, rng: np.random.Generator, sink: EventSink, start_year: float,
         end_day: float | None = None, given: Given | None = None) -> StepOutcomes:
    """Advance the batch through step `k` ([k, k+1) * STEP_DAYS days from the window start).

    `end_day` clips the last step at the window end (None: no clipping, as the oracle's future).
    `given`: facts of this step to reproduce rather than draw (the oracle's replicates of a
    prediction time inside the step); the random numbers drawn are the same either way.
    Returns the step's `StepOutcomes`.
    """
    n = st.n
    t0 = k * STEP_DAYS
    year = start_year + t0 / 365.25
    age = ((t0 - st.birth_day) / 365.25).astype(f32)
    act = st.alive & (st.reg_step <= k)
    newreg = act & (st.reg_step == k)
    lo = np.where(newreg, np.maximum(st.reg_day - t0, 0.0), 0.0).astype(f32)
    span = f32(STEP_DAYS if end_day is None else min(STEP_DAYS, end_day - t0))
    act &= lo < span
    frac = np.where(act, (span - lo) / STEP_DAYS, 0.0).astype(f32)  # exposure, in steps
    dt = frac * f32(DT_YEARS)
    U = rng.random((20, n), dtype=f32)
    z_latent = rng.standard_normal((4, n), dtype=f32)
    since_adm = k - st.last_adm
    nan = np.full(n, np.nan)

    # Death: decided first so that everything else in the step can be placed before it.
    dies = act & (U[0] < M.prob(M.death_hazard(st, age, k, since_adm), dt))
    hi = np.where(dies, lo + U[1] * (span - lo), span).astype(f32)
    width = hi - lo
    death_day = np.where(dies, t0 + hi, nan)

    # Registration: history of conditions held, smoking status and first checks.
    r = np.flatnonzero(newreg)
    if r.size:
        rday = t0 + lo[r]
        for c in range(M.N_BINARY_CONDITIONS):
            sel = st.cond[r, c]
            code = DEMENTIA_CODES[st.dem_alz[r[sel]].astype(int)] if c == M.DEMENTIA else DX_CODES[c]
            sink.add(r[sel], rday[sel], code)
        sel = st.ckd[r] > 0
        sink.add(r[sel], rday[sel], CKD_CODES[st.ckd[r[sel]]])
        sel = st.cancer[r] > 0
        sink.add(r[sel], rday[sel], CANCER_CODES[st.cancer[r[sel]]])
        adult = age[r] >= 16
        sink.add(r[adult], rday[adult], SMOKE_CODES[st.smoke[r[adult]]])
        chk = adult & (U[19, r] < 0.8)
        measure(st, rng, sink, r, t0 + lo[r] + 0.01 * width[r], age, bp=chk, bmi=chk, step=k)

    # New diagnoses (one time per subject per step), their first values and treatment.
    onset = (U[2:9].T < M.prob(M.onset_hazards(st, age), dt[:, None])) & act[:, None]
    known_dm = np.zeros(n, bool) if given is None else ~np.isnan(given.diabetes)
    onset[:, M.DM] = np.where(known_dm, act, onset[:, M.DM])
    dm_day = nan
    if onset.any():
        day_of = np.where(onset.any(axis=1), t0 + lo + U[9] * width, np.nan)
        if given is not None:
            day_of = np.where(known_dm, given.diabetes, day_of)
        for c in range(M.N_BINARY_CONDITIONS):
            i = np.flatnonzero(onset[:, c])
            st.cond[i, c] = True
            code = DEMENTIA_CODES[st.dem_alz[i].astype(int)] if c == M.DEMENTIA else DX_CODES[c]
            sink.add(i, day_of[i], code)
        i = np.flatnonzero(onset[:, M.DM])
        st.dm_excess[i] = 12.0 + 15.0 * U[18, i]
        st.a1c[i] = np.maximum(st.a1c[i] + st.dm_excess[i], 48.5)
        measure(st, rng, sink, i, day_of[i], age, a1c=np.ones(i.size, bool), step=k)
        dm_day = np.where(onset[:, M.DM], day_of, nan)
        i = np.flatnonzero(onset[:, M.HTN])
        measure(st, rng, sink, i, day_of[i], age, bp=np.ones(i.size, bool), step=k)
        i = np.flatnonzero(onset[:, M.N_BINARY_CONDITIONS])
        if i.size:
            st.cancer[i] = pick_cancer_site(st.take(i), U[18, i])
            st.cancer_step[i] = k
            sink.add(i, day_of[i], CANCER_CODES[st.cancer[i]])
        si, di = start_for_conditions(st, onset, age, year, U[10], k)
        sink.add(si, day_of[si], DRUG_CODES[di])

    # Chronic disease reviews (about 6-monthly for diabetes/CKD, 10-monthly otherwise).
    chronic = act & (st.cond[:, : M.DEMENTIA].any(axis=1) | (st.ckd > 0))
    p_rev = np.where(st.cond[:, M.DM] | (st.ckd > 0), 1 / 6, 1 / 10) * frac
    rv = np.flatnonzero(chronic & (U[11] < p_rev))
    if rv.size:
        day = t0 + lo[rv] + U[12, rv] * width[rv]
        sink.add(rv, day, FOLLOW_UP)
        u = U[13, rv]
        dm = st.cond[rv, M.DM]
        renal = dm | st.cond[rv, M.HTN] | (st.ckd[rv] > 0) | st.cond[rv, M.HF] | ((u * 11) % 1 < 0.3)
        m = measure(st, rng, sink, rv, day, age, bp=np.ones(rv.size, bool), bmi=dm | ((u * 7) % 1 < 0.3),
                    a1c=dm | ((u * 5) % 1 < 0.1), renal=renal, chol=(u * 3) % 1 < 0.5, step=k)
        smoke = age[rv] >= 16
        smoke &= (u * 13) % 1 < 0.3
        sink.add(rv[smoke], day[smoke], SMOKE_CODES[st.smoke[rv[smoke]]])
        si, di = escalate(st, rv, m[0], m[1], m[2], age, year, U[13], k)
        day_of = np.zeros(n)
        day_of[rv] = day
        sink.add(si, day_of[si], DRUG_CODES[di])

    # GP consultations (Poisson per step), with opportunistic BP, BMI and bloods.
    covid = 0.7 if 2020.25 <= year < 2020.5 else 1.0
    lam = M.consult_rate(st, age, M.n_conditions(st)) * frac * covid
    ci = np.repeat(np.arange(n), rng.poisson(lam))
    if ci.size:
        uc = rng.random((3, ci.size), dtype=f32)
        day = t0 + lo[ci] + uc[0] * width[ci]
        tel = uc[1] < (0.5 if year >= 2020.2 else 0.1)
        sink.add(ci, day, np.where(tel, TELEPHONE, FACE_TO_FACE))
        adult = (age[ci] >= 18) & ~tel
        bp = adult & (uc[2] < np.where(st.cond[ci, M.HTN], 0.3, 0.12))
        bloods = adult & ((uc[2] * 13) % 1 < 0.06)
        measure(st, rng, sink, ci, day, age, bp=bp, bmi=adult & ((uc[2] * 7) % 1 < 0.07),
                a1c=bloods, renal=bloods, chol=bloods, step=k)

    # Emergency admissions, in-hospital labs, discharge (or death in hospital).
    adm = act & (U[14] < M.prob(M.admission_hazard(st, age, since_adm), dt))
    known = np.zeros(n, bool) if given is None else ~np.isnan(given.admission)
    adm = np.where(known, act, adm)
    adm_day, adm_reason, dis_day = nan, np.full(n, -1, np.int64), nan
    ai = np.flatnonzero(adm)
    if ai.size:
        sub = st.take(ai)
        reason = _pick(M.admission_reason_weights(sub, age[ai], st.due[ai] >= 0), U[16, ai])
        died = dies[ai]
        los = (0.3 + U[17, ai] * 2.0 * (2.0 + 0.12 * np.maximum(age[ai] - 60, 0))).astype(f32)
        los = np.minimum(los, 0.95 * width[ai])
        aoff = lo[ai] + np.where(died, 0.9 * U[15, ai] * width[ai], U[15, ai] * (width[ai] - los))
        aday = t0 + aoff
        if given is not None and (kn := known[ai]).any():  # as recorded (a discharge not yet: drawn)
            g = given.take(ai)
            reason = np.where(kn, g.reason, reason)
            aday = np.where(kn, g.admission, aday)
            los = np.where(kn & ~np.isnan(g.discharge), g.discharge - aday, los)
        end = np.where(died, np.maximum(t0 + hi[ai], aday), aday + los)
        adm_day = np.full(n, np.nan)
        adm_day[ai] = aday
        adm_reason[ai] = reason
        dis_day = np.full(n, np.nan)
        dis_day[ai] = np.where(died, np.nan, end)
        sink.add(ai, aday, ADMISSION)
        sink.add(ai, aday, REASON_CODES[reason])
        lab = aday + 0.1 * (end - aday)
        aki = reason == _AKI
        st.egfr[ai] = np.where(aki, 0.6, 1.0) * st.egfr[ai]
        z = rng.standard_normal((4, ai.size), dtype=f32)
        measure(st, rng, sink, ai, lab, age, renal=np.ones(ai.size, bool), stage_ckd=False, step=k)
        st.egfr[ai] = np.where(aki, st.egfr[ai] / 0.6 * 0.93, st.egfr[ai])  # partial recovery
        sink.add(ai, lab, SODIUM, np.round(138.0 - 3.0 * (reason == 0) + 3.5 * z[0]))
        sink.add(ai, lab, POTASSIUM, np.round(4.3 + 0.4 * (sub.ckd > 0) + 0.45 * z[1], 1))
        sink.add(ai, lab, HAEMOGLOBIN, np.round(138.0 - 10.0 * ~sub.male - 0.2 * np.maximum(age[ai] - 60, 0) + 14.0 * z[2]))
        sink.add(ai, lab, CRP, np.round(np.exp(np.where(reason <= 2, 4.3, 2.2) + 0.9 * z[3])))
        ok = ~died
        care = st.cond[ai, M.DEMENTIA] | (age[ai] >= 85)
        sink.add(ai[ok], end[ok], np.where(care[ok] & ((U[17, ai[ok]] * 7) % 1 < 0.3), DISCHARGE_CARE, DISCHARGE_HOME))
        st.last_adm[ai] = k
        # Heart failure first found in hospital; statins after MI or stroke; started at discharge.
        onset2 = np.zeros((n, M.N_BINARY_CONDITIONS + 1), bool)
        hf = ai[ok & (reason == _HF_REASON) & ~sub.cond[:, M.HF]]
        st.cond[hf, M.HF] = True
        onset2[hf, M.HF] = True
        cvd = ai[ok & ((reason == _MI) | (reason == _STROKE))]
        dis_day = np.zeros(n)
        dis_day[ai] = end
        si, di = start_for_conditions(st, onset2, age, year, U[10], k)
        sink.add(si, dis_day[si], DRUG_CODES[di])
        si, di = start_statin(st, cvd, year, k)
        sink.add(si, dis_day[si], DRUG_CODES[di])

    # Repeat prescriptions that fall due in this step.
    si, di = np.nonzero((st.due == k) & act[:, None])
    if si.size:
        sink.add(si, t0 + lo[si] + rng.random(si.size, dtype=f32) * width[si], DRUG_CODES[di])
        st.due[si, di] = k + M.drug_interval(st.sid[si], di)

    # Death last, then move the latent state of survivors one step on.
    d = np.flatnonzero(dies)
    sink.add(d, death_day[d], DEATH)
    st.alive[d] = False
    st.death_day[d] = death_day[d]
    advance_latents(st, age, st.due >= 0, z_latent, np.where(dies, 0.0, dt).astype(f32))
    return StepOutcomes(death_day, adm_day, dm_day, adm_reason, dis_day)


def shard_rng(cfg: SimulatorConfig, shard: int) -> np.random.Generator:
    """The RNG of batch `shard`: independent of every other batch and of the worker count."""
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, shard]))


def start_year(cfg: SimulatorConfig) -> float:
    """The window start as a fractional calendar year (for era effects such as drug choice)."""
    return cfg.start_date.year + (cfg.start_date.timetuple().tm_yday - 1) / 365.25


class Snapshot(NamedTuple):
    """Subjects' state at the start of a step, and what that step then did to them."""

    state: CohortState
    outcomes: StepOutcomes


def run_shard(cfg: SimulatorConfig, shard: int, *, emit: bool = True,
              snapshots: dict[int, np.ndarray] | None = None, until: int | None = None):
    """Simulate batch `shard` from its seed.

    Returns the final state, the event sink (empty if `emit` is False) and, for each step `k` in
    `snapshots`, a `Snapshot` of subjects `snapshots[k]` (local indices): their state at the start
    of step k (after every event before day k * STEP_DAYS) and the step's outcomes for them.
    `until` stops after that many steps.
    """
    rng = shard_rng(cfg, shard)
    st = init_state(cfg, shard, rng)
    sink = EventSink(emit)
    taken: dict[int, Snapshot] = {}
    sy = start_year(cfg)
    last = cfg.n_steps if until is None else min(until, cfg.n_steps)
    for k in range(last):
        before = st.take(snapshots[k]) if snapshots and k in snapshots else None
        out = step(st, k, rng, sink, sy, cfg.window_days)
        if before is not None:
            taken[k] = Snapshot(before, out.take(snapshots[k]))
    return st, sink, taken
