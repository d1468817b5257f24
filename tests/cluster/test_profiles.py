"""Cluster profiles and job requests: every shipped profile loads; bad requests fail early,
naming the field, and (against the real Slurm) submit nothing."""

from __future__ import annotations

import dataclasses

import pytest

from nightingale.cluster.profiles import (
    ClusterProfile,
    JobRequest,
    available_profiles,
    load_profile,
)
from tests.cluster.conftest import squeue_ids


def test_shipped_profiles_load():
    assert {"local", "gh200", "generic_gpu"} <= set(available_profiles())
    local, gh200, gpu = (load_profile(n) for n in ("local", "gh200", "generic_gpu"))
    assert (local.gpus_per_node, local.tasks_per_node, local.env["DS_ACCELERATOR"]) == (0, 2, "cpu")
    assert (gh200.gpus_per_node, gh200.cpus_per_node, gh200.account_required) == (4, 288, True)
    assert gh200.peak_flops == pytest.approx(989e12)
    assert gpu.gpus_per_node == 8 and gpu.env["NCCL_IB_HCA"]
    for p in (gh200, gpu):
        assert "train.precision=bf16" in p.train_overrides


def test_request_defaults_fill_from_the_profile():
    job = JobRequest(nodes=4, account="p1").resolve(load_profile("gh200"))
    assert (job.nodes, job.gpus_per_node, job.ranks_per_node, job.world_size) == (4, 4, 4, 16)
    assert job.cpus_per_task == 72 and job.account == "p1" and job.partition == "workq"
    local = JobRequest().resolve(load_profile("local"))
    assert (local.ranks_per_node, local.gpus_per_node, local.cpus_per_task) == (2, 0, 1)


@pytest.mark.parametrize(("profile", "request_kwargs", "field"), [
    ("gh200", dict(gpus_per_node=8, account="p1"), "gpus_per_node"),
    ("local", dict(gpus_per_node=1), "gpus_per_node"),
    ("gh200", dict(), "account"),
    ("local", dict(nodes=2), "nodes"),
    ("local", dict(nodes=0), "nodes"),
    ("local", dict(tasks_per_node=3), "tasks_per_node"),
    ("generic_gpu", dict(time="tomorrow"), "time"),
])
def test_bad_requests_name_the_field(profile, request_kwargs, field, monkeypatch):
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        JobRequest(**request_kwargs).resolve(load_profile(profile))


def test_account_from_the_environment(monkeypatch):
    monkeypatch.setenv("SBATCH_ACCOUNT", "from-env")
    assert JobRequest().resolve(load_profile("gh200")).account == "from-env"


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown cluster profile.*gh200.*local"):
        load_profile("nope")


def test_profile_fields_are_checked(tmp_path):
    base = dataclasses.asdict(load_profile("local"))
    with pytest.raises(ValueError, match="launcher"):
        ClusterProfile.from_mapping({**base, "launcher": "mpirun"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['gpu_count'\]"):
        ClusterProfile.from_mapping({**base, "gpu_count": 2})
    with pytest.raises(ValueError, match="gpus_per_node"):
        ClusterProfile.from_mapping({**base, "gpus_per_node": -1})
    custom = tmp_path / "mine.yaml"
    custom.write_text("partition: p\ngpus_per_node: 2\ncpus_per_node: 16\n")
    assert load_profile(str(custom)).name == "mine"


@pytest.mark.parametrize(("args", "named"), [
    (["train", "--profile", "nope", "data_dir=x"], "--profile 'nope': unknown cluster profile"),
    (["train", "--profile", "gh200", "--account", "p1", "--gpus-per-node", "8", "data_dir=x"],
     "gpus_per_node: 8 requested; profile 'gh200' has 4"),
    (["train", "--profile", "gh200", "data_dir=x"], "account: profile 'gh200' requires"),
    (["train", "--profile", "local", "run_dir=x"], "data_dir: required"),
    (["pipeline", "--profile", "local"], "--out: required"),
])
def test_bad_input_submits_nothing(args, named, slurm, submit, tmp_path, monkeypatch, caplog):
    """Exit code 2 and an error naming the problem; no job in squeue, no log folder made."""
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    before = squeue_ids()
    code, out = submit(*args, "--log-dir", tmp_path / "logs", cwd=tmp_path)
    assert code == 2 and out == ""
    assert named in caplog.text
    assert squeue_ids() == before
    assert not (tmp_path / "logs").exists()
