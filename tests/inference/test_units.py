"""Inference pieces that need no engine: intervals, population counts, the gate, prompts."""

from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pytest

from nightingale.inference.engine import resolve_dtype
from nightingale.inference.forecast import Forecast, ForecastConfig, rollout_values
from nightingale.inference.gate import GateError, check_gate
from nightingale.inference.prompts import Event, build_prompt, resolve_outcome_codes
from nightingale.inference.risk import population_count, t_interval, wilson_interval
from nightingale.inference.rollouts import Rollout
from nightingale.model.folder import REQUIRED_FILES, ModelDir, ModelDirError
from nightingale.tokenizer import Vocabulary
from nightingale.tokenizer import families as F
from nightingale.tokenizer.summary import history_summary
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
    est = population_count([0.5] * 100, [0.25 / 64] * 100, threshold=10)
    assert est.expected == 50.0 and not est.suppressed
    # variance = 100 * 0.25 (outcomes) + 100 * 0.25/64 (Monte Carlo) -> half width 1.96 * 5.039
    assert est.lower == pytest.approx(50 - 1.96 * 5.039, abs=0.05)
    exact = population_count([0.5] * 100, threshold=10)
    assert exact.upper - exact.lower < est.upper - est.lower
    small = population_count([0.05] * 100, threshold=10)  # expected 5 < 10
    assert small.suppressed and small.expected is None and small.lower is None
    assert population_count([0.05] * 100, threshold=0).expected == 5.0


def test_t_interval_contains_the_mean_and_needs_two_values():
    lo, hi = t_interval([0.1, 0.2, 0.3, 0.2])
    assert lo < 0.2 < hi and hi - lo == pytest.approx(2 * 3.182 * 0.0816 / 2, abs=1e-3)
    assert t_interval([0.0] * 8) == (0.0, 0.0) and t_interval([0.3]) == (None, None)


# tokens: gap(10 s), A, gap(20 s), O (the outcome), gap(100 s); the model's probability of O at
# each step is HAZARD. Step clocks (the time a code sampled there happens): 0, 10, 10, 30, 30.
GAP_TOKENS = np.array([101, 5, 102, 9, 103])
ELAPSED = np.array([10.0, 10.0, 30.0, 30.0, 130.0])
HAZARD = np.array([0.1, 0.2, 0.05, 0.3, 0.4])


@pytest.mark.parametrize(("lead", "horizon", "count", "prob"), [
    (0.0, 100.0, 1.0, 0.65),   # every step inside; O sampled at step 3: sum up to and including it
    (0.0, 20.0, 0.0, 0.35),    # steps 0-2 inside (clock <= 20); O at 30 s is outside
    (0.0, 5.0, 0.0, 0.1),      # only the first step
    (10.0, 15.0, 0.0, 0.25),   # window [10, 25] s: steps 1 and 2
    (10.0, 30.0, 1.0, 0.55),   # window [10, 40] s: steps 1-3, O inside
])
def test_rollout_values_window_and_sums(lead, horizon, count, prob):
    r = Rollout(GAP_TOKENS, ELAPSED, "horizon", np.log(HAZARD)[:, None])
    c, p = rollout_values(r, np.array([9]), np.array([0]), lead, np.array([horizon]))
    assert c.tolist() == [count] and p[0] == pytest.approx(prob)
    c2, p2 = rollout_values(r, np.array([9]), None, lead, np.array([horizon]))  # untracked: counting
    assert c2.tolist() == p2.tolist() == [count]


def test_forecast_estimates_and_intervals():
    v = np.zeros((1, 1, 1, 4))
    fc = Forecast(["o"], np.array([1.0]), v.copy(), v.copy(), np.zeros(1), "probability")
    fc.probability[0, 0, 0] = [0.1, 0.2, 0.3, 0.2]
    fc.count[0, 0, 0] = [0, 1, 0, 0]
    est = fc.estimate(0, 0, 0)
    assert est.probability == pytest.approx(0.2) and est.estimator == "probability" and est.lower < 0.2 < est.upper
    fc.estimator = "count"
    est = fc.estimate(0, 0, 0)
    assert est.probability == 0.25 and (est.lower, est.upper) == wilson_interval(1, 4)
    with pytest.raises(ValueError, match="estimator"):
        ForecastConfig(estimator="vibes")


def model_folder(path):
    """A folder with the files an exported model must hold (contents unread by the gate check)."""
    for name in REQUIRED_FILES:
        (path / name).write_text("{}")
    return path


def test_model_dir_names_the_missing_file(tmp_path):
    model_folder(tmp_path)
    ModelDir(tmp_path)
    for name in ("tokenizer.json", "vocabulary.json", "config.json"):
        (tmp_path / name).unlink()
        with pytest.raises(ModelDirError, match=f"has no {name}"):
            ModelDir(tmp_path)
        with pytest.raises(ModelDirError, match=name):
            check_gate(tmp_path, allow_ungated=True)  # the server refuses before the engine starts
        (tmp_path / name).write_text("{}")


def test_gate_refuses_without_passing_report(tmp_path, caplog):
    model_folder(tmp_path)
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
    assert v.config.summary_tokens == 32 and len(p.prefix) == 2  # the record fits: no summary
    with pytest.raises(ValueError, match="summary"):  # a cut record needs room for the summary too
        build_prompt(v, events, birth=dt.date(1960, 6, 1), statics=["SEX//F"], max_tokens=20)
    v4 = Vocabulary({**v.spec, "config": {**v.spec["config"], "summary_tokens": 4}})
    short = build_prompt(v4, events, birth=dt.date(1960, 6, 1), statics=["SEX//F"], max_tokens=20)
    assert len(short.ids) <= 20 and v.kinds[short.body[0]] == F.KIND_CODE  # starts at an event
    assert short.body[-3:] == p.body[-3:]  # keeps the most recent tokens
    # what fell out is summarised after the age token, by the training windows' rule
    cut = p.body[: len(p.body) - len(short.body)]
    assert short.prefix[2:] == history_summary(v4, np.asarray(cut)).tolist()
    assert {v.codes[t] for t in short.prefix[2:]} == {"ICD10//I10", "VISIT"}
    early = build_prompt(v, events, prediction_time=t0 + dt.timedelta(days=15), max_tokens=512)
    assert sum(v.kinds[t] == F.KIND_CODE for t in early.body) == 2
    with pytest.raises(ValueError, match="^events:"):
        build_prompt(v, events, prediction_time=t0 - dt.timedelta(days=1), max_tokens=512)
    assert p.window([5, 6], room=10)[-2:] == [5, 6] and len(p.window([5, 6], room=10)) == 10


def test_resolve_outcome_codes(tiny_vocab):  # noqa: F811
    found = resolve_outcome_codes(tiny_vocab, ["ICD10//*", "MEDS_DEATH", "NOPE//1"])
    assert {tiny_vocab.codes[i] for i in found["ICD10//*"]} >= {"ICD10//E11", "ICD10//I10"}
    assert found["MEDS_DEATH"] == [tiny_vocab.code_to_id["MEDS_DEATH"]]
    assert found["NOPE//1"] == []
