"""The forecasting core: risks of outcomes within horizons, for the API and the evaluation alike.

`forecast(engine, prompts, outcomes, horizons_s, cfg)` samples `cfg.rollouts` futures of every
prompt (one engine request per prompt, stopped inside vLLM at the longest horizon) and estimates,
for every outcome and horizon, the probability that the outcome happens within the horizon.
`POST /v1/forecasts` and the evaluation's zero-shot tasks both call it, so the gate scores the
estimator the server serves.

**The outcome happens within horizon h** when a rollout generates one of the outcome's tokens at
an elapsed time e (seconds since the prompt's last event, the anchor; a code happens at the time
of the gap tokens before it) with lead <= e <= lead + h, where lead >= 0 is the prediction time
minus the anchor (0 when forecasting from the last event). Elapsed time is the rollout's clock:
the sum of its time-gap tokens' decoded values.

Two estimators of that probability, from the same rollouts:
- **count**: the share of rollouts in which it happens (k/n; a Wilson interval). Unbiased, but a
  1-5% risk is 0/n for most patients at small n: ties everywhere.
- **probability** (default): along each rollout, sum the model's probability of the outcome
  tokens at every step whose clock lies in the window, up to and including the step where an
  outcome token is sampled; average over rollouts. Its expectation is the same probability
  (the chance of a first occurrence at step t is E[1{no occurrence before t} q_t(outcome)]: a
  Rao-Blackwellised count), its values are continuous (no ties) and its variance is far lower
  (SCOPE/REACH, 2026: 10-11 samples match 100-sample Monte Carlo for mortality). q_t is the
  distribution sampled from (banned tokens renormalised away; see rollouts.py). Its interval is
  a Student-t interval over rollouts, clipped to [0, 1] (none with a single rollout).

Both intervals are Monte-Carlo intervals for the model's probability, not for the patient's
outcome. Sampling is pinned to temperature 1 and no top-k/top-p truncation: anything else makes
both estimators biased (tests/inference/test_calibration.py shows it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from nightingale.config import check_choice, check_ints
from nightingale.inference.engine import MAX_TRACKED_IDS, Engine
from nightingale.inference.prompts import Prompt, resolve_outcome_codes
from nightingale.inference.risk import RiskEstimate, estimates
from nightingale.inference.rollouts import MAX_TOKENS, Rollout, RolloutConfig, sample_rollouts
from nightingale.tokenizer.vocabulary import Vocabulary

log = logging.getLogger(__name__)
COUNT, PROBABILITY = "count", "probability"
ESTIMATORS = (PROBABILITY, COUNT)


class UnknownOutcomeCodes(ValueError):
    """Codes of an outcome that match no token the model can emit."""

    def __init__(self, outcome: str, index: int, codes: list[str]):
        super().__init__(f"outcome {outcome!r}: {codes} match no code the model can emit")
        self.outcome, self.index, self.codes = outcome, index, codes


def mean_risk(values: np.ndarray) -> np.ndarray:
    """The estimate from per-rollout values (last axis): their mean, clipped to [0, 1]. A
    rollout's sum of per-step probabilities can pass 1 where the outcome is likely at many steps
    and sampled at none, so the mean can too at few rollouts."""
    return np.clip(np.asarray(values, dtype=np.float64).mean(axis=-1), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class ForecastConfig:
    """estimator: probability | count (see the module docstring); rollouts: per prompt;
    max_new_tokens: token budget per rollout; reserve_tokens: context kept free for generation;
    seed: base seed (same seed, prompts and engine -> same figures)."""

    estimator: str = PROBABILITY
    rollouts: int = 8
    max_new_tokens: int = 2048
    reserve_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("ForecastConfig.estimator", self.estimator, ESTIMATORS)
        check_ints(self, ("rollouts", "max_new_tokens", "reserve_tokens"), "ForecastConfig")


def outcome_token_ids(vocab: Vocabulary, outcomes: Mapping[str, Sequence[str]], *,
                      strict: bool) -> dict[str, np.ndarray]:
    """Token ids of each outcome's codes (exact codes, or prefixes ending in ``*``).

    strict: codes that match no token raise UnknownOutcomeCodes (the API: a 422 naming them);
    otherwise they are logged as a warning and the outcome keeps what matched (the evaluation:
    an outcome with no token has probability 0 everywhere)."""
    out = {}
    for k, (name, codes) in enumerate(outcomes.items()):
        found = resolve_outcome_codes(vocab, list(codes))
        missing = [c for c, ids in found.items() if not ids]
        if missing and strict:
            raise UnknownOutcomeCodes(name, k, missing)
        if missing:
            log.warning("outcome %s: %s match no code the model can emit", name, missing)
        out[name] = np.array(sorted({i for ids in found.values() for i in ids}), dtype=np.int64)
    return out


def rollout_values(rollout: Rollout, ids: np.ndarray, columns: np.ndarray | None, lead_s: float,
                   horizons_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(count, probability) estimates of one rollout for one outcome, per horizon.

    ids: the outcome's token ids; columns: where they sit in `rollout.tracked_logprobs` (None:
    not tracked, probability = count). See the module docstring for the window and the sums."""
    clock = rollout.step_clock_s
    is_outcome = np.isin(rollout.tokens, ids)
    hazard = (np.exp(rollout.tracked_logprobs[:, columns]).sum(axis=1)
              if columns is not None and len(ids) else np.zeros(len(clock)))
    count = np.zeros(len(horizons_s))
    prob = np.zeros(len(horizons_s))
    for b, h in enumerate(horizons_s):
        inside = (clock >= lead_s) & (clock <= lead_s + h)
        hit = np.flatnonzero(inside & is_outcome)
        upto = inside if not len(hit) else inside & (np.arange(len(clock)) <= hit[0])
        count[b] = float(len(hit) > 0)
        prob[b] = float(hazard[upto].sum()) if columns is not None else count[b]
    return count, prob


