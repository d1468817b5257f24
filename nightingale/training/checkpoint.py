"""Checkpoints: `<run_dir>/checkpoints/step-N/`, the latest k kept, a `latest` pointer, a manifest.

A checkpoint is written by DeepSpeed (model, optimizer, ZeRO partitions, LR scheduler) into a
hidden `.tmp-step-N/` folder, together with each rank's RNG state; once every rank is done, rank 0
writes `trainer_state.json` (step, tokens seen, sampler position, losses, and a manifest of file
sizes and SHA-256 digests), renames the folder to `step-N/` and atomically rewrites `latest`.
A kill at any moment leaves either the previous checkpoint or the new one, never half of one.
On resume every rank verifies the candidate against its manifest; a damaged one is reported and
skipped in favour of the one before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nightingale.atomic import atomic_file, write_json_atomic
from nightingale.training.distributed import all_reduce, barrier

log = logging.getLogger(__name__)
STATE_FILE, LATEST = "trainer_state.json", "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class Checkpointer:
    """Saves and restores a DeepSpeed engine plus the trainer's own state, collectively."""

    def __init__(self, root: str | Path, *, keep: int, rank: int, verify_checksums: bool = True):
        self.root, self.keep, self.rank, self.verify_checksums = Path(root), keep, rank, verify_checksums

    # --- discovery ----------------------------------------------------------------------------------
    def complete(self) -> list[Path]:
        """Finished checkpoints (those with a trainer_state.json), newest step first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
        return [p for _, p in sorted(found, reverse=True)]

    def candidates(self) -> list[Path]:
        """The `latest` pointer's target first, then every other finished checkpoint, newest first."""
        done = self.complete()
        pointer = self.root / LATEST
        if pointer.is_file():
            target = self.root / pointer.read_text().strip()
            if target in done:
                done.remove(target)
                done.insert(0, target)
        return done

    def problem(self, path: Path) -> str | None:
        """Why `path` cannot be loaded (missing, truncated or altered files), or None."""
        try:
            manifest = json.loads((path / STATE_FILE).read_text())["manifest"]
        except (OSError, ValueError, KeyError) as exc:
            return f"unreadable {STATE_FILE}: {exc}"
        for rel, (size, digest) in manifest.items():
            f = path / rel
            if not f.is_file():
                return f"missing file {rel}"
            if f.stat().st_size != size:
                return f"{rel} has {f.stat().st_size} bytes, expected {size}"
            if self.verify_checksums and _sha256(f) != digest:
                return f"{rel} fails its SHA-256 check"
        return None

    # --- save ------------------------------------------------------------------------------------------
    def save(self, engine, step: int, state: dict[str, Any]) -> Path:
        """Collective: every rank calls it at the same step. Returns the checkpoint folder."""
        tag, final = f".tmp-step-{step}", self.root / f"step-{step}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.root / tag, ignore_errors=True)
        barrier()
        engine.save_checkpoint(str(self.root), tag=tag, client_state={"trainer": state}, save_latest=False)
        torch.save(rng_state(), self.root / tag / f"rng-rank{self.rank}.pt")
        barrier()
        if self.rank == 0:
            tmp = self.root / tag
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {str(p.relative_to(tmp)): (p.stat().st_size, _sha256(p)) for p in files}
            write_json_atomic({**state, "manifest": manifest}, tmp / STATE_FILE)
            if final.exists():  # a rerun of a step after a resume from an earlier checkpoint
                shutil.rmtree(final)
            os.replace(tmp, final)
            with atomic_file(self.root / LATEST) as t:
                t.write_text(final.name + "\n")
            self._prune()
            log.info("checkpoint %s written", final)
        barrier()
        return final

    def _prune(self) -> None:
        for old in self.complete()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):  # left by a run killed mid-save
            shutil.rmtree(stale, ignore_errors=True)

    # --- load ------------------------------------------------------------------------------------------
    def load(self, engine) -> dict[str, Any] | None:
        """Restore the newest loadable checkpoint into `engine`; returns the trainer state, or None
        when there is none. Damaged checkpoints are logged and skipped; when checkpoints exist but
        none can be loaded, raises RuntimeError rather than silently starting over."""
        cands = self.candidates()
        n_local = len(cands)
        if all_reduce([float(n_local)], "min")[0] != n_local:
            raise RuntimeError(f"ranks disagree on the checkpoints in {self.root} (shared file system?)")
        for i, path in enumerate(cands):
            problem = self.problem(path)
            ok = all_reduce([0.0 if problem else 1.0], "min")[0] == 1.0
            if not ok:
                after = f"falling back to {cands[i + 1].name}" if i + 1 < len(cands) else "no earlier checkpoint"
                if self.rank == 0:
                    log.error("checkpoint %s is corrupt (%s); %s", path, problem or "damaged on another rank", after)
                continue
            _, client = engine.load_checkpoint(str(self.root), tag=path.name, load_optimizer_states=True,
                                               load_lr_scheduler_states=True)
            rng_file = path / f"rng-rank{self.rank}.pt"
            if rng_file.is_file():  # absent when resuming on more ranks than saved
                set_rng_state(torch.load(rng_file, weights_only=False))
            state = json.loads((path / STATE_FILE).read_text())
            state.pop("manifest", None)
            if self.rank == 0:
                log.info("resumed from %s (step %d, %d tokens seen)", path, state["step"], state["tokens_seen"])
            return state
        if cands:
            raise RuntimeError(
                f"every checkpoint in {self.root} is corrupt ({[p.name for p in cands]}); move the "
                "folder away to start afresh"
            )
        return None
