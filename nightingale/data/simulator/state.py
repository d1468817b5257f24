"""The per-subject state of a simulated batch, its initialisation, and the pre-window burn-in.

A `CohortState` is a bag of equally long numpy arrays (one entry per subject; 2-D for conditions
and drugs). It is everything the future depends on: the engine steps it forward, and the oracle
copies it at a prediction time and replays the future many times from the copy.

Initialisation samples who the subjects are (age pyramid, sex, ethnicity, deprivation, smoking,
personal physiology) and then runs a *burn-in*: yearly steps from age 20 to the age at GP
registration with the same hazards and treatment rules as the main engine but no events and no
death, so that people already adult in 2005 arrive with age-appropriate conditions, drugs and
latent values (emitted as history at registration).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from nightingale.data.simulator import model as M
from nightingale.data.simulator.config import STEP_DAYS, SimulatorConfig
from nightingale.data.simulator.treatment import escalate, start_for_conditions

NEVER = -100_000  # "no admission yet" step


@dataclass
class CohortState:
    """Per-subject arrays; times are days from the window start, steps are engine step indices."""

    sid: np.ndarray  # int64 raw subject id
    male: np.ndarray  # bool
    eth: np.ndarray  # int8, index into codes.ETHNICITIES
    imd: np.ndarray  # int8, deprivation quintile 1 (most deprived) .. 5
    smoke: np.ndarray  # int8: 0 never, 1 ex, 2 current
    dem_alz: np.ndarray  # bool: a dementia would be Alzheimer's (G30.9) rather than F03
    birth_day: np.ndarray  # float64 days
    reg_day: np.ndarray  # float64 days (GP registration)
    reg_step: np.ndarray  # int32
    bmi0: np.ndarray  # float32 personal levels (kg/m2, mmHg, mmol/mol, mmol/L, mmHg)
    sbp0: np.ndarray
    a1c0: np.ndarray
    chol0: np.ndarray
    dbp_off: np.ndarray
    egfr_slope: np.ndarray  # float32 multiplier of age-related eGFR loss
    frailty: np.ndarray  # float32 multiplier of the consultation rate (mean 1)
    alive: np.ndarray  # bool
    bmi: np.ndarray  # float32 latent values
    sbp: np.ndarray
    a1c: np.ndarray
    egfr: np.ndarray
    chol: np.ndarray
    dm_excess: np.ndarray  # float32 HbA1c excess from diabetes progression (mmol/mol)
    cond: np.ndarray  # bool (n, N_BINARY_CONDITIONS): DM, HTN, COPD, HF, AF, DEMENTIA
    ckd: np.ndarray  # int8 diagnosed CKD stage: 0, 3, 4, 5
    cancer: np.ndarray  # int8 site: 0 none, LUNG, BREAST, PROSTATE, COLORECTAL
    cancer_step: np.ndarray  # int32 step of the cancer diagnosis
    due: np.ndarray  # int32 (n, len(DRUGS)): step of the next repeat issue, -1 if not on the drug
    last_adm: np.ndarray  # int32 step of the last emergency admission
    death_day: np.ndarray  # float64 day of death (NaN while alive)

    @property
    def n(self) -> int:
        return len(self.sid)

    def take(self, idx: np.ndarray) -> CohortState:
        """A copy holding subjects `idx` (with repeats allowed, as the oracle replicates)."""
        return CohortState(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


def _sample_age(rng: np.random.Generator, n: int, tilt: float = 0.0) -> np.ndarray:
    shares = M.AGE_BAND_SHARES
    if tilt:
        shares = shares * np.exp(tilt * np.arange(len(shares)) / (len(shares) - 1))
        shares = shares / shares.sum()
    band = rng.choice(len(shares), size=n, p=shares)
    return band * 5.0 + rng.random(n) * M.AGE_BAND_WIDTH[band]


def init_state(cfg: SimulatorConfig, shard: int, rng: np.random.Generator) -> CohortState:
    """Sample the subjects of batch `shard` and burn them in to their registration date."""
    n = cfg.shard_subjects(shard)
    W = cfg.window_days
    f32 = np.float32
    sid = cfg.id_offset + shard * cfg.shard_size + np.arange(n, dtype=np.int64) + 1
    grp = rng.random(n)
    born = grp < cfg.born_in_window_share
    later = ~born & (grp < cfg.born_in_window_share + cfg.later_registrant_share)
    age = _sample_age(rng, n, cfg.age_tilt)
    u = rng.random(n) * W
    reg_day = np.where(later | born, u, 0.0)
    birth_day = np.where(born, u, reg_day - age * 365.25)
    male = rng.random(n) >= M.FEMALE_SHARE
    eth = rng.choice(5, size=n, p=M.ETHNICITY_SHARES).astype(np.int8)
    if cfg.deprivation_tilt:
        w = np.exp(cfg.deprivation_tilt * (3 - np.arange(1, 6)))
        imd = (rng.choice(5, size=n, p=w / w.sum()) + 1).astype(np.int8)
    else:
        imd = rng.integers(1, 6, size=n).astype(np.int8)
    us = rng.random(n)
    p_cur = 0.17 + 0.04 * (3 - imd) + 0.03 * male
    smoke = np.where(us < p_cur, 2, np.where(us < p_cur + 0.25, 1, 0)).astype(np.int8)
    z = rng.standard_normal((8, n)).astype(f32)
    black, asian = eth == M.BLACK, eth == M.ASIAN
    st = CohortState(
        sid=sid, male=male, eth=eth, imd=imd, smoke=smoke, dem_alz=rng.random(n) < 0.6,
        birth_day=birth_day, reg_day=reg_day,
        reg_step=np.floor(reg_day / STEP_DAYS).astype(np.int32),
        bmi0=np.clip(24.8 + 0.4 * (3 - imd) + 4.0 * z[0], 17.0, 50.0).astype(f32),
        sbp0=(114.0 + 5.0 * male + 4.0 * black + 10.0 * z[1]).astype(f32),
        a1c0=(33.0 + 2.0 * (asian | black) + 3.0 * z[2]).astype(f32),
        chol0=(4.5 + 0.7 * z[3]).astype(f32),
        dbp_off=(5.0 * z[4]).astype(f32),
        egfr_slope=np.exp(0.4 * z[5]).astype(f32),
        frailty=rng.gamma(2.0, 0.5, size=n).astype(f32),
        alive=np.ones(n, dtype=bool),
        bmi=np.zeros(n, f32), sbp=np.zeros(n, f32), a1c=np.zeros(n, f32),
        egfr=(118.0 + 10.0 * z[6]).astype(f32), chol=np.zeros(n, f32), dm_excess=np.zeros(n, f32),
        cond=np.zeros((n, M.N_BINARY_CONDITIONS), dtype=bool),
        ckd=np.zeros(n, np.int8), cancer=np.zeros(n, np.int8),
        cancer_step=np.full(n, NEVER, np.int32),
        due=np.full((n, len(M.DRUGS)), -1, np.int32),
        last_adm=np.full(n, NEVER, np.int32),
        death_day=np.full(n, np.nan),
    )
    reg_age = ((reg_day - birth_day) / 365.25).astype(f32)
    _burn_in(st, reg_age, cfg, rng)
    # Drugs held at registration are first issued in the registration step.
    on = st.due >= 0
    st.due[:] = np.where(on, st.reg_step[:, None], -1)
    return st


def advance_latents(st: CohortState, age, drugs_on, z, dt) -> None:
    """Move the latent state `dt` years forward (AR(1) to targets, eGFR decline)."""
    st.bmi = M.ar1(st.bmi, M.bmi_target(st, age), M.LATENT_SD["bmi"], dt, z[0]).astype(np.float32)
    st.sbp = M.ar1(st.sbp, M.sbp_target(st, age, drugs_on), M.LATENT_SD["sbp"], dt, z[1]).astype(np.float32)
    sd_a1c = M.LATENT_SD["a1c"] * (1.0 + st.cond[:, M.DM])
    st.a1c = M.ar1(st.a1c, M.a1c_target(st, age, drugs_on), sd_a1c, dt, z[2]).astype(np.float32)
    st.chol = M.ar1(st.chol, M.chol_target(st, age, drugs_on), M.LATENT_SD["chol"], dt, z[3]).astype(np.float32)
    st.egfr = np.clip(st.egfr - M.egfr_decline(st, age) * dt, 4.0, 130.0).astype(np.float32)
    st.dm_excess = np.minimum(st.dm_excess + st.cond[:, M.DM] * dt, 45.0).astype(np.float32)


def _burn_in(st: CohortState, reg_age: np.ndarray, cfg: SimulatorConfig, rng: np.random.Generator) -> None:
    """Yearly steps from age 20 (or the registration age, if younger) up to registration."""
    age0 = np.minimum(reg_age, 20.0).astype(np.float32)
    on0 = st.due >= 0
    st.bmi = M.bmi_target(st, age0)
    st.sbp = M.sbp_target(st, age0, on0)
    st.a1c = M.a1c_target(st, age0, on0)
    st.chol = M.chol_target(st, age0, on0)
    years = np.maximum(reg_age - 20.0, 0.0)
    start_year = cfg.start_date.year
    for j in range(int(np.ceil(years.max())) if st.n else 0):
        dt = np.clip(years - j, 0.0, 1.0).astype(np.float32)
        age = np.where(dt > 0, 20.0 + j, reg_age).astype(np.float32)
        year = start_year + (st.reg_day / 365.25) - (years - j)
        z = rng.standard_normal((4, st.n), dtype=np.float32)
        u = rng.random((M.N_BINARY_CONDITIONS + 4, st.n), dtype=np.float32)
        onset = u[: M.N_BINARY_CONDITIONS + 1].T < M.prob(M.onset_hazards(st, age), dt[:, None])
        for c in range(M.N_BINARY_CONDITIONS):
            st.cond[:, c] |= onset[:, c]
        new_dm = onset[:, M.DM]
        st.dm_excess[new_dm] = 12.0 + 15.0 * u[-1][new_dm]
        new_ca = np.flatnonzero(onset[:, M.N_BINARY_CONDITIONS])
        if len(new_ca):
            st.cancer[new_ca] = pick_cancer_site(st.take(new_ca), u[-2][new_ca])
        ckd_new = (st.ckd == 0) & (st.egfr < 60) & (u[-3] < 0.5 * dt)
        st.ckd = np.where(ckd_new | (st.ckd > 0), np.maximum(st.ckd, ckd_stage(st.egfr)), 0).astype(np.int8)
        # Treatment of the burn-in year: start for new conditions, escalate on latent values.
        start_for_conditions(st, onset, age, year, u[-4], None)
        i = np.flatnonzero(dt > 0)
        escalate(st, i, st.a1c[i], st.sbp[i], st.chol[i], age, year, u[-1], None)
        advance_latents(st, age, st.due >= 0, z, dt)
    # Cancer diagnosed before the window counts as "late" (more than two years ago).
    st.cancer_step[st.cancer > 0] = st.reg_step[st.cancer > 0] - 100


def pick_cancer_site(st: CohortState, u: np.ndarray) -> np.ndarray:
    w = M.cancer_site_weights(st)
    cw = np.cumsum(w, axis=1)
    return (1 + (u[:, None] * cw[:, -1:] > cw).sum(axis=1)).astype(np.int8)


def ckd_stage(egfr: np.ndarray) -> np.ndarray:
    """CKD stage from eGFR (mL/min/1.73m2): 0 (>= 60), 3 (30-59), 4 (15-29), 5 (< 15)."""
    return np.where(egfr < 15, 5, np.where(egfr < 30, 4, np.where(egfr < 60, 3, 0))).astype(np.int8)

