"""A reference dataset's calendar, which a synthetic cohort follows: when its records start,
at what age, and until when they are followed (`calendar_window`). A cohort patient takes one
record's start date and the 5-year band of its age then (cohorts.CohortSpec), and is followed to
the end of follow-up where the data state it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import polars as pl

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset, observation_end


@dataclasses.dataclass(frozen=True)
class Calendar:
    """A dataset's calendar (`calendar_window`): its records' first events (birth aside), sorted,
    the age in years at each (NaN where the record has no birth), the end of follow-up, and
    whether that end is the dataset's stated observation end (every living subject is followed
    to it) rather than merely its last event."""

    starts: tuple[dt.datetime, ...]
    ages: tuple[float, ...]
    end: dt.datetime
    observed_end: bool

    def until(self, end: dt.datetime) -> Calendar:
        """The starts before `end` (at least one: the first start, for a cohort to begin on)."""
        keep = [k for k, t in enumerate(self.starts) if t < end] or [0]
        return dataclasses.replace(self, starts=tuple(self.starts[k] for k in keep),
                                   ages=tuple(self.ages[k] for k in keep), end=end)

    def spec_fields(self) -> dict:
        """The CohortSpec fields that make a cohort follow this calendar."""
        return {"start_dates": self.starts, "start_ages": self.ages, "end_date": self.end,
                "follow_to_end": self.observed_end}


def calendar_window(meds_dir: str | Path, split: str | None = S.TRAIN) -> Calendar:
    """A dataset's calendar (see `Calendar`) over the subjects of `split`: each record's first
    event (birth aside) and the age then, and the end of follow-up (dataset.json's
    observation_end, else the last event); starts before the end only."""
    ds = MEDSDataset(meds_dir)
    events = ds.scan().filter(pl.col(S.TIME).is_not_null())
    if split is not None:
        events = events.filter(pl.col(S.SUBJECT_ID).is_in(ds.subjects(split).implode()))
    is_birth = pl.col(S.CODE) == S.BIRTH_CODE
    first = (events.group_by(S.SUBJECT_ID)
             .agg(pl.col(S.TIME).filter(~is_birth).min().alias("start"), pl.col(S.TIME).filter(is_birth).min().alias("birth"))
             .filter(pl.col("start").is_not_null())
             .select("start", ((pl.col("start") - pl.col("birth")).dt.total_seconds() / (365.25 * 86_400)).alias("age"))
             .sort("start", "age", nulls_last=True)
             .collect())
    if not first.height:
        raise ValueError(f"{meds_dir}: no timed events{'' if split is None else f' in the {split} split'}")
    stated = observation_end(ds)
    end = stated or events.filter(~is_birth).select(pl.col(S.TIME).max()).collect().item()
    kept = first.filter(pl.col("start") < end)  # a record that starts on the last day has no room
    if not kept.height:
        return Calendar((first["start"][0] - dt.timedelta(days=1),), (float("nan"),), end, stated is not None)
    return Calendar(tuple(kept["start"].to_list()), tuple(kept["age"].fill_null(float("nan")).to_list()), end,
                    stated is not None)
