"""The federated vocabulary: what a site sends is suppressed and summarised, the merge does not
depend on the order sites answer in, and the result matches a central fit on what it can see."""

from __future__ import annotations

import itertools
import json

import numpy as np
import polars as pl
import pytest

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.federated import site as site_mod
from nightingale.federated.config import FederationConfig
from nightingale.federated.vocabulary import (
    QUANTILE_LEVELS,
    SiteDataError,
    merge_sketches,
    spec_hash,
)
from nightingale.tokenizer.fit import fit_gap_decode_for_dataset, fit_stats_for_dataset
from nightingale.tokenizer.vocabulary import Vocabulary


@pytest.fixture(scope="module")
def sketches(site_data, tmp_path_factory):
    cfg = FederationConfig()
    work = tmp_path_factory.mktemp("work")
    return {name: site_mod.sketch(site_mod.Site(name, path, work / name), cfg) for name, path in site_data.items()}


def test_site_sends_only_suppressed_counts_and_inner_quantiles(site_data, sketches):
    cfg = FederationConfig()
    for name, sk in sketches.items():
        events = pl.scan_parquet(str(site_data[name] / "data" / "*" / "*.parquet")).collect()
        train = set(MEDSDataset(site_data[name]).splits().filter(pl.col(S.SPLIT) == S.TRAIN)[S.SUBJECT_ID])
        counts = dict(events.filter(pl.col(S.SUBJECT_ID).is_in(list(train))).group_by(S.CODE).len().iter_rows())
        sent = {row[0]: row for row in sk["codes"]}
        assert all(row[1] >= cfg.suppress_below for row in sent.values())
        rare = [c for c, n in counts.items() if n < cfg.suppress_below]
        assert rare and not set(rare) & set(sent), "codes seen fewer than 10 times must not be sent"
        assert all(sent[c][1] == n for c, n in counts.items() if c in sent)
        train_rows = events.filter(pl.col(S.SUBJECT_ID).is_in(list(train)))
        for code, _, _, n_values, quantiles in sk["codes"]:
            if not quantiles:
                continue
            vals = train_rows.filter(pl.col(S.CODE) == code)[S.NUMERIC_VALUE].drop_nulls().to_numpy()
            # the 1%..99% quantiles of the train values: never a minimum or maximum as such
            assert n_values == len(vals) >= cfg.suppress_below
            np.testing.assert_allclose(quantiles, np.quantile(vals.astype(np.float64), QUANTILE_LEVELS), rtol=1e-6)
        assert all(n == 0 or n >= cfg.suppress_below for _, n, _ in sk["gaps"])
        text = json.dumps(sk)
        assert "subject_id" not in text and "time" not in sk
        assert sk["train_subjects"] == len(train)


def test_merge_is_the_same_whatever_the_site_order(sketches):
    cfg = FederationConfig()
    hashes = {spec_hash(merge_sketches(list(p), cfg.tokenizer).spec)
              for p in itertools.permutations(sketches.values())}
    assert len(hashes) == 1


def test_federated_vocabulary_matches_a_central_fit_of_what_sites_may_share(site_data, sketches, tmp_path):
    cfg = FederationConfig()
    fed = merge_sketches(list(sketches.values()), cfg.tokenizer)
    # central: one dataset of all three sites' rows, fitted as data_prep does
    parts = [fit_stats_for_dataset(MEDSDataset(p), cfg.tokenizer) for p in site_data.values()]
    from nightingale.tokenizer.fit import combine_stats

    central = Vocabulary.fit(combine_stats(parts, cfg.tokenizer), cfg.tokenizer)
    common = {c for c, n in central.spec["counts"].items() if n >= 3 * cfg.suppress_below}
    assert common <= set(fed.code_to_id), sorted(common - set(fed.code_to_id))[:5]
    # the stem-coding site's stems (ICD10//I48) and the others' full codes (ICD10//I48.9) both have tokens
    city = {row[0] for row in sketches["city"]["codes"]}
    others = {row[0] for name, sk in sketches.items() if name != "city" for row in sk["codes"]}
    pairs = {(c.split(".")[0], c) for c in others if c.startswith("ICD10//") and "." in c and c.split(".")[0] in city}
    assert pairs and all({a, b} <= set(fed.code_to_id) for a, b in pairs)
    assert not any("." in c for c in city if c.startswith("ICD10//"))
    # value deciles close to the central ones (relative to the spread of the values)
    for code, edges in central.spec["value_edges"].items():
        if code in fed.spec["value_edges"] and len(edges) == len(fed.spec["value_edges"][code]):
            e, f = np.asarray(edges[1:-1]), np.asarray(fed.spec["value_edges"][code][1:-1])
            spread = edges[-1] - edges[0] or 1.0
            assert np.max(np.abs(e - f)) / spread < 0.05, code
    gaps = [fit_gap_decode_for_dataset(MEDSDataset(p), cfg.tokenizer) for p in site_data.values()]
    lo, hi = np.min(gaps, axis=0), np.max(gaps, axis=0)
    got = np.asarray(fed.spec["gap_decode_s"])
    assert np.all((got >= lo * 0.999) & (got <= hi * 1.001))


def test_a_site_with_fewer_subjects_than_the_threshold_is_refused(site_data, tmp_path):
    cfg = FederationConfig.from_mapping({"suppress_below": 500})
    site = site_mod.Site("north", site_data["north"], tmp_path / "north")
    with pytest.raises(SiteDataError, match=r"site 'north': 120 train subjects, fewer than the suppression threshold \(500\)"):
        site_mod.sketch(site, cfg)


def test_a_site_whose_data_fails_meds_validation_is_named(site_data, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(site_data["city"], bad)
    shard = sorted((bad / "data" / "train").glob("*.parquet"))[0]
    df = pl.read_parquet(shard)
    df.reverse().write_parquet(shard)  # rows out of (subject_id, time) order
    with pytest.raises(SiteDataError, match=r"site 'city': .* fails MEDS validation"):
        site_mod.sketch(site_mod.Site("city", bad, tmp_path / "w"), FederationConfig())
