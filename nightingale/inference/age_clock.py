"""Age-band changes written by the clock, not guessed by the model: a V1 logits processor.

A vocabulary with ages in the timeline (`TokenizerConfig.age_in_timeline`) writes the new band
before the first event of each new 5-year band (tokenizer/encode.py). That token is fixed by the
birth date and the event's time, but a sampling model has to guess both when it comes and which
band it names; a small model guesses badly (an 80-year-old "turns" 30, then 70), and the age the
model reads back from its own timeline, the strongest hazard there is, goes wrong with it.

Where the caller knows the birth (a synthetic patient's drawn start age, a real patient's
record), it passes the band changes ahead as `SamplingParams.extra_args[AGE_ARG]`: pairs
`[seconds from the request's start, band token id]` in time order. This processor tracks the
request's clock (the decoded values of its time-gap tokens, as `horizon.HorizonStop` does) and:
- bans every age token while no change is due;
- once the clock has passed a change, it is due: the band of the latest change passed is the
  only age token allowed, and the event codes' probability mass moves to it (its logit becomes
  the log-sum-exp of theirs and its own, and they are banned). The next event is then written as
  the tokenizer would have written it, `[AGE] code`, with exactly the probability the model gives
  that event happening now; time gaps keep theirs, so time and outcomes are sampled as before.
Requests without the argument are untouched.
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

from nightingale.inference.horizon import unread
from nightingale.tokenizer import families as F
from nightingale.tokenizer.vocabulary import SPEC_FILE, Vocabulary

AGE_ARG = "nightingale_age_changes"


@dataclasses.dataclass
class _Ages:
    times_s: np.ndarray  # when each change happens, seconds from the request's start
    ids: list[int]  # the band each change writes
    output: list[int]  # vLLM's live list of the request's generated ids
    seen: int = 0
    elapsed_s: float = 0.0
    next: int = 0  # the first change not yet written

    def due(self) -> int | None:
        """Index of the latest change the clock has passed that is not yet written (None: none)."""
        passed = int(np.searchsorted(self.times_s, self.elapsed_s, side="right"))
        return passed - 1 if passed > self.next else None


class AgeClock(LogitsProcessor):
    """Write the age-band changes of `extra_args[AGE_ARG]` at their times (see module doc)."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        vocab = Vocabulary.load(Path(vllm_config.model_config.model) / SPEC_FILE)
        self.gap_s = np.asarray(vocab.gap_decode_s, dtype=np.float64)
        self.age_ids = np.asarray(vocab.age_ids, dtype=np.int64)
        self.is_age = np.zeros(len(vocab.kinds), bool)
        self.is_age[self.age_ids] = True
        self.code_ids = np.flatnonzero(vocab.kinds == F.KIND_CODE)
        self.device = device
        self.states: dict[int, _Ages] = {}

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        changes = (params.extra_args or {}).get(AGE_ARG)
        if changes is None:
            return
        ok = isinstance(changes, list | tuple) and all(
            isinstance(c, list | tuple) and len(c) == 2 and isinstance(c[0], int | float) and math.isfinite(c[0])
            and isinstance(c[1], int) for c in changes)
        if not ok or any(b[0] < a[0] for a, b in zip(changes, changes[1:])):
            raise ValueError(f"extra_args.{AGE_ARG}: [seconds, age token id] pairs in time order, got {changes!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # moving mass to the age token changes greedy choices too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new(params: SamplingParams, _prompt: list[int] | None, output: list[int]) -> _Ages | None:
            changes = (params.extra_args or {}).get(AGE_ARG)
            if changes is None:
                return None
            return _Ages(np.array([float(t) for t, _ in changes]), [int(i) for _, i in changes], output)

        process_dict_updates(self.states, batch_update, new)
        for s in self.states.values():
            if len(s.output) > s.seen:
                for t in unread(s):
                    if self.is_age[t] and (k := s.due()) is not None:
                        s.next = k + 1  # the due change is written; later ones wait for the clock
                    s.elapsed_s += self.gap_s[t]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.states:
            return logits
        rows, due = [], []
        for r, s in self.states.items():
            k = s.due()
            rows.append(r)
            due.append(-1 if k is None else s.ids[k])
        width = logits.shape[1]
        ages = torch.tensor(self.age_ids[self.age_ids < width], device=logits.device)
        codes = torch.tensor(self.code_ids[self.code_ids < width], device=logits.device)
        rows_t = torch.tensor(rows, dtype=torch.long, device=logits.device)
        sub = logits[rows_t]
        due_t = torch.tensor(due, dtype=torch.long, device=logits.device)
        has = due_t >= 0
        if bool(has.any()):
            r = torch.nonzero(has).squeeze(1)
            own = sub[r, due_t[r]]
            merged = torch.logsumexp(torch.cat([own[:, None], sub[r][:, codes]], 1), 1)
        sub[:, ages] = float("-inf")
        if bool(has.any()):
            block = sub[r]
            block[:, codes] = float("-inf")
            block[torch.arange(len(r), device=logits.device), due_t[r]] = merged
            sub[r] = block
        logits[rows_t] = sub
        return logits
