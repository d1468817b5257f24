"""Stop rollouts at their time horizon inside vLLM: a V1 class-based logits processor.

vLLM stops a request at given tokens or after a number of tokens, but not "when the time these
tokens stand for passes X". This processor tracks, for every request whose
`SamplingParams.extra_args` carries `HORIZON_ARG` (seconds), the request's clock: the sum of the
decoded values of its generated time-gap tokens (`Vocabulary.gap_decode_s`, the same values the
rollout code and MEDS decoding use). Once the clock has passed the horizon, the next token is
forced to `[EOR]`, which the caller passes as a stop token: the request ends one token after the
gap token that crossed the horizon, inside the engine, with no round trips. Requests without the
argument (next-event distributions, cohorts) are untouched, and until a request's clock passes
its horizon its logits are untouched too, so sampling stays unbiased.

The processor runs in vLLM's engine process; it is registered once when the engine is built
(`AsyncEngineArgs(logits_processors=[HorizonStop])`) and reads the vocabulary from the model
folder vLLM loaded. Importing this module imports vLLM.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from vllm.sampling_params import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from nightingale.tokenizer import families as F
from nightingale.tokenizer.vocabulary import SPEC_FILE, Vocabulary

HORIZON_ARG = "nightingale_horizon_s"


@dataclasses.dataclass
class _Clock:
    horizon_s: float
    output: list[int]  # vLLM's live list of the request's generated ids
    seen: int = 0
    elapsed_s: float = 0.0


class HorizonStop(LogitsProcessor):
    """Force `[EOR]` once a request's generated time passes `extra_args[HORIZON_ARG]` seconds."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        vocab = Vocabulary.load(Path(vllm_config.model_config.model) / SPEC_FILE)
        self.gap_s = np.asarray(vocab.gap_decode_s, dtype=np.float64)
        self.end_id = F.EOR_ID
        self.clocks: dict[int, _Clock] = {}

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        h = (params.extra_args or {}).get(HORIZON_ARG)
        if h is not None and not (isinstance(h, int | float) and math.isfinite(h) and h > 0):
            raise ValueError(f"extra_args.{HORIZON_ARG}: a positive number of seconds, got {h!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # forcing [EOR] changes greedy choices too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new(params: SamplingParams, _prompt: list[int] | None, output: list[int]) -> _Clock | None:
            h = (params.extra_args or {}).get(HORIZON_ARG)
            return None if h is None else _Clock(float(h), output)

        process_dict_updates(self.clocks, batch_update, new)
        for c in self.clocks.values():
            if len(c.output) > c.seen:
                new_ids = np.asarray(c.output[c.seen:], dtype=np.int64)
                # a placeholder (-1) for a token not yet sampled: count up to it, read it next time
                known = int(np.argmax(new_ids < 0)) if (new_ids < 0).any() else len(new_ids)
                c.elapsed_s += float(self.gap_s[new_ids[:known]].sum())
                c.seen += known

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows = [i for i, c in self.clocks.items() if c.elapsed_s > c.horizon_s]
        if rows:
            idx = torch.tensor(rows, dtype=torch.long, device=logits.device)
            logits[idx] = float("-inf")
            logits[idx, self.end_id] = 0.0
        return logits
