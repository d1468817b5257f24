"""What MEDS validation (`validate.py`) finds: located errors and warnings, the dataset summary, the
report holding them, and `Findings`, which the checks record into."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NIGHTINGALE_CHECK = "nightingale"  # the checks of validate*.py
MEDS_CHECK = "meds"  # the `meds` package's schema validation (validate_reference.py)
REFERENCE_MODES = ("error", "warn", "off")

# Working columns the shard, split and summary checks share.
ROW = "__row"  # row index inside a shard (0-based), added to every scan
SHARD = "__shard"  # index of the shard in the sorted shard list
N_EVENTS = "n_events"
MAX_EXAMPLES = 5  # values quoted in a message


def _locate(file: str | None, column: str | None, row: int | None) -> str:
    parts = [file] if file else []
    if column:
        parts.append(f"column {column!r}")
    if row is not None:
        parts.append(f"row {row}")
    return ", ".join(parts)


class MEDSValidationError(ValueError):
    """A MEDS dataset breaks the standard: where (file relative to the root, column, 0-based row),
    what was expected, and which check found it (`nightingale` or the `meds` reference)."""

    def __init__(self, message: str, *, file: str | None = None, column: str | None = None,
                 row: int | None = None, check: str = NIGHTINGALE_CHECK):
        super().__init__(message)
        self.message, self.file, self.column, self.row = message, file, column, row
        self.check = check

    def __str__(self) -> str:
        where = _locate(self.file, self.column, self.row)
        text = f"{where}: {self.message}" if where else self.message
        return f"[{self.check}] {text}" if self.check != NIGHTINGALE_CHECK else text

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "column": self.column, "row": self.row, "message": self.message,
                "check": self.check}


@dataclass(frozen=True)
class ValidationWarning:
    """Something odd but usable; located like `MEDSValidationError`."""

    message: str
    file: str | None = None
    column: str | None = None
    row: int | None = None
    check: str = NIGHTINGALE_CHECK

    def __str__(self) -> str:
        where = _locate(self.file, self.column, self.row)
        text = f"{where}: {self.message}" if where else self.message
        return f"[{self.check}] {text}" if self.check != NIGHTINGALE_CHECK else text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DatasetSummary:
    """Counts over the whole dataset. `events_per_subject` has min/median/mean/p95/max (linear
    interpolation for the quantiles); `subjects_per_split` counts data subjects by their split."""

    n_shards: int
    n_subjects: int
    n_events: int
    n_static_events: int  # rows with a null time (static facts such as sex)
    n_timed_events: int
    n_unique_codes: int
    n_numeric_values: int  # rows with a non-null numeric_value
    time_min: dt.datetime | None
    time_max: dt.datetime | None
    events_per_subject: dict[str, float]
    subjects_per_split: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("time_min", "time_max"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


@dataclass
class ValidationReport:
    root: Path
    errors: list[MEDSValidationError] = field(default_factory=list)
    warnings: list[ValidationWarning] = field(default_factory=list)
    summary: DatasetSummary | None = None
    reference: str = "error"  # how the `meds` schema findings were treated (REFERENCE_MODES)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_invalid(self) -> None:
        """Raise the first error (the others are in `errors`)."""
        if self.errors:
            raise self.errors[0]

    def by_check(self, check: str) -> list[MEDSValidationError]:
        return [e for e in self.errors if e.check == check]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "valid": self.ok,
            "meds_schema": self.reference,
            "checks": {c: {"errors": len(self.by_check(c)),
                           "warnings": sum(w.check == c for w in self.warnings)}
                       for c in (NIGHTINGALE_CHECK, MEDS_CHECK)},
            "errors": [e.to_dict() for e in self.errors],
            "warnings": [w.to_dict() for w in self.warnings],
            "summary": self.summary.to_dict() if self.summary else None,
        }


class Findings:
    """Records the checks' errors and warnings into `report`; with `fail_fast` an error is raised
    at once instead."""

    def __init__(self, report: ValidationReport, *, fail_fast: bool):
        self.report, self.fail_fast = report, fail_fast

    def error(self, message: str, file: str | None = None, column: str | None = None,
              row: int | None = None) -> None:
        err = MEDSValidationError(message, file=file, column=column, row=row)
        log.debug("MEDS error: %s", err)
        if self.fail_fast:
            raise err
        self.report.errors.append(err)

    def warn(self, message: str, file: str | None = None, column: str | None = None,
             row: int | None = None) -> None:
        self.report.warnings.append(ValidationWarning(message, file, column, row))
