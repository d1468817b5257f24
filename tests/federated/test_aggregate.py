"""The coordinator's arithmetic: token-weighted means, the FedAdam step, DP clipping and budget."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nightingale.federated.aggregate import (
    ServerOptimizer,
    gaussian_epsilon,
    privatize,
    weighted_mean,
)
from nightingale.federated.config import DPConfig, FederationConfig


def test_weighted_mean_weights_by_tokens():
    a, b = {"w": np.array([1.0, 2.0])}, {"w": np.array([3.0, 6.0])}
    np.testing.assert_allclose(weighted_mean([(a, 1.0), (b, 3.0)])["w"], [2.5, 5.0])
    with pytest.raises(ValueError, match="positive weight"):
        weighted_mean([(a, 0.0)])


def test_fedavg_adds_the_mean_update_and_fedadam_takes_an_adam_step():
    w, d = {"w": np.array([1.0, -1.0], np.float32)}, {"w": np.array([0.1, -0.2])}
    np.testing.assert_allclose(ServerOptimizer(FederationConfig()).step(w, d)["w"], [1.1, -1.2], rtol=1e-6)
    cfg = FederationConfig.from_mapping({"strategy": "fedadam", "server_lr": 0.5, "server_tau": 1e-3})
    opt = ServerOptimizer(cfg)
    out = opt.step(w, d)["w"]
    m, v = 0.1 * d["w"], 0.01 * d["w"] ** 2
    np.testing.assert_allclose(out, w["w"] + 0.5 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
    state = opt.state_arrays()
    again = ServerOptimizer(cfg)
    again.load_state_arrays(state)
    np.testing.assert_allclose(again.step(w, d)["w"], opt.step(w, d)["w"])


def test_a_server_step_and_momentum_carry_the_average_further_and_resume_exactly():
    w, d = {"w": np.array([1.0, -1.0], np.float32)}, {"w": np.array([0.1, -0.2])}
    twice = FederationConfig.from_mapping({"server_lr": 2.0})
    np.testing.assert_allclose(ServerOptimizer(twice).step(w, d)["w"], [1.2, -1.4], rtol=1e-6)
    cfg = FederationConfig.from_mapping({"strategy": "fedprox", "server_momentum": 0.5})
    opt = ServerOptimizer(cfg)
    w1 = opt.step(w, d)
    np.testing.assert_allclose(w1["w"], [1.1, -1.2], rtol=1e-6)  # the first round: plain averaging
    again = ServerOptimizer(cfg)
    again.load_state_arrays(opt.state_arrays())
    w2 = opt.step(w1, d)
    np.testing.assert_allclose(w2["w"], [1.1 + 1.5 * 0.1, -1.2 - 1.5 * 0.2], rtol=1e-6)  # m = 0.5 d + d
    np.testing.assert_allclose(again.step(w1, d)["w"], w2["w"])


@pytest.mark.parametrize("bad, match", [({"server_momentum": 1.0}, "server_momentum: in"),
                                        ({"strategy": "fedadam", "server_momentum": 0.9}, "server_betas"),
                                        ({"server_lr": 0.0}, "server_lr > 0")])
def test_server_settings_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        FederationConfig.from_mapping(bad)


def test_privatize_clips_to_the_norm_and_adds_the_sites_share_of_noise():
    rng = np.random.default_rng(0)
    big = {"a": np.full(1000, 1.0), "b": np.full(1000, 1.0)}
    clipped = privatize(big, DPConfig(noise_multiplier=1e-9, clip_norm=2.0), 4, rng)
    norm = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in clipped.values()))
    assert norm == pytest.approx(2.0, rel=1e-4)
    zero = {"a": np.zeros(200_000)}
    noisy = privatize(zero, DPConfig(noise_multiplier=1.0, clip_norm=0.5), 4, rng)["a"]
    assert noisy.std() == pytest.approx(0.5 / 2, rel=0.01)


def test_gaussian_epsilon_grows_with_rounds_and_shrinks_with_noise():
    assert gaussian_epsilon(0.0, 3, 1e-5) == math.inf
    e = [gaussian_epsilon(z, r, 1e-5) for z, r in ((1.0, 1), (1.0, 10), (4.0, 10))]
    assert e[0] < e[1] and e[2] < e[1]
    # one Gaussian mechanism with z = 1: RDP gives epsilon ~ 5.3 at delta 1e-5 (sqrt(2 ln(1/delta)) + 1/2)
    assert e[0] == pytest.approx(math.sqrt(2 * math.log(1e5)) + 0.5, rel=0.02)


def test_the_model_card_records_the_privacy_budget():
    from nightingale.federated.aggregate import privacy_record

    off = privacy_record(FederationConfig(), 3)
    assert off == {"secure_aggregation": True, "suppress_below": 10, "differential_privacy": False}
    on = privacy_record(FederationConfig.from_mapping({"dp": {"noise_multiplier": 2.0}}), 3)
    assert on["epsilon"] == pytest.approx(gaussian_epsilon(2.0, 3, 1e-5)) and on["rounds"] == 3
