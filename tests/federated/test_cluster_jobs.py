"""`nightingale submit federate`: the rendered jobs (a coordinator, one per site) and their
commands run for real as separate processes, as Slurm would start them (this machine's local
Slurm has 2 CPUs, too few to hold three such jobs at once, so the test starts the commands
itself); the sites find the coordinator through the run folder, over TLS."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from nightingale.cluster.profiles import JobRequest, load_profile
from nightingale.cluster.render import RenderContext, plan_federate
from tests.federated.test_site_round import TEST_MODEL, TEST_TRAIN

pytestmark = pytest.mark.slow


def _plan(tmp_path, sites_dir, *extra, profile="local"):
    job = JobRequest(nodes=1, account="proj1").resolve(load_profile(profile))
    ctx = RenderContext(workdir=tmp_path, log_dir=tmp_path / "logs", python=sys.executable)
    return plan_federate(job, [f"run_dir={tmp_path / 'run'}", f"sites_dir={sites_dir}", *extra], ctx)


def test_the_plan_is_a_coordinator_and_one_gpu_job_per_site(site_data, tmp_path):
    plan = _plan(tmp_path, site_data["north"].parent, "rounds=5", profile="gh200")
    assert [s.name for s in plan] == ["federate-coordinator", "federate-site-city", "federate-site-north",
                                      "federate-site-shire"]
    assert "--gpus-per-node" not in plan[0].script and "--gpus-per-node=1" in plan[1].script
    assert "federate coordinator" in plan[0].script and "--sites 3 --set rounds=5" in plan[0].script
    assert f"--join {tmp_path / 'run'}" in plan[2].script
    with pytest.raises(ValueError, match="run_dir and sites_dir: required"):
        plan_federate(JobRequest(nodes=1).resolve(load_profile("local")), ["sites_dir=x"],
                      RenderContext(workdir=tmp_path, log_dir=tmp_path))
    with pytest.raises(ValueError, match="a federation needs 2 or more"):
        _plan(tmp_path, tmp_path)


def test_the_jobs_commands_run_a_federation(site_data, tmp_path):
    sites = tmp_path / "sites"
    sites.mkdir()
    for name in ("north", "city"):
        (sites / name).symlink_to(site_data[name])
    settings = [f"model={json.dumps(TEST_MODEL)}", f"train={json.dumps(TEST_TRAIN)}", "rounds=1", "local_steps=1",
                "secagg.enabled=false"]
    plan = _plan(tmp_path, sites, *settings)
    procs = {}
    for spec in plan:
        command = spec.script.strip().splitlines()[-1]
        procs[spec.name] = subprocess.Popen(shlex.split(command), cwd=tmp_path, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)
    out = {name: p.communicate(timeout=600)[0] for name, p in procs.items()}
    codes = {name: p.returncode for name, p in procs.items()}
    assert codes == dict.fromkeys(procs, 0), {n: out[n][-2000:] for n in out if codes[n]}
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "done" and (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert json.loads((tmp_path / "run" / "model" / "model_card.json").read_text())["data"]["sites"] == ["city", "north"]
