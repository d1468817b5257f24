"""Population forecasts without an engine: who is at risk at the prediction time, their groups
and prompts (cut at t), the additive sums and their exact merge, the intervals, and suppression."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.inference.population import calibrate
from nightingale.inference.population.aggregate import aggregate, coverage, merge_partials
from nightingale.inference.population.cohort import load_shard_cohort
from nightingale.inference.population.config import PopulationConfig
from nightingale.inference.population.shard import partial_sums
from nightingale.inference.risk import population_count
from nightingale.tokenizer import TokenizerConfig, Vocabulary
from nightingale.tokenizer.fit import combine_stats, shard_stats

T = dt.datetime(2020, 1, 1)


def _events() -> pl.DataFrame:
    rows = []
    def add(sid, time, code, value=None):
        rows.append((sid, time, code, value))
    for sid, sex, born in [(1, "F", 1950), (2, "M", 1990), (3, "F", 1940), (4, "M", 2015), (5, "F", 1980)]:
        add(sid, None, f"SEX//{sex}")
        add(sid, None, f"IMD//Q{sid % 5 + 1}")
        add(sid, dt.datetime(born, 6, 1), S.BIRTH_CODE)
    for sid in (1, 2, 3, 4):
        add(sid, dt.datetime(2015, 3, 1), "ICD10//I10")
        add(sid, dt.datetime(2019, 6, 1), "LOINC//4548-4", 6.5)
    add(1, dt.datetime(2020, 6, 1), "ADMISSION//EMERGENCY")   # after t: not in the prompt; observed
    add(1, dt.datetime(2021, 6, 1), "ICD10//E11.9")             # after t + 1 year: not observed
    add(3, dt.datetime(2019, 9, 1), S.DEATH_CODE)              # dead before t: left out
    add(4, dt.datetime(2020, 2, 1), S.DEATH_CODE)              # dies after t: at risk, observed
    # subject 5 has no event but birth before t: left out (no history)
    add(5, dt.datetime(2021, 1, 1), "ICD10//I10")
    df = pl.DataFrame(rows, schema={S.SUBJECT_ID: pl.Int64, S.TIME: pl.Datetime("us"), S.CODE: pl.String,
                                    S.NUMERIC_VALUE: pl.Float32}, orient="row")
    return df.with_columns(pl.when(pl.col(S.SUBJECT_ID) <= 2).then(pl.lit("A")).otherwise(pl.lit("B")).alias("practice"))


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    cfg = TokenizerConfig(min_count=1)
    return Vocabulary.fit(combine_stats([shard_stats(_events().drop("practice").lazy(), None, cfg)], cfg), cfg)


def _cfg(**kw) -> PopulationConfig:
    base = dict(outcomes={"death": [S.DEATH_CODE], "admission": ["ADMISSION//*"]}, horizons_days=[365],
                prediction_time="2020-01-01", groups=["age_band", "sex", "IMD", "practice"], backtest=True,
                small_count_threshold=0)
    return PopulationConfig.from_mapping({**base, **kw})


def test_the_population_at_risk_its_groups_and_what_happened(vocab):
    c = load_shard_cohort(vocab, _cfg(), _events(), None, ("practice",), max_tokens=64)
    assert c.subjects[S.SUBJECT_ID].to_list() == [1, 2, 4]
    assert dict(c.counts) == {"subjects": 5, "no_history": 1, "dead_before": 1, "at_risk": 3}
    rows = {r[S.SUBJECT_ID]: r for r in c.subjects.iter_rows(named=True)}
    assert [rows[s]["age_band"] for s in (1, 2, 4)] == ["65-74", "18-44", "0-17"]
    assert [rows[s]["sex"] for s in (1, 2, 4)] == ["F", "M", "M"]
    assert [rows[s]["IMD"] for s in (1, 2, 4)] == ["Q2", "Q3", "Q5"]
    assert [rows[s]["practice"] for s in (1, 2, 4)] == ["A", "A", "B"]
    assert rows[1]["observed:admission:365"] and not rows[2]["observed:admission:365"]
    assert rows[4]["observed:death:365"] and not rows[1]["observed:death:365"]
    assert rows[1]["lead_s"] == pytest.approx((T - dt.datetime(2019, 6, 1)).total_seconds())


def test_prompts_hold_only_what_was_known_at_the_prediction_time(vocab):
    c = load_shard_cohort(vocab, _cfg(), _events(), None, ("practice",), max_tokens=64)
    admission = vocab.code_to_id["ADMISSION//EMERGENCY"]
    death = vocab.code_to_id[S.DEATH_CODE]
    for p in c.prompts:
        assert admission not in p.ids and death not in p.ids
        assert p.anchor_us == int(np.datetime64(dt.datetime(2019, 6, 1), "us").astype(np.int64))
    late = load_shard_cohort(vocab, _cfg(prediction_time="2021-12-31", backtest=False), _events(), None, (), 64)
    assert vocab.code_to_id["ADMISSION//EMERGENCY"] in late.prompts[0].ids


def test_a_split_and_each_subjects_last_event(vocab):
    c = load_shard_cohort(vocab, _cfg(prediction_time="last", backtest=False), _events(), np.array([1, 5]), (), 64)
    assert c.subjects[S.SUBJECT_ID].to_list() == [1, 5] and c.counts["outside_split"] == 3
    assert c.subjects[S.PREDICTION_TIME].to_list() == [dt.datetime(2021, 6, 1), dt.datetime(2021, 1, 1)]
    assert (c.subjects["lead_s"] == 0).all()


def _risks(c, p: np.ndarray, observed: np.ndarray | None = None) -> pl.DataFrame:
    n = len(c.subjects)
    return pl.DataFrame({
        S.SUBJECT_ID: c.subjects[S.SUBJECT_ID], "outcome": ["death"] * n, "horizon_days": [365.0] * n,
        "probability": p, "_mc": np.full(n, 1e-4),
        "observed": observed if observed is not None else np.zeros(n, bool)})


def test_sums_merge_exactly_and_match_the_api_interval():
    rng = np.random.default_rng(0)
    cfg = _cfg(groups=["sex"], outcomes={"death": [S.DEATH_CODE]})
    subjects = pl.DataFrame({S.SUBJECT_ID: np.arange(400), "sex": rng.choice(["F", "M"], 400)})
    p = rng.beta(1, 12, 400)
    obs = rng.random(400) < p

    class C:
        pass
    whole, halves = C(), [C(), C()]
    whole.subjects = subjects
    halves[0].subjects, halves[1].subjects = subjects[:150], subjects[150:]
    one = merge_partials([partial_sums(cfg, whole, _risks(whole, p, obs))])
    two = merge_partials([partial_sums(cfg, halves[0], _risks(halves[0], p[:150], obs[:150])),
                          partial_sums(cfg, halves[1], _risks(halves[1], p[150:], obs[150:]))])
    assert one.drop("sum_p", "sum_pq", "sum_mc").equals(two.drop("sum_p", "sum_pq", "sum_mc"))
    np.testing.assert_allclose(one["sum_p"], two["sum_p"], rtol=1e-12)
    agg = aggregate(one, threshold=10, backtest=True, oracle=False).filter(pl.col("group") == "all").row(0, named=True)
    ref = population_count(p, np.full(400, 1e-4), threshold=10)
    assert (agg["patients"], agg["expected"], agg["lower"], agg["upper"]) == (400, ref.expected, ref.lower, ref.upper)
    assert agg["observed"] == int(obs.sum()) and agg["covered"] == (ref.lower <= obs.sum() <= ref.upper)


def _cells(values: dict[str, tuple[int, float, int]]) -> pl.DataFrame:
    rows = [("death", 365.0, "all", "all", sum(v[0] for v in values.values()), sum(v[1] for v in values.values()),
             0.0, 0.0, float(sum(v[2] for v in values.values())), 0.0, 0.0)]
    rows += [("death", 365.0, "age_band", k, n, e, e * 0.9, 0.0, float(o), 0.0, 0.0) for k, (n, e, o) in values.items()]
    return pl.DataFrame(rows, schema=["outcome", "horizon_days", "group", "value", "patients", "sum_p", "sum_pq",
                                      "sum_mc", "observed", "oracle_sum", "oracle_pq"], orient="row")


def test_small_cells_are_suppressed_and_so_is_the_one_that_would_give_them_away():
    agg = aggregate(_cells({"0-17": (400, 3.0, 2), "18-44": (900, 40.0, 38), "45-64": (800, 60.0, 55),
                            "65+": (600, 90.0, 99)}), threshold=10, backtest=True, oracle=False)
    by = {r["value"]: r for r in agg.iter_rows(named=True)}
    assert by["0-17"]["suppressed"] == "small count" and by["0-17"]["expected"] is None and by["0-17"]["observed"] is None
    # the smallest other cell goes too, or all - the rest would give 0-17's figures back
    assert by["65+"]["suppressed"] == "complementary" and by["65+"]["patients"] is None
    assert by["18-44"]["suppressed"] is None and by["18-44"]["expected"] == 40.0 and by["all"]["suppressed"] is None
    two = aggregate(_cells({"a": (400, 3.0, 2), "b": (30, 4.0, 5), "c": (900, 50.0, 49)}), 10, backtest=True, oracle=False)
    hidden = {r["value"] for r in two.iter_rows(named=True) if r["suppressed"]}
    assert hidden == {"a", "b"}  # two small cells already hide each other


def test_coverage_counts_the_cells_whose_interval_held_the_observed_count():
    cells = _cells({"a": (400, 30.0, 31), "b": (500, 40.0, 90)})
    cov = coverage(cells, oracle=False)
    assert cov["cells"] == 3 and cov["model"] == pytest.approx(1 / 3, abs=1e-3)


def _window(observed: float, expected: float, patients: int = 3000, mc: float = 0.0) -> pl.DataFrame:
    return pl.DataFrame([("death", 365.0, "all", "all", patients, expected, expected * 0.97, mc, observed, 0.0, 0.0)],
                        schema=["outcome", "horizon_days", "group", "value", "patients", "sum_p", "sum_pq", "sum_mc",
                                "observed", "oracle_sum", "oracle_pq"], orient="row")


def test_a_model_that_under_predicts_is_recalibrated_and_its_intervals_cover_again():
    """A model whose risks are all 1.4x too low: its intervals miss; scaled by the ratio seen one
    horizon earlier on the same population, the 95% intervals of the whole and of a group hold the
    observed count about 95% of the time (the ratio's own noise included), over 2,000 futures."""
    rng = np.random.default_rng(3)
    n, reps, truth = 3000, 2000, 1.4
    p_then, p_now = rng.beta(1, 40, n), rng.beta(1, 40, n)  # the model's risks at t_c and at t
    group = np.arange(n) < 800
    observed_then = rng.binomial(1, truth * p_then, (reps, n)).sum(axis=1)
    outcomes_now = rng.binomial(1, truth * p_now, (reps, n))
    now = {"all": (p_now, outcomes_now.sum(axis=1)), "group": (p_now[group], outcomes_now[:, group].sum(axis=1))}
    held = {"all": [], "group": [], "raw": []}
    for i in range(reps):
        rec = calibrate.fit(_window(observed_then[i], p_then.sum(), n), threshold=10)[("death", 365.0)]
        assert rec.applied
        for cell, (p, y) in now.items():
            e, bern, other = rec.moments(p.sum(), (p * (1 - p)).sum(), 0.0)
            held[cell].append(abs(y[i] - e) <= 1.96 * np.sqrt(bern + other))
        held["raw"].append(abs(now["all"][1][i] - p_now.sum()) <= 1.96 * np.sqrt((p_now * (1 - p_now)).sum()))
    assert np.mean(held["raw"]) < 0.5
    assert 0.93 <= np.mean(held["all"]) <= 0.975 and 0.93 <= np.mean(held["group"]) <= 0.975


def test_recalibration_scales_the_cells_and_stands_down_on_a_thin_window():
    cells = _cells({"18-44": (900, 40.0, 80), "45-64": (800, 60.0, 120)})
    ratios = calibrate.fit(_window(observed=60, expected=30.0), threshold=10)
    rec = ratios[("death", 365.0)]
    assert rec.applied and rec.ratio == 2.0 and rec.log_var == pytest.approx(1 / 60)
    agg = aggregate(cells, 10, backtest=True, oracle=False, ratios=ratios)
    by = {r["value"]: r for r in agg.iter_rows(named=True)}
    assert by["18-44"]["expected"] == 80.0 and by["18-44"]["uncalibrated"] == 40.0 and by["18-44"]["covered"]
    plain = aggregate(cells, 10, backtest=True, oracle=False).row(1, named=True)
    assert by["18-44"]["upper"] - by["18-44"]["lower"] > 2 * (plain["upper"] - plain["lower"])  # the ratio's noise
    cov = coverage(cells, oracle=False, ratios=ratios)
    assert cov["model"] == 0.0 and cov["recalibrated"] == 1.0
    assert rec.as_dict()["ratio_lower"] < 2.0 < rec.as_dict()["ratio_upper"] and "observed" not in rec.as_dict()

    thin = calibrate.fit(_window(observed=7, expected=30.0), threshold=5)[("death", 365.0)]
    assert not thin.applied and thin.reason == "fewer than 10 events in the calibration window"
    assert "ratio" not in thin.as_dict()
    same = aggregate(cells, 10, backtest=True, oracle=False, ratios={("death", 365.0): thin})
    assert same["expected"].to_list() == aggregate(cells, 10, backtest=True, oracle=False)["expected"].to_list()


def test_the_calibration_window_ends_at_the_prediction_time():
    cfg = _cfg(prediction_time="2024-06-01", horizons_days=[90, 365], backtest=False, recalibrate=True)
    window = cfg.calibration_config()
    assert window.prediction_time == dt.datetime(2023, 6, 2) and window.backtest and not window.recalibrate
    assert _cfg(prediction_time="last").calibration_time() is None


@pytest.mark.parametrize("field, value, message", [
    ("groups", ["age_band", "age_band"], "forecast.groups: each group once"),
    ("prediction_time", "soon", "forecast.prediction_time: 'soon' is neither 'last' nor an ISO 8601 date"),
    ("horizons_days", [0], "forecast.horizons_days: positive days"),
    ("age_bands", [10, 20], "forecast.age_bands: increasing lower edges in years starting at 0"),
    ("split", "test", "forecast.split: 'test'; allowed"),
])
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _cfg(**{field: value})
