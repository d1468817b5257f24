"""Sites that cannot join stop a real federation before any round, each named with its reason:
data that fail MEDS validation, fewer subjects than the suppression threshold, a work folder
prepared with another vocabulary."""

from __future__ import annotations

import shutil

import polars as pl
import pytest

from nightingale.data.simulator.config import SimulatorConfig
from nightingale.data.simulator.simulate import simulate
from nightingale.federated import site as site_mod
from nightingale.federated.config import FederationConfig
from nightingale.federated.launch import LocalFederation
from nightingale.federated.site import Site
from nightingale.federated.vocabulary import merge_sketches
from tests.federated.test_site_round import TEST_MODEL, TEST_TRAIN

pytestmark = pytest.mark.slow
CFG = FederationConfig.from_mapping({"rounds": 1, "local_steps": 1, "model": TEST_MODEL, "train": TEST_TRAIN,
                                     "secagg": {"enabled": False}})


def _run(root, sites):
    with LocalFederation(root / "run", sites) as fed:
        return fed.run(CFG, timeout=300)


@pytest.fixture(scope="module")
def failed(site_data, tmp_path_factory):
    """Both federations at once (each mostly waits on Flower's polling)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(_bad_data_and_small_site, site_data, tmp_path_factory.mktemp("bad"))
        b = pool.submit(_other_vocabulary, site_data, tmp_path_factory.mktemp("vocab"))
        return {"bad": a.result(), "vocab": b.result()}


def _bad_data_and_small_site(site_data, tmp_path):
    broken = tmp_path / "city"
    shutil.copytree(site_data["city"], broken)
    shard = sorted((broken / "data" / "train").glob("*.parquet"))[0]
    pl.read_parquet(shard).reverse().write_parquet(shard)  # rows out of order
    simulate(SimulatorConfig(subjects=8, seed=5), tmp_path / "tiny")
    sites = {"north": Site("north", site_data["north"], tmp_path / "w" / "north"),
             "city": Site("city", broken, tmp_path / "w" / "city"),
             "tiny": Site("tiny", tmp_path / "tiny", tmp_path / "w" / "tiny")}
    return tmp_path, _run(tmp_path, sites)


def test_bad_data_and_a_small_site_are_named_and_no_round_starts(failed):
    tmp_path, status = failed["bad"]
    assert status["status"] == "failed"
    assert "no round was started" in status["message"]
    assert set(status["errors"]) == {"city", "tiny"}
    assert "fails MEDS validation" in status["errors"]["city"] and "site 'city'" in status["errors"]["city"]
    assert "fewer than the suppression threshold (10)" in status["errors"]["tiny"]
    assert not (tmp_path / "run" / "rounds").exists()


def _other_vocabulary(site_data, tmp_path):
    sites = {n: Site(n, p, tmp_path / "w" / n) for n, p in site_data.items()}
    # shire's work folder holds a vocabulary fitted from shire alone (say, an earlier federation)
    own = merge_sketches([site_mod.sketch(sites["shire"], CFG)], CFG.tokenizer)
    site_mod.prepare(sites["shire"], CFG, own.spec)
    return tmp_path, _run(tmp_path, sites)


def test_a_site_prepared_with_another_vocabulary_is_named(failed):
    tmp_path, status = failed["vocab"]
    assert status["status"] == "failed" and set(status["errors"]) == {"shire"}
    assert "holds vocabulary" in status["errors"]["shire"] and "no round was started" in status["message"]
    assert not (tmp_path / "run" / "rounds").exists()
