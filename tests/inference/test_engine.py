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
from nightingale.inference.next_events import next_events
from nightingale.inference.prompts import Event, body_banned_ids, build_prompt
from nightingale.inference.risk import outcome_hits, patient_risk
from nightingale.inference.rollouts import DEATH, HORIZON, RolloutConfig, sample_rollouts
from nightingale.tokenizer import families as F
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


def test_rollouts_stop_at_horizon_and_are_reproducible(server, engine, vocab):
    p = [prompt(vocab), prompt(vocab, "ICD10//I21.9")]
    cfg = RolloutConfig(n=12, horizon_s=2 * YEAR_S, chunk_tokens=16, max_new_tokens=400, seed=5)
    rolls = server.run(sample_rollouts(engine, p, cfg))
    assert [len(r) for r in rolls] == [12, 12]
    flat = [r for rs in rolls for r in rs]
    assert all(r.end in (HORIZON, DEATH, "max_tokens") for r in flat)
    assert all(len(r.elapsed_s) == len(r.tokens) for r in flat)
    assert all(len(r.elapsed_s) == 0 or r.elapsed_s.max() <= cfg.horizon_s for r in flat)
    assert any(len(r.tokens) > cfg.chunk_tokens for r in flat), "continued across chunks"
    assert not any(F.EOR_ID in r.tokens for r in flat), "[EOR] is banned by default"
    for r in flat:
        if r.end == HORIZON:  # the cut token is a gap that would cross the horizon
            assert len(r.tokens) < cfg.max_new_tokens
    again = server.run(sample_rollouts(engine, p, cfg))
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(flat, [r for rs in again for r in rs]))


def test_forecast_impossible_zero_certain_one(server, engine, vocab):
    """NEVER_CODE can never be emitted -> exactly 0 of n rollouts; after TRIGGER_CODE death is the
    next token in every rollout -> n of n."""
    cfg = RolloutConfig(n=32, horizon_s=YEAR_S, chunk_tokens=32, max_new_tokens=300, seed=0)
    rolls = server.run(sample_rollouts(engine, [prompt(vocab), prompt(vocab, TRIGGER_CODE)], cfg))
    never = patient_risk(outcome_hits(rolls[0], [vocab.code_to_id[NEVER_CODE]], YEAR_S), rolls[0])
    assert never.events == 0 and never.probability == 0.0 and never.upper < 0.11
    certain = patient_risk(outcome_hits(rolls[1], [vocab.code_to_id[S.DEATH_CODE]], YEAR_S), rolls[1])
    assert certain.probability == 1.0 and certain.lower > 0.89
    assert all(r.end == DEATH and len(r.tokens) == 1 for r in rolls[1])


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
