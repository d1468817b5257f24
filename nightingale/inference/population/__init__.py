"""Population forecasts for planners: whole-population jobs over a MEDS dataset, per-patient risks
and aggregates by group (see job.py for the folder a job writes)."""

from nightingale.inference.population.config import PopulationConfig
from nightingale.inference.population.job import PopulationJob, run_stage

__all__ = ["PopulationConfig", "PopulationJob", "run_stage"]
