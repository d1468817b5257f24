"""The simulator's model: population make-up, latent physiology targets, and hazards.

All hazards are per year; a step of `dt` years turns a hazard `h` into a probability
`1 - exp(-h * dt)`. Everything here is a pure numpy function of the state arrays, shared by the
burn-in (yearly steps, no events), the main monthly engine and the oracle, so the three can never
disagree about the process.

Numbers are plausible, UK-flavoured round figures (ONS population and ethnicity shares, QOF-like
prevalences, a Gompertz mortality slope of ~9.5%/year), not a fitted epidemiological model.
"""

from __future__ import annotations

import numpy as np

# --- population --------------------------------------------------------------------------------------
#: UK mid-2005 population share by 5-year age band (0-4 ... 85-89, 90-99), ONS-like.
AGE_BAND_SHARES = np.array(
    [5.7, 6.0, 6.4, 6.5, 6.5, 6.1, 6.8, 7.5, 7.6, 6.8, 6.1, 6.7, 5.3, 4.6, 4.1, 3.5, 2.6, 1.5, 0.7]
)
AGE_BAND_SHARES = AGE_BAND_SHARES / AGE_BAND_SHARES.sum()
AGE_BAND_WIDTH = np.array([5.0] * 18 + [10.0])
#: ONS 2021 broad ethnic groups (England and Wales): White, Asian, Black, Mixed, Other.
ETHNICITY_SHARES = np.array([0.817, 0.093, 0.040, 0.029, 0.021])
FEMALE_SHARE = 0.507
WHITE, ASIAN, BLACK, MIXED, OTHER = range(5)

# --- conditions and drugs (column indices into the state's arrays) ----------------------------------
DM, HTN, COPD, HF, AF, DEMENTIA = range(6)
N_BINARY_CONDITIONS = 6
# cancer sites (0 = none)
LUNG, BREAST, PROSTATE, COLORECTAL = 1, 2, 3, 4

DRUGS = (
    "A10BA02", "A10BB09", "A10BH01", "A10BK01", "A10AE04",  # metformin, gliclazide, sitagliptin, dapagliflozin, insulin
    "C09AA05", "C08CA01", "C03BA11", "C07AB07", "C03CA01",  # ramipril, amlodipine, indapamide, bisoprolol, furosemide
    "C10AA01", "C10AA05", "B01AA03", "B01AF02",  # simvastatin, atorvastatin, warfarin, apixaban
    "R03AC02", "R03BB04", "N06DA02", "L02BA01",  # salbutamol, tiotropium, donepezil, tamoxifen
)
(MET, GLIC, SITA, DAPA, INS, RAM, AML, IND, BISO, FURO,
 SIMVA, ATORVA, WARF, APIX, SALB, TIO, DONE, TAM) = range(len(DRUGS))
DM_DRUGS = (MET, GLIC, SITA, DAPA, INS)
#: HbA1c lowering per drug (mmol/mol), systolic BP lowering (mmHg).
A1C_EFFECT = {MET: 8.0, GLIC: 7.0, SITA: 5.0, DAPA: 6.0, INS: 12.0}
SBP_EFFECT = {RAM: 9.0, AML: 9.0, IND: 7.0, BISO: 4.0}

#: Monthly AR(1) persistence of the latent state, and the stationary s.d. around its target.
PHI_MONTH = 0.97
LATENT_SD = {"bmi": 1.0, "sbp": 7.0, "a1c": 2.5, "chol": 0.4}


def drug_interval(sid: np.ndarray, drug) -> np.ndarray:
    """Months between repeat issues (1, 2 or 3; shares 0.5/0.3/0.2), fixed per subject and drug."""
    h = (sid * 2654435761 + np.asarray(drug) * 40503) % 10
    return (1 + (h >= 5) + (h >= 8)).astype(np.int32)


def ar1(x, target, sd, dt_years, z):
    """One AR(1) step of length `dt_years` towards `target` with stationary s.d. `sd`."""
    phi = PHI_MONTH ** (12.0 * dt_years)
    return x + (1.0 - phi) * (target - x) + sd * np.sqrt(1.0 - phi * phi) * z


def prob(h, dt_years):
    """Probability of at least one event in `dt_years` at constant hazard `h` (per year)."""
    return -np.expm1(-h * dt_years)


# --- latent physiology ---------------------------------------------------------------------------
def bmi_target(st, age):
    """BMI (kg/m2): rises ~0.12/year from 20 to 60, falls after 70; childhood curve below 20."""
    adult = st.bmi0 + 0.12 * np.clip(age - 20.0, 0.0, 40.0) - 0.12 * np.maximum(age - 70.0, 0.0)
    child = 16.5 + (st.bmi0 - 16.5) * np.clip((age - 8.0) / 12.0, 0.0, 1.0)
    return np.where(age < 20.0, child, adult).astype(np.float32)


