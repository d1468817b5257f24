"""The inference layer against the real vLLM CPU engine on the session's tiny trained model.

The model's planted facts (harness.py): NEVER_CODE is never generated (its logit sits hundreds
below the rest everywhere), and TRIGGER_CODE is always followed by MEDS_DEATH.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.validate import validate_meds
from nightingale.inference.cohorts import CohortSpec, generate_cohort
from nightingale.inference.engine import Sampling
from nightingale.inference.forecast import ForecastConfig, forecast, outcome_token_ids
from nightingale.inference.next_events import next_events
from nightingale.inference.prompts import Event, body_banned_ids, build_prompt, window_prompt
from nightingale.inference.rollouts import DEATH, HORIZON, RolloutConfig, sample_rollouts
from nightingale.tokenizer import families as F
from nightingale.tokenizer.summary import history_summary
from tests.inference.harness import NEVER_CODE, TRIGGER_CODE

pytestmark = pytest.mark.slow
T0 = dt.datetime(2021, 3, 1)
YEAR_S = 365.25 * 86400


def timeline(last_code: str | None = None) -> list[Event]:
    ev = [Event(T0 + dt.timedelta(days=30 * i), c) for i, c in
          enumerate(["SNOMED//185345009", "ICD10//I10", "ATC//C10AA01", "SNOMED//185345009", "ATC//C10AA01"])]
    ev.append(Event(T0 + dt.timedelta(days=200), "LOINC//8480-6", 142.0))
    if last_code:
        ev.append(Event(T0 + dt.timedelta(days=240), last_code))
    return ev


def prompt(vocab, last_code=None):
    return build_prompt(vocab, timeline(last_code), birth=dt.date(1950, 5, 1), statics=["SEX//M", "ETHNICITY//White"],
                        max_tokens=192)


def test_sample_n_stops_and_bans(server, engine, vocab):
    death = vocab.code_to_id[S.DEATH_CODE]
    banned = body_banned_ids(vocab) + (F.EOR_ID,)
    out = server.run(engine.sample([prompt(vocab).ids], Sampling(n=16, max_tokens=40, seed=1, stop_token_ids=(death,),
                                                                  banned_token_ids=banned)))
    comps = out[0]
    assert len(comps) == 16
    for c in comps:
        assert not set(c.token_ids) & set(banned)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == death  # the stop token is kept in the output
        else:
            assert len(c.token_ids) == 40
    # The planted trigger: death is the only continuation after TRIGGER_CODE.
    trig = server.run(engine.sample([prompt(vocab, TRIGGER_CODE).ids], Sampling(n=8, max_tokens=5, seed=2, stop_token_ids=(death,))))
    assert all(c.token_ids == [death] for c in trig[0])


def test_rollouts_stop_at_horizon_inside_the_engine(server, engine, vocab):
    """One engine request per prompt (n rollouts in it), each rollout ending at death or with
    `[EOR]` where its next time gap would pass the horizon (no token past it), and the same
    rollouts again for the same seed."""
    p = [prompt(vocab), prompt(vocab, "ICD10//I21.9")]
    # half a year fits the context of the tiny test model (its timelines are dense)
    cfg = RolloutConfig(n=12, horizon_s=0.5 * YEAR_S, max_new_tokens=400, seed=5)
    before = engine.requests
    rolls = server.run(sample_rollouts(engine, p, cfg))
    assert engine.requests - before == 2, "n rollouts of a prompt are one request, with no rounds"
    assert [len(r) for r in rolls] == [12, 12]
    flat = [r for rs in rolls for r in rs]
    assert all(r.end in (HORIZON, DEATH) for r in flat)
    assert all(len(r.elapsed_s) == len(r.tokens) for r in flat)
    assert any(r.end == HORIZON for r in flat) and any(len(r.tokens) > 4 for r in flat)
    for r in flat:
        assert (r.elapsed_s <= cfg.horizon_s).all(), "no token lies past the horizon"
        last = F.EOR_ID if r.end == HORIZON else vocab.code_to_id[S.DEATH_CODE]
        assert r.tokens[-1] == last and F.EOR_ID not in r.tokens[:-1]  # banned: only the merge ends with it
    # the horizon-ending [EOR] was sampled where the model's next gap crossed: the rollout's next
    # event after it would lie past the horizon (its last clock is within one longest gap of it)
    assert all(cfg.horizon_s - r.elapsed_s[-1] < vocab.gap_decode_s.max() for r in flat if r.end == HORIZON)
    again = server.run(sample_rollouts(engine, p, cfg))
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(flat, [r for rs in again for r in rs]))


def test_rollouts_continue_past_the_context(server, engine, vocab):
    """A horizon the context cannot hold: the rollout is continued in further requests (sliding
    window) and still ends at death or the horizon, never at the token budget."""
    # 30 years: the test model writes ~150-300 tokens over 8 years, about its 256-token context, so
    # 8 years left it to chance whether any rollout had to be continued at all
    cfg = RolloutConfig(n=4, horizon_s=30 * YEAR_S, max_new_tokens=4000, seed=2, reserve_tokens=32)
    rolls = server.run(sample_rollouts(engine, [prompt(vocab)], cfg))[0]
    assert all(r.end in (HORIZON, DEATH) for r in rolls)
    assert any(len(r.tokens) > engine.max_model_len for r in rolls) or all(r.end == DEATH for r in rolls)


def test_forecast_impossible_zero_certain_one(server, engine, vocab):
    """NEVER_CODE can never be emitted -> 0 with both estimators; after TRIGGER_CODE death is the
    next token with probability ~1 -> 1 with both."""
    outcomes = outcome_token_ids(vocab, {"never": [NEVER_CODE], "death": [S.DEATH_CODE]}, strict=True)
    fc = server.run(forecast(engine, [prompt(vocab), prompt(vocab, TRIGGER_CODE)], outcomes, [YEAR_S],
                             ForecastConfig(rollouts=16, seed=0)))
    for est in ("count", "probability"):
        risk = fc.risk(est)
        assert risk[0, 0, 0] == 0.0 and risk[1, 0, 0] == 0.0  # never
        assert risk[1, 1, 0] == pytest.approx(1.0, abs=1e-4)  # certain death
    assert fc.estimate(1, 1, 0).lower > 0.99
    never = fc.estimate(0, 0, 0)
    assert never.probability == 0.0 and never.upper == 0.0 and never.estimator == "probability"
    # the probability estimator is continuous: patients tied at 0/n by counting get distinct values
    assert 0.0 < fc.risk("probability")[0, 1, 0] < 1.0


def test_next_events_distribution(server, engine, vocab):
    ne = server.run(next_events(engine, prompt(vocab), top_k=10))
    assert 1 <= len(ne.events) <= 10
    probs = [p for _, p in ne.events]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    total_time = sum(b.probability for b in ne.time_to_next) + ne.p_end_of_record
    assert total_time == pytest.approx(1.0, abs=1e-4)
    assert sum(probs) <= 1 + 1e-6
    assert ne.time_to_next[0].label == "<5m" and ne.time_to_next[-1].label == ">=1y"
    trig = server.run(next_events(engine, prompt(vocab, TRIGGER_CODE), top_k=3))
    assert trig.events[0][0] == S.DEATH_CODE and trig.events[0][1] > 0.999
    assert trig.p_death_next > 0.999 and trig.time_to_next[0].probability > 0.999
    assert NEVER_CODE not in [c for c, _ in ne.events]


def test_a_cohort_timeline_goes_on_past_the_context_until_it_ends(server, engine, vocab, tmp_path):
    """Whole timelines: generation continues in sliding windows past the model's context (here 256
    tokens) until death, end of record or the end date; nothing is dated after the end date."""
    end = dt.datetime(2035, 1, 1)
    spec = CohortSpec(n_patients=16, seed=5, batch_size=16, max_new_tokens=3000, end_date=end)
    rep = server.run(generate_cohort(engine, spec, tmp_path / "cohort"))
    assert validate_meds(tmp_path / "cohort").ok
    assert rep["generated_tokens_max"] > engine.max_model_len and rep["windows_max"] >= 2, rep
    ends = {k: rep.get(f"ended_{k}", 0) for k in ("death", "end_date", "end_of_record", "max_tokens")}
    assert sum(ends.values()) == 16 and ends["end_of_record"] == 0, ends  # followed to death or the end date
    assert rep.get("ended_max_tokens", 0) <= 1 and rep["dropped_rate"] <= DROPPED_RATE_MAX, rep
    df = pl.read_parquet(tmp_path / "cohort" / "data")
    timed = df.filter(pl.col(S.TIME).is_not_null() & (pl.col(S.CODE) != S.BIRTH_CODE))
    assert timed[S.TIME].min() >= spec.start_date and timed[S.TIME].max() <= end


def test_the_engine_writes_age_band_changes_at_their_times_and_no_others(server, engine, vocab):
    """AgeClock: with the band changes given, the only age tokens are those, each written right
    before the first event after its time (a gap past two changes writes the later band, as the
    tokenizer does); between a change and its band token, only time passes."""
    p = prompt(vocab)  # born 1950-05-01, last event 2021-10-27: band 70-75
    bands = {vocab.tokens[i]: int(i) for i in vocab.age_ids}
    times = np.array([0.3 * YEAR_S, 0.8 * YEAR_S])
    ids_of = [bands["AGE//75-80"], bands["AGE//80-85"]]
    death = vocab.code_to_id[S.DEATH_CODE]
    banned = body_banned_ids(vocab) + (F.EOR_ID,)
    (outs,) = server.run(engine.sample([p.ids], Sampling(
        n=24, max_tokens=200, seed=4, stop_token_ids=(death, F.EOR_ID), banned_token_ids=banned,
        horizon_s=1.5 * YEAR_S, age_changes=tuple(zip(times.tolist(), ids_of, strict=True)))))
    lived = 0
    for c in outs:
        ids = np.asarray(c.token_ids)
        clock = np.concatenate([[0.0], np.cumsum(vocab.gap_decode_s[ids])[:-1]])  # time before each token
        is_code = vocab.kinds[ids] == F.KIND_CODE
        # the band each event should carry: the latest change its time has passed (-1: none)
        due = np.searchsorted(times, clock, side="right") - 1
        written = -1
        for pos in range(len(ids)):
            if vocab.kinds[ids[pos]] == F.KIND_AGE:
                assert due[pos] > written and ids[pos] == ids_of[due[pos]], vocab.to_text(ids)
                assert is_code[pos + 1], "a band token is followed by its event"
                written = due[pos]
            elif is_code[pos]:
                assert written == due[pos], f"an event at {clock[pos] / YEAR_S:.2f} y without its band"
        lived += written == len(times) - 1
    assert lived >= 3, "too few continuations lived past both changes to show anything"


def test_a_window_over_a_long_timeline_is_laid_out_like_a_training_window(vocab):
    rng = np.random.default_rng(0)
    codes = np.flatnonzero(vocab.kinds == F.KIND_CODE)
    gaps = np.flatnonzero(vocab.gap_decode_s > 0)
    body = [F.SOT_ID] + [int(t) for _ in range(300) for t in (rng.choice(codes), rng.choice(gaps))]
    static, age0 = [int(np.flatnonzero(vocab.is_static)[0])], int(vocab.age_ids[3])
    starts = []
    prompt = window_prompt(vocab, static, body, 128, lambda start: starts.append(start) or age0)
    (start,) = starts  # the age band is asked for at the first kept token
    assert vocab.kinds[body[start]] == F.KIND_CODE and start > 0  # cut at an event, the most recent kept
    summary = history_summary(vocab, np.array(body[:start])).tolist()
    assert len(summary) > 0 and prompt == static + [age0] + summary + body[start:] and len(prompt) <= 128
    short = body[:21]  # a timeline that fits is kept whole, [SOT] and all
    assert window_prompt(vocab, static, short, 128, lambda start: age0) == static + [age0] + short


DROPPED_RATE_MAX = 0.02  # the stated bound: at most 2% of generated tokens dropped at decode


def test_cohort_validates_as_meds(server, engine, vocab, tmp_path):
    spec = CohortSpec(n_patients=24, sex="F", age_min=60, age_max=70, seed=3, max_new_tokens=120,
                      shard_size=10, batch_size=8, starting_code="ICD10//I10")
    seen = []
    rep = server.run(generate_cohort(engine, spec, tmp_path / "cohort", progress=lambda d, n: seen.append(d)))
    assert seen[-1] == 24 and rep["patients"] == 24
    report = validate_meds(tmp_path / "cohort")
    assert report.ok, [str(e) for e in report.errors]
    assert len(list((tmp_path / "cohort" / "data" / "train").glob("*.parquet"))) == 3  # 10 + 10 + 4
    assert rep["dropped_rate"] <= DROPPED_RATE_MAX, json.dumps(rep)
    df = pl.read_parquet(tmp_path / "cohort" / "data")
    assert df[S.SUBJECT_ID].n_unique() == 24
    statics = df.filter(pl.col(S.TIME).is_null())
    assert set(statics.filter(pl.col(S.CODE).str.starts_with("SEX//"))[S.CODE]) == {"SEX//F"}
    births = df.filter(pl.col(S.CODE) == S.BIRTH_CODE)
    ages = (spec.start_date - births[S.TIME].to_numpy().astype("datetime64[us]").astype(dt.datetime)[0]).days / 365.25
    assert 60 <= ages <= 70
    first = df.filter(pl.col(S.TIME).is_not_null() & (pl.col(S.CODE) != S.BIRTH_CODE)).group_by(S.SUBJECT_ID, maintain_order=True).first()
    assert set(first[S.CODE]) == {"ICD10//I10"}
