"""Request and response bodies of the HTTP API (pydantic v2), apart from the routes.

Static bounds here are absolute sanity caps that also document the schema (and bound what a
fuzzer sends); the deployment's own, usually tighter, limits come from `Limits` and are checked
in the routes, with the same 422 shape naming the field. Unknown fields are rejected (a typo in
a field name must not silently fall back to a default).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

Code = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S+$", description="A MEDS code, e.g. ICD10//I21.9")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


def _utc(t: dt.datetime) -> dt.datetime:
    """Naive UTC, the way prompts read event times (aware times are converted, naive ones kept)."""
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo is not None else t


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EventIn(_In):
    time: dt.datetime = Field(description="Event time (ISO 8601); time zones are converted to UTC")
    code: Code
    numeric_value: float | None = Field(None, description="Optional numeric value (lab result, ...)")


class PatientIn(_In):
    ref: str | None = Field(
        None, max_length=64, description="Caller's label, echoed back in the answer; never logged or stored"
    )
    sex: str | None = Field(None, min_length=1, max_length=16, pattern=r"^\S+$", description="Sex code suffix, e.g. F or M (SEX//F)")
    birth_date: dt.date | None = None
    static_codes: list[Code] = Field(default_factory=list, max_length=32, description="Other static codes, e.g. ETHNICITY//White")
    events: list[EventIn] = Field(min_length=1, max_length=100_000)
    prediction_time: dt.datetime | None = Field(
        None, description="Only events at or before it are used; horizons count from the last of them"
    )
    _reordered: bool = PrivateAttr(False)

    @property
    def events_reordered(self) -> bool:
        """Whether the events arrived out of time order (they are sorted; the answer says so)."""
        return self._reordered

    @model_validator(mode="after")
    def _timeline(self) -> PatientIn:
        """A timeline that could have happened: born in the past, no event before birth, in order."""
        if self.birth_date is not None:
            today = dt.datetime.now(dt.timezone.utc).date()
            if self.birth_date > today:
                raise ValueError(f"birth_date: {self.birth_date} is in the future (today is {today})")
            for i, e in enumerate(self.events):
                if _utc(e.time).date() < self.birth_date:
                    raise ValueError(f"events[{i}].time: {e.time.isoformat()} is before birth_date {self.birth_date}")
        times = [_utc(e.time) for e in self.events]
        if any(b < a for a, b in zip(times, times[1:])):
            order = sorted(range(len(times)), key=times.__getitem__)
            self.events = [self.events[i] for i in order]
            self._reordered = True
        return self


class NextEventsRequest(_In):
    patient: PatientIn
    top_k: int = Field(10, ge=1, le=1000)


class OutcomeIn(_In):
    name: str = Field(min_length=1, max_length=64)
    codes: list[Code] = Field(min_length=1, max_length=1000, description="Codes; a trailing * matches a prefix (ICD10//I2*)")


class ForecastRequest(_In):
    patients: list[PatientIn] = Field(min_length=1, max_length=100_000)
    outcomes: list[OutcomeIn] = Field(min_length=1, max_length=100)
    horizons_days: list[Annotated[float, Field(gt=0, le=36525)]] = Field(min_length=1, max_length=20)
    rollouts: int | None = Field(None, ge=1, le=100_000, description="Monte-Carlo rollouts per patient")
    estimator: Literal["probability", "count"] | None = Field(
        None, description="probability: the model's own outcome probabilities summed along rollouts "
        "(low variance, no ties); count: share of rollouts with the outcome. Default: the server's.")
    seed: Seed | None = None


class CohortRequest(_In):
    n_patients: int = Field(ge=1, le=10_000_000)
    sex: str | None = Field(None, min_length=1, max_length=16, pattern=r"^\S+$")
    age_min: float | None = Field(None, ge=0, le=150)
    age_max: float | None = Field(None, gt=0, le=150)
    starting_code: Code | None = None
    start_date: dt.date | dt.datetime | None = Field(
        None, description="Date of each patient's first event (default: drawn, with the age band then, from the "
        "reference data's own record starts, ending by its end of follow-up, where the server has one; else 2020-01-01)")
    end_date: dt.date | dt.datetime | None = Field(None, description="Every living patient is followed to this date: a "
                                                   "timeline ends at death or where its next event would pass it "
                                                   "(default: the reference data's end of follow-up, else the model decides)")
    seed: Seed = 0


class PopulationForecastRequest(_In):
    dataset: str = Field(min_length=1, max_length=64, description="A dataset the operator registered (serve.datasets)")
    outcomes: list[OutcomeIn] = Field(min_length=1, max_length=100)
    horizons_days: list[Annotated[float, Field(gt=0, le=36525)]] = Field(min_length=1, max_length=20)
    prediction_time: dt.date | dt.datetime | None = Field(
        None, description="Forecast everyone alive with history at this date; null: each patient's last event")
    split: Literal["train", "tuning", "held_out"] | None = Field(None, description="Only this split's subjects")
    groups: list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^\S+$")]] = Field(
        default_factory=lambda: ["age_band", "sex"], max_length=32,
        description="age_band, sex, a static code family (IMD, ETHNICITY) or a column of the dataset")
    rollouts: int | None = Field(None, ge=1, le=100_000, description="Monte-Carlo rollouts per patient")
    backtest: bool = Field(False, description="Also count what happened within each horizon (data must continue past it)")
    recalibrate: bool = Field(False, description="Scale the expected counts by observed / expected on the same "
                              "population one longest horizon before prediction_time (needs a date)")
    seed: Seed | None = None


# --- responses ---------------------------------------------------------------------------------------
class CodeProbability(BaseModel):
    code: str
    probability: float


class TimeBinOut(BaseModel):
    label: str
    lower_days: float
    upper_days: float | None
    probability: float


class NextEventsResponse(BaseModel):
    ref: str | None
    events: list[CodeProbability]
    time_to_next_event: list[TimeBinOut]
    p_death_next: float
    p_end_of_record: float
    unresolved: float
    codes_resolved: dict[str, int]
    events_reordered: bool = Field(False, description="The events arrived out of time order and were sorted")


INTERVALS = {
    "probability": "95% Student-t over rollouts, clipped to [0, 1], none with one rollout (patients); "
                   "95% normal prediction interval (population)",
    "count": "95% Wilson score (patients); 95% normal prediction interval (population)",
}


class RiskOut(BaseModel):
    outcome: str
    horizon_days: float = Field(description="Counted from the prediction time (or the last event)")
    probability: float
    lower: float | None = Field(description="95% Monte-Carlo interval of the model's probability")
    upper: float | None
    rollouts: int = Field(description="Rollouts behind this figure")
    truncated: int = Field(description="Rollouts that spent their token budget before the horizon")
    estimator: Literal["probability", "count"]


class PatientForecast(BaseModel):
    ref: str | None
    risks: list[RiskOut]
    codes_resolved: dict[str, int]
    events_reordered: bool = Field(False, description="The events arrived out of time order and were sorted")


class PopulationOut(BaseModel):
    outcome: str
    horizon_days: float
    patients: int
    expected_count: float | None
    lower: float | None
    upper: float | None
    suppressed: bool
    threshold: int


class ForecastResponse(BaseModel):
    patients: list[PatientForecast]
    population: list[PopulationOut]
    rollouts: int
    estimator: Literal["probability", "count"]
    interval: str


class CohortJob(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    n_patients: int
    done_patients: int
    created_at: str
    report: dict | None = None
    error: str | None = None
    downloads: dict[str, str] | None = Field(None, description="Once the cohort passed its release check")
    release: dict | None = Field(None, description="The release check: released, each check, and why not")
    evidence: dict | None = Field(None, description="Headline fidelity, privacy and utility figures (the "
                                  "download holds them all, with plots)")


class PopulationJobOut(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    dataset: str
    created_at: str
    shards: int
    done_shards: int
    done_patients: int = Field(description="Patients forecast so far")
    error: str | None = None
    results: dict | None = Field(None, description="When done: counts, the interval's method, gate, and one entry per "
                                 "cell (outcome, horizon_days, group, value, patients, expected, lower, upper, suppressed); "
                                 "with recalibrate, each outcome's ratio; with backtest, the intervals' coverage")
    downloads: dict[str, str] | None = None
    page: str | None = Field(None, description="The job's page for a browser (/population/{id})")


class ModelInfo(BaseModel):
    model_dir: str
    card: dict
    gate: dict
    vocabulary_size: int
    max_model_len: int
    dtype: str


class ErrorOut(BaseModel):
    detail: str | list
