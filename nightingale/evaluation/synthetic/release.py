"""The release check: may a synthetic cohort leave the server for a researcher?

It reads a cohort's privacy evidence (privacy.py, attribute.py) against thresholds the operator
sets (`serve.release`, ReleaseConfig):

- **exact copies**: the share of synthetic records whose per-patient summary equals a training
  record's (distance 0) must not exceed `max_exact_match_share` (default 0: none at all);
- **copied runs**: the share of synthetic timelines holding a run of `ngram_length` codes found in
  training, against the same share for held-out real patients (new patients share some runs by
  chance): the excess may not exceed `ngram_margin`;
- **membership inference**: the attack's AUROC may not exceed 0.5 + `mia_tolerance`;
- **attribute inference**: the attack's advantage on training members over held-out patients may
  not exceed `attribute_margin`.

The last three are estimates from samples: each fails when its figure exceeds the limit by more
than chance explains (its one-sided 95% bound passes the limit), so that a small independent
cohort is not refused on noise, while a copying cohort, whose figures sit far past the limits,
is. Exact copies are counted, not estimated: any over the limit fails. A check whose figure is
undefined (no timeline long enough to hold a run; no patient with a sensitive code) passes and
says why. No reference data means nothing could be checked: the cohort is not released.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from nightingale.config import build

Z_ONE_SIDED = 1.645


@dataclasses.dataclass(frozen=True)
class ReleaseConfig:
    max_exact_match_share: float = 0.0
    ngram_margin: float = 0.05
    mia_tolerance: float = 0.05
    attribute_margin: float = 0.05

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"serve.release.{f.name}: a number in [0, 1], got {v!r}")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> ReleaseConfig:
        return m if isinstance(m, ReleaseConfig) else build(cls, dict(m or {}), "serve.release")


def _auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUROC."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / max(n_pos * n_neg, 1)
    return math.sqrt(max(var, 0.0))


def _check(name: str, value: float | None, limit: float, se: float, what: str) -> dict[str, Any]:
    if value is None:
        return {"check": name, "passed": True, "value": None, "limit": limit, "note": f"undefined: {what}"}
    bound = value - Z_ONE_SIDED * se
    out = {"check": name, "passed": bool(bound <= limit), "value": round(value, 4), "limit": round(limit, 4)}
    if se:
        out["lower_bound"] = round(bound, 4)
    return out


def release_check(privacy: Mapping[str, Any] | None, cfg: ReleaseConfig) -> dict[str, Any]:
    """{"released": bool, "checks": [{check, passed, value, limit, ...}], "reasons": [why not]}."""
    if privacy is None:
        why = "no reference data to check the cohort against (serve.cohort_reference is not set)"
        return {"released": False, "checks": [], "reasons": [why]}
    p = privacy
    checks = [{"check": "exact_copies", "value": p["dcr/exact_match_share"], "limit": cfg.max_exact_match_share,
               "passed": bool(p["dcr/exact_match_share"] <= cfg.max_exact_match_share)}]
    s, h = p.get("ngram/copy_share_synth"), p.get("ngram/copy_share_held_out")
    if s is None:
        checks.append(_check("copied_runs", None, cfg.ngram_margin, 0.0, "no synthetic timeline is long enough"))
    else:
        h = h or 0.0
        ns, nh = max(p.get("ngram/eligible_synth") or 1, 1), max(p.get("ngram/eligible_held_out") or 1, 1)
        se = math.sqrt(s * (1 - s) / ns + h * (1 - h) / nh)
        checks.append(_check("copied_runs", s - h, cfg.ngram_margin, se, ""))
    auc = p.get("mia/auc")
    se = _auc_se(auc, p.get("n_members", 1), p.get("n_held_out", 1)) if auc is not None else 0.0
    checks.append(_check("membership_inference", auc, 0.5 + cfg.mia_tolerance, se, "no AUROC"))
    adv = p.get("attribute/advantage")
    checks.append(_check("attribute_inference", adv, cfg.attribute_margin, p.get("attribute/advantage_se") or 0.0,
                         "no patient holds a sensitive code"))
    reasons = [f"{c['check']}: {c['value']} is over the limit {c['limit']}" + (
        f" beyond chance (one-sided 95% bound {c['lower_bound']})" if "lower_bound" in c else "")
        for c in checks if not c["passed"]]
    return {"released": not reasons, "checks": checks, "reasons": reasons}
