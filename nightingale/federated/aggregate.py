"""The coordinator's arithmetic: averaging site updates, the server step, and the DP account.

Sites send updates (their weights after a round minus the round's global weights), which are
small and centred on zero, so SecAgg+'s clipping and quantization cost little precision. Under
SecAgg+ the coordinator only ever holds the weighted *sum* of the updates (Flower unmasks it);
without it, `weighted_mean` computes the same from the individual updates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nightingale.federated.config import DPConfig, FederationConfig

Arrays = dict[str, np.ndarray]


def weighted_mean(updates: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> Arrays:
    """Sum of weight x update over the sum of weights (FedAvg's mean, weighted by tokens)."""
    total = float(sum(w for _, w in updates))
    if not updates or total <= 0:
        raise ValueError("weighted_mean: no update with a positive weight")
    keys = list(updates[0][0])
    return {k: sum(np.asarray(u[k], np.float64) * w for u, w in updates) / total for k in keys}


class ServerOptimizer:
    """Turns the averaged update into the next global weights.

    FedAvg and FedProx: w + server_lr x update (plain addition at the default 1.0); with
    `server_momentum` b > 0, a buffer m = b m + update carried across rounds and w + server_lr x m
    (FedAvgM). FedAdam: an Adam step on the update (`server_lr`, `server_betas`, `server_tau`).
    The buffers travel in the coordinator's round checkpoints, so a resumed run steps the same.
    """

    def __init__(self, cfg: FederationConfig):
        self.cfg = cfg
        self.m: Arrays = {}
        self.v: Arrays = {}

    def step(self, weights: Mapping[str, np.ndarray], mean_update: Mapping[str, np.ndarray]) -> Arrays:
        lr, out = self.cfg.server_step, {}
        for k, w in weights.items():
            d = np.asarray(mean_update[k], np.float64)
            if self.cfg.strategy == "fedadam":
                b1, b2 = self.cfg.server_betas
                self.m[k] = b1 * self.m.get(k, np.zeros_like(d)) + (1 - b1) * d
                self.v[k] = b2 * self.v.get(k, np.zeros_like(d)) + (1 - b2) * d * d
                d = self.m[k] / (np.sqrt(self.v[k]) + self.cfg.server_tau)
            elif self.cfg.server_momentum:
                self.m[k] = self.cfg.server_momentum * self.m.get(k, np.zeros_like(d)) + d
                d = self.m[k]
            out[k] = (np.asarray(w, np.float64) + lr * d).astype(np.float32)
        return out

    def state_arrays(self) -> Arrays:
        return {**{f"m/{k}": v for k, v in self.m.items()}, **{f"v/{k}": v for k, v in self.v.items()}}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.m = {k[2:]: np.asarray(v) for k, v in arrays.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v) for k, v in arrays.items() if k.startswith("v/")}


def privatize(update: Mapping[str, np.ndarray], dp: DPConfig, sites: int, rng: np.random.Generator) -> Arrays:
    """A site's update clipped to L2 norm `dp.clip_norm`, plus its share of the Gaussian noise
    (std noise_multiplier x clip_norm / sqrt(sites), so that the sum carries the full noise)."""
    norm = math.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update.values()))
    scale = min(1.0, dp.clip_norm / norm) if norm > 0 else 1.0
    sigma = dp.noise_multiplier * dp.clip_norm / math.sqrt(max(sites, 1))
    return {k: (np.asarray(u, np.float64) * scale + rng.normal(0.0, sigma, np.shape(u))).astype(np.float32)
            for k, u in update.items()}


def gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """(epsilon, delta)-DP of `rounds` Gaussian mechanisms of noise multiplier z (sensitivity 1,
    every site in every round: no subsampling), by Renyi DP: eps(a) = rounds a / (2 z^2), then
    epsilon = min over a of eps(a) + log(1/delta) / (a - 1) (Mironov 2017, Prop. 3)."""
    if noise_multiplier <= 0:
        return math.inf
    orders = np.concatenate([np.linspace(1.01, 10, 200), np.linspace(10, 1000, 500)])
    eps = rounds * orders / (2 * noise_multiplier**2) + math.log(1 / delta) / (orders - 1)
    return float(eps.min())


def privacy_record(cfg: FederationConfig, rounds_done: int) -> dict[str, Any]:
    """The privacy settings and budget written to the model card."""
    dp = cfg.dp
    record: dict[str, Any] = {
        "secure_aggregation": cfg.secagg.enabled,
        "suppress_below": cfg.suppress_below,
        "differential_privacy": dp.enabled,
    }
    if dp.enabled:
        record.update(level="site (each site's whole contribution to a round)", mechanism="Gaussian",
                      noise_multiplier=dp.noise_multiplier, clip_norm=dp.clip_norm, delta=dp.delta,
                      rounds=rounds_done, epsilon=gaussian_epsilon(dp.noise_multiplier, rounds_done, dp.delta))
    return record
