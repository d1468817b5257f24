"""A population job on the real engine: the test model forecasts its own simulated population at a
fixed date with the oracle beside it; the folder it writes, its resume, and its refusals."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

from nightingale import schema as S
from nightingale.inference.population import PopulationConfig, PopulationJob
from nightingale.inference.population.aggregate import merge_partials
from tests.inference import harness

pytestmark = pytest.mark.slow
CONFIG = {"outcomes": {"death": [S.DEATH_CODE], "admission": ["ADMISSION//EMERGENCY"]}, "horizons_days": [365],
          "prediction_time": "2024-06-01", "split": "held_out", "rollouts": 4, "backtest": True, "oracle": True,
          "oracle_samples": 40, "small_count_threshold": 0, "groups": ["age_band", "sex", "IMD"]}


@pytest.fixture(scope="module")
def paths(server, tmp_path_factory):
    root = harness.artifacts_root(tmp_path_factory.getbasetemp() / "serving")
    return root / "model", root / "meds"


def _run(server, job: PopulationJob) -> dict:
    async def engine():
        return server.state.engine

    job.open()
    for shard in job.todo():
        server.run(job.run_shard(shard, engine))
    return job.merge()


def test_a_job_writes_risks_aggregates_and_the_oracle_beside_them(server, paths, tmp_path):
    model, meds = paths
    job = PopulationJob(PopulationConfig.from_mapping(CONFIG), model, meds, tmp_path / "out")
    assert job.shards == ["held_out/0"]  # the split lives in one shard of three
    result = _run(server, job)
    out = tmp_path / "out"
    for name in ("aggregates.json", "aggregates.parquet", "summary.md", "summary.png", "predictions/held_out/0.parquet"):
        assert (out / name).stat().st_size > 0, name
    preds = pl.read_parquet(out / "predictions" / "held_out" / "0.parquet")
    assert preds["oracle_probability"].is_between(0, 1).all() and preds["probability"].is_between(0, 1).all()
    assert [str(t) for t in preds[S.PREDICTION_TIME].unique()] == ["2024-06-01 00:00:00"]
    cells = {(c["outcome"], c["group"], c["value"]): c for c in result["cells"]}
    for outcome in ("death", "admission"):
        mine = preds.filter(pl.col("outcome") == outcome)
        everyone = cells[(outcome, "all", "all")]
        assert everyone["patients"] == len(mine) == result["counts"]["at_risk"]
        assert everyone["expected"] == pytest.approx(mine["probability"].sum(), abs=0.006)
        assert everyone["oracle_expected"] == pytest.approx(mine["oracle_probability"].sum(), abs=0.006)
        assert everyone["observed"] == mine["observed"].sum()
        by_sex = [c for k, c in cells.items() if k[0] == outcome and k[1] == "sex"]
        assert sum(c["patients"] for c in by_sex) == everyone["patients"]
        assert sum(c["expected"] for c in by_sex) == pytest.approx(everyone["expected"], abs=0.02)
    assert result["coverage"]["cells"] == len(result["cells"]) and 0 <= result["coverage"]["oracle"] <= 1
    md = (out / "summary.md").read_text()
    assert "## death within 365 days" in md and "oracle [95%]" in md

    # resume: every shard is done, nothing is rolled out again; another config is refused
    again = PopulationJob(PopulationConfig.from_mapping(CONFIG), model, meds, out)
    assert again.todo() == [] and again.merge()["cells"] == result["cells"]
    other = PopulationJob(PopulationConfig.from_mapping({**CONFIG, "rollouts": 8}), model, meds, out)
    with pytest.raises(ValueError, match="out_dir: .* holds another job"):
        other.open()
    (out / "shards" / "held_out" / "0.json").unlink()
    with pytest.raises(ValueError, match=r"1 shard\(s\) not done yet: \['held_out/0'\]"):
        again.merge()


def test_a_recalibrated_job_scales_by_what_it_got_wrong_a_horizon_before(server, paths, tmp_path):
    model, meds = paths
    cfg = {**CONFIG, "recalibrate": True, "oracle": False, "small_count_threshold": 1, "split": None, "rollouts": 2}
    job = PopulationJob(PopulationConfig.from_mapping(cfg), model, meds, tmp_path / "out")
    result = _run(server, job)
    assert len(job.shards) == 3  # everyone: each shard's window sums, merged
    window = merge_partials([pl.read_parquet(tmp_path / "out" / "calibration" / f"{s}.parquet") for s in job.shards])
    assert set(window["outcome"]) == {"death", "admission"} and (window["observed"] >= 0).all()
    assert result["calibration"]["time"] == "2023-06-02T00:00:00"
    ratios = {r["outcome"]: r for r in result["calibration"]["ratios"]}
    everyone = window.filter(pl.col("group") == "all")
    for c in result["cells"]:
        rec = ratios[c["outcome"]]
        if c["suppressed"]:
            continue
        if rec["applied"]:  # the window's own observed / expected, applied to every cell of the outcome
            row = everyone.filter(pl.col("outcome") == c["outcome"]).row(0, named=True)
            assert rec["ratio"] == pytest.approx(row["observed"] / row["sum_p"], abs=1e-3)
            assert c["expected"] == pytest.approx(c["uncalibrated"] * row["observed"] / row["sum_p"], abs=0.01)
        else:
            assert c["expected"] == c["uncalibrated"] and rec["reason"].startswith("fewer than 10 events")
    assert {"model", "recalibrated"} <= set(result["coverage"])
    assert ratios["admission"]["applied"] and not ratios["death"]["applied"]  # the harness's 242 patients: both paths
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "Recalibrated from 2023-06-02: admission within 365 days x" in md
    assert "Not recalibrated, death within 365 days: fewer than 10 events" in md


@pytest.mark.parametrize("change, words", [
    ({"groups": ["age_band", "PRACTICE"]}, "forecast.groups[1]: 'PRACTICE' is neither"),
    ({"prediction_time": "1800-01-01"}, "forecast.prediction_time: 1800-01-01T00:00:00 is outside the data"),
    ({"prediction_time": "last"}, "forecast.backtest: needs a fixed prediction_time"),
    ({"outcomes": {"stroke": ["ICD10//I63.9"]}}, "forecast.oracle: outcome 'stroke'"),
    ({"prediction_time": "last", "backtest": False, "oracle": False, "recalibrate": True},
     "forecast.recalibrate: needs a fixed prediction_time"),
])
def test_what_the_job_checks_before_any_work(paths, tmp_path, change, words):
    model, meds = paths
    with pytest.raises(ValueError) as e:
        PopulationJob(PopulationConfig.from_mapping({**CONFIG, **change}), model, meds, tmp_path / "out")
    assert words in str(e.value)
    assert not (tmp_path / "out").exists()


def test_the_stage_script_and_the_verb_refuse_bad_input_naming_it(paths, tmp_path):
    model, meds = paths
    args = [f"model_dir={model}", f"meds_dir={meds}", f"out_dir={tmp_path / 'out'}", "forecast.groups=[age_band,NOPE]"]
    for cmd in ([sys.executable, str(harness.REPO / "serve" / "forecast.py")],
                [sys.executable, "-m", "nightingale.cli", "forecast"]):
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=harness.REPO)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "forecast.groups[1]: 'NOPE' is neither" in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()