@dataclasses.dataclass
class Forecast:
    """Per-rollout estimates of every prompt x outcome x horizon (x rollout), both estimators.

    count / probability: arrays [prompts, outcomes, horizons, rollouts]; truncated: share of each
    prompt's rollouts that spent their token budget before the horizon (both estimators read
    those as "no outcome after that point": a downward bias worth reporting); tokens /
    tokens_past_horizon: tokens the rollouts kept, and how many of them lie past lead + the
    longest horizon (0: HorizonStop ends a rollout with `[EOR]` where its next event would)."""

    outcomes: list[str]
    horizons_s: np.ndarray
    count: np.ndarray
    probability: np.ndarray
    truncated: np.ndarray
    estimator: str
    tokens: int = 0
    tokens_past_horizon: int = 0
    rollouts_kept: list[list[Rollout]] | None = None  # per prompt, when forecast(keep_rollouts=True)

    @property
    def rollouts(self) -> int:
        return self.count.shape[-1]

    def values(self, estimator: str | None = None) -> np.ndarray:
        """Per-rollout values of `estimator` (default: the configured one)."""
        return self.probability if (estimator or self.estimator) == PROBABILITY else self.count

    def risk(self, estimator: str | None = None) -> np.ndarray:
        """Estimated probabilities [prompts, outcomes, horizons] (`mean_risk` over rollouts)."""
        return mean_risk(self.values(estimator))

    def estimate(self, i: int, a: int, b: int) -> RiskEstimate:
        """Prompt i, outcome a, horizon b with its 95% Monte-Carlo interval."""
        v = self.values()[i, a, b]
        n = len(v)
        p, lo, hi, var = (float(x) for x in estimates(v, self.estimator))
        lo_, hi_ = (None, None) if np.isnan(lo) else (lo, hi)
        return RiskEstimate(p, lo_, hi_, n, int(round(self.truncated[i] * n)), self.estimator, variance=var)


async def forecast(engine: Engine, prompts: Sequence[Prompt], outcomes: Mapping[str, np.ndarray],
                   horizons_s: Sequence[float], cfg: ForecastConfig,
                   lead_s: Sequence[float] | None = None, *, keep_rollouts: bool = False) -> Forecast:
    """Rollouts of every prompt to lead + the longest horizon, and both estimators' values.

    outcomes: name -> token ids (outcome_token_ids); horizons_s: seconds, counted from the
    prediction time; lead_s: per prompt, prediction time - anchor in seconds (default 0);
    keep_rollouts: also return the sampled futures themselves (e.g. to write them out as
    generated trajectories, inference/trajectories.py)."""
    horizons = np.asarray(horizons_s, dtype=np.float64)
    if not len(horizons) or not (horizons > 0).all():
        raise ValueError(f"horizons_s: positive seconds, got {list(horizons_s)}")
    leads = np.zeros(len(prompts)) if lead_s is None else np.asarray(lead_s, dtype=np.float64)
    if len(leads) != len(prompts) or (leads < 0).any():
        raise ValueError("lead_s: one non-negative value per prompt")
    names = list(outcomes)
    tracked = np.unique(np.concatenate([np.asarray(v, np.int64) for v in outcomes.values()] or [np.zeros(0, np.int64)]))
    track = len(tracked) <= MAX_TRACKED_IDS
    if not track:
        log.warning("%d outcome tokens exceed vLLM's %d tracked ids: probability = count", len(tracked), MAX_TRACKED_IDS)
    columns = {n: (np.searchsorted(tracked, outcomes[n]) if track else None) for n in names}
    shape = (len(prompts), len(names), len(horizons), cfg.rollouts)
    count, prob = np.zeros(shape), np.zeros(shape)
    truncated = np.zeros(len(prompts))
    tokens = past = 0
    # Every prompt rolls out to its own lead + the longest horizon, all in one batch.
    ends = leads + horizons.max()
    rc = RolloutConfig(n=cfg.rollouts, horizon_s=float(ends.max(initial=horizons.max())), max_new_tokens=cfg.max_new_tokens,
                       reserve_tokens=cfg.reserve_tokens, seed=cfg.seed,
                       tracked_ids=tuple(int(t) for t in tracked) if track else ())
    rolls = await sample_rollouts(engine, prompts, rc, ends)
    for i, rs in enumerate(rolls):
        truncated[i] = np.mean([r.end == MAX_TOKENS for r in rs])
        tokens += sum(len(r.tokens) for r in rs)
        past += sum(int((r.elapsed_s > ends[i]).sum()) for r in rs)
        for a, n in enumerate(names):
            for j, r in enumerate(rs):
                count[i, a, :, j], prob[i, a, :, j] = rollout_values(r, outcomes[n], columns[n], float(leads[i]), horizons)
    return Forecast(names, horizons, count, prob, truncated, cfg.estimator, tokens, past,
                    rolls if keep_rollouts else None)

