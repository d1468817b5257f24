"""Stop rollouts at their time horizon inside vLLM: a V1 class-based logits processor.

vLLM stops a request at given tokens or after a number of tokens, but not "when the time these
tokens stand for passes X". This processor tracks, for every request whose
`SamplingParams.extra_args` carries `HORIZON_ARG` (seconds), the request's clock: the sum of the
decoded values of its generated time-gap tokens (`Vocabulary.gap_decode_s`, the same values the
rollout code and MEDS decoding use).

At every step, the time-gap tokens that would carry the clock past the horizon are merged into
`[EOR]`: their probability mass moves to `[EOR]` (its logit becomes the log-sum-exp of theirs and
its own) and they are banned. Sampling `[EOR]` then means "the next event lies past the horizon",
with exactly the probability the model gives that; every event inside the horizon keeps its
probability, so sampling and the model's probabilities of outcomes stay unbiased. The caller
passes `[EOR]` as a stop token: the request ends at the step where it would have crossed the
horizon, inside the engine, with no token past the horizon and no round trips. Requests without
the argument (next-event distributions, cohorts) are untouched, and so are the steps at which no
gap can cross.

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


def unread(state) -> np.ndarray:
    """The ids a request generated since `state.seen` (its `output` is vLLM's live list), marked
    read. A placeholder (-1) for a token not yet sampled ends them: it is read next time."""
    new_ids = np.asarray(state.output[state.seen:], dtype=np.int64)
    known = int(np.argmax(new_ids < 0)) if (new_ids < 0).any() else len(new_ids)
    state.seen += known
    return new_ids[:known]


class HorizonStop(LogitsProcessor):
    """Merge the time gaps that would pass `extra_args[HORIZON_ARG]` seconds into `[EOR]`."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        vocab = Vocabulary.load(Path(vllm_config.model_config.model) / SPEC_FILE)
        self.gap_s = np.asarray(vocab.gap_decode_s, dtype=np.float64)
        self.end_id = F.EOR_ID
        self.device = device
        self._gap_row: torch.Tensor | None = None  # gap seconds per logit column (0: not a gap)
        self.clocks: dict[int, _Clock] = {}

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        h = (params.extra_args or {}).get(HORIZON_ARG)
        if h is not None and not (isinstance(h, int | float) and math.isfinite(h) and h >= 0):
            raise ValueError(f"extra_args.{HORIZON_ARG}: a non-negative number of seconds, got {h!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # moving mass to [EOR] changes greedy choices too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new(params: SamplingParams, _prompt: list[int] | None, output: list[int]) -> _Clock | None:
            h = (params.extra_args or {}).get(HORIZON_ARG)
            return None if h is None else _Clock(float(h), output)

        process_dict_updates(self.clocks, batch_update, new)
        for c in self.clocks.values():
            if len(c.output) > c.seen:
                c.elapsed_s += float(self.gap_s[unread(c)].sum())

    def _gaps(self, width: int, device: torch.device) -> torch.Tensor:
        if self._gap_row is None or self._gap_row.shape[0] != width:
            row = np.zeros(width)  # the model's logits may be wider than the vocabulary (padding)
            row[: len(self.gap_s)] = self.gap_s[:width]
            self._gap_row = torch.tensor(row, dtype=torch.float64, device=device)
        return self._gap_row

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.clocks:
            return logits
        rows = torch.tensor(list(self.clocks), dtype=torch.long, device=logits.device)
        room = torch.tensor([c.horizon_s - c.elapsed_s for c in self.clocks.values()],
                            dtype=torch.float64, device=logits.device)
        crossing = self._gaps(logits.shape[1], logits.device)[None, :] > room[:, None]  # rows x vocab
        if not bool(crossing.any()):
            return logits
        sub = logits[rows]
        merged = torch.logsumexp(torch.cat([sub[:, self.end_id, None], sub.masked_fill(~crossing, float("-inf"))], 1), 1)
        sub = sub.masked_fill(crossing, float("-inf"))
        sub[:, self.end_id] = merged
        logits[rows] = sub
        return logits
