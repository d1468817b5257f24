"""Ingest stage: raw data -> a validated MEDS dataset (simulator, OMOP CDM, or a MEDS folder).

    python data_prep/ingest.py                                          # default simulated cohort
    python data_prep/ingest.py data.subjects=100000 out=runs/sim100k/meds
    python data_prep/ingest.py data=omop data.cdm=../shared/data/eunomia-gibleed-omop \
        out=runs/eunomia/meds privacy.pseudonymise=true privacy.key_file=/secure/key

The `nightingale simulate` / `import-omop` / `validate` verbs call the same library functions.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from nightingale.data.ingest import ingest_to_meds
from nightingale.data.validate import summarise_meds

log = logging.getLogger("data_prep.ingest")


def ingest(cfg: DictConfig):
    """Run the ingest described by `cfg` (configs/ingest.yaml) and return the dataset summary."""
    root = ingest_to_meds(
        OmegaConf.to_container(cfg.data, resolve=True),
        cfg.out,
        overwrite=bool(cfg.overwrite),
        privacy=OmegaConf.to_container(cfg.privacy, resolve=True),
        workers=int(cfg.workers),
    )
    summary = summarise_meds(root)
    log.info("MEDS dataset at %s: %s", root, summary)
    return summary


@hydra.main(config_path="../configs", config_name="ingest", version_base="1.3")
def main(cfg: DictConfig) -> None:
    ingest(cfg)


if __name__ == "__main__":
    main()
