"""Reading an OMOP CDM database: a folder of table files or a DuckDB file, in any name case.

A CDM folder holds one file a table, named for the table in any case, as CSV, gzipped CSV or
parquet (``PERSON.csv.gz``, ``person.csv``, ``person.parquet``); a DuckDB file (``.duckdb`` or
``.db``) holds the tables in its ``main`` schema. Column names are matched case-insensitively and
come back lower-case. CSV is read with every column as text; `nightingale.data.omop.parse` turns
text, dates and numbers into typed columns and names the first bad value it meets.

The table specs below name the columns the importer reads from CDM 5.3 and 5.4
(https://ohdsi.github.io/CommonDataModel/): required columns must be present (their absence is an
error naming the table and the columns found); optional ones become null when absent, which is how
one spec serves both versions.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv.gz", ".csv", ".parquet")
DUCKDB_SUFFIXES = (".duckdb", ".db")


class OMOPInputError(ValueError):
    """The OMOP source cannot be converted; the message names the table, column or file."""


@dataclass(frozen=True)
class TableSpec:
    """Columns the importer reads from one CDM table (lower-case names)."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventSpec:
    """How one clinical table becomes events: its concept, time and source-value columns.

    `kind` selects the value handling: ``plain`` (code only), ``visit`` (start and end events),
    ``measurement`` (number, value concept, unit) and ``observation`` (number, string, concept,
    unit). `prefix` names the table in fallback codes (``SOURCE//<prefix>//<source value>``).
    """

    table: str
    prefix: str
    concept: str
    date: str
    datetime: str
    source_value: str | None
    kind: str = "plain"
    end_date: str | None = None
    end_datetime: str | None = None

    def spec(self) -> TableSpec:
        optional = [self.datetime, self.source_value, self.end_date, self.end_datetime]
        optional += list(_VALUE_COLUMNS.get(self.kind, ()))
        return TableSpec(
            self.table,
            ("person_id", self.concept, self.date),
            tuple(c for c in optional if c is not None),
        )


_VALUE_COLUMNS = {
    "measurement": (
        "value_as_number",
        "value_as_concept_id",
        "unit_concept_id",
        "unit_source_value",
    ),
    "observation": (
        "value_as_number",
        "value_as_string",
        "value_as_concept_id",
        "unit_concept_id",
        "unit_source_value",
    ),
}

PERSON = TableSpec(
    "person",
    ("person_id", "gender_concept_id", "year_of_birth"),
    ("month_of_birth", "day_of_birth", "birth_datetime", "race_concept_id", "ethnicity_concept_id"),
)
DEATH = TableSpec(
    "death",
    ("person_id", "death_date"),
    ("death_datetime", "cause_concept_id", "cause_source_value"),
)
CONCEPT = TableSpec("concept", ("concept_id", "vocabulary_id", "concept_code"), ("concept_name",))
CONCEPT_ANCESTOR = TableSpec(
    "concept_ancestor",
    ("ancestor_concept_id", "descendant_concept_id", "min_levels_of_separation"),
)

# In the order their events sort at equal times (after MEDS_BIRTH, before MEDS_DEATH).
VISIT = EventSpec(
    "visit_occurrence", "visit", "visit_concept_id", "visit_start_date", "visit_start_datetime",
    None, kind="visit", end_date="visit_end_date", end_datetime="visit_end_datetime",
)  # fmt: skip
EVENT_TABLES: tuple[EventSpec, ...] = (
    VISIT,
    EventSpec(
        "condition_occurrence", "condition", "condition_concept_id", "condition_start_date",
        "condition_start_datetime", "condition_source_value",
    ),
    EventSpec(
        "procedure_occurrence", "procedure", "procedure_concept_id", "procedure_date",
        "procedure_datetime", "procedure_source_value",
    ),
    EventSpec(
        "drug_exposure", "drug", "drug_concept_id", "drug_exposure_start_date",
        "drug_exposure_start_datetime", "drug_source_value",
    ),
    EventSpec(
        "measurement", "measurement", "measurement_concept_id", "measurement_date",
        "measurement_datetime", "measurement_source_value", kind="measurement",
    ),
    EventSpec(
        "observation", "observation", "observation_concept_id", "observation_date",
        "observation_datetime", "observation_source_value", kind="observation",
    ),
)  # fmt: skip

# Columns that exist in only one CDM version, used to tell them apart when cdm_source is silent.
VERSION_MARKERS: dict[str, dict[str, tuple[str, ...]]] = {
    "5.4": {
        "visit_occurrence": ("admitted_from_concept_id", "discharged_to_concept_id"),
        "procedure_occurrence": ("procedure_end_date",),
        "measurement": ("unit_source_concept_id", "measurement_event_id"),
    },
    "5.3": {
        "visit_occurrence": ("admitting_source_concept_id", "discharge_to_concept_id"),
    },
}


