"""The risk-calibration guard: forecasts through the real vLLM CPU engine match a known chain.

A tiny model learned a Markov chain with time-gap tokens and an absorbing death state
(tests/inference/markov.py). The forecasting core, as the API and the evaluation call it, must
give the chain's exact probability of death within 6 and 12 steps, from WELL and from SICK, with
both estimators. Tolerance: 4 Monte-Carlo standard errors of the figure itself (from its own
rollouts) plus 0.02 for what the model got wrong of the chain (its learned risks run up to ~0.01
above the exact ones: markov.py). Negative control: the same rollouts sampled with top-p 0.9 (which
drops death at every step of this chain) fail that tolerance by far. Last, the engine is shut down
and its vLLM object is collected (no teardown traceback at interpreter exit).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import numpy as np
import pytest

from nightingale.inference.engine import Engine, EngineConfig
from nightingale.inference.forecast import (
    ForecastConfig,
    forecast,
    outcome_token_ids,
    rollout_values,
)
from nightingale.inference.rollouts import RolloutConfig, sample_rollouts
from tests.inference import harness
from tests.inference import markov as M

pytestmark = pytest.mark.slow
ROLLOUTS = 1000
STEPS = (6, 12)
HORIZONS_S = [(k + 0.5) * M.GAP_S for k in STEPS]  # death at step j happens at clock j * GAP_S
STARTS = (M.WELL, M.SICK)
MODEL_ERROR = 0.02


@pytest.fixture(scope="module")
def markov_engine(tmp_path_factory):
    model_dir = M.build_markov_model(harness.artifacts_root(tmp_path_factory.getbasetemp()) / "markov")
    loop = asyncio.new_event_loop()
    engine = loop.run_until_complete(Engine.start(EngineConfig(model_dir=str(model_dir), max_num_seqs=256)))
    yield engine, loop
    loop.run_until_complete(engine.aclose())
    loop.close()


def _tolerance(values: np.ndarray) -> float:
    return 4 * values.std(ddof=1) / np.sqrt(len(values)) + MODEL_ERROR


@pytest.fixture(scope="module")
def forecasts(markov_engine):
    engine, loop = markov_engine
    outcomes = outcome_token_ids(engine.vocab, {"death": [M.DEATH]}, strict=True)
    prompts = [M.markov_prompt(engine.vocab, s) for s in STARTS]
    cfg = ForecastConfig(rollouts=ROLLOUTS, max_new_tokens=64, seed=11)
    return loop.run_until_complete(forecast(engine, prompts, outcomes, HORIZONS_S, cfg))


@pytest.mark.parametrize("estimator", ["probability", "count"])
def test_both_estimators_match_the_chain(forecasts, estimator):
    values = forecasts.values(estimator)
    assert forecasts.tokens_past_horizon == 0  # a rollout ends with [EOR] where its next gap would cross
    for i, start in enumerate(STARTS):
        for b, k in enumerate(STEPS):
            v = values[i, 0, b]
            exact = M.exact_death_probability(start, k)
            assert abs(v.mean() - exact) < _tolerance(v), (start, k, estimator, v.mean(), exact)
    # the probability estimator is the low-variance one (Rao-Blackwellised count)
    assert forecasts.probability.std(axis=-1).max() < forecasts.count.std(axis=-1).min()


def test_top_p_truncation_fails_the_guard(markov_engine):
    """Negative control: top-p 0.9 never samples death here, and its processed probabilities of
    death are 0, so both estimators read ~0 against exact risks of 0.14-0.36."""
    engine, loop = markov_engine
    death = engine.vocab.code_to_id[M.DEATH]
    prompts = [M.markov_prompt(engine.vocab, s) for s in STARTS]
    cfg = RolloutConfig(n=200, horizon_s=max(HORIZONS_S), max_new_tokens=64, top_p=0.9, seed=11, tracked_ids=(death,))
    rolls = loop.run_until_complete(sample_rollouts(engine, prompts, cfg))
    ids, horizons = np.array([death]), np.array(HORIZONS_S)
    for start, rs in zip(STARTS, rolls):
        count, prob = (np.array(x) for x in zip(*(rollout_values(r, ids, np.array([0]), 0.0, horizons) for r in rs)))
        for b, k in enumerate(STEPS):
            exact = M.exact_death_probability(start, k)
            for v in (count[:, b], prob[:, b]):
                assert abs(v.mean() - exact) > _tolerance(v) + 0.05, (start, k, v.mean(), exact)


def test_shutdown_releases_the_vllm_engine(markov_engine, caplog):
    """Run last in this module: the vLLM object is gone after shutdown, not left to interpreter
    exit (where its __del__ prints a TypeError traceback), and its background tasks ended rather
    than being destroyed while pending (asyncio logs that as an error)."""
    engine, loop = markov_engine
    ref = weakref.ref(engine._llm)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_until_complete(engine.aclose())
        gc.collect()
    assert engine.closed and ref() is None
    assert not [r for r in caplog.records if "pending" in r.getMessage()]
