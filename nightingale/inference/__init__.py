"""Inference over an exported model with vLLM: rollouts, risks, next events, synthetic cohorts.

Knows nothing of HTTP (nightingale.api wraps it). Importing this package does not import vLLM;
`Engine.start` does.
"""

from nightingale.inference.engine import (
    Engine,
    EngineConfig,
    EngineError,
    EngineOverloaded,
    Sampling,
)
from nightingale.inference.forecast import Forecast, ForecastConfig, forecast, outcome_token_ids
from nightingale.inference.gate import GateError, check_gate
from nightingale.inference.prompts import Event, Prompt, build_prompt
from nightingale.inference.risk import population_count, t_interval, wilson_interval
from nightingale.inference.rollouts import Rollout, RolloutConfig, sample_rollouts

__all__ = [
    "Engine", "EngineConfig", "EngineError", "EngineOverloaded", "Event", "Forecast", "ForecastConfig",
    "GateError", "Prompt", "Rollout", "RolloutConfig", "Sampling", "build_prompt", "check_gate", "forecast",
    "outcome_token_ids", "population_count", "sample_rollouts", "t_interval", "wilson_interval",
]
