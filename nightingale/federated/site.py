"""What a site does, inside its own environment: check, sketch, prepare and train one round.

A site is a MEDS folder (its records; never read by anyone else) and a work folder (its prepared
corpus and its training checkpoints). The only things these functions return to the coordinator
are the vocabulary sketch (suppressed counts and quantiles), hashes, token counts, losses and
the round's weight update.

    work_dir/prepared/   vocab/ (the federation's), corpus/, stats/ (as data_prep/prepare.py)
    work_dir/train/      the site's training run: checkpoints/ (optimizer moments, sampler
                         position, RNG), metrics.jsonl; a site restarted mid-federation resumes it
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nightingale.atomic import atomic_dir
from nightingale.federated.aggregate import privatize
from nightingale.federated.config import FederationConfig
from nightingale.federated.vocabulary import SiteDataError, site_sketch, spec_hash
from nightingale.ports import free_port
from nightingale.tokenizer import fit as fit_mod
from nightingale.tokenizer.prepare import PrepareConfig, Preparer
from nightingale.tokenizer.vocabulary import SPEC_FILE, Vocabulary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Site:
    name: str
    data_dir: Path
    work_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "work_dir", Path(self.work_dir))
        if not self.name or not str(self.name).replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"site name {self.name!r}: letters, digits, '-' and '_' only")

    @property
    def prepared(self) -> Path:
        return self.work_dir / "prepared"

    @property
    def train_dir(self) -> Path:
        return self.work_dir / "train"

    def preparer(self, cfg: FederationConfig) -> Preparer:
        return Preparer(PrepareConfig(self.data_dir, self.prepared, tokenizer=cfg.tokenizer, show_progress=False))


def check_data(site: Site, cfg: FederationConfig) -> int:
    """Validate the site's MEDS folder; returns its number of train subjects. Raises
    `SiteDataError` naming the site and the first problems."""
    from nightingale.data.validate import validate_meds

    if not site.data_dir.is_dir():
        raise SiteDataError(f"site {site.name!r}: data folder {site.data_dir} does not exist")
    report = validate_meds(site.data_dir, reference="warn")
    if report.errors:
        listed = "; ".join(str(e) for e in report.errors[:3])
        raise SiteDataError(f"site {site.name!r}: {site.data_dir} fails MEDS validation "
                            f"({len(report.errors)} error(s)): {listed}")
    from nightingale.data.meds_io import MEDSDataset

    return len(fit_mod.train_subjects(MEDSDataset(site.data_dir)))


def sketch(site: Site, cfg: FederationConfig) -> dict[str, Any]:
    """Check the data, then the site's vocabulary sketch (`federated/vocabulary.py`)."""
    n_train = check_data(site, cfg)
    prep = site.preparer(cfg)
    stats, gaps = prep.train_statistics()
    return site_sketch(stats, pl.concat(gaps), fit_mod.dataset_parents(prep.ds), n_train,
                       threshold=cfg.suppress_below, site=site.name)


def local_vocab_hash(site: Site) -> str | None:
    path = site.prepared / "vocab" / SPEC_FILE
    return spec_hash(Vocabulary.load(path).spec) if path.exists() else None


def prepare(site: Site, cfg: FederationConfig, spec: dict[str, Any]) -> dict[str, Any]:
    """Encode the site's records with the federation's vocabulary (kept at the site)."""
    wanted = spec_hash(spec)
    have = local_vocab_hash(site)
    if have is not None and have != wanted:
        raise SiteDataError(
            f"site {site.name!r}: {site.prepared}/vocab holds vocabulary {have}, the coordinator's is {wanted}; "
            f"remove {site.prepared} (and {site.train_dir}) or give the site a new work folder")
    if have is None:
        with atomic_dir(site.prepared / "vocab", overwrite=True) as tmp:
            Vocabulary(spec).save(tmp)
    report = site.preparer(cfg).run("all")
    return {"vocab_hash": wanted, "train_tokens": int(report["splits"].get("train", {}).get("tokens", 0))}


def _world_of_one() -> None:
    """A process group of one for DeepSpeed, on a free port (sites may share a host)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))


def _rewind(site: Site, step: int) -> None:
    """Forget site checkpoints past `step`: a coordinator that restarted resends a round the site
    may already have trained, from the same global weights; the site trains it again from there."""
    import shutil

    from nightingale.training.checkpoint import Checkpointer

    for path in Checkpointer(site.train_dir / "checkpoints", keep=1, rank=0).complete():
        if int(path.name.split("-")[1]) > step:
            log.warning("site %s: discarding checkpoint %s (the federation resumes from step %d)",
                        site.name, path.name, step)
            shutil.rmtree(path)


def train_round(site: Site, cfg: FederationConfig, weights: dict[str, np.ndarray], round_no: int,
                vocab_hash: str, sites: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One round at the site: its update (new weights minus `weights`, clipped and noised when DP
    is on) and its metrics (tokens trained on, train and tuning loss)."""
    import torch

    from nightingale.training.trainer import FederatedRound, train

    have = local_vocab_hash(site)
    if have != vocab_hash:
        raise SiteDataError(f"site {site.name!r}: its prepared vocabulary is {have}, the coordinator's is "
                            f"{vocab_hash}; the site must prepare with the federation's vocabulary first")
    tcfg = cfg.train_config(site.prepared, site.train_dir)
    _rewind(site, (round_no - 1) * cfg.local_steps)
    _world_of_one()
    start = {k: torch.from_numpy(np.asarray(v, np.float32).copy()) for k, v in weights.items()}
    mu = cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0
    result = train(tcfg, resolved_config=cfg.to_dict(),
                   federated=FederatedRound(start, stop_step=round_no * cfg.local_steps, proximal_mu=mu))
    if result.preempted or result.weights is None:
        raise RuntimeError(f"site {site.name!r}: round {round_no} stopped before its end (preempted)")
    update = {k: result.weights[k].numpy().astype(np.float32) - np.asarray(weights[k], np.float32)
              for k in weights}
    if cfg.dp.enabled:
        seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}/{site.name}/{round_no}".encode()).digest()[:8], "little")
        update = privatize(update, cfg.dp, sites, np.random.default_rng(seed))
    metrics = {"tokens": float(result.tokens_seen - result.tokens_start),
               "loss_train": float(result.losses.get("train", float("nan"))),
               "loss_tuning": float(result.losses.get("eval", float("nan")))}
    return update, metrics
