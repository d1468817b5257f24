"""Inference pieces that need no engine: intervals, population counts, the gate, prompts."""

from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pytest

from nightingale.inference.engine import resolve_dtype
from nightingale.inference.gate import GateError, check_gate
from nightingale.inference.prompts import Event, build_prompt, resolve_outcome_codes
from nightingale.inference.risk import outcome_hits, population_count, wilson_interval
from nightingale.inference.rollouts import Rollout
from nightingale.tokenizer import families as F
from tests.tokenizer.conftest import tiny_meds, tiny_vocab  # noqa: F401


def test_wilson_interval_properties():
    lo, hi = wilson_interval(0, 64)
    assert lo == 0.0 and 0.05 < hi < 0.06  # ~3.84/(64+3.84)
    lo, hi = wilson_interval(64, 64)
    assert hi == 1.0 and 0.94 < lo < 0.95
    for k in range(0, 33):
        lo, hi = wilson_interval(k, 32)
        assert 0 <= lo <= k / 32 <= hi <= 1
    with pytest.raises(ValueError, match="n must be > 0"):
        wilson_interval(0, 0)


def test_population_count_interval_and_suppression():
    est = population_count([0.5] * 100, 64, threshold=10)
    assert est.expected == 50.0 and not est.suppressed
    # variance = 100 * 0.25 * (1 + 1/64) -> half width 1.96 * 5.04
    assert est.lower == pytest.approx(50 - 1.96 * 5.039, abs=0.05)
    small = population_count([0.05] * 100, 64, threshold=10)  # expected 5 < 10
    assert small.suppressed and small.expected is None and small.lower is None
    assert population_count([0.05] * 100, 64, threshold=0).expected == 5.0


def test_outcome_hits_respect_horizon():
    r = [Rollout(np.array([5, 7, 9]), np.array([0.0, 10.0, 100.0]), "horizon")]
    assert outcome_hits(r, [9], 100.0).tolist() == [True]
    assert outcome_hits(r, [9], 99.0).tolist() == [False]
    assert outcome_hits(r, [4], 1e9).tolist() == [False]


def test_gate_refuses_without_passing_report(tmp_path, caplog):
    with pytest.raises(GateError, match="no gate report"):
        check_gate(tmp_path)
    (tmp_path / "gate_report.json").write_text(json.dumps({"passed": False, "failed": ["calibration"]}))
    with pytest.raises(GateError, match="calibration"):
        check_gate(tmp_path)
    with caplog.at_level(logging.WARNING):
        status = check_gate(tmp_path, allow_ungated=True)
    assert status["override"] and status["failed"] == ["calibration"]
    assert "UNGATED" in caplog.text
    (tmp_path / "gate_report.json").write_text("{not json")
    with pytest.raises(GateError, match="not valid JSON"):
        check_gate(tmp_path)
    (tmp_path / "gate_report.json").write_text(json.dumps({"passed": True, "failed": []}))
    assert check_gate(tmp_path) == {"passed": True, "failed": [], "override": False,
                                    "report": {"passed": True, "failed": []}}


def test_resolve_dtype():
    assert resolve_dtype("auto", "float32", gpu=False) == "float32"
    assert resolve_dtype("auto", "bfloat16", gpu=False) == "float32"
    assert resolve_dtype("auto", "bfloat16", gpu=True) == "bfloat16"
    assert resolve_dtype("float16", "float32", gpu=True) == "float16"


def test_prompt_layout_and_truncation(tiny_vocab):  # noqa: F811
    v = tiny_vocab
    t0 = dt.datetime(2020, 1, 1)
    events = [Event(t0 + dt.timedelta(days=10 * i), "ICD10//I10" if i % 2 else "VISIT") for i in range(50)]
    p = build_prompt(v, events, birth=dt.date(1960, 6, 1), statics=["SEX//F"], max_tokens=512)
    assert p.prefix[0] == v.code_to_id["SEX//F"]
    assert v.kinds[p.prefix[-1]] == F.KIND_AGE and v.tokens[p.prefix[-1]] == "AGE//55-60"
    assert p.body[0] == F.SOT_ID and F.EOR_ID not in p.body
    assert p.anchor_us == int((events[-1].time - dt.datetime(1970, 1, 1)).total_seconds() * 1e6)
    short = build_prompt(v, events, birth=dt.date(1960, 6, 1), statics=["SEX//F"], max_tokens=20)
    assert len(short.ids) <= 20 and v.kinds[short.body[0]] == F.KIND_CODE  # starts at an event
    assert short.body[-3:] == p.body[-3:]  # keeps the most recent tokens
    cut = build_prompt(v, events, prediction_time=t0 + dt.timedelta(days=15), max_tokens=512)
    assert sum(v.kinds[t] == F.KIND_CODE for t in cut.body) == 2
    with pytest.raises(ValueError, match="^events:"):
        build_prompt(v, events, prediction_time=t0 - dt.timedelta(days=1), max_tokens=512)
    assert p.window([5, 6], room=10)[-2:] == [5, 6] and len(p.window([5, 6], room=10)) == 10


def test_resolve_outcome_codes(tiny_vocab):  # noqa: F811
    found = resolve_outcome_codes(tiny_vocab, ["ICD10//*", "MEDS_DEATH", "NOPE//1"])
    assert {tiny_vocab.codes[i] for i in found["ICD10//*"]} >= {"ICD10//E11", "ICD10//I10"}
    assert found["MEDS_DEATH"] == [tiny_vocab.code_to_id["MEDS_DEATH"]]
    assert found["NOPE//1"] == []
