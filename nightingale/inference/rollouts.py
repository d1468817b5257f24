"""Monte-Carlo rollouts: sampled continuations of patient timelines until a time horizon.

A rollout ends at `MEDS_DEATH` (a vLLM stop token), at `[EOR]` when it is allowed, or when the
time it has generated passes the horizon. vLLM has no "stop when the sum of these tokens' values
passes X" rule, so the horizon is enforced by generating in chunks: every prompt is sampled `n`
times for `chunk_tokens` tokens; each continuation's clock (the sum of its time-gap tokens, each
worth the midpoint of its rung, the top rung exactly its length: the values `decode` uses) is
checked; a continuation past the horizon is cut before the gap token that crossed it, and the
others are resubmitted (prompt + what they generated so far, one request each) for another chunk.
The chunk size trades wasted tokens past the horizon against round trips; with vLLM's prefix
cache a resubmitted prompt costs little. A continuation longer than the context slides: the
static + age prefix stays and the oldest body tokens go (the age token keeps the anchor's band).

`[EOR]` ("the data stop here") is administrative censoring, not something that happens to a
patient, so by default it is banned while sampling: risks are "within the horizon, had the record
continued". Tokens that never occur inside a timeline ([PAD], [SOT], age bands, static codes,
unknown codes) are banned too (see prompts.body_banned_ids).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from nightingale import schema as S
from nightingale.inference.engine import Engine, Sampling
from nightingale.inference.prompts import Prompt, body_banned_ids
from nightingale.tokenizer import families as F

log = logging.getLogger(__name__)
DEATH, END_OF_RECORD, HORIZON, MAX_TOKENS = "death", "end_of_record", "horizon", "max_tokens"


@dataclasses.dataclass
class Rollout:
    """One sampled future. tokens: generated ids inside the horizon (a final stop token kept);
    elapsed_s: seconds since the anchor at each token; end: death | end_of_record | horizon |
    max_tokens (the token budget ran out first: the outcome is unknown past that point)."""

    tokens: np.ndarray
    elapsed_s: np.ndarray
    end: str


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """n: rollouts per patient; horizon_s: seconds; chunk_tokens: tokens per engine round;
    max_new_tokens: token budget per rollout; temperature/top_p: sampling; seed: base seed
    (rollouts are reproducible for the same seed, prompts and engine); allow_end_of_record:
    let `[EOR]` end a rollout instead of banning it."""

    n: int = 64
    horizon_s: float = 365.25 * 86400
    chunk_tokens: int = 64
    max_new_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    allow_end_of_record: bool = False

    def __post_init__(self) -> None:
        for name in ("n", "chunk_tokens", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RolloutConfig.{name}: must be >= 1, got {getattr(self, name)!r}")
        if not self.horizon_s > 0:
            raise ValueError(f"RolloutConfig.horizon_s: must be > 0, got {self.horizon_s!r}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError("RolloutConfig.temperature > 0 and 0 < top_p <= 1")


def _seed(base: int, *keys: int) -> int:
    return int(np.random.SeedSequence([base & 0xFFFFFFFF, *keys]).generate_state(1)[0])


@dataclasses.dataclass
class _State:
    prompt: int
    tokens: list[int]
    elapsed: list[float]
    end: str | None = None


async def sample_rollouts(engine: Engine, prompts: Sequence[Prompt], cfg: RolloutConfig) -> list[list[Rollout]]:
    """`cfg.n` rollouts of every prompt up to `cfg.horizon_s` (see the module docstring);
    per prompt a list of n Rollouts, in a reproducible order."""
    vocab = engine.vocab
    death = vocab.code_to_id.get(S.DEATH_CODE)
    stops = tuple(t for t in (death, F.EOR_ID if cfg.allow_end_of_record else None) if t is not None)
    banned = body_banned_ids(vocab) + (() if cfg.allow_end_of_record else (F.EOR_ID,))
    gap_s = vocab.gap_decode_s
    chunk = min(cfg.chunk_tokens, cfg.max_new_tokens)
    room = engine.max_model_len - chunk
    states = [_State(i, [], []) for i in range(len(prompts)) for _ in range(cfg.n)]

    def params(n: int, seed: int, left: int) -> Sampling:
        return Sampling(
            n=n, max_tokens=min(chunk, left), temperature=cfg.temperature, top_p=cfg.top_p,
            seed=seed, stop_token_ids=stops, banned_token_ids=banned,
        )

    def advance(st: _State, c) -> None:
        g = np.asarray(c.token_ids, dtype=np.int64)
        t0 = st.elapsed[-1] if st.elapsed else 0.0
        cum = t0 + np.cumsum(gap_s[g])
        past = np.flatnonzero(cum > cfg.horizon_s)
        if len(past):
            k = int(past[0])
            st.tokens += g[:k].tolist()
            st.elapsed += cum[:k].tolist()
            st.end = HORIZON
            return
        st.tokens += g.tolist()
        st.elapsed += cum.tolist()
        if len(g) and int(g[-1]) in stops:
            st.end = DEATH if int(g[-1]) == death else END_OF_RECORD
        elif len(st.tokens) >= cfg.max_new_tokens:
            st.end = MAX_TOKENS

    # Round 0: one request per prompt with n continuations (the prompt is processed once).
    first = await engine.sample(
        [p.window(room=room) for p in prompts],
        [params(cfg.n, _seed(cfg.seed, i), cfg.max_new_tokens) for i in range(len(prompts))],
    )
    for i, comps in enumerate(first):
        if len(comps) != cfg.n:
            raise RuntimeError(f"engine returned {len(comps)} continuations for n={cfg.n}")
        for j, c in enumerate(comps):
            advance(states[i * cfg.n + j], c)
    rnd = 0
    while active := [k for k, st in enumerate(states) if st.end is None]:
        rnd += 1
        outs = await engine.sample(
            [prompts[states[k].prompt].window(states[k].tokens, room=room) for k in active],
            [params(1, _seed(cfg.seed, states[k].prompt, k, rnd), cfg.max_new_tokens - len(states[k].tokens)) for k in active],
        )
        for k, comps in zip(active, outs):
            advance(states[k], comps[0])
    log.debug("rollouts: %d prompts x %d in %d extra rounds", len(prompts), cfg.n, rnd)
    out: list[list[Rollout]] = [[] for _ in prompts]
    for st in states:
        out[st.prompt].append(
            Rollout(np.asarray(st.tokens, np.int64), np.asarray(st.elapsed, np.float64), st.end or MAX_TOKENS)
        )
    return out