def sbp_target(st, age, drugs_on):
    """Systolic BP (mmHg): age slope, BMI effect, antihypertensive effects."""
    lowering = sum(eff * drugs_on[:, d] for d, eff in SBP_EFFECT.items())
    t = st.sbp0 + 0.6 * np.maximum(age - 30.0, 0.0) + 0.6 * (st.bmi - 25.0) - lowering
    t = t + 4.0 * (st.ckd > 0)
    return np.where(age < 16.0, 105.0 + st.sbp0 - 118.0, t).astype(np.float32)


def a1c_target(st, age, drugs_on):
    """HbA1c (mmol/mol): age and BMI effects, diabetes excess, drug effects."""
    lowering = sum(eff * drugs_on[:, d] for d, eff in A1C_EFFECT.items())
    t = st.a1c0 + 0.07 * np.maximum(age - 30.0, 0.0) + 0.3 * (st.bmi - 27.0) + st.dm_excess - lowering
    return np.maximum(t, 28.0).astype(np.float32)


def chol_target(st, age, drugs_on):
    """Total cholesterol (mmol/L): age and BMI effects, statin effect."""
    statin = drugs_on[:, SIMVA] | drugs_on[:, ATORVA]
    t = st.chol0 + 0.025 * np.clip(age - 20.0, 0.0, 40.0) + 0.04 * (st.bmi - 27.0) - 1.6 * statin
    return np.maximum(t, 2.0).astype(np.float32)


def egfr_decline(st, age):
    """Yearly loss of true eGFR (mL/min/1.73m2 per year): age, diabetes, uncontrolled BP, CKD, HF."""
    c = st.cond
    d = (age > 35.0) * 0.7 * st.egfr_slope
    d = d + c[:, DM] * (0.6 + 0.06 * np.maximum(st.a1c - 53.0, 0.0))
    d = d + (st.sbp > 145.0) * 0.5 + (st.ckd > 0) * 0.5 + c[:, HF] * 0.5
    return d.astype(np.float32)


# --- kidney function: CKD-EPI 2021 (Inker et al., NEJM 2021), creatinine in umol/L ---------------------
def _ckd_epi_base(age, male):
    return 142.0 * np.power(0.9938, age) * np.where(male, 1.0, 1.012)


def creatinine_from_egfr(egfr, age, male):
    """Serum creatinine (umol/L) that the CKD-EPI 2021 equation maps to `egfr`."""
    kappa = np.where(male, 0.9, 0.7)
    alpha = np.where(male, -0.302, -0.241)
    r = egfr / _ckd_epi_base(np.maximum(age, 18.0), male)
    ratio = np.where(r >= 1.0, np.power(r, 1.0 / alpha), np.power(r, -1.0 / 1.2))
    return (ratio * kappa * 88.4).astype(np.float32)


def egfr_from_creatinine(creat, age, male):
    """CKD-EPI 2021 eGFR (mL/min/1.73m2) from serum creatinine (umol/L)."""
    kappa = np.where(male, 0.9, 0.7)
    alpha = np.where(male, -0.302, -0.241)
    s = creat / 88.4 / kappa
    base = _ckd_epi_base(np.maximum(age, 18.0), male)
    return (base * np.power(np.minimum(s, 1.0), alpha) * np.power(np.maximum(s, 1.0), -1.2)).astype(
        np.float32
    )


# --- hazards (per year) ------------------------------------------------------------------------------
_DM_ETH = np.array([0.0, 0.8, 0.5, 0.3, 0.3], dtype=np.float32)
_HTN_ETH = np.array([0.0, 0.1, 0.45, 0.1, 0.1], dtype=np.float32)


def n_conditions(st):
    return st.cond.sum(axis=1, dtype=np.int8) + (st.ckd > 0) + (st.cancer > 0)


def onset_hazards(st, age):
    """Hazards (per year) of a first diagnosis of each binary condition and of cancer, (n, 7)."""
    c = st.cond
    male = st.male
    cur, ex = st.smoke == 2, st.smoke == 1
    depr = (3 - st.imd).astype(np.float32)  # > 0 in more deprived quintiles
    h = np.empty((len(age), N_BINARY_CONDITIONS + 1), dtype=np.float32)
    h[:, DM] = (age >= 25) * 0.005 * np.exp(
        0.03 * (age - 50) + 0.25 * (st.a1c - 40) + 0.05 * (st.bmi - 28) + _DM_ETH[st.eth]
        + 0.2 * male + 0.08 * depr
    )
    h[:, HTN] = (age >= 25) * 0.012 * np.exp(
        0.035 * (age - 50) + 0.06 * (st.sbp - 135) + _HTN_ETH[st.eth] + 0.02 * (st.bmi - 27)
    )
    h[:, COPD] = (age >= 35) * 0.0012 * np.exp(0.05 * (age - 60) + 2.0 * cur + 1.3 * ex + 0.15 * depr)
    h[:, HF] = (age >= 40) * 0.0025 * np.exp(
        0.07 * (age - 70) + 0.6 * c[:, HTN] + 0.6 * c[:, DM] + 1.0 * c[:, AF] + 0.6 * (st.ckd > 0)
        + 0.3 * male + 0.02 * (st.sbp - 140)
    )
    h[:, AF] = (age >= 40) * 0.004 * np.exp(
        0.075 * (age - 70) + 0.35 * male + 0.4 * c[:, HTN] + 0.3 * c[:, HF] + 0.03 * (st.bmi - 27)
    )
    h[:, DEMENTIA] = (age >= 60) * 0.008 * np.exp(
        0.13 * (age - 80) + 0.3 * c[:, DM] + 0.2 * c[:, HTN] + 0.1 * depr
    )
    h[:, N_BINARY_CONDITIONS] = (age >= 30) * (st.cancer == 0) * 0.005 * np.exp(
        0.06 * (age - 65) + 0.5 * cur + 0.2 * ex
    )
    h[:, :N_BINARY_CONDITIONS] *= ~c
    return h


