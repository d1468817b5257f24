"""Prescribing rules: which drugs start at a diagnosis, and how treatment escalates on values.

Loosely NICE-shaped: metformin first for type 2 diabetes (a second agent when HbA1c stays
>= 58 mmol/mol, insulin when >= 64 on two agents); ACE inhibitor first for hypertension under 55
and not of Black ethnicity, else a calcium-channel blocker, then the other, then indapamide when
clinic systolic BP stays >= 150 mmHg; statins for diabetes, cardiovascular disease or high
cholesterol (simvastatin before 2010, atorvastatin after); anticoagulation for AF (warfarin before
2014, apixaban after); and so on.

Functions return the (subject, drug) pairs that were started, so the engine can emit the first
issue; `step=None` (the burn-in) just marks the drug as held.
"""

from __future__ import annotations

import numpy as np

from nightingale.data.simulator import model as M


def _u(u: np.ndarray, k: int) -> np.ndarray:
    """The k-th pseudo-independent uniform derived from `u` (keeps one RNG draw per subject)."""
    return (u * (7.0 + 6.0 * k) + 0.3183 * k) % 1.0 if k else u


def _start(st, idx: np.ndarray, drug: int | np.ndarray, step, out: list) -> None:
    drug = np.broadcast_to(np.asarray(drug), idx.shape)
    new = st.due[idx, drug] < 0
    idx, drug = idx[new], drug[new]
    if not len(idx):
        return
    st.due[idx, drug] = 0 if step is None else step + M.drug_interval(st.sid[idx], drug)
    out.append((idx, drug))


def _statin(year) -> np.ndarray:
    return np.where(np.asarray(year) < 2010, M.SIMVA, M.ATORVA)


def _collect(out: list) -> tuple[np.ndarray, np.ndarray]:
    if not out:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out]).astype(np.int64)


def start_for_conditions(st, onset, age, year, u, step):
    """Start treatment for new diagnoses. `onset` is (n, 7): the binary conditions, then cancer."""
    out: list = []
    year = np.broadcast_to(np.asarray(year, dtype=np.float64), (st.n,))
    statin = st.due[:, M.SIMVA].__ge__(0) | (st.due[:, M.ATORVA] >= 0)

    i = np.flatnonzero(onset[:, M.DM])
    _start(st, i, np.where(st.egfr[i] >= 30, M.MET, M.GLIC), step, out)
    j = i[(_u(u[i], 1) < 0.8) & ~statin[i]]
    _start(st, j, _statin(year[j]), step, out)

    i = np.flatnonzero(onset[:, M.HTN])
    first = np.where((age[i] < 55) & (st.eth[i] != M.BLACK), M.RAM, M.AML)
    _start(st, i, first, step, out)
    j = i[(age[i] >= 40) & (_u(u[i], 2) < 0.4) & ~statin[i]]
    _start(st, j, _statin(year[j]), step, out)

    i = np.flatnonzero(onset[:, M.COPD])
    _start(st, i, M.SALB, step, out)
    _start(st, i[_u(u[i], 3) < 0.6], M.TIO, step, out)

    i = np.flatnonzero(onset[:, M.HF])
    _start(st, i, M.BISO, step, out)
    _start(st, i, M.RAM, step, out)
    _start(st, i[_u(u[i], 4) < 0.8], M.FURO, step, out)
    j = i[(_u(u[i], 5) < 0.6) & ~statin[i]]
    _start(st, j, _statin(year[j]), step, out)

    i = np.flatnonzero(onset[:, M.AF])
    j = i[_u(u[i], 6) < 0.85]
    _start(st, j, np.where(year[j] < 2014, M.WARF, M.APIX), step, out)
    _start(st, i[_u(u[i], 7) < 0.6], M.BISO, step, out)

    i = np.flatnonzero(onset[:, M.DEMENTIA])
    _start(st, i[_u(u[i], 8) < 0.5], M.DONE, step, out)

    i = np.flatnonzero(onset[:, M.N_BINARY_CONDITIONS] & (st.cancer == M.BREAST))
    _start(st, i[_u(u[i], 9) < 0.7], M.TAM, step, out)
    return _collect(out)


def escalate(st, idx, a1c, sbp, chol, age, year, u, step):
    """Escalate treatment of subjects `idx` given values measured at a review (aligned with idx)."""
    out: list = []
    year = np.broadcast_to(np.asarray(year, dtype=np.float64), (st.n,))[idx]
    age = np.broadcast_to(np.asarray(age), (st.n,))[idx]
    u = u[idx]
    on = st.due[idx] >= 0
    dm = st.cond[idx, M.DM]
    n_dm = on[:, list(M.DM_DRUGS)].sum(axis=1)

    go = dm & (a1c >= 58) & (u < 0.5)
    _start(st, idx[go & (n_dm == 0)], M.MET, step, out)
    second = np.where(year < 2012, M.GLIC, np.array([M.GLIC, M.SITA, M.DAPA])[
        np.minimum((_u(u, 1) * 3).astype(int), 2)])
    sel = go & (n_dm == 1)
    _start(st, idx[sel], second[sel], step, out)
    sel = dm & (a1c >= 64) & (n_dm >= 2) & (_u(u, 2) < 0.3)
    _start(st, idx[sel], M.INS, step, out)

    htn = st.cond[idx, M.HTN] & (sbp >= 150) & (_u(u, 3) < 0.5)
    first = np.where((age < 55) & (st.eth[idx] != M.BLACK), M.RAM, M.AML)
    other = np.where(first == M.RAM, M.AML, M.RAM)
    has_first = on[np.arange(len(idx)), first]
    has_other = on[np.arange(len(idx)), other]
    _start(st, idx[htn & ~has_first], first[htn & ~has_first], step, out)
    sel = htn & has_first & ~has_other
    _start(st, idx[sel], other[sel], step, out)
    _start(st, idx[htn & has_first & has_other], M.IND, step, out)

    statin = on[:, M.SIMVA] | on[:, M.ATORVA]
    sel = ~statin & (chol >= 6.5) & (_u(u, 4) < 0.5)
    _start(st, idx[sel], _statin(year[sel]), step, out)
    return _collect(out)


def start_statin(st, idx, year, step):
    """Start a statin (by era) for subjects `idx` not on one, e.g. after an MI or stroke."""
    out: list = []
    _start(st, idx, _statin(np.broadcast_to(np.asarray(year, dtype=np.float64), idx.shape)), step, out)
    return _collect(out)
