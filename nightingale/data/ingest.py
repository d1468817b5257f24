"""Raw data (simulator | OMOP CDM | MEDS folder) -> a validated MEDS dataset, from one config.

The Hydra stages (`data_prep/ingest.py`, `data_prep/prepare.py`) call `ingest_to_meds` with the
`data` config group (`configs/data/*.yaml`) and the `privacy` group; the `nightingale` verbs call the
same importers directly. Whatever the source, the result is validated before it is used.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nightingale.data.privacy import DEFAULT_KEY_ENV, PrivacyPolicy
from nightingale.data.validate import validate_meds

log = logging.getLogger(__name__)

SOURCES = ("simulator", "omop", "meds")


def privacy_policy(cfg: Mapping[str, Any] | None) -> PrivacyPolicy:
    """A `PrivacyPolicy` from the `privacy` config group (None: change nothing)."""
    cfg = dict(cfg or {})
    return PrivacyPolicy.from_options(
        pseudonymise=bool(cfg.get("pseudonymise", False)),
        key_file=cfg.get("key_file"),
        key_env=cfg.get("key_env") or DEFAULT_KEY_ENV,
        opt_out_file=cfg.get("opt_out_file"),
    )


def _fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k != "source"}


def ingest_to_meds(
    data: Mapping[str, Any],
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    privacy: Mapping[str, Any] | None = None,
    workers: int = 2,
) -> Path:
    """Produce the MEDS dataset that `data` describes and return its root.

    data: a `configs/data/*.yaml` mapping whose `source` is one of SOURCES.
    out: where to write it (simulator and OMOP; ignored for `meds`, which is used in place).
    Raises ValueError naming the config field on a bad config, and whatever the importer raises
    on bad input; in every case nothing is left at `out`.
    """
    data = dict(data)
    source = data.get("source")
    if source not in SOURCES:
        raise ValueError(f"data.source: {source!r} is not one of {SOURCES}")
    policy = privacy_policy(privacy)
    if source == "meds":
        if not data.get("path"):
            raise ValueError("data.path: required with data.source=meds (the dataset root)")
        if policy.active:
            raise ValueError(
                "privacy: pseudonymisation and opt-outs apply when raw data is imported "
                "(data.source=simulator or omop), not to an existing MEDS folder"
            )
        root = Path(str(data["path"]))
        # someone else's MEDS: read liberally (the `meds` type findings are warnings here)
        report = validate_meds(root, strict_codes=bool(data.get("strict_codes", True)),
                               reference="warn")
        report.raise_if_invalid()
        return root
    if out is None:
        raise ValueError(f"out: required to ingest data.source={source}")
    out = Path(out)
    if source == "simulator":
        from nightingale.data.simulator import SimulatorConfig, simulate

        cfg = SimulatorConfig.from_dict(_fields(data))
        simulate(cfg, out, workers=workers, overwrite=overwrite, policy=policy)
    else:
        from nightingale.data.omop.convert import OMOPImportConfig, convert_omop

        fields = _fields(data)
        fields["split_fractions"] = dict(fields.get("split_fractions") or {}) or None
        if fields["split_fractions"] is None:
            del fields["split_fractions"]
        convert_omop(OMOPImportConfig(out=out, overwrite=overwrite, **fields), policy)
    validate_meds(out).raise_if_invalid()
    log.info("ingested data.source=%s into %s", source, out)
    return out
