"""PopulationConfig: what a population forecast job reads (configs/forecast.yaml), checked early.

Every mistake here is a ValueError naming the field (`forecast.groups[2]`, ...), raised before a
shard is read or an engine started (`check_against_data` does the checks that need the dataset).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from nightingale import schema as S
from nightingale.config import build, check_choice, check_ints
from nightingale.inference.forecast import ESTIMATORS, ForecastConfig

LAST_EVENT = "last"  # prediction_time: each subject's last event
AGE_BAND, SEX = "age_band", "sex"
WHERE = "forecast"


def parse_time(value: Any, field: str = f"{WHERE}.prediction_time") -> dt.datetime | None:
    """None for `LAST_EVENT` (or None); else a naive datetime from a date or an ISO 8601 string."""
    if value is None or value == LAST_EVENT:
        return None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None) if value.tzinfo is None else value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    try:
        return parse_time(dt.datetime.fromisoformat(str(value)), field)
    except ValueError:
        raise ValueError(f"{field}: {value!r} is neither {LAST_EVENT!r} nor an ISO 8601 date") from None


@dataclasses.dataclass(frozen=True)
class PopulationConfig:
    """A population forecast over one MEDS dataset.

    outcomes: name -> codes (exact, or prefixes ending in `*`); horizons_days: counted from the
    prediction time; prediction_time: an ISO date (every subject alive with history then) or
    "last" (each subject's last event); split: train | tuning | held_out, or None for all
    subjects; groups: `age_band`, `sex`, a static code family (e.g. IMD, ETHNICITY) or an extra
    column of the data (e.g. a practice/site column); age_bands: lower edges in years;
    rollouts / estimator / max_new_tokens / reserve_tokens / seed: as ForecastConfig; batch:
    prompts per engine call; small_count_threshold: aggregate counts below it are suppressed;
    backtest: also count what happened within each horizon (needs data that continues past it);
    recalibrate: scale the expected counts by observed / expected on the same population one
    longest horizon before the prediction time (calibrate.py; needs a fixed date and data that
    go back that far); oracle: also the simulator's true expected counts (simulated data only)."""

    outcomes: Mapping[str, tuple[str, ...]]
    horizons_days: tuple[float, ...] = (365.0,)
    prediction_time: dt.datetime | None = None
    split: str | None = None
    groups: tuple[str, ...] = (AGE_BAND, SEX)
    age_bands: tuple[int, ...] = (0, 18, 45, 65, 75, 85)
    rollouts: int = 8
    estimator: str = "probability"
    max_new_tokens: int = 2048
    reserve_tokens: int = 64
    seed: int = 0
    batch: int = 256
    small_count_threshold: int = 10
    backtest: bool = False
    recalibrate: bool = False
    oracle: bool = False
    oracle_samples: int = 100

    def __post_init__(self) -> None:
        if not self.outcomes:
            raise ValueError(f"{WHERE}.outcomes: at least one outcome (name: [codes])")
        for name, codes in self.outcomes.items():
            if not codes or any(not isinstance(c, str) or not c.strip() for c in codes):
                raise ValueError(f"{WHERE}.outcomes.{name}: a non-empty list of codes, got {codes!r}")
        if not self.horizons_days or any(not float(h) > 0 for h in self.horizons_days):
            raise ValueError(f"{WHERE}.horizons_days: positive days, got {list(self.horizons_days)}")
        if self.split is not None:
            check_choice(f"{WHERE}.split", self.split, S.SPLITS)
        for i, g in enumerate(self.groups):
            if not isinstance(g, str) or not g.strip():
                raise ValueError(f"{WHERE}.groups[{i}]: a group name, got {g!r}")
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f"{WHERE}.groups: each group once, got {list(self.groups)}")
        edges = list(self.age_bands)
        if not edges or edges[0] != 0 or edges != sorted(set(edges)):
            raise ValueError(f"{WHERE}.age_bands: increasing lower edges in years starting at 0, got {edges}")
        check_ints(self, ("rollouts", "max_new_tokens", "reserve_tokens", "batch", "oracle_samples"), WHERE)
        check_ints(self, ("small_count_threshold",), WHERE, low=0)
        check_choice(f"{WHERE}.estimator", self.estimator, ESTIMATORS)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> PopulationConfig:
        m = dict(m)
        outcomes = {str(k): tuple(v) if not isinstance(v, str) else (v,) for k, v in dict(m.get("outcomes") or {}).items()}
        converted = dict(
            outcomes=outcomes,
            prediction_time=parse_time(m.get("prediction_time")),
            horizons_days=tuple(float(h) for h in (m.get("horizons_days") or cls.horizons_days)),
            groups=tuple(m.get("groups") if m.get("groups") is not None else cls.groups),
            age_bands=tuple(int(a) for a in (m.get("age_bands") or cls.age_bands)),
        )
        return build(cls, m, WHERE, **converted)

    def calibration_time(self) -> dt.datetime | None:
        """t_c = t - the longest horizon: the window (t_c, t_c + h] ends by the prediction time."""
        if self.prediction_time is None:
            return None
        return self.prediction_time - dt.timedelta(days=max(self.horizons_days))

    def calibration_config(self) -> PopulationConfig:
        """The same forecast at t_c with what then happened counted (the calibration window)."""
        return dataclasses.replace(self, prediction_time=self.calibration_time(), backtest=True, recalibrate=False,
                                   oracle=False)

    def forecast_config(self) -> ForecastConfig:
        return ForecastConfig(estimator=self.estimator, rollouts=self.rollouts, max_new_tokens=self.max_new_tokens,
                              reserve_tokens=self.reserve_tokens, seed=self.seed)

    def age_labels(self) -> list[str]:
        """'0-17', '18-44', ..., '85+' from the lower edges."""
        e = list(self.age_bands)
        return [f"{lo}-{hi - 1}" for lo, hi in zip(e, e[1:])] + [f"{e[-1]}+"]

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["outcomes"] = {k: list(v) for k, v in self.outcomes.items()}
        d["prediction_time"] = LAST_EVENT if self.prediction_time is None else self.prediction_time.isoformat()
        return d
