"""The Markov-chain fixture (markov.py): the chain's exact risks, and that the model learned it.

Model tests run transformers on CPU against `build_markov_model` (built once per session, ~30-70 s;
set NIGHTINGALE_TEST_ARTIFACTS to keep it between sessions, then they take ~2 s).
"""

from __future__ import annotations

import numpy as np
import pytest

from nightingale.tokenizer import families as F
from tests.inference import harness
from tests.inference import markov as M


def test_exact_death_probability_matches_closed_form_and_simulation():
    assert M.exact_death_probability(M.WELL, 0) == 0.0
    assert M.exact_death_probability(M.WELL, 1) == pytest.approx(0.01)
    assert M.exact_death_probability(M.SICK, 1) == pytest.approx(0.07)
    # Two steps from WELL: die now, or survive to WELL/SICK and die next.
    assert M.exact_death_probability(M.WELL, 2) == pytest.approx(0.01 + 0.80 * 0.01 + 0.19 * 0.07)
    states = M.simulate_states(20_000, seed=1)
    for start in (M.WELL, M.SICK):
        rows = states[:, 0] == M.STATES.index(start)
        for k in (6, 12):
            freq = (states[rows, 1 : k + 1] == M.STATES.index(M.DEATH)).any(axis=1).mean()
            p = M.exact_death_probability(start, k)
            assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / rows.sum()), (start, k, freq, p)
    with pytest.raises(ValueError, match="start_state"):
        M.exact_death_probability(M.DEATH, 3)


def test_top_p_negative_control_premise():
    """Sorted by probability, the mass before death reaches 0.9 from every living state."""
    for row in M.TRANSITIONS[:2]:
        assert np.argmax(row) != 2
        assert row[:2].sum() >= 0.9 + 0.02


@pytest.fixture(scope="module")
def markov_model(tmp_path_factory):
    import torch
    from transformers import LlamaForCausalLM

    from nightingale.tokenizer import Vocabulary

    model_dir = M.build_markov_model(harness.artifacts_root(tmp_path_factory.getbasetemp()) / "markov")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield LlamaForCausalLM.from_pretrained(model_dir).eval(), Vocabulary.load(model_dir)
    torch.set_num_threads(threads)


def _next_probs(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double()
    return torch.softmax(logits, -1).numpy()


@pytest.mark.slow
def test_prompt_tokens_and_clock(markov_model):
    _, vocab = markov_model
    gap = vocab.token_to_id[M.GAP_TOKEN]
    assert vocab.gap_decode_s[gap] == M.GAP_S
    prompt = M.markov_prompt(vocab, M.SICK, n_steps=3)
    assert vocab.to_text(prompt.ids) == (
        "SEX//F AGE//45-50 [SOT] MARKOV//WELL GAP//1w MARKOV//WELL GAP//1w MARKOV//SICK")


@pytest.mark.slow
@pytest.mark.parametrize("n_steps", [1, 4, 16])
@pytest.mark.parametrize("state", [M.WELL, M.SICK])
def test_model_learned_the_chain(markov_model, state, n_steps):
    model, vocab = markov_model
    gap = vocab.token_to_id[M.GAP_TOKEN]
    ids = [vocab.code_to_id[c] for c in M.STATES]
    prompt = M.markov_prompt(vocab, state, n_steps)
    after_code = _next_probs(model, prompt.ids)
    assert after_code[gap] > 0.99
    after_gap = _next_probs(model, prompt.ids + [gap])[ids]
    true = M.TRANSITIONS[M.STATES.index(state)]
    np.testing.assert_allclose(after_gap, true, atol=0.02)
    assert after_gap[:2].sum() > 0.91  # top-p 0.9 drops death, with a margin


def _rollouts(model, vocab, state: str, k: int, n: int, top_p: float | None = None, seed: int = 0):
    """k steps (2k tokens) of n sampled continuations, [EOR] banned as in rollouts.py. Returns the
    sum-of-probabilities death estimate per rollout, whether each died, the clock of each (s)."""
    import torch

    death, gap_s = vocab.code_to_id[M.DEATH], torch.tensor(vocab.gap_decode_s)
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor([M.markov_prompt(vocab, state, 4).ids] * n)
    alive, died = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    est, clock, past = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), None
    with torch.no_grad():
        for _ in range(2 * k):
            out = model(input_ids=x, past_key_values=past, use_cache=True)
            past, probs = out.past_key_values, torch.softmax(out.logits[:, -1].double(), -1)
            est += torch.where(alive, probs[:, death], 0.0)
            probs[:, F.EOR_ID] = 0.0
            if top_p is not None:  # as vLLM/transformers: drop the tail whose mass is <= 1 - top_p
                sp, si = probs.sort(-1)
                drop = sp.cumsum(-1) <= (1 - top_p) * sp.sum(-1, keepdim=True)
                drop[:, -1] = False
                probs = probs.scatter(-1, si, sp.masked_fill(drop, 0.0))
            t = torch.multinomial(probs, 1, generator=gen)[:, 0]
            died |= alive & (t == death)
            clock += torch.where(alive, gap_s[t], 0.0)
            alive &= t != death
            x = t[:, None]
    return est.numpy(), died.numpy(), clock.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("state", [M.WELL, M.SICK])
def test_rollouts_are_calibrated_and_top_p_drops_death(markov_model, state):
    model, vocab = markov_model
    k, n = 12, 512
    exact = M.exact_death_probability(state, k)
    est, died, clock = _rollouts(model, vocab, state, k, n)
    # Clock: each step is one gap token of GAP_S seconds (stray tokens are ~1e-3 a step).
    assert np.mean(clock[~died] == k * M.GAP_S) > 0.97
    # The sum-of-probabilities estimate: sampling error ~0.005 here, model error ~0.01.
    assert abs(est.mean() - exact) < 4 * est.std() / np.sqrt(n) + 0.015, (est.mean(), exact)
    assert abs(died.mean() - exact) < 4 * np.sqrt(exact * (1 - exact) / n) + 0.015, (died.mean(), exact)
    _, died_p, _ = _rollouts(model, vocab, state, k, n, top_p=0.9)
    assert died_p.sum() == 0
