"""Federation settings: the default file loads, overrides apply, and bad settings name the field."""

from __future__ import annotations

import pytest

from nightingale.federated.command import load_config
from nightingale.federated.config import FederationConfig


def test_the_default_file_and_overrides():
    cfg = load_config(None, ["rounds=2", "secagg.enabled=false", "model=small", "train.lr=0.001"])
    assert (cfg.rounds, cfg.secagg.enabled, cfg.model.name, cfg.train["lr"]) == (2, False, "small", 0.001)
    assert cfg.total_steps == 2 * cfg.local_steps


@pytest.mark.parametrize("settings, message", [
    ({"strategy": "fedsgd"}, r"federated.strategy: 'fedsgd'; allowed \['fedavg', 'fedprox', 'fedadam'\]"),
    ({"train": {"max_steps": 5}}, r"federated.train.max_steps: set by the federation"),
    ({"min_sites": 1}, r"reconstruction_threshold \(2\) above min_sites \(1\)"),
    ({"secagg": {"num_shares": 2, "reconstruction_threshold": 3}}, r"federated.secagg.reconstruction_threshold: at most num_shares"),
    ({"dp": {"noise_multiplier": -1}}, r"federated.dp: need noise_multiplier >= 0"),
    ({"round": 3}, r"federated: unknown field\(s\) \['round'\]"),
])
def test_bad_settings_name_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        FederationConfig.from_mapping(settings)


def test_a_bad_override_is_named():
    with pytest.raises(ValueError, match=r"--set 'rounds': expected key=value"):
        load_config(None, ["rounds"])
    with pytest.raises(ValueError, match=r"--config /nonexistent.yaml: cannot read"):
        load_config("/nonexistent.yaml", [])
