"""Monte-Carlo rollouts: sampled continuations of patient timelines until a time horizon.

A rollout ends at `MEDS_DEATH` (a stop token), at `[EOR]` when it is allowed, or at the horizon.
The horizon is enforced inside vLLM (`horizon.HorizonStop`): the n rollouts of a prompt are one
engine request, and at each step the time gaps that would pass the horizon are merged into
`[EOR]`, so a rollout reaches the horizon by sampling `[EOR]` ("the next event lies past the
horizon"). That token is kept, with the clock where it was sampled (inside the horizon): the
probability estimator reads the model's distribution at that step too. No token lies past the
horizon and nothing waits on rounds. A rollout's clock is the sum of its time-gap tokens'
decoded values (`Vocabulary.gap_decode_s`).

Only a rollout that runs out of context before its horizon (long horizons, long prompts) is
continued in a further request, as soon as it does: the static + age prefix stays, the oldest body
tokens go down to half the context (the age token keeps the anchor's band), and the horizon left
is passed on. A rollout that spends `max_new_tokens` first ends as `max_tokens` (reported as
truncated by the estimators).

`[EOR]` ("the data stop here") is administrative censoring, not something that happens to a
patient, so by default it is banned while sampling: risks are "within the horizon, had the record
continued". Tokens that never occur inside a timeline ([PAD], [SOT], age bands, static codes,
unknown codes) are banned too (see prompts.body_banned_ids). The log-probabilities returned
(`tracked_ids`) are those of the distribution sampled from, bans included, so they stay
normalised over the tokens that can occur.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import zlib
from collections.abc import Sequence

import numpy as np

from nightingale import schema as S
from nightingale.config import check_ints
from nightingale.inference.engine import Engine, Sampling
from nightingale.inference.prompts import Prompt, age_changes, body_banned_ids, changes_ahead
from nightingale.tokenizer import families as F

log = logging.getLogger(__name__)
DEATH, END_OF_RECORD, HORIZON, MAX_TOKENS = "death", "end_of_record", "horizon", "max_tokens"


@dataclasses.dataclass
class Rollout:
    """One sampled future.

    tokens: generated ids, up to and including the final death or `[EOR]` (horizon reached, or
    end of record where that is allowed); elapsed_s: seconds since the anchor *after* each token
    (a code token happens at the elapsed time of the gap before it); end: death |
    end_of_record | horizon | max_tokens (the token budget ran out first: the outcome is unknown
    past that point); tracked_logprobs: per token, the log-probabilities of the tracked ids at
    the step that sampled it (steps x tracked ids), when asked for.
    """

    tokens: np.ndarray
    elapsed_s: np.ndarray
    end: str
    tracked_logprobs: np.ndarray | None = None

    @property
    def step_clock_s(self) -> np.ndarray:
        """Elapsed seconds *before* each step: the time at which a code sampled there happens."""
        return np.r_[0.0, self.elapsed_s[:-1]] if len(self.elapsed_s) else np.zeros(0)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """n: rollouts per prompt; horizon_s: seconds; max_new_tokens: token budget per rollout;
    reserve_tokens: context kept free for generation (prompts are cut to the context minus it);
    temperature/top_p: sampling (risk estimates need 1 and 1: the forecasting core pins them; other
    values exist for tests of what truncation does); seed: base seed (reproducible for the same
    seed, prompts and engine); allow_end_of_record: let `[EOR]` end a rollout instead of banning it;
    tracked_ids: token ids whose log-probabilities are kept at every step."""

    n: int = 64
    horizon_s: float = 365.25 * 86400
    max_new_tokens: int = 2048
    reserve_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    allow_end_of_record: bool = False
    tracked_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_ints(self, ("n", "max_new_tokens", "reserve_tokens"), "RolloutConfig")
        if not self.horizon_s > 0:
            raise ValueError(f"RolloutConfig.horizon_s: must be > 0, got {self.horizon_s!r}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError("RolloutConfig.temperature > 0 and 0 < top_p <= 1")


def _seed(base: int, *keys: int) -> int:
    return int(np.random.SeedSequence([base & 0xFFFFFFFF, *keys]).generate_state(1)[0])


def prompt_key(ids: Sequence[int]) -> int:
    """A stable key of a prompt's tokens: seeds follow the patient, not its place in a batch, so
    the API and the evaluation draw the same rollouts for the same prompt and seed."""
    return zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes())


@dataclasses.dataclass
class _State:
    prompt: int
    tokens: list[int]
    elapsed: list[float]
    logprobs: list[np.ndarray]
    end: str | None = None

    @property
    def clock(self) -> float:
        return self.elapsed[-1] if self.elapsed else 0.0


async def sample_rollouts(engine: Engine, prompts: Sequence[Prompt], cfg: RolloutConfig,
                          horizons_s: Sequence[float] | None = None) -> list[list[Rollout]]:
    """`cfg.n` rollouts of every prompt up to `cfg.horizon_s`, or up to its own entry of
    `horizons_s` (seconds, one per prompt; see the module docstring); per prompt a list of n
    Rollouts, in a reproducible order."""
    horizon = np.full(len(prompts), float(cfg.horizon_s)) if horizons_s is None else np.asarray(horizons_s, np.float64)
    if len(horizon) != len(prompts) or not (horizon > 0).all():
        raise ValueError("sample_rollouts: horizons_s needs one positive number of seconds per prompt")
    vocab = engine.vocab
    death = vocab.code_to_id.get(S.DEATH_CODE)
    # [EOR] always stops: HorizonStop gives it the mass of gaps past the horizon; else banned unless allowed.
    stops = tuple(t for t in (death, F.EOR_ID) if t is not None)
    banned = body_banned_ids(vocab) + (() if cfg.allow_end_of_record else (F.EOR_ID,))
    gap_s = vocab.gap_decode_s
    room = engine.max_model_len - min(cfg.reserve_tokens, engine.max_model_len - 8)
    # A rollout that filled the context is a busy one: its continuations keep half the context of
    # history, so that each generates up to half a context (fewer requests, each a full prefill).
    room_next = min(room, max(engine.max_model_len // 2, 8))
    states = [_State(i, [], [], []) for i in range(len(prompts)) for _ in range(cfg.n)]
    # where the birth is known, the engine writes the age-band changes at their times (AgeClock)
    changes = [age_changes(vocab, p.age_years(), float(h)) for p, h in zip(prompts, horizon, strict=True)]
    aged = [p.birth_us is not None and vocab.config.age_in_timeline for p in prompts]

    def params(n: int, seed: int, window: int, st: _State) -> Sampling:
        left = min(cfg.max_new_tokens - len(st.tokens), engine.max_model_len - window)
        return Sampling(
            n=n, max_tokens=max(left, 1), temperature=cfg.temperature, top_p=cfg.top_p, seed=seed,
            stop_token_ids=stops, banned_token_ids=banned, tracked_ids=cfg.tracked_ids,
            horizon_s=horizon[st.prompt] - st.clock,
            age_changes=changes_ahead(vocab, changes[st.prompt], st.tokens, st.clock) if aged[st.prompt] else None,
        )

    def advance(st: _State, c) -> None:
        g = np.asarray(c.token_ids, dtype=np.int64)
        lp = c.tracked_logprobs
        cum = st.clock + np.cumsum(gap_s[g])
        past = np.flatnonzero(cum > horizon[st.prompt])
        if len(past):  # not expected (HorizonStop merges crossing gaps); cut at the crossing
            g, cum = g[: past[0] + 1], cum[: past[0] + 1]
            st.end = HORIZON
        elif len(g) and int(g[-1]) == F.EOR_ID and not cfg.allow_end_of_record:
            st.end = HORIZON  # banned otherwise: only HorizonStop's merge gives [EOR] its mass
        elif len(g) and int(g[-1]) in stops:
            st.end = DEATH if int(g[-1]) == death else END_OF_RECORD
        st.tokens += g.tolist()
        st.elapsed += cum.tolist()
        if cfg.tracked_ids:
            st.logprobs.append(lp[: len(g)] if lp is not None else np.full((len(g), len(cfg.tracked_ids)), -np.inf))
        if st.end is None and len(st.tokens) >= cfg.max_new_tokens:
            st.end = MAX_TOKENS

    async def one_prompt(i: int) -> None:
        # One request with n continuations: the prompt is prefilled once (prefix cache).
        w = prompts[i].window(room=room)
        comps = (await engine.sample([w], params(cfg.n, _seed(cfg.seed, prompt_key(w)), len(w), states[i * cfg.n])))[0]
        if len(comps) != cfg.n:
            raise RuntimeError(f"engine returned {len(comps)} continuations for n={cfg.n}")
        for j, c in enumerate(comps):
            advance(states[i * cfg.n + j], c)
        rnd = 0
        # Only rollouts that ran out of context before their horizon, as soon as they do: no
        # prompt waits for another's (seeds follow the prompt, its rollout and its round).
        while active := [k for k in range(i * cfg.n, (i + 1) * cfg.n) if states[k].end is None]:
            rnd += 1
            wins = [prompts[i].window(states[k].tokens, room=room_next) for k in active]
            outs = await engine.sample(
                wins, [params(1, _seed(cfg.seed, prompt_key(w), k % cfg.n, rnd), len(w), states[k]) for k, w in zip(active, wins)],
            )
            for k, comps in zip(active, outs):
                advance(states[k], comps[0])

    engine.admit(len(prompts))  # all or none: refuse before any work starts
    tasks = [asyncio.ensure_future(one_prompt(i)) for i in range(len(prompts))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:  # one failure (or the caller's timeout) cancels the rest
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    out: list[list[Rollout]] = [[] for _ in prompts]
    width = len(cfg.tracked_ids)
    for st in states:
        lp = (np.concatenate(st.logprobs) if st.logprobs else np.zeros((0, width))) if width else None
        out[st.prompt].append(
            Rollout(np.asarray(st.tokens, np.int64), np.asarray(st.elapsed, np.float64), st.end or MAX_TOKENS, lp)
        )
    return out
