"""Data preparation stage: raw records -> MEDS -> vocabulary -> token corpus.

    python data_prep/prepare.py out_dir=runs/sim                      # simulated cohort, end to end
    python data_prep/prepare.py data=meds data.path=../shared/data/mimic-iv-demo-meds out_dir=runs/mimic
    python data_prep/prepare.py data=omop data.cdm=../shared/data/eunomia-gibleed-omop out_dir=runs/eunomia
    python data_prep/prepare.py ... stage=fit                          # vocabulary
    python data_prep/prepare.py ... stage=encode shard=train/0         # one shard (Slurm array task)
    python data_prep/prepare.py ... stage=merge                        # corpus + report

Finished shards carry `.done` markers, so a rerun resumes; `stage=encode shard=...` runs one shard
(a Slurm array task). All logic lives in `nightingale.tokenizer.prepare`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from nightingale.data.ingest import ingest_to_meds
from nightingale.tokenizer.config import TokenizerConfig
from nightingale.tokenizer.prepare import PrepareConfig, prepare

log = logging.getLogger("data_prep.prepare")


def resolve_meds(cfg: DictConfig) -> Path:
    """The MEDS folder to prepare: `data.path` for data=meds (validated in place), else the
    dataset ingested into `meds_dir` (simulator, OMOP), reused when an earlier run wrote it:
    datasets are written atomically, so one that exists is complete."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if data.get("source") == "meds":
        # Each Slurm array task (stage=encode) would otherwise re-validate the whole dataset.
        return Path(str(data["path"])) if cfg.stage == "encode" else ingest_to_meds(data)
    meds_dir = Path(str(cfg.meds_dir))
    if meds_dir.exists():
        log.info("reusing the MEDS dataset already ingested at %s", meds_dir)
        return meds_dir
    return ingest_to_meds(
        data,
        meds_dir,
        privacy=OmegaConf.to_container(cfg.privacy, resolve=True),
        workers=int(cfg.workers),
    )


def run(cfg: DictConfig):
    """Build the typed configs from Hydra's and run the requested stage."""
    tok = TokenizerConfig.from_mapping(OmegaConf.to_container(cfg.tokenizer, resolve=True))
    pcfg = PrepareConfig(
        meds_dir=resolve_meds(cfg),
        out_dir=Path(str(cfg.out_dir)),
        tokenizer=tok,
        batch_rows=int(cfg.batch_rows),
        show_progress=bool(cfg.progress),
        workers=int(cfg.workers),
    )
    report = prepare(pcfg, stage=str(cfg.stage), shard=cfg.shard)
    if report and "splits" in report:
        log.info("vocabulary %d tokens; splits %s", report["vocabulary_size"], report["splits"])
    return report


@hydra.main(config_path="../configs", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
