"""OMOP tables -> MEDS events, keyed by OMOP person_id (subject ids are assigned later).

Every function returns an "event frame": person_id, time, code, numeric_value, text_value, unit,
plus `ORDER` (which kind of event, so that equal-time events sort birth, visit start, clinical
events, visit end, death) and description/concept_id for `metadata/codes.parquet`.

Event choices (documented in the package docstring too):

- person: ``MEDS_BIRTH`` at birth_datetime, else year/month/day of birth with a missing month ->
  1 July and a missing day -> the 15th (the middle of what is known); gender, race and ethnicity
  are static facts (null time) coded through their concepts (``Gender//F``, ``Race//5``, ...);
  concept 0 (unknown) emits nothing.
- visit_occurrence: ``<visit code>//START`` at the start and ``<visit code>//END`` at the end
  (no END where the end is missing).
- condition, procedure, drug, measurement, observation: one event at the start time.
- measurement/observation: value_as_number -> numeric_value; otherwise value_as_string
  (observation) or the name of value_as_concept_id -> text_value; the unit (concept_code of
  unit_concept_id, e.g. UCUM ``mg/dL``, else unit_source_value) -> the ``unit`` extension column.
- death: ``MEDS_DEATH`` at death_datetime/death_date, plus the cause concept's code when given.
"""

from __future__ import annotations

import polars as pl

from nightingale import schema as S
from nightingale.data.omop.concepts import CONCEPT_ID, ConceptMap
from nightingale.data.omop.parse import to_datetime, to_float, to_int, to_text, with_row_index
from nightingale.data.omop.tables import DEATH, PERSON, CDMSource, EventSpec, OMOPInputError

PERSON_ID = "person_id"
BIRTH_TIME = "birth_time"
ORDER = "__order"
ORDER_STATIC, ORDER_BIRTH, ORDER_START, ORDER_EVENT, ORDER_END, ORDER_DEATH = range(6)
EVENT_COLUMNS: dict[str, pl.DataType] = {
    PERSON_ID: pl.Int64(),
    S.TIME: pl.Datetime("us"),
    S.CODE: pl.String(),
    S.NUMERIC_VALUE: pl.Float64(),
    S.TEXT_VALUE: pl.String(),
    S.UNIT: pl.String(),
    ORDER: pl.Int8(),
    S.DESCRIPTION: pl.String(),
    CONCEPT_ID: pl.Int64(),
}


def _event_frame(df: pl.DataFrame) -> pl.DataFrame:
    """Add missing event columns as nulls and cast to EVENT_COLUMNS, in that order."""
    return df.select(
        [
            (pl.col(c) if c in df.columns else pl.lit(None)).cast(t).alias(c)
            for c, t in EVENT_COLUMNS.items()
        ]
    )


def _time(df: pl.DataFrame, datetime_col: str | None, date_col: str, where: str) -> pl.Series:
    """Prefer the *_datetime column row by row, else the *_date column."""
    date = to_datetime(df, date_col, where)
    if datetime_col is None:
        return date
    return (
        pl.select(pl.coalesce(to_datetime(df, datetime_col, where), date)).to_series().alias(S.TIME)
    )


