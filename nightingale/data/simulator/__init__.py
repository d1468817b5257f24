"""The built-in cohort simulator: UK-flavoured primary and secondary care timelines as MEDS,
with a ground-truth oracle of outcome risks (see `oracle`).

    nightingale simulate --subjects 10000 --seed 0 --out data/sim
"""

from nightingale.data.simulator.config import SimulatorConfig
from nightingale.data.simulator.simulate import SimulationSummary, simulate

__all__ = ["SimulationSummary", "SimulatorConfig", "simulate"]
