"""The coordinator's checkpoints: the global model after each round, resumable after a kill.

    <run_dir>/vocab/                     the federated vocabulary (vocabulary.json, tokenizer.json)
    <run_dir>/rounds/round-0000/         the initial weights (before any round)
    <run_dir>/rounds/round-000N/         weights.safetensors, server.safetensors (FedAdam's
                                         moments), state.json (round, vocabulary hash, history)
    <run_dir>/rounds/latest              the newest complete round's folder name

Each round folder is written atomically, then `latest` is rewritten atomically: a coordinator
killed at any moment restarts from the last complete round, never from half of one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nightingale.atomic import atomic_dir, atomic_file

LATEST = "latest"


@dataclass
class RoundState:
    round: int
    weights: dict[str, np.ndarray]
    server: dict[str, np.ndarray] = field(default_factory=dict)
    vocab_hash: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


class RoundStore:
    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir) / "rounds"

    def save(self, state: RoundState) -> Path:
        from safetensors.numpy import save_file

        path = self.root / f"round-{state.round:04d}"
        with atomic_dir(path, overwrite=True) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in state.weights.items()}, str(tmp / "weights.safetensors"))
            if state.server:
                save_file({k: np.ascontiguousarray(v) for k, v in state.server.items()},
                          str(tmp / "server.safetensors"))
            (tmp / "state.json").write_text(json.dumps(
                {"round": state.round, "vocab_hash": state.vocab_hash, "history": state.history}, indent=1))
        with atomic_file(self.root / LATEST) as tmp:
            tmp.write_text(path.name)
        return path

    def load_latest(self) -> RoundState | None:
        from safetensors.numpy import load_file

        pointer = self.root / LATEST
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        meta = json.loads((path / "state.json").read_text())
        server = path / "server.safetensors"
        return RoundState(round=int(meta["round"]), weights=dict(load_file(str(path / "weights.safetensors"))),
                          server=dict(load_file(str(server))) if server.exists() else {},
                          vocab_hash=meta["vocab_hash"], history=list(meta["history"]))


def arrays_nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))