def _table_name(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in TABLE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


class CDMSource:
    """An OMOP CDM database on disk; open with `CDMSource.open(path)` and use as a context."""

    def __init__(self, path: Path):
        self.path = path
        self._files: dict[str, Path] = {}
        self._con = None
        self._duck_names: dict[str, str] = {}
        if path.is_dir():
            for f in sorted(path.iterdir()):
                table = _table_name(f) if f.is_file() else None
                if table is None:
                    continue
                if table in self._files:
                    raise OMOPInputError(
                        f"OMOP CDM folder {path}: table {table!r} is in two files "
                        f"({self._files[table].name}, {f.name}); keep one"
                    )
                self._files[table] = f
        elif path.is_file() and path.name.lower().endswith(DUCKDB_SUFFIXES):
            import duckdb

            try:
                self._con = duckdb.connect(str(path), read_only=True)
                rows = self._con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
                ).fetchall()
            except duckdb.Error as e:
                raise OMOPInputError(f"OMOP DuckDB file {path}: cannot open it ({e})") from e
            self._duck_names = {r[0].lower(): r[0] for r in rows}
        elif path.exists():
            raise OMOPInputError(
                f"OMOP source {path}: expected a folder of table files ({', '.join(TABLE_SUFFIXES)}) "
                f"or a DuckDB file ({', '.join(DUCKDB_SUFFIXES)})"
            )
        else:
            raise OMOPInputError(f"OMOP source {path}: does not exist")

    @classmethod
    def open(cls, path: str | Path) -> CDMSource:
        return cls(Path(path))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    @property
    def kind(self) -> str:
        return "duckdb" if self._duck_names or self._con is not None else "folder"

    def tables(self) -> list[str]:
        return sorted(self._duck_names or self._files)

    def has(self, table: str) -> bool:
        return table in self._files or table in self._duck_names

    def where(self, table: str) -> str:
        """Human-readable location of a table, for error messages."""
        if table in self._files:
            return f"table {table} ({self._files[table]})"
        return f"table {table} (in {self.path})"

    def _raw_columns(self, table: str) -> list[str]:
        if table in self._files:
            f = self._files[table]
            try:
                return _scan_file(f).collect_schema().names()
            except (pl.exceptions.PolarsError, OSError) as e:
                raise OMOPInputError(f"{self.where(table)}: cannot read the file ({e})") from e
        rows = self._con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
            [self._duck_names[table]],
        ).fetchall()
        return [r[0] for r in rows]

    def columns(self, table: str) -> list[str]:
        """The table's column names, lower-case."""
        return [c.lower() for c in self._raw_columns(table)]

    def read(self, spec: TableSpec) -> pl.LazyFrame:
        """The spec's columns of a table (lower-case names); absent optional columns are null.

        Raises OMOPInputError when the table or a required column is missing.
        """
        if not self.has(spec.name):
            raise OMOPInputError(
                f"OMOP source {self.path}: required table {spec.name!r} is missing; "
                f"found tables {self.tables()}"
            )
        raw = self._raw_columns(spec.name)
        by_lower = {c.lower(): c for c in raw}
        missing = [c for c in spec.required if c not in by_lower]
        if missing:
            raise OMOPInputError(
                f"{self.where(spec.name)}: required column(s) {missing} missing; "
                f"found columns {sorted(by_lower)}"
            )
        present = [c for c in (*spec.required, *spec.optional) if c in by_lower]
        if spec.name in self._files:
            lf = _scan_file(self._files[spec.name]).select(
                [pl.col(by_lower[c]).alias(c) for c in present]
            )
        else:
            cols = ", ".join(f'"{by_lower[c]}" AS "{c}"' for c in present)
            rel = self._con.sql(f'SELECT {cols} FROM "{self._duck_names[spec.name]}"')
            to_arrow = getattr(rel, "to_arrow_table", None) or rel.arrow
            lf = pl.from_arrow(to_arrow()).lazy()
        absent = [c for c in spec.optional if c not in by_lower]
        if absent:
            lf = lf.with_columns([pl.lit(None, dtype=pl.String).alias(c) for c in absent])
        return lf

    def row_count(self, table: str) -> int:
        """Rows in a table (a full pass over a CSV file)."""
        if table in self._files:
            return _scan_file(self._files[table]).select(pl.len()).collect().item()
        return self._con.execute(f'SELECT count(*) FROM "{self._duck_names[table]}"').fetchone()[0]

    def detect_version(self) -> str:
        """'5.3' or '5.4' from cdm_source.cdm_version, else from version-only columns, else 'unknown'."""
        if self.has("cdm_source") and "cdm_version" in self.columns("cdm_source"):
            values = (
                self.read(TableSpec("cdm_source", ("cdm_version",)))
                .select(pl.col("cdm_version").cast(pl.String))
                .collect()["cdm_version"]
                .drop_nulls()
                .to_list()
            )
            for v in values:
                m = re.search(r"5\.(\d)", v)
                if m and m.group(0) in VERSION_MARKERS:
                    return m.group(0)
        for version, markers in VERSION_MARKERS.items():
            for table, cols in markers.items():
                if self.has(table) and set(cols) & set(self.columns(table)):
                    return version
        return "unknown"


def _scan_file(path: Path) -> pl.LazyFrame:
    """Parquet as stored; CSV with every column as text (typed later, with precise errors)."""
    if path.name.lower().endswith(".parquet"):
        return pl.scan_parquet(path)
    return pl.scan_csv(path, infer_schema=False)
