"""What happens next: the distribution of the next event and of the time until it, from the
model's next-token probabilities (no sampling, so no Monte-Carlo noise).

Time to the next event is exact from one distribution. The encoder writes a gap as its top rungs
first (as many whole years as it holds), then one rung for the remainder, then the event's code
(tokenizer/encode.py). So the first token after the prompt says which ladder interval the gap falls
in: a code (or value bin) means the next event is at the same time (gap under the first rung);
`GAP//<r>` for a rung below the top means a gap in [rung r, rung r+1); the top rung means a gap
of at least the top rung.

The next event's code needs one more step: P(next code = c) = P(c first) + sum over rungs g of
P(g first) x P(c | prompt, g), with one batched request for the prompt and one per gap rung that
carries probability. Mass on a second gap token after the first (only common after the top rung:
gaps of several years) is not followed further and is reported as `unresolved`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nightingale import schema as S
from nightingale.inference.engine import Engine
from nightingale.inference.prompts import Prompt, body_banned_ids
from nightingale.tokenizer import families as F

MIN_BRANCH_PROB = 1e-4  # gap rungs below this first-token probability are not expanded


@dataclasses.dataclass(frozen=True)
class TimeBin:
    label: str  # e.g. "<5m", "1d-3d", ">=1y"
    lower_s: float
    upper_s: float | None  # None: open-ended
    probability: float


@dataclasses.dataclass(frozen=True)
class NextEvents:
    events: list[tuple[str, float]]  # top-k (code, probability), most likely first
    time_to_next: list[TimeBin]
    p_death_next: float  # the next event is MEDS_DEATH
    p_end_of_record: float  # the record ends before another event
    unresolved: float  # probability mass not attributed to a code (see module docstring)


async def next_events(engine: Engine, prompt: Prompt, top_k: int = 10) -> NextEvents:
    """Top-k next events and the time-to-next-event distribution for one prompt."""
    vocab = engine.vocab
    room = engine.max_model_len - 2
    p0 = (await engine.next_token_probs([prompt.window(room=room)]))[0]
    banned = np.asarray(body_banned_ids(vocab), dtype=np.int64)
    p0 = p0.copy()
    p0[banned] = 0.0  # impossible inside a timeline (and banned when sampling): renormalise
    p0 /= p0.sum()
    kinds = vocab.kinds
    is_code = kinds == F.KIND_CODE
    gaps = vocab.gap_ids
    code_p = np.where(is_code, p0, 0.0)
    branch = [int(g) for g in gaps if p0[g] >= MIN_BRANCH_PROB]
    unresolved = float(sum(p0[g] for g in gaps if p0[g] < MIN_BRANCH_PROB))
    if branch:
        p1 = await engine.next_token_probs([prompt.window([g], room=room) for g in branch])
        for g, row in zip(branch, p1):
            row = row.copy()
            row[banned] = 0.0
            row /= row.sum()
            code_p += p0[g] * np.where(is_code, row, 0.0)
            unresolved += float(p0[g] * (1.0 - row[is_code].sum()))  # gaps again, EOR, bins
    order = np.argsort(-code_p)[:top_k]
    events = [(vocab.codes[i], float(code_p[i])) for i in order if code_p[i] > 0]
    death = vocab.code_to_id.get(S.DEATH_CODE)

    ladder, names = vocab.ladder_s, vocab.config.time_ladder
    # An age token first (a band change with no gap rung before it) is a same-time event too.
    same_time = float(p0[(kinds == F.KIND_CODE) | (kinds == F.KIND_VALUE_BIN) | (kinds == F.KIND_AGE)].sum())
    bins = [TimeBin(f"<{names[0]}", 0.0, float(ladder[0]), same_time)]
    for r in range(len(gaps)):
        top = r == len(gaps) - 1
        label = f">={names[r]}" if top else f"{names[r]}-{names[r + 1]}"
        bins.append(TimeBin(label, float(ladder[r]), None if top else float(ladder[r + 1]), float(p0[gaps[r]])))
    return NextEvents(
        events=events,
        time_to_next=bins,
        p_death_next=float(code_p[death]) if death is not None else 0.0,
        p_end_of_record=float(p0[F.EOR_ID]),
        unresolved=unresolved,
    )