def read_persons(source: CDMSource) -> pl.DataFrame:
    """person_id, birth_time and the demographic concept ids of every person."""
    where = source.where(PERSON.name)
    raw = with_row_index(source.read(PERSON).collect())
    if raw.is_empty():
        raise OMOPInputError(
            f"{where}: has no rows; nothing to convert (the dataset would be empty)"
        )
    ids = to_int(raw, PERSON_ID, where)
    if ids.null_count():
        row = ids.is_null().arg_max()
        raise OMOPInputError(f"{where}, column person_id: empty value at row {row + 1}")
    if ids.n_unique() != ids.len():
        dup = ids.filter(ids.is_duplicated()).head(1).item()
        raise OMOPInputError(f"{where}, column person_id: duplicate person_id {dup}")
    year, month, day = (
        to_int(raw, c, where) for c in ("year_of_birth", "month_of_birth", "day_of_birth")
    )
    parts = pl.DataFrame({"y": year, "m": month, "d": day, PERSON_ID: ids, "__row": raw["__row"]})
    ymd = parts.select(
        pl.format(
            "{}-{}-{}",
            pl.col("y"),
            pl.col("m").fill_null(7).cast(pl.String).str.zfill(2),
            pl.when(pl.col("m").is_null())
            .then(1)
            .otherwise(pl.col("d").fill_null(15))
            .cast(pl.String)
            .str.zfill(2),
        ).str.strptime(pl.Datetime("us"), "%Y-%m-%d", strict=False)
    ).to_series()
    bad = parts.filter(pl.col("y").is_not_null() & ymd.is_null())
    if bad.height:
        y, m, d = bad.row(0)[:3]
        raise OMOPInputError(
            f"{where}, columns year/month/day_of_birth: ({y}, {m}, {d}) is not a date "
            f"(row {bad['__row'][0] + 1})"
        )
    birth = pl.select(pl.coalesce(to_datetime(raw, "birth_datetime", where), ymd)).to_series()
    if birth.null_count():
        row = birth.is_null().arg_max()
        raise OMOPInputError(
            f"{where}, column year_of_birth: empty at row {row + 1} and no birth_datetime; "
            "every person needs a birth year"
        )
    return pl.DataFrame(
        {
            PERSON_ID: ids,
            BIRTH_TIME: birth,
            **{
                c: to_int(raw, c, where)
                for c in ("gender_concept_id", "race_concept_id", "ethnicity_concept_id")
            },
        }
    )


def person_events(persons: pl.DataFrame, concepts: ConceptMap) -> pl.DataFrame:
    """MEDS_BIRTH at birth time; gender, race and ethnicity as static facts (null time)."""
    birth = persons.select(
        PERSON_ID,
        pl.col(BIRTH_TIME).alias(S.TIME),
        pl.lit(S.BIRTH_CODE).alias(S.CODE),
        pl.lit(ORDER_BIRTH).alias(ORDER),
        pl.lit("Birth").alias(S.DESCRIPTION),
    )
    statics = []
    for col in ("gender_concept_id", "race_concept_id", "ethnicity_concept_id"):
        ids = pl.col(col)
        statics.append(
            persons.filter(ids.is_not_null() & (ids != 0)).select(
                PERSON_ID,
                concepts.code(ids).alias(S.CODE),
                pl.lit(ORDER_STATIC).alias(ORDER),
                concepts.name(ids).alias(S.DESCRIPTION),
                ids.alias(CONCEPT_ID),
            )
        )
    return pl.concat([_event_frame(f) for f in (birth, *statics)])


def death_events(source: CDMSource, concepts: ConceptMap) -> pl.DataFrame:
    """MEDS_DEATH (the earliest death record per person) and the cause concept's code."""
    where = source.where(DEATH.name)
    raw = with_row_index(source.read(DEATH).collect())
    cause = to_int(raw, "cause_concept_id", where)
    df = (
        pl.DataFrame(
            {
                PERSON_ID: to_int(raw, PERSON_ID, where),
                S.TIME: _time(raw, "death_datetime", "death_date", where),
                "cause": cause,
                "cause_source": to_text(raw, "cause_source_value"),
            }
        )
        .sort([PERSON_ID, S.TIME], nulls_last=True)
        .unique(PERSON_ID, keep="first", maintain_order=True)
    )
    death = df.select(
        PERSON_ID, S.TIME, pl.lit(S.DEATH_CODE).alias(S.CODE), pl.lit(ORDER_DEATH).alias(ORDER),
        pl.lit("Death").alias(S.DESCRIPTION),
    )  # fmt: skip
    has_cause = (pl.col("cause").fill_null(0) != 0) | pl.col("cause_source").is_not_null()
    causes = df.filter(has_cause).select(
        PERSON_ID,
        S.TIME,
        concepts.code(pl.col("cause"), pl.col("cause_source"), "death").alias(S.CODE),
        pl.lit(ORDER_DEATH).alias(ORDER),
        concepts.name(pl.col("cause")).alias(S.DESCRIPTION),
        pl.when(pl.col("cause") != 0).then(pl.col("cause")).alias(CONCEPT_ID),
    )
    return pl.concat([_event_frame(death), _event_frame(causes)])


