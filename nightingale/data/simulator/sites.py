"""Several simulated sites that differ (age mix, deprivation, coding habits), one MEDS folder each.

    simulate_sites({"north": {"subjects": 5000, "age_tilt": 1.5}, "city": {...}}, "runs/fed/sites")

writes runs/fed/sites/north/, runs/fed/sites/city/, ... Subject ids are disjoint across sites (each
site's `id_offset` is the number of subjects of the sites before it), so the sites' data can be
pooled for a central comparison. The spec file format is configs/federated/sites/three.yaml.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nightingale.data.simulator.config import SimulatorConfig
from nightingale.data.simulator.simulate import SimulationSummary, simulate

log = logging.getLogger(__name__)


def site_configs(spec: Mapping[str, Mapping[str, Any]], subjects: int | None = None) -> dict[str, SimulatorConfig]:
    """Each site's SimulatorConfig, ids offset by the sites before it; `subjects` overrides every
    site's size (tests, quick runs)."""
    if not spec:
        raise ValueError("sites: the spec names no site")
    out, offset = {}, 0
    for name, fields in spec.items():
        if not isinstance(fields, Mapping):
            raise ValueError(f"sites.{name}: a mapping of SimulatorConfig fields, got {fields!r}")
        if "id_offset" in fields:
            raise ValueError(f"sites.{name}.id_offset: set by simulate_sites (ids are disjoint across sites)")
        fields = {**fields, **({"subjects": subjects} if subjects else {}), "id_offset": offset}
        try:
            cfg = SimulatorConfig.from_dict(fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sites.{name}: {exc}") from None
        out[str(name)] = cfg
        offset += cfg.subjects
    return out


def simulate_sites(spec: Mapping[str, Mapping[str, Any]], out: str | Path, *, subjects: int | None = None,
                   workers: int = 2, overwrite: bool = False) -> dict[str, SimulationSummary]:
    """Simulate every site of `spec` into `out/<site>/` (each atomically, as `simulate` does)."""
    configs = site_configs(spec, subjects)
    done = {}
    for name, cfg in configs.items():
        done[name] = simulate(cfg, Path(out) / name, workers=workers, overwrite=overwrite)
        log.info("site %s: %d subjects, %d events", name, done[name].subjects, done[name].events)
    return done
