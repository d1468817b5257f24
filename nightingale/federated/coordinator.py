"""The coordinator's side of a federation, apart from the transport (Flower) that carries it.

    coord = Coordinator(cfg, run_dir)
    vocab = coord.vocabulary(sketches)          # merge the sites' sketches (or check a resume's)
    state = coord.start(vocab)                  # round 0, or the last complete round after a kill
    state = coord.finish_round(state, mean_update, info)   # server step, then checkpoint
    coord.export(state)                         # <run_dir>/model: the usual model folder

`status.json` in the run folder says what the federation is doing (running, done, failed and
why), for the launcher and the operator.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nightingale.atomic import atomic_dir, write_json_atomic
from nightingale.federated.aggregate import ServerOptimizer, privacy_record
from nightingale.federated.config import FederationConfig
from nightingale.federated.rounds import RoundState, RoundStore
from nightingale.federated.vocabulary import merge_sketches, spec_hash
from nightingale.tokenizer.vocabulary import SPEC_FILE, Vocabulary

log = logging.getLogger(__name__)
STATUS_FILE = "status.json"


class FederationError(RuntimeError):
    """The federation cannot go on; the message says which site(s) and why."""


class Coordinator:
    def __init__(self, cfg: FederationConfig, run_dir: str | Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = RoundStore(self.run_dir)
        self.optimizer = ServerOptimizer(cfg)
        self.vocab: Vocabulary | None = None

    # --- status --------------------------------------------------------------------------------
    def status(self, state: str, **fields: Any) -> None:
        write_json_atomic({"status": state, "time": time.time(), **fields}, self.run_dir / STATUS_FILE)

    def fail(self, message: str, errors: Mapping[str, str] | None = None) -> FederationError:
        """Record the failure in status.json and return the error to raise."""
        self.status("failed", message=message, errors=dict(errors or {}))
        log.error("federation failed: %s", message)
        return FederationError(message)

    # --- vocabulary ----------------------------------------------------------------------------
    def vocabulary(self, sketches: Sequence[Mapping[str, Any]]) -> Vocabulary:
        """The federated vocabulary from the sites' sketches. A resumed federation keeps the one it
        started with, and fails if the sites' data no longer give the same one."""
        merged = merge_sketches(sketches, self.cfg.tokenizer)
        path = self.run_dir / "vocab" / SPEC_FILE
        if path.exists():
            saved = Vocabulary.load(path)
            if spec_hash(saved.spec) != spec_hash(merged.spec):
                raise self.fail(f"the sites' data give vocabulary {spec_hash(merged.spec)}, but this federation "
                                f"started with {spec_hash(saved.spec)} ({path}); start a new run folder")
            self.vocab = saved
        else:
            with atomic_dir(self.run_dir / "vocab", overwrite=True) as tmp:
                merged.save(tmp)
            self.vocab = merged
        return self.vocab

    # --- rounds --------------------------------------------------------------------------------
    def start(self) -> RoundState:
        """The last complete round (resume) or round 0: the model's initial weights."""
        from nightingale.model import build_model

        assert self.vocab is not None, "vocabulary() first"
        vhash = spec_hash(self.vocab.spec)
        state = self.store.load_latest()
        if state is not None:
            if state.vocab_hash != vhash:
                raise self.fail(f"checkpoint {self.store.root} was trained with vocabulary {state.vocab_hash}, not {vhash}")
            self.optimizer.load_state_arrays(state.server)
            log.info("resuming the federation after round %d", state.round)
            return state
        model = build_model(self.cfg.model.with_vocab(len(self.vocab)), seed=self.cfg.seed)
        weights = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
        state = RoundState(round=0, weights=weights, vocab_hash=vhash)
        self.store.save(state)
        return state

    def finish_round(self, state: RoundState, mean_update: Mapping[str, np.ndarray],
                     info: Mapping[str, Any]) -> RoundState:
        """Apply the averaged update, checkpoint the round, return the new state."""
        weights = self.optimizer.step(state.weights, mean_update)
        if not all(np.isfinite(w).all() for w in weights.values()):
            raise self.fail(f"round {state.round + 1}: the aggregated weights are not finite; lower the learning rate")
        new = RoundState(round=state.round + 1, weights=weights, server=self.optimizer.state_arrays(),
                         vocab_hash=state.vocab_hash, history=[*state.history, dict(info, round=state.round + 1)])
        self.store.save(new)
        self.status("running", round=new.round, rounds=self.cfg.rounds)
        return new

    # --- result --------------------------------------------------------------------------------
    def export(self, state: RoundState, sites: Sequence[str]) -> Path:
        """The global model as the usual model folder (<run_dir>/model), card included."""
        import torch

        from nightingale.model import export_model

        assert self.vocab is not None
        mcfg = self.cfg.model.with_vocab(len(self.vocab))
        history = state.history
        last = history[-1] if history else {}
        card = {
            "data": {"federated": True, "sites": list(sites),
                     "train_tokens_per_round": last.get("tokens")},
            "steps": state.round * self.cfg.local_steps,
            "tokens_seen": int(sum(h.get("tokens", 0) for h in history)),
            "losses": {k: v for k, v in (("train", last.get("loss_train")), ("eval", last.get("loss_tuning")))
                       if isinstance(v, float)},
            "config": self.cfg.to_dict(),
            "federation": {"rounds": state.round, "strategy": self.cfg.strategy, "history": history,
                           "privacy": privacy_record(self.cfg, state.round)},
        }
        weights = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in state.weights.items()}
        out = export_model(weights, mcfg, self.vocab, self.run_dir / "model", card)
        self.status("done", round=state.round, rounds=self.cfg.rounds, model_dir=str(out))
        return out