def table_events(source: CDMSource, spec: EventSpec, concepts: ConceptMap) -> pl.DataFrame:
    """Events of one clinical table (see the module docstring for what each kind emits)."""
    where = source.where(spec.table)
    raw = with_row_index(source.read(spec.spec()).collect())
    ids = to_int(raw, spec.concept, where)
    df = pl.DataFrame(
        {
            PERSON_ID: to_int(raw, PERSON_ID, where),
            S.TIME: _time(raw, spec.datetime, spec.date, where),
            "cid": ids,
            "src": to_text(raw, spec.source_value)
            if spec.source_value
            else pl.repeat(None, raw.height, dtype=pl.String, eager=True),
        }
    )
    src = pl.col("src") if spec.source_value else None
    coded = df.with_columns(
        concepts.code(pl.col("cid"), src, spec.prefix).alias(S.CODE),
        concepts.name(pl.col("cid")).alias(S.DESCRIPTION),
        pl.when(pl.col("cid") != 0).then(pl.col("cid")).alias(CONCEPT_ID),
    )
    if spec.kind == "visit":
        end = _time(raw, spec.end_datetime, spec.end_date, where)
        start = coded.with_columns(
            (pl.col(S.CODE) + "//START").alias(S.CODE),
            (pl.col(S.DESCRIPTION) + " start").alias(S.DESCRIPTION),
            pl.lit(ORDER_START).alias(ORDER),
        )
        stop = start.with_columns(
            end.alias(S.TIME),
            pl.col(S.CODE).str.replace("//START$", "//END"),
            pl.col(S.DESCRIPTION).str.replace(" start$", " end"),
            pl.lit(ORDER_END).alias(ORDER),
        ).filter(pl.col(S.TIME).is_not_null())
        return pl.concat([_event_frame(start), _event_frame(stop)])
    coded = coded.with_columns(pl.lit(ORDER_EVENT).alias(ORDER))
    if spec.kind in ("measurement", "observation"):
        coded = coded.with_columns(_values(raw, spec, concepts, where))
    return _event_frame(coded)


def _values(
    raw: pl.DataFrame, spec: EventSpec, concepts: ConceptMap, where: str
) -> list[pl.Series]:
    """numeric_value, text_value and unit of measurement/observation rows."""
    number = to_float(raw, "value_as_number", where)
    vals = pl.DataFrame(
        {
            "num": number,
            "vc": to_int(raw, "value_as_concept_id", where),
            "uc": to_int(raw, "unit_concept_id", where),
            "us": to_text(raw, "unit_source_value"),
            "vs": to_text(raw, "value_as_string")
            if spec.kind == "observation"
            else pl.repeat(None, raw.height, dtype=pl.String, eager=True),
        }
    )
    vc, uc = pl.col("vc"), pl.col("uc")
    value_concept = pl.when(vc.is_not_null() & (vc != 0)).then(
        pl.coalesce(concepts.name(vc), pl.concat_str(pl.lit("OMOP//"), vc.cast(pl.String)))
    )
    valid_unit = uc.is_not_null() & (uc != 0)
    unit = pl.coalesce(
        pl.when(valid_unit).then(concepts.concept_code(uc)),
        pl.col("us"),
        pl.when(valid_unit).then(pl.concat_str(pl.lit("OMOP//"), uc.cast(pl.String))),
    )
    return vals.select(
        pl.col("num").alias(S.NUMERIC_VALUE),
        pl.when(pl.col("num").is_null())
        .then(pl.coalesce(pl.col("vs"), value_concept))
        .alias(S.TEXT_VALUE),
        unit.alias(S.UNIT),
    ).get_columns()
