"""Three small simulated sites that differ (configs/federated/sites/three.yaml at 150 subjects)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nightingale.data.simulator.sites import simulate_sites

ROOT = Path(__file__).resolve().parents[2]
SITES_SPEC = ROOT / "configs" / "federated" / "sites" / "three.yaml"


@pytest.fixture(scope="session")
def site_data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sites")
    spec = yaml.safe_load(SITES_SPEC.read_text())
    simulate_sites(spec, out, subjects=150, workers=1)
    return {name: out / name for name in spec}
