"""Pretraining stage: a Llama model on a prepared token corpus with DeepSpeed.

Locally (2 CPU ranks; the demo model on the simulator corpus in a few minutes):
    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 train/train.py experiment=demo \
        data_dir=runs/demo/prep run_dir=runs/demo/train
On a Slurm cluster (one task per GPU; RANK/WORLD_SIZE/LOCAL_RANK are read from SLURM_* if unset):
    srun python train/train.py model=base deepspeed=zero2_gpu train.precision=bf16 data_dir=... run_dir=...
Rerunning the same command resumes from the newest checkpoint in run_dir. Exit codes: 0 done,
143 stopped by SIGTERM/SIGUSR1 after writing a checkpoint, 1 error (bad input, NaN loss).
All logic lives in `nightingale.training`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from nightingale.atomic import atomic_file

log = logging.getLogger("train.train")


def train_config(cfg: DictConfig):
    """The typed TrainConfig from the composed Hydra config (fields validated there)."""
    from nightingale.training.config import TrainConfig

    t: dict[str, Any] = OmegaConf.to_container(cfg.train, resolve=True)
    ds: dict[str, Any] = OmegaConf.to_container(cfg.deepspeed, resolve=True)
    return TrainConfig.from_mapping({
        **t,
        "data_dir": Path(str(cfg.data_dir)),
        "run_dir": Path(str(cfg.run_dir)),
        "export_dir": Path(str(cfg.export_dir)) if cfg.export_dir else None,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "zero_stage": int(ds.pop("zero_stage", 2)),
        "deepspeed": ds,
        "wandb_mode": str(cfg.wandb.mode),
        "wandb_project": str(cfg.wandb.project),
        "wandb_name": cfg.wandb.name,
    })


def train(cfg: DictConfig) -> int:
    """Run (or resume) training; returns the process exit code."""
    from nightingale.training.distributed import dist_env
    from nightingale.training.trainer import EXIT_PREEMPTED, TrainingDiverged, check_run_dir
    from nightingale.training.trainer import train as run_training

    if dist_env().rank != 0:  # rank 0 speaks for the job; others only warn
        logging.getLogger().setLevel(logging.WARNING)
    try:
        tcfg = train_config(cfg)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        check_run_dir(tcfg.run_dir)
        if dist_env().rank == 0:
            with atomic_file(tcfg.run_dir / "config.yaml") as tmp:
                tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        result = run_training(tcfg, resolved_config=resolved)
    except (ValueError, TrainingDiverged) as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:  # e.g. the run folder vanished or became read-only mid-run
        log.error("%s", exc)
        return 1
    if result.preempted:
        log.warning("stopped at step %d after a preemption signal; rerun to resume", result.step)
        return EXIT_PREEMPTED
    log.info("done: step %d, %d tokens seen, losses %s, model %s", result.step, result.tokens_seen,
             {k: round(v, 4) for k, v in result.losses.items()}, result.model_dir)
    return 0


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = train(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
