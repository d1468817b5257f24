"""`nightingale forecast`: a population forecast from the command line, the same code and config
(configs/forecast.yaml) as the stage script serve/forecast.py.

    nightingale forecast model_dir=runs/demo/train/model meds_dir=runs/demo/meds out_dir=runs/forecast
    nightingale forecast ... forecast.prediction_time=2024-01-01 'forecast.groups=[age_band,sex,IMD]'
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


def run_config(cfg: Mapping[str, Any]) -> int:
    """Run the stage from a resolved forecast config (configs/forecast.yaml's layout); 0 done,
    2 bad input (logged, naming the field, before any work)."""
    from nightingale.inference.engine import EngineConfig
    from nightingale.inference.gate import GateError
    from nightingale.inference.population import PopulationConfig, PopulationJob, run_stage

    try:
        pcfg = PopulationConfig.from_mapping(cfg["forecast"])
        engine = EngineConfig.from_mapping({**cfg["engine"], "model_dir": str(cfg["model_dir"])})
        job = PopulationJob(pcfg, cfg["model_dir"], cfg["meds_dir"], cfg["out_dir"],
                            allow_ungated=bool(cfg.get("allow_ungated")))
        result = run_stage(job, engine, str(cfg.get("stage", "all")), cfg.get("shard"),
                           show_progress=bool(cfg.get("progress", True)))
    except (ValueError, FileNotFoundError, GateError) as e:
        log.error("%s", e)
        return 2
    if result is not None:
        print(f"\nPopulation forecast: {result['counts'].get('at_risk', 0)} patients at risk\n"
              f"Summary: {job.out / 'summary.md'} (chart: {job.out / 'summary.png'}, JSON: {job.out / 'aggregates.json'})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("forecast", help="forecast a whole MEDS population (risks, expected counts by group)",
                              description=__doc__.split("\n\n")[0],
                              epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of configs/forecast.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("forecast", overrides=list(args.overrides))
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as e:
        log.error("forecast: %s", e)
        return 2
    return run_config(resolved)
