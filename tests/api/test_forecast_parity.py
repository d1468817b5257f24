"""What the gate scores is what the server serves: `POST /v1/forecasts` and the evaluation's
zero-shot path (`evaluation.zeroshot.task_rollouts`, as the harness calls it) give the same
probability for the same patient, prediction time, outcome, horizon and seed.

The patient is a held-out subject of the test model's own MEDS data: the API gets its events as
JSON, the evaluation reads its tokens from the prepared corpus.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.evaluation.zeroshot import ZeroShotConfig, task_rollouts
from nightingale.inference.prompts import as_events, build_prompt, corpus_prompt, static_codes
from nightingale.tokenizer.corpus import TokenCorpus

pytestmark = pytest.mark.slow
HORIZON_DAYS = 365.0
OUTCOMES = {"death": [S.DEATH_CODE], "hypertension": ["ICD10//I1*"]}


def _iso(t: dt.datetime) -> str:
    return t.isoformat()


def _held_out_patient(root):
    """A held-out subject with >= 12 timed events, cut at its 10th event (a prediction time with
    history before it), as the API request body, the subject id and the prediction time."""
    meds = MEDSDataset(root / "meds")
    held = meds.subjects(S.HELD_OUT).to_list()
    df = meds.scan().filter(pl.col(S.SUBJECT_ID).is_in(held)).collect()
    for sid in held:
        rows = df.filter(pl.col(S.SUBJECT_ID) == sid)
        timed = rows.filter(pl.col(S.TIME).is_not_null() & (pl.col(S.CODE) != S.BIRTH_CODE))
        if timed.height < 12:
            continue
        t = timed[S.TIME][9]
        statics = rows.filter(pl.col(S.TIME).is_null())[S.CODE].to_list()
        sex = next((c.split("//", 1)[1] for c in statics if c.startswith("SEX//")), None)
        birth = rows.filter(pl.col(S.CODE) == S.BIRTH_CODE)[S.TIME][0]
        events = [{"time": _iso(r[S.TIME]), "code": r[S.CODE],
                   **({"numeric_value": float(r[S.NUMERIC_VALUE])} if r[S.NUMERIC_VALUE] is not None else {})}
                  for r in timed.filter(pl.col(S.TIME) <= t).iter_rows(named=True)]
        body = {"sex": sex, "birth_date": birth.date().isoformat(),
                "static_codes": [c for c in statics if not c.startswith("SEX//")],
                "events": events, "prediction_time": _iso(t)}
        return body, sid, t
    raise AssertionError("no held-out subject with 12 events")


def test_api_and_evaluation_give_the_same_probability(server, forecaster):
    root = Path(server.cfg.model.model_dir).parent  # the test model's meds/, prep/ and model/
    engine = server.state.engine
    patient, sid, t = _held_out_patient(root)
    corpus = TokenCorpus(root / "prep" / "corpus" / S.HELD_OUT)
    room = engine.max_model_len - server.cfg.reserve_tokens
    # the two paths build the same prompt (birth is a date in the request: ages agree by band)
    api_prompt = build_prompt(engine.vocab, as_events({**e, "time": dt.datetime.fromisoformat(e["time"])} for e in patient["events"]),
                              birth=dt.date.fromisoformat(patient["birth_date"]),
                              statics=static_codes(patient["sex"], patient["static_codes"]),
                              prediction_time=t, max_tokens=room)
    t_us = int(pl.Series([t]).cast(pl.Datetime("us")).cast(pl.Int64)[0])
    eval_prompt = corpus_prompt(corpus, engine.vocab, sid, t_us, room)
    assert api_prompt.ids == eval_prompt.ids and api_prompt.anchor_us == eval_prompt.anchor_us

    risks = {}
    for estimator in ("probability", "count"):
        body = {"patients": [patient], "outcomes": [{"name": k, "codes": v} for k, v in OUTCOMES.items()],
                "horizons_days": [HORIZON_DAYS], "rollouts": 16, "seed": 7, "estimator": estimator}
        r = forecaster.post("/v1/forecasts", json=body)
        assert r.status_code == 200, r.text
        api = {x["outcome"]: x for x in r.json()["patients"][0]["risks"]}
        assert all(x["estimator"] == estimator and x["rollouts"] == 16 for x in api.values())

        labels = pl.DataFrame({S.SUBJECT_ID: [sid], S.PREDICTION_TIME: [t], S.BOOLEAN_VALUE: [False]},
                              schema={S.SUBJECT_ID: pl.Int64, S.PREDICTION_TIME: pl.Datetime("us"),
                                      S.BOOLEAN_VALUE: pl.Boolean})
        zcfg = ZeroShotConfig(rollouts=16, estimator=estimator, seed=7, max_new_tokens=server.cfg.max_new_tokens,
                              reserve_tokens=server.cfg.reserve_tokens)
        tasks = {k: (v, HORIZON_DAYS) for k, v in OUTCOMES.items()}
        rolled = server.run(task_rollouts(engine, corpus, tasks, {k: labels for k in tasks}, zcfg))
        for name in OUTCOMES:
            assert rolled[name].probability[0] == pytest.approx(api[name]["probability"], abs=1e-9), name
        risks[estimator] = api
    # the figures compared are not a trivial 0 = 0: the model's own probabilities are positive
    assert all(risks["probability"][name]["probability"] > 0 for name in OUTCOMES)

