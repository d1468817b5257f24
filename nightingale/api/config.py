"""ServeConfig: everything the HTTP server reads from configs/serve.yaml, validated early."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from nightingale.config import build, check_choice, check_fields, check_ints, field_names
from nightingale.evaluation.synthetic.release import ReleaseConfig
from nightingale.inference.engine import EngineConfig
from nightingale.inference.forecast import ESTIMATORS


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-request limits; a request over one gets a 4xx naming the field (body size: 413)."""

    max_body_bytes: int = 1 << 20
    max_patients: int = 100
    max_events_per_patient: int = 5000
    max_outcomes: int = 10
    max_codes_per_outcome: int = 100
    max_horizons: int = 5
    max_horizon_days: float = 3653.0
    max_rollouts: int = 256
    max_top_k: int = 50
    max_cohort_patients: int = 10_000
    max_groups: int = 6


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """model: EngineConfig fields (model_dir, dtype, ...). allow_ungated: serve without a passing
    gate report (logged warning; development only). api_keys_file: JSON/YAML of hashed keys;
    api_keys_env: variable with `id:key:scope+scope,...` entries (plain keys, hashed on load).
    audit_log: JSONL path. max_inflight: HTTP work requests (forecasts, next events, cohort
    submissions) allowed at once; more get 503 + Retry-After. default_rollouts: when a forecast
    names none. estimator: probability | count (inference/forecast.py), unless a request names
    one. reserve_tokens: context kept free for a rollout (prompts are cut to the rest);
    max_new_tokens: token budget per rollout. small_count_threshold: population counts below it
    are suppressed.
    jobs_dir: where cohort and population jobs write; max_running_jobs: jobs running at once
    (others wait queued). request_timeout_s: an engine call past it gets 504.
    datasets: MEDS datasets a population forecast may name, {name: folder}, registered by the
    operator (no request uploads a population); population_rollouts: rollouts per patient of a
    population job when the request names none.
    cohort_reference: the registered dataset (a name in `datasets`) whose train split the model
    learnt from and whose held_out split holds real patients it never saw: every cohort is judged
    against it (fidelity, privacy, utility) and released to the generate scope only when it
    passes `release` (evaluation/synthetic/release.py); unset, no cohort is released."""

    model: EngineConfig
    allow_ungated: bool = False
    api_keys_file: str | None = None
    api_keys_env: str = "NIGHTINGALE_API_KEYS"
    audit_log: str = "runs/serve/audit.jsonl"
    limits: Limits = dataclasses.field(default_factory=Limits)
    max_inflight: int = 64
    retry_after_s: int = 5
    default_rollouts: int = 8
    estimator: str = "probability"
    reserve_tokens: int = 64
    max_new_tokens: int = 2048
    small_count_threshold: int = 10
    jobs_dir: str = "runs/serve/jobs"
    max_running_jobs: int = 1
    cohort_max_new_tokens: int = 8192
    request_timeout_s: float = 300.0
    seed: int = 0
    datasets: Mapping[str, str] = dataclasses.field(default_factory=dict)
    population_rollouts: int = 8
    cohort_reference: str | None = None
    release: ReleaseConfig = dataclasses.field(default_factory=ReleaseConfig)

    def __post_init__(self) -> None:
        check_ints(self, ("max_inflight", "retry_after_s", "default_rollouts", "reserve_tokens", "max_new_tokens",
                          "max_running_jobs", "cohort_max_new_tokens", "population_rollouts"), "serve")
        for name, path in dict(self.datasets).items():
            if not isinstance(path, str) or not path:
                raise ValueError(f"serve.datasets.{name}: the folder of a MEDS dataset, got {path!r}")
        check_ints(self, ("small_count_threshold",), "serve", low=0)
        if self.cohort_reference is not None and self.cohort_reference not in self.datasets:
            raise ValueError(f"serve.cohort_reference: {self.cohort_reference!r} is not a registered dataset "
                             f"(serve.datasets has {sorted(self.datasets)})")
        check_choice("serve.estimator", self.estimator, ESTIMATORS)
        if self.default_rollouts > self.limits.max_rollouts:
            raise ValueError("serve.default_rollouts: must not exceed limits.max_rollouts")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> ServeConfig:
        check_fields(m, field_names(cls), "serve")
        if "model" not in m:
            raise ValueError("serve.model: required (at least model.model_dir)")
        model = m["model"]
        model = model if isinstance(model, EngineConfig) else EngineConfig.from_mapping(dict(model))
        lim = m.get("limits") or {}
        lim = lim if isinstance(lim, Limits) else build(Limits, lim, "serve.limits")
        return cls(**{**m, "model": model, "limits": lim, "release": ReleaseConfig.from_mapping(m.get("release"))})