def cancer_site_weights(st):
    """Unnormalised probabilities of lung, breast, prostate, colorectal for a new cancer, (n, 4)."""
    smoke = 1.0 + 2.5 * (st.smoke == 2) + 1.0 * (st.smoke == 1)
    return np.stack([0.6 * smoke, 1.2 * ~st.male, 1.2 * st.male, np.full(len(smoke), 0.6)], axis=1)


_CANCER_HR_EARLY = np.array([1.0, 6.0, 1.6, 1.3, 2.5], dtype=np.float32)
_CANCER_HR_LATE = np.array([1.0, 2.0, 1.2, 1.1, 1.4], dtype=np.float32)
_CKD_HR = np.array([1.0, 1.0, 1.0, 1.5, 2.5, 4.0], dtype=np.float32)


def death_hazard(st, age, step, since_adm):
    """Death hazard (per year): Gompertz in age times condition and recent-admission ratios."""
    c = st.cond
    log_hr = (
        0.095 * age + 0.3 * st.male + 0.35 * c[:, DM] + 0.1 * c[:, HTN] + 0.6 * c[:, COPD]
        + 0.8 * c[:, HF] + 0.25 * c[:, AF] + 0.9 * c[:, DEMENTIA] + 0.5 * (st.smoke == 2)
        + 0.2 * (st.smoke == 1) + 0.08 * (3 - st.imd) + 0.25 * (st.a1c > 75)
        + 0.7 * (since_adm <= 3)
    )
    early = (step - st.cancer_step) <= 24
    cancer_hr = np.where(early, _CANCER_HR_EARLY[st.cancer], _CANCER_HR_LATE[st.cancer])
    return (1.2e-5 * np.exp(log_hr) * cancer_hr * _CKD_HR[st.ckd]).astype(np.float32)


def admission_hazard(st, age, since_adm):
    """Emergency admission hazard (per year): age, multimorbidity, abnormal values, readmission."""
    log_h = (
        np.log(0.035) + 0.028 * (age - 50) + 0.28 * n_conditions(st)
        + 0.04 * np.maximum(st.a1c - 58, 0) + 0.03 * np.maximum(60 - st.egfr, 0)
        + 0.12 * (3 - st.imd) + 0.3 * (st.smoke == 2)
        + np.where(since_adm <= 1, 1.2, np.where(since_adm <= 3, 0.7, np.where(since_adm <= 12, 0.3, 0.0)))
    )
    return np.exp(log_h).astype(np.float32)


#: Admission reasons: ICD-10 code of the primary diagnosis.
ADMISSION_REASONS = ("J18.9", "I50.9", "J44.1", "N17.9", "E16.2", "S72.0", "R07.4", "R55", "I21.9", "I63.9")


def admission_reason_weights(st, age, drugs_on):
    """Unnormalised probabilities of each admission reason, (n, len(ADMISSION_REASONS))."""
    c = st.cond
    anticoag = drugs_on[:, WARF] | drugs_on[:, APIX]
    on_hypo = drugs_on[:, GLIC] | drugs_on[:, INS]
    one = np.ones(len(age), dtype=np.float32)
    return np.stack(
        [
            1.0 + 0.02 * np.maximum(age - 60, 0) + 1.0 * c[:, COPD],
            0.1 * (age >= 50) + 3.0 * c[:, HF],
            3.0 * c[:, COPD],
            0.3 + 1.5 * (st.ckd > 0),
            1.2 * on_hypo,
            0.05 + 0.03 * np.maximum(age - 70, 0) + 1.0 * c[:, DEMENTIA],
            0.8 * one,
            0.6 * one,
            0.2 + 0.4 * c[:, DM] + 0.2 * c[:, HTN],
            0.2 + 0.8 * (c[:, AF] & ~anticoag) + 0.2 * c[:, HTN],
        ],
        axis=1,
    ).astype(np.float32)


def consult_rate(st, age, n_cond):
    """GP consultations per month: U-shaped in age, higher for women of working age and multimorbidity."""
    base = np.where(age < 5, 0.45, np.where(age < 16, 0.15, np.where(age < 45, 0.22, np.where(
        age < 65, 0.32, np.where(age < 75, 0.45, 0.6)))))
    base = base + 0.08 * (~st.male & (age >= 16) & (age < 45))
    return (st.frailty * (base + 0.1 * n_cond)).astype(np.float32)
