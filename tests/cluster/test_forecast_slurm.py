"""A population forecast as a Slurm array (one task and one vLLM engine per MEDS shard) and a
dependent merge, on the real local cluster, against the single-process run of the same stage.
The test model (tests/inference/harness.py) forecasts the held-out split of the 300 simulated
subjects (two shards hold it; the other four tasks find nobody and start no engine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nightingale.cluster.submit import job_states, wait_for
from tests.cluster.conftest import REPO_ROOT, job_ids
from tests.inference import harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _cells(out) -> dict:
    return {(c["outcome"], c["group"], c["value"]): c for c in json.loads((out / "aggregates.json").read_text())["cells"]}


def test_forecast_array_and_merge_match_the_single_process_run(slurm, submit, tiny_meds, tmp_path, tmp_path_factory):
    model = harness.build_model_dir(harness.artifacts_root(tmp_path_factory.getbasetemp() / "serving"))
    logs, cluster_out, single_out = tmp_path / "logs", tmp_path / "cluster", tmp_path / "single"
    overrides = [f"model_dir={model}", f"meds_dir={tiny_meds}", "forecast.split=held_out",
                 "forecast.prediction_time=2024-06-01", "forecast.rollouts=4", "forecast.backtest=true",
                 "forecast.small_count_threshold=0", "forecast.groups=[age_band,sex]"]
    code, out = submit("forecast", "--profile", "local", "--log-dir", logs, *overrides, f"out_dir={cluster_out}",
                       cwd=tmp_path)
    assert code == 0, out
    ids = job_ids(out)
    show = subprocess.run(["scontrol", "show", "job", ids["forecast-merge"]], capture_output=True, text=True).stdout
    assert f"Dependency=afterok:{ids['forecast']}" in show

    single = subprocess.run([sys.executable, str(REPO_ROOT / "serve" / "forecast.py"), *overrides,
                             f"out_dir={single_out}", "progress=false"], capture_output=True, text=True, cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    assert wait_for(ids["forecast-merge"], timeout_s=600) == ["COMPLETED"], sorted(p.name for p in logs.iterdir())
    assert job_states(ids["forecast"]) in (["GONE"], ["COMPLETED"] * 6)

    shards = sorted(p.relative_to(cluster_out / "shards").as_posix() for p in (cluster_out / "shards").rglob("*.json"))
    assert shards == ["held_out/0.json", "held_out/1.json"]
    a, b = _cells(cluster_out), _cells(single_out)
    assert a.keys() == b.keys() and a[("death", "all", "all")]["patients"] >= 20
    for key, cell in a.items():
        other = b[key]
        assert (cell["patients"], cell["observed"]) == (other["patients"], other["observed"]), key
        assert cell["expected"] == pytest.approx(other["expected"], abs=0.011), key
