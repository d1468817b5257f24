"""Attribute inference: does the synthetic cohort let an attacker learn more about a training
patient than about a patient it never saw? (The check CEHR-GPT reports, after Zhang et al.,
"Ensuring electronic medical record simulation through better training, modeling, and
evaluation", JAMIA 2020.)

The attacker knows a real patient's sex, birth year, age at first event and how often the
`known_codes` most common codes occur in the record, and wants the rest: whether each of the next
`sensitive_codes` codes (rarer conditions, treatments) is in it. The attack looks the patient up
among the synthetic records (the `k` nearest on what it knows, standardised on training data) and
guesses the sensitive codes they hold (a majority of the k). Its score on one patient is the recall
of that patient's sensitive codes (patients with none are not scored).

Scored on training members and on held-out patients: a cohort that reveals nothing about who was
trained on scores them alike; one that copies training records scores members far higher. The
advantage (members less held-out) and its standard error are what the release check reads.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from nightingale.evaluation.synthetic.events import EventsLike, load_events
from nightingale.evaluation.synthetic.privacy import privacy_samples
from nightingale.evaluation.synthetic.summary import count_column, fit_top_codes, patient_summary


def _known_and_sensitive(summary: pl.DataFrame, known: list[str], sensitive: list[str],
                         fill: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    cols = [(summary["sex"] == "F").cast(pl.Float64).to_numpy()]
    cols += [summary[c].cast(pl.Float64).fill_null(fill[c]).to_numpy() for c in ("birth_year", "age_first")]
    cols += [np.log1p(summary[count_column(c)].cast(pl.Float64).to_numpy()) for c in known]
    x = np.column_stack(cols) if len(summary) else np.zeros((0, len(cols)))
    y = (np.column_stack([summary[count_column(c)].to_numpy() for c in sensitive]) > 0) if sensitive and len(summary) \
        else np.zeros((len(summary), len(sensitive)), dtype=bool)
    return x, y


def attribute_inference(
    synth: EventsLike,
    train: EventsLike,
    held_out: EventsLike,
    *,
    known_codes: int = 10,
    sensitive_codes: int = 20,
    k: int = 1,
    max_subjects: int | None = 20_000,
    seed: int = 0,
) -> dict[str, float | int | None]:
    """Keys: attribute/recall_members, attribute/recall_held_out (mean per-patient recall of the
    sensitive codes), attribute/advantage (members less held-out) and attribute/advantage_se,
    attribute/n_members and attribute/n_held_out (patients scored), attribute/known_codes and
    attribute/sensitive_codes. Recalls are None where no patient has a sensitive code."""
    synth, train, held_out = (load_events(x) for x in (synth, train, held_out))
    synth, held_out, members = privacy_samples(synth, train, held_out, max_subjects, seed)
    codes = fit_top_codes(train, known_codes + sensitive_codes)
    known, sensitive = codes[:known_codes], codes[known_codes:]
    tables = {name: patient_summary(ev, codes) for name, ev in
              (("synth", synth), ("members", members), ("held_out", held_out))}
    fill = {c: float(tables["members"][c].median() or 0.0) for c in ("birth_year", "age_first")}
    (xs, ys), (xm, ym), (xh, yh) = (_known_and_sensitive(tables[n], known, sensitive, fill)
                                    for n in ("synth", "members", "held_out"))
    out: dict[str, float | int | None] = {"attribute/known_codes": len(known), "attribute/sensitive_codes": len(sensitive)}
    scores = {}
    if len(xs) and sensitive:
        scaler = StandardScaler().fit(xm if len(xm) else xs)
        nn = NearestNeighbors(n_neighbors=min(k, len(xs))).fit(scaler.transform(xs))
        for name, x, y in (("members", xm, ym), ("held_out", xh, yh)):
            has = y.any(axis=1)
            if not has.any():
                continue
            idx = nn.kneighbors(scaler.transform(x[has]), return_distance=False)
            guess = ys[idx].mean(axis=1) >= 0.5
            scores[name] = (guess & y[has]).sum(axis=1) / y[has].sum(axis=1)
    for name in ("members", "held_out"):
        s = scores.get(name)
        out[f"attribute/recall_{name}"] = float(s.mean()) if s is not None else None
        out[f"attribute/n_{name}"] = int(len(s)) if s is not None else 0
    if len(scores) == 2:
        m, h = scores["members"], scores["held_out"]
        out["attribute/advantage"] = float(m.mean() - h.mean())
        out["attribute/advantage_se"] = float(np.sqrt(m.var(ddof=1) / len(m) + h.var(ddof=1) / len(h))) \
            if len(m) > 1 and len(h) > 1 else None
    else:
        out["attribute/advantage"] = out["attribute/advantage_se"] = None
    return out
