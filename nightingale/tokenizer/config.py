"""TokenizerConfig: every knob of the vocabulary, validated early (STYLE.md, direction 5)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from nightingale.config import build, check_ints

# Seconds per unit of the time-ladder strings; a month is 1/12 of a Julian year.
_YEAR_S = 365.25 * 86400
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": _YEAR_S / 12, "y": _YEAR_S}
_DURATION = re.compile(r"^(\d+)(s|m|h|d|w|mo|y)$")

DEFAULT_TIME_LADDER = (
    "5m", "15m", "1h", "2h", "6h", "12h", "1d", "3d", "1w", "2w", "1mo", "3mo", "6mo", "1y",
)  # fmt: skip


def parse_duration(text: str) -> float:
    """Seconds in a ladder string such as ``15m``, ``2h``, ``3mo`` or ``1y``.

    >>> parse_duration("15m"), parse_duration("1d")
    (900.0, 86400.0)
    """
    match = _DURATION.match(str(text).strip())
    if not match:
        raise ValueError(
            f"time_ladder: cannot read duration {text!r}; use <int><unit> with unit in "
            f"{sorted(UNIT_SECONDS)}, e.g. '15m', '1d', '3mo'"
        )
    return float(int(match.group(1)) * UNIT_SECONDS[match.group(2)])


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """How a vocabulary is fitted (configs/tokenizer/default.yaml mirrors these fields).

    min_count: train events a code needs for its own token; rarer codes fall back to a parent.
    n_value_bins: quantile bins per numeric code (10 = deciles), fitted on train values.
    min_value_count: finite train values a code needs before it gets bins (else values dropped).
    max_values_per_code: values kept per code per shard (evenly spaced order statistics) to fit
        the quantiles, so fitting memory is bounded whatever the data size.
    time_ladder: gap tokens, ascending; a gap gets the largest rung <= it; gaps shorter than the
        first rung get no token; gaps of several top rungs repeat the top rung.
    age_band_years / max_age_years: width of the age-band tokens, and the open last band.
    stem_length: characters of the last code segment kept by the stem fallback
        (``DIAGNOSIS//ICD//9//4019 -> DIAGNOSIS//ICD//9//401``); 0 disables it.
    summary_tokens: when a record is longer than a window or prompt, up to this many distinct
        code tokens from what fell out of it (diagnoses, drugs, admissions: codes without values)
        are kept after the age token (tokenizer/summary.py); 0 disables the summary.
    age_in_timeline: an age-band token inside the body wherever a subject's band changes (before
        the first event in the new band), so the model always sees the current age, not only the
        band at the window's start; off for vocabularies fitted before it existed.
    """

    min_count: int = 5
    n_value_bins: int = 10
    min_value_count: int = 10
    max_values_per_code: int = 10_000
    time_ladder: tuple[str, ...] = DEFAULT_TIME_LADDER
    age_band_years: int = 5
    max_age_years: int = 110
    stem_length: int = 3
    summary_tokens: int = 32
    age_in_timeline: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "time_ladder", tuple(str(t) for t in self.time_ladder))
        check_ints(self, ("min_count", "n_value_bins", "min_value_count", "age_band_years", "max_age_years"),
                   "TokenizerConfig")
        check_ints(self, ("max_values_per_code",), "TokenizerConfig", low=2)
        check_ints(self, ("stem_length", "summary_tokens"), "TokenizerConfig", low=0)
        if not isinstance(self.age_in_timeline, bool):
            raise ValueError(f"TokenizerConfig.age_in_timeline: must be true or false, got {self.age_in_timeline!r}")
        if self.n_value_bins > 100:
            raise ValueError(f"TokenizerConfig.n_value_bins: at most 100, got {self.n_value_bins}")
        if not self.time_ladder:
            raise ValueError("TokenizerConfig.time_ladder: needs at least one duration")
        seconds = self.ladder_seconds()
        if any(b <= a for a, b in zip(seconds, seconds[1:])):
            raise ValueError(
                f"TokenizerConfig.time_ladder: durations must be strictly ascending, got "
                f"{list(self.time_ladder)}"
            )

    def ladder_seconds(self) -> list[float]:
        """The time ladder in seconds."""
        return [parse_duration(t) for t in self.time_ladder]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> TokenizerConfig:
        """Build from a plain mapping (e.g. a Hydra node); unknown keys are an error."""
        return build(cls, mapping, "TokenizerConfig")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["time_ladder"] = list(self.time_ladder)
        return out
