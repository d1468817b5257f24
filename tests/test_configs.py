"""The config layout: one root config per stage, and every named experiment composes with every
stage (each stage reads its own sections of it), changing what it says it changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGES = ("ingest", "prepare", "train", "eval", "serve", "forecast")
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def _compose(stage: str, *overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose(stage, overrides=list(overrides))


def test_the_stages_share_one_layout():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(STAGES)
    assert {"demo", "quick", "dev", "mimic", "eunomia", "quality"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("stage", STAGES)
def test_every_experiment_composes_with_every_stage(stage, experiment):
    plain, named = _compose(stage), _compose(stage, f"experiment={experiment}")
    assert named != plain or stage in ("ingest", "prepare", "serve", "forecast"), (stage, experiment)


def test_experiments_change_what_they_name():
    assert _compose("train", "experiment=demo").train.max_steps == 750
    assert _compose("train").train.max_steps != 750
    assert _compose("eval", "experiment=quick").intrinsic.max_windows == 128
    assert _compose("eval", "experiment=demo").zeroshot.rollouts == 4
    assert _compose("serve", "experiment=dev").serve.allow_ungated is True
    assert _compose("serve").serve.allow_ungated is False
    mimic = _compose("prepare", "experiment=mimic")
    path = OmegaConf.to_container(mimic.data, resolve=False)["path"]  # ${hydra:runtime.cwd}/...
    assert mimic.data.source == "meds" and path.endswith("/../shared/data/mimic-iv-demo-meds")
    assert _compose("prepare", "experiment=eunomia").data.source == "omop"
    assert _compose("eval", "experiment=quality").synthetic.enabled is False


def test_serving_and_evaluation_share_the_engine_group():
    serve, evaluation, forecast = _compose("serve"), _compose("eval"), _compose("forecast")
    assert set(serve.engine) == set(evaluation.engine) == set(forecast.engine)
    assert evaluation.engine.max_num_seqs == 1024 and serve.engine.max_num_seqs == 256
