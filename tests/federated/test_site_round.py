"""A site's round with the real training code (DeepSpeed, a world of one): it starts from the
global weights, resumes its own optimizer and sampler, and a resent round gives the same update."""

from __future__ import annotations

import numpy as np
import pytest

from nightingale.federated import site as site_mod
from nightingale.federated.config import FederationConfig
from nightingale.federated.vocabulary import SiteDataError, merge_sketches, spec_hash
from nightingale.model import build_model

TEST_MODEL = {"name": "fedtest", "hidden_size": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2,
              "intermediate_size": 128, "context_length": 128}  # head_dim 32: vLLM CPU attention has no 16
TEST_TRAIN = {"micro_batch_size": 4, "warmup_steps": 1, "eval_windows": 8, "zero_stage": 1}


def norm(arrays) -> float:
    """The L2 norm of a set of arrays taken as one vector."""
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in arrays.values())))


@pytest.fixture(scope="module")
def prepared_site(site_data, tmp_path_factory):
    cfg = FederationConfig.from_mapping({"rounds": 3, "local_steps": 2, "model": TEST_MODEL, "train": TEST_TRAIN})
    work = tmp_path_factory.mktemp("site")
    sites = {n: site_mod.Site(n, p, work / n) for n, p in site_data.items()}
    vocab = merge_sketches([site_mod.sketch(s, cfg) for s in sites.values()], cfg.tokenizer)
    site = sites["north"]
    info = site_mod.prepare(site, cfg, vocab.spec)
    assert info["vocab_hash"] == spec_hash(vocab.spec) and info["train_tokens"] > 0
    model = build_model(cfg.model.with_vocab(len(vocab)), seed=0)
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return cfg, site, vocab, weights


def test_a_resent_round_gives_the_same_update(prepared_site):
    cfg, site, vocab, weights = prepared_site
    h = spec_hash(vocab.spec)
    u1, m1 = site_mod.train_round(site, cfg, weights, 1, h, sites=3)
    assert m1["tokens"] > 0 and np.isfinite(m1["loss_train"]) and np.isfinite(m1["loss_tuning"])
    assert set(u1) == set(weights) and max(float(np.abs(u).max()) for u in u1.values()) > 0
    nxt = {k: weights[k] + u1[k] for k in weights}
    u2, _ = site_mod.train_round(site, cfg, nxt, 2, h, sites=3)
    # a coordinator restart resends round 2 from the same weights: the site rewinds and agrees
    u2_again, _ = site_mod.train_round(site, cfg, nxt, 2, h, sites=3)
    for k in u2:
        np.testing.assert_allclose(u2_again[k], u2[k], atol=1e-6)
    assert not all(np.allclose(u2[k], u1[k]) for k in u1)


def test_a_site_prepared_with_another_vocabulary_is_refused(prepared_site):
    cfg, site, vocab, weights = prepared_site
    other = dict(vocab.spec, counts={**vocab.spec["counts"], "X": 1})
    with pytest.raises(SiteDataError, match=r"site 'north': .*vocab holds vocabulary [0-9a-f]{16}, the coordinator's is"):
        site_mod.prepare(site, cfg, other)
    with pytest.raises(SiteDataError, match=r"site 'north': its prepared vocabulary is"):
        site_mod.train_round(site, cfg, weights, 1, "0" * 16, sites=3)


def test_fedprox_keeps_a_site_near_the_global_weights(prepared_site, tmp_path):
    cfg, site, vocab, weights = prepared_site
    h = spec_hash(vocab.spec)
    sizes = {}
    for strategy, mu in (("fedavg", 0.0), ("fedprox", 50.0)):
        c = FederationConfig.from_mapping({**cfg.to_dict(), "strategy": strategy, "proximal_mu": mu,
                                           "train": {**TEST_TRAIN, "lr": 0.01}})
        s = site_mod.Site(site.name, site.data_dir, tmp_path / strategy)
        site_mod.prepare(s, c, vocab.spec)
        update, _ = site_mod.train_round(s, c, weights, 1, h, sites=3)
        sizes[strategy] = norm(update)
    assert sizes["fedprox"] < 0.8 * sizes["fedavg"], sizes


def test_a_round_starts_from_the_global_weights_not_the_sites_own(prepared_site, tmp_path):
    """Under ZeRO-1 the optimizer steps a float32 master copy: the round must train from the weights
    it was sent, not from where the site's own checkpoint left off."""
    cfg, site, vocab, weights = prepared_site
    h = spec_hash(vocab.spec)
    s = site_mod.Site(site.name, site.data_dir, tmp_path / "own")
    site_mod.prepare(s, cfg, vocab.spec)
    u1, _ = site_mod.train_round(s, cfg, weights, 1, h, sites=3)
    own = {k: weights[k] + u1[k] for k in weights}
    other = {k: v.detach().numpy().copy() for k, v in build_model(cfg.model.with_vocab(len(vocab)), seed=7)
             .state_dict().items()}  # a global model far from the site's own
    u2, _ = site_mod.train_round(s, cfg, other, 2, h, sites=3)

    gap = norm({k: own[k] - other[k] for k in own})
    assert norm(u2) < 0.2 * gap, (norm(u2), gap)  # a couple of steps from `other`, not a jump back to `own`
    assert norm(u2) > 0
