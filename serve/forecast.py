"""Population forecast stage: per-patient risks and expected counts by group over a MEDS dataset.

    python serve/forecast.py model_dir=runs/demo/train/model meds_dir=runs/demo/meds out_dir=runs/forecast
    python serve/forecast.py ... forecast.prediction_time=2024-01-01 forecast.split=held_out
    python serve/forecast.py ... stage=shard shard=held_out/0    # one Slurm array task
    python serve/forecast.py ... stage=merge                      # the aggregates, once every shard is done

Reads configs/forecast.yaml (the engine from configs/engine/). Writes out_dir/ (predictions,
aggregates.json, summary.md, summary.png); a rerun resumes at the first shard not done. Exit
codes: 0 done, 2 bad input (named, before any work). `nightingale forecast KEY=VALUE ...` runs
the same function on the same config. Logic: nightingale.inference.population.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from nightingale.inference.population.command import run_config


@hydra.main(version_base="1.3", config_path="../configs", config_name="forecast")
def main(cfg: DictConfig) -> None:
    sys.exit(run_config(OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":  # the engine spawns processes: keep the guard
    main()
