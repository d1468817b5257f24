"""`SimulatorConfig`: what cohort to simulate, validated early (STYLE.md, direction 5)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from nightingale.config import build, check_ints

#: Length of one simulation step in seconds: a twelfth of a Julian year (30.4375 days).
STEP_SECONDS = 2_629_800
STEP_DAYS = STEP_SECONDS / 86_400.0


def _parse_date(value: Any, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"SimulatorConfig.{name}: {value!r} is not an ISO date (YYYY-MM-DD)") from None


@dataclass(frozen=True)
class SimulatorConfig:
    """A simulated UK primary + secondary care cohort.

    subjects: number of simulated people (before any opt-out).
    seed: master seed; shard `k` draws from `np.random.SeedSequence([seed, k])`, so the output is
        the same whatever the number of workers.
    shard_size: subjects per simulated batch; batch `k` is written as `data/{split}/k.parquet`.
    start_date / end_date: the observation window (GP records from `start_date`, or birth or a later
        registration; follow-up to `end_date` inclusive or death).
    later_registrant_share / born_in_window_share: shares of subjects who register with a GP after
        `start_date` (movers, migrants) or are born inside the window.
    Site differences (federated/simulated sites; all off by default, which keeps the bytes of
    earlier versions):
    age_tilt: tilts the age pyramid, shares x exp(tilt x band / last band); > 0 an older population.
    deprivation_tilt: deprivation quintile q drawn with weight exp(tilt x (3 - q)); > 0 more deprived.
    code_stems: the site codes diagnoses to 3-character ICD-10 stems (``ICD10//E11.9 -> ICD10//E11``).
    id_offset: added to every subject id (sites of one simulated federation get disjoint ids).
    """

    subjects: int = 10_000
    seed: int = 0
    shard_size: int = 10_000
    start_date: dt.date = dt.date(2005, 1, 1)
    end_date: dt.date = dt.date(2025, 12, 31)
    later_registrant_share: float = 0.12
    born_in_window_share: float = 0.16
    age_tilt: float = 0.0
    deprivation_tilt: float = 0.0
    code_stems: bool = False
    id_offset: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_date", _parse_date(self.start_date, "start_date"))
        object.__setattr__(self, "end_date", _parse_date(self.end_date, "end_date"))
        check_ints(self, ("subjects", "shard_size"), "SimulatorConfig")
        check_ints(self, ("seed", "id_offset"), "SimulatorConfig", low=0)
        for name in ("age_tilt", "deprivation_tilt"):
            if not -5.0 <= float(getattr(self, name)) <= 5.0:
                raise ValueError(f"SimulatorConfig.{name}: within [-5, 5], got {getattr(self, name)!r}")
        if not isinstance(self.code_stems, bool):
            raise ValueError(f"SimulatorConfig.code_stems: true or false, got {self.code_stems!r}")
        if self.end_date <= self.start_date:
            raise ValueError(
                f"SimulatorConfig.end_date: {self.end_date} must be after start_date {self.start_date}"
            )
        if self.start_date.year < 1920 or self.end_date.year > 2100:
            raise ValueError("SimulatorConfig.start_date/end_date: must lie within 1920-2100")
        for name in ("later_registrant_share", "born_in_window_share"):
            v = getattr(self, name)
            if not 0.0 <= float(v) < 0.5:
                raise ValueError(f"SimulatorConfig.{name}: must be in [0, 0.5), got {v!r}")

    # --- derived quantities -------------------------------------------------------------------
    @property
    def n_shards(self) -> int:
        return -(-self.subjects // self.shard_size)

    def shard_subjects(self, shard: int) -> int:
        """How many subjects batch `shard` holds (the last one may be short)."""
        return min(self.shard_size, self.subjects - shard * self.shard_size)

    @property
    def window_days(self) -> float:
        """Length of the observation window in days ([start_date, end_date + 1 day))."""
        return float((self.end_date - self.start_date).days + 1)

    @property
    def n_steps(self) -> int:
        """Number of steps covering the window; the last one is clipped at the window end."""
        return int(-(-self.window_days // STEP_DAYS))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["start_date"] = self.start_date.isoformat()
        d["end_date"] = self.end_date.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimulatorConfig:
        return build(cls, d, "SimulatorConfig")
