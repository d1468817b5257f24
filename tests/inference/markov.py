"""A tiny model trained on a known Markov chain: the fixture of the risk-calibration guard.

The chain. Every subject (all `SEX//F`, all born 1960-01-01, no numeric values) starts in 2005 in
WELL (p 0.65) or SICK (0.35) and then takes one step every `GAP_S` = 907,200 s (10.5 days): each
step is one time gap, then one event whose code is the new state, or `MEDS_DEATH`, which ends the
timeline. Follow-up stops after `MAX_STEPS` = 60 events (`[EOR]` then), which ~17 % reach: most
timelines end in death (83 %), after ~28 events on average. Transitions (rows: from, columns: to):

            WELL   SICK   DEATH
    WELL    0.80   0.19   0.01
    SICK    0.33   0.60   0.07
    DEATH   0      0      1        (absorbing)

Why these numbers: a per-step death hazard of 1 % from WELL and 7 % from SICK gives risks that a
few hundred rollouts resolve (within 6 / 12 steps: 0.138 / 0.283 from WELL, 0.230 / 0.360 from
SICK; `exact_death_probability`), unlike each other and far from 0 and 1; and death is never
the most probable next event: sorted by probability, the mass before death is 0.99 (WELL) and
0.93 (SICK), both >= 0.9, so top-p 0.9 sampling drops death at every step and its rollouts never
die. That is the negative control: an estimator that samples with truncation is visibly wrong.

Tokens. 10.5 days lies between the 1w and 2w rungs of the default ladder, so every step is ONE
`GAP//1w` token (id 22 with the default ladder; `MEDS_DEATH` is id 57 in this fit, but look ids up
in `vocab.code_to_id`), and a rung decodes to the midpoint of its rung
(`Vocabulary.gap_decode_s`): (7 + 14) / 2 days = 907,200 s, exactly the true gap. So after k
generated steps a rollout's clock (sum of `gap_decode_s` of its gap tokens) is exactly
k * 907,200 s, and a horizon of (k + 0.5) * GAP_S means "within k steps" (a death at step j
happens at clock j * GAP_S). A training timeline is `SEX//F AGE//45-50 [SOT] code (GAP//1w code)...
[EOR]`, at most 123 tokens (one window of 128 each), so keep prompt steps + rollout steps <= ~55:
the model never saw later positions. After a state code the next token is `GAP//1w` (p 0.999;
`[EOR]` ~1e-4); after `GAP//1w` it is WELL / SICK / `MEDS_DEATH` with the chain's probabilities,
and ~0.001 goes to stray tokens (so ~1-2 % of 12-step rollouts carry one extra or missing gap).

The model: the project's own path end to end. `build_markov_model` simulates 3,000 subjects
(seeded), writes them with `MEDSWriter`, runs `data_prep/prepare.py` in a subprocess (as
tests/inference/harness.py does), trains a Llama of 2 layers x 64 wide (context 256) for 400
AdamW steps of 16 windows (lr 3e-3 decaying linearly to 0) on one CPU thread, and exports it with a
passing gate report into `root/model` (cached: a second call returns at once). Measured on the
2-core machine, lightly loaded: ~21 s (prepare 1.4 s, training and export 18 s) plus ~6 s of
imports; expect about twice that when the other core is busy. Learned next-event probabilities
(transformers, prompts of 1-30 steps) are within 0.009 of the table: WELL -> 0.797-0.799 /
0.189-0.192 / 0.0109-0.0114 and SICK -> 0.322-0.326 / 0.604-0.608 / 0.065-0.073; so the model's
own risks run a few percent (relative) above the exact ones, e.g. 12 steps from WELL 0.293 vs
0.283 (tests/inference/test_markov_fixture.py checks all this).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.inference.prompts import Event, Prompt, build_prompt

REPO = Path(__file__).resolve().parents[2]

WELL, SICK, DEATH = "MARKOV//WELL", "MARKOV//SICK", S.DEATH_CODE
STATES = (WELL, SICK, DEATH)  # the order of TRANSITIONS' rows and columns
TRANSITIONS = np.array([
    [0.80, 0.19, 0.01],
    [0.33, 0.60, 0.07],
    [0.00, 0.00, 1.00],
])
INITIAL = np.array([0.65, 0.35, 0.0])
GAP_S = 907_200  # 10.5 days: one GAP//1w token, which decodes to exactly this many seconds
GAP_TOKEN = "GAP//1w"
MAX_STEPS = 60  # events per subject at most (the first state counts as one)
SEX = "SEX//F"
STATICS = (SEX,)
BIRTH = dt.datetime(1960, 1, 1)
START_YEAR = 2005  # first events fall in 2005: ages 45-48, one age band (AGE//45-50) throughout
SUBJECTS, SEED = 3_000, 0
TRAIN_STEPS, BATCH, LR, WINDOW = 400, 16, 3e-3, 128

CODES = {
    WELL: "Markov test chain: well (routine review)",
    SICK: "Markov test chain: sick (exacerbation)",
    SEX: "Female",
    S.BIRTH_CODE: "Birth",
    S.DEATH_CODE: "Death",
}


def exact_death_probability(start_state: str, steps: int) -> float:
    """Probability of death within `steps` further steps (each GAP_S seconds) from `start_state`
    (WELL or SICK): the DEATH entry of row `start_state` of TRANSITIONS ** steps (death absorbs)."""
    if start_state not in (WELL, SICK):
        raise ValueError(f"start_state: one of {WELL!r}, {SICK!r}; got {start_state!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: a non-negative integer, got {steps!r}")
    power = np.linalg.matrix_power(TRANSITIONS, steps)
    return float(power[STATES.index(start_state), STATES.index(DEATH)])


def simulate_states(n_subjects: int, seed: int = SEED) -> np.ndarray:
    """State indices into STATES, (n_subjects, MAX_STEPS); -1 after death. Seeded numpy."""
    rng = np.random.default_rng(seed)
    states = np.full((n_subjects, MAX_STEPS), -1, np.int8)
    states[:, 0] = rng.choice(3, size=n_subjects, p=INITIAL)
    cum = np.cumsum(TRANSITIONS, axis=1)
    for t in range(1, MAX_STEPS):
        prev = states[:, t - 1]
        alive = (prev == 0) | (prev == 1)
        u = rng.random(n_subjects)
        nxt = (u[:, None] >= cum[np.where(alive, prev, 0)]).sum(axis=1).clip(max=2)
        states[:, t] = np.where(alive, nxt, -1)
    return states


def markov_events(n_subjects: int, seed: int = SEED) -> pl.DataFrame:
    """The simulated cohort as MEDS rows (subject ids 1..n): sex, birth, then one event a step."""
    states = simulate_states(n_subjects, seed)
    rng = np.random.default_rng([seed, 1])
    t0 = np.datetime64(f"{START_YEAR}-01-01", "us").astype(np.int64)
    start = t0 + rng.integers(0, 365, n_subjects) * 86_400 * 1_000_000
    subj, step = np.nonzero(states >= 0)  # row-major: by subject, then step
    n = n_subjects
    sid = np.concatenate([np.arange(1, n + 1), np.arange(1, n + 1), subj + 1])
    birth_us = (BIRTH - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    time = np.concatenate([np.zeros(n, np.int64), np.full(n, birth_us), start[subj] + step * GAP_S * 1_000_000])
    code = np.concatenate([np.full(n, SEX), np.full(n, S.BIRTH_CODE), np.array(STATES)[states[subj, step]]])
    static = np.arange(len(sid)) < n
    order = np.lexsort((np.where(static, np.iinfo(np.int64).min, time), sid))
    return pl.DataFrame({
        S.SUBJECT_ID: sid[order],
        S.TIME: pl.Series(S.TIME, np.where(static, 0, time)[order]).cast(pl.Datetime("us")),
        S.CODE: code[order],
    }).with_columns(
        pl.when(pl.Series(static[order])).then(None).otherwise(pl.col(S.TIME)).alias(S.TIME)
    )


def write_markov_meds(out: Path, n_subjects: int = SUBJECTS, seed: int = SEED) -> Path:
    """Write the cohort as a MEDS dataset (train/tuning/held_out 80/10/10) with its metadata."""
    from nightingale.data.meds_io import MEDSWriter

    events = markov_events(n_subjects, seed)
    rank = np.random.default_rng([seed, 2]).permutation(n_subjects)
    split = np.where(rank < round(0.8 * n_subjects), S.TRAIN,
                     np.where(rank < round(0.9 * n_subjects), S.TUNING, S.HELD_OUT))
    splits = pl.DataFrame({S.SUBJECT_ID: np.arange(1, n_subjects + 1), S.SPLIT: split})
    with MEDSWriter(out) as w:
        tagged = events.join(splits, on=S.SUBJECT_ID, how="left", maintain_order="left")
        for name in S.SPLITS:
            w.write_shard(f"{name}/0", tagged.filter(pl.col(S.SPLIT) == name).drop(S.SPLIT))
        w.write_splits(splits)
        w.write_codes(pl.DataFrame({S.CODE: list(CODES), S.DESCRIPTION: list(CODES.values()),
                                    S.PARENT_CODES: [[] for _ in CODES]}))
        w.write_dataset_json({"dataset_name": "nightingale-markov-test", "dataset_version": "1",
                              "created_at": "2020-01-01T00:00:00+00:00",  # fixed: seeds stay reproducible
                              "subjects": n_subjects, "events": events.height,
                              "markov": {"states": list(STATES), "transitions": TRANSITIONS.tolist(),
                                         "gap_s": GAP_S, "max_steps": MAX_STEPS, "seed": seed}})
    return out


def build_markov_model(root: Path) -> Path:
    """Simulate, prepare, train and export the Markov model into `root/model` (cached there:
    returns at once when `root/model/model.safetensors` exists). See the module docstring."""
    import torch

    from nightingale.model import ModelConfig, build_model, export_model
    from nightingale.tokenizer import Vocabulary
    from nightingale.tokenizer.corpus import TokenCorpus, WindowSampler

    root = Path(root)
    model_dir = root / "model"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "meds").exists():
        write_markov_meds(root / "meds")
    if not (root / "prep" / "corpus").exists():
        subprocess.run([sys.executable, "data_prep/prepare.py", "data=meds", f"data.path={root / 'meds'}",
                        f"out_dir={root / 'prep'}", "progress=false"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    vocab = Vocabulary.load(root / "prep" / "vocab")
    cfg = ModelConfig(name="markov-test", hidden_size=64, n_layers=2, n_heads=2, n_kv_heads=2,
                      intermediate_size=128, context_length=256).with_vocab(len(vocab))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on 2 busy cores were ~10x slower than 1 (harness.py)
    try:
        model = build_model(cfg, seed=SEED)
        sampler = WindowSampler(TokenCorpus(root / "prep" / "corpus" / "train"), vocab, WINDOW, seed=SEED)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
        # Linear decay to 0: the last steps average out minibatch noise in the learned transition
        # probabilities (decay to 10 % left the death hazard from WELL at 0.012 instead of 0.010).
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / TRAIN_STEPS)
        model.train()
        for _ in range(TRAIN_STEPS):
            windows = [sampler.next() for _ in range(BATCH)]
            width = max(w["n_tokens"] for w in windows)  # right-padded: cut the all-PAD tail
            batch = torch.from_numpy(np.stack([w["input_ids"][:width] for w in windows]))
            loss = model(input_ids=batch, labels=batch.masked_fill(batch == 0, -100)).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)
    card = {"data": f"Markov test chain, {SUBJECTS} subjects (tests)", "steps": TRAIN_STEPS,
            "losses": {"train": float(loss.detach())}}
    export_model(model.state_dict(), cfg, vocab, model_dir, card=card)
    (model_dir / "gate_report.json").write_text(json.dumps({"passed": True, "failed": [], "checks": {}}))
    return model_dir


def markov_prompt_events(state: str, n_steps: int = 4, start: dt.datetime = dt.datetime(2005, 3, 1)) -> list[Event]:
    """A timeline of `n_steps` events GAP_S apart that ends in `state` (WELL or SICK): WELL
    before that. Pass `birth=BIRTH, statics=STATICS` to `build_prompt` (or use `markov_prompt`)."""
    if state not in (WELL, SICK):
        raise ValueError(f"state: one of {WELL!r}, {SICK!r}; got {state!r}")
    if not isinstance(n_steps, int) or not 1 <= n_steps <= MAX_STEPS:
        raise ValueError(f"n_steps: an integer in 1..{MAX_STEPS}, got {n_steps!r}")
    gap = dt.timedelta(seconds=GAP_S)
    return [Event(start + i * gap, WELL if i < n_steps - 1 else state) for i in range(n_steps)]


def markov_prompt(vocab, state: str, n_steps: int = 4, max_tokens: int = 256) -> Prompt:
    """`build_prompt` of `markov_prompt_events(state, n_steps)` with the cohort's birth and sex."""
    return build_prompt(vocab, markov_prompt_events(state, n_steps), birth=BIRTH, statics=STATICS,
                        max_tokens=max_tokens)
