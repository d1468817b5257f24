"""MEDS -> OMOP CDM 5.4: a (synthetic) MEDS dataset as OMOP tables, for tools that speak OMOP.

The reverse of `convert.py` for datasets whose codes came from OMOP (`nightingale import-omop`):
the reference `codes.parquet` of the data the model learnt from tells each code's concept id
(`omop_concept_id`) and the CDM table its events came from (`omop_table`). Without them a code
is placed by its form: ``OMOP//<id>`` is that concept; ``SOURCE//<table>//<value>`` is concept 0
with the source value; ``Gender//``, ``Race//``, ``Ethnicity//`` codes are the person's; visit
codes ``<visit>//START``/``//END`` pair into visits; RxNorm/ATC/NDC codes are drugs; a code with
a numeric value is a measurement; anything else an observation.

Written, as CSV (one file a table, upper-case names as OHDSI tools write them): PERSON,
OBSERVATION_PERIOD (first to last event), VISIT_OCCURRENCE, CONDITION_OCCURRENCE,
PROCEDURE_OCCURRENCE, DRUG_EXPOSURE, MEASUREMENT, OBSERVATION, DEATH, CONCEPT (the concepts used,
so that the tables read back to the same codes) and CDM_SOURCE (version 5.4). Provenance (the
*_type_concept_id columns) is 0, "no matching concept": no standard type concept says
"synthetic". Everything is written into a temporary folder renamed into place, so a failure
leaves nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import polars as pl

from nightingale import schema as S
from nightingale.atomic import atomic_dir
from nightingale.data.meds_io import MEDSDataset
from nightingale.data.omop.concepts import OMOP_PREFIX, SOURCE_PREFIX, WELL_KNOWN_CONCEPTS

log = logging.getLogger(__name__)
SEP = S.CODE_SEPARATOR
TYPE_CONCEPT = 0  # the record's provenance: no standard type concept says "synthetic", so "no matching concept"
PERSON_FAMILIES = {"Gender": "gender_concept_id", "Race": "race_concept_id", "Ethnicity": "ethnicity_concept_id"}
DRUG_VOCABULARIES = ("RxNorm", "RxNorm Extension", "ATC", "NDC")
# The CDM table of each clinical table prefix the importer uses in SOURCE//<prefix>//<value> codes.
PREFIX_TABLE = {"condition": "condition_occurrence", "procedure": "procedure_occurrence", "drug": "drug_exposure",
                "measurement": "measurement", "observation": "observation", "death": "death"}
DOMAIN = {"condition_occurrence": "Condition", "procedure_occurrence": "Procedure", "drug_exposure": "Drug",
          "measurement": "Measurement", "observation": "Observation", "visit_occurrence": "Visit",
          "death": "Condition", "person": "Gender"}
CLINICAL = {  # table -> (id column, concept column, date column, datetime column, source value column)
    "condition_occurrence": ("condition_occurrence_id", "condition_concept_id", "condition_start_date",
                             "condition_start_datetime", "condition_source_value", "condition_type_concept_id"),
    "procedure_occurrence": ("procedure_occurrence_id", "procedure_concept_id", "procedure_date",
                             "procedure_datetime", "procedure_source_value", "procedure_type_concept_id"),
    "drug_exposure": ("drug_exposure_id", "drug_concept_id", "drug_exposure_start_date",
                      "drug_exposure_start_datetime", "drug_source_value", "drug_type_concept_id"),
    "measurement": ("measurement_id", "measurement_concept_id", "measurement_date", "measurement_datetime",
                    "measurement_source_value", "measurement_type_concept_id"),
    "observation": ("observation_id", "observation_concept_id", "observation_date", "observation_datetime",
                    "observation_source_value", "observation_type_concept_id"),
}


def code_map(codes: pl.DataFrame | None) -> pl.DataFrame:
    """code -> concept_id, table, description: from a reference codes.parquet where it has them,
    else from each code's form (see the module docstring)."""
    ref = codes if codes is not None else pl.DataFrame(schema={S.CODE: pl.String})
    cols = [S.CODE] + [c for c in ("omop_concept_id", "omop_table", S.DESCRIPTION) if c in ref.columns]
    return ref.select(cols)


def _resolve(code: str, numeric: bool, ref: dict[str, dict[str, Any]], known: dict[tuple[str, str], int]) -> tuple:
    """(table, concept_id, source_value, vocabulary_id, concept_code) of one code."""
    r = ref.get(code, {})
    parts = code.split(SEP)
    vocab, rest = (parts[0], SEP.join(parts[1:])) if len(parts) > 1 else ("", code)
    cid = r.get("omop_concept_id")
    if cid is None and vocab == OMOP_PREFIX and rest.isdigit():
        cid = int(rest)
    if cid is None:
        cid = known.get((vocab, rest))
    table = r.get("omop_table")
    if vocab == SOURCE_PREFIX and len(parts) >= 3:
        return PREFIX_TABLE.get(parts[1], "observation"), 0, SEP.join(parts[2:]), None, None
    if table is None:
        table = ("person" if vocab in PERSON_FAMILIES else "drug_exposure" if vocab in DRUG_VOCABULARIES
                 else "measurement" if numeric else "observation")
    if cid is None:
        return table, 0, code, None, None
    return table, int(cid), rest, (None if vocab == OMOP_PREFIX else vocab), (None if vocab == OMOP_PREFIX else rest)


def _visits(events: pl.DataFrame, visit_ids: dict[str, int]) -> pl.DataFrame:
    """Pair each `<visit>//START` with the next `<visit>//END` of the same subject and kind."""
    kind = pl.col(S.CODE).str.replace(r"//(START|END)$", "")
    marks = events.filter(pl.col(S.CODE).str.contains(r"//(START|END)$")).with_columns(
        kind.alias("kind"), pl.col(S.CODE).str.ends_with("//START").alias("is_start"))
    starts = marks.filter("is_start").with_columns(pl.int_range(pl.len()).over(S.SUBJECT_ID, "kind").alias("k"))
    ends = marks.filter(~pl.col("is_start")).with_columns(pl.int_range(pl.len()).over(S.SUBJECT_ID, "kind").alias("k"))
    v = starts.join(ends.select(S.SUBJECT_ID, "kind", "k", pl.col(S.TIME).alias("end")), on=[S.SUBJECT_ID, "kind", "k"],
                    how="left").with_columns(
        pl.when(pl.col("end") >= pl.col(S.TIME)).then(pl.col("end")).otherwise(pl.col(S.TIME)).alias("end"))
    return v.sort(S.SUBJECT_ID, S.TIME).select(
        pl.int_range(1, pl.len() + 1).alias("visit_occurrence_id"),
        pl.col(S.SUBJECT_ID).alias("person_id"),
        pl.col("kind").replace_strict(visit_ids, default=0, return_dtype=pl.Int64).alias("visit_concept_id"),
        pl.col(S.TIME).dt.date().alias("visit_start_date"), pl.col(S.TIME).alias("visit_start_datetime"),
        pl.col("end").dt.date().alias("visit_end_date"), pl.col("end").alias("visit_end_datetime"),
        pl.lit(TYPE_CONCEPT).alias("visit_type_concept_id"),
        pl.col("kind").alias("visit_source_value"),
        pl.lit(0).alias("admitted_from_concept_id"), pl.lit(0).alias("discharged_to_concept_id"),
    )


def export_omop(meds_dir: str | Path, out_dir: str | Path, codes: pl.DataFrame | None = None, *,
                overwrite: bool = False) -> dict[str, int]:
    """Write the MEDS dataset `meds_dir` as OMOP CDM 5.4 CSV tables into `out_dir` (atomically).
    `codes`: the reference codes.parquet (the training data's) with omop_concept_id/omop_table;
    None: the dataset's own. Returns the rows written per table."""
    try:
        ds = MEDSDataset(meds_dir)
    except FileNotFoundError as e:
        raise ValueError(f"meds_dir: {e}") from None
    if Path(out_dir).exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; choose another output or pass overwrite")
    if codes is not None and "omop_concept_id" not in codes.columns:
        raise ValueError("codes: the reference codes.parquet has no omop_concept_id column (its data did not come "
                         "from nightingale import-omop), so its codes cannot be written as OMOP concepts")
    events = ds.scan().select(S.SUBJECT_ID, S.TIME, S.CODE, S.NUMERIC_VALUE).collect()
    ref_rows = code_map(codes if codes is not None else ds.codes())
    ref = {r[S.CODE]: r for r in ref_rows.iter_rows(named=True)}
    known = {(v, c): i for i, v, c, _ in WELL_KNOWN_CONCEPTS}
    numeric = set(events.filter(pl.col(S.NUMERIC_VALUE).is_not_null())[S.CODE].unique().to_list())
    rows = [(c, *_resolve(c, c in numeric, ref, known)) for c in events[S.CODE].unique().to_list()]
    resolved = pl.DataFrame(rows, schema={S.CODE: pl.String, "table": pl.String, "concept_id": pl.Int64,
                                          "source_value": pl.String, "vocabulary_id": pl.String,
                                          "concept_code": pl.String}, orient="row")
    ev = events.join(resolved, on=S.CODE, how="left")
    out: dict[str, pl.DataFrame] = {}

    # person: birth, and the static Gender/Race/Ethnicity codes
    births = ev.filter(pl.col(S.CODE) == S.BIRTH_CODE).group_by(S.SUBJECT_ID).agg(pl.col(S.TIME).min().alias("birth"))
    person = pl.DataFrame({S.SUBJECT_ID: ev[S.SUBJECT_ID].unique().sort()}).join(births, on=S.SUBJECT_ID, how="left")
    for family, col in PERSON_FAMILIES.items():
        fam = (ev.filter(pl.col(S.TIME).is_null() & pl.col(S.CODE).str.starts_with(family + SEP))
               .group_by(S.SUBJECT_ID).agg(pl.col("concept_id").first().alias(col),
                                           pl.col(S.CODE).first().str.slice(len(family) + 2).alias(col[:-11] + "_source_value")))
        person = person.join(fam, on=S.SUBJECT_ID, how="left")
    out["person"] = person.select(
        pl.col(S.SUBJECT_ID).alias("person_id"),
        pl.col("gender_concept_id").fill_null(0),
        pl.col("birth").dt.year().fill_null(1900).alias("year_of_birth"),
        pl.col("birth").dt.month().alias("month_of_birth"), pl.col("birth").dt.day().alias("day_of_birth"),
        pl.col("birth").alias("birth_datetime"),
        pl.col("race_concept_id").fill_null(0), pl.col("ethnicity_concept_id").fill_null(0),
        pl.col("gender_source_value"), pl.col("race_source_value"), pl.col("ethnicity_source_value"),
    )
    timed = ev.filter(pl.col(S.TIME).is_not_null() & (pl.col(S.CODE) != S.BIRTH_CODE))
    out["observation_period"] = timed.group_by(S.SUBJECT_ID).agg(
        pl.col(S.TIME).min().dt.date().alias("observation_period_start_date"),
        pl.col(S.TIME).max().dt.date().alias("observation_period_end_date")).sort(S.SUBJECT_ID).select(
        pl.int_range(1, pl.len() + 1).alias("observation_period_id"), pl.col(S.SUBJECT_ID).alias("person_id"),
        "observation_period_start_date", "observation_period_end_date",
        pl.lit(TYPE_CONCEPT).alias("period_type_concept_id"))
    visit_ids = {v + SEP + c: i for i, v, c, _ in WELL_KNOWN_CONCEPTS if v == "Visit"}
    visit_ids.update({c[: -len("//START")]: int(r["omop_concept_id"]) for c, r in ref.items()
                      if c.endswith("//START") and r.get("omop_concept_id") is not None})
    out["visit_occurrence"] = _visits(timed, visit_ids)
    deaths = timed.filter(pl.col(S.CODE) == S.DEATH_CODE).group_by(S.SUBJECT_ID).agg(pl.col(S.TIME).min().alias("t"))
    causes = (timed.filter((pl.col("table") == "death") & (pl.col(S.CODE) != S.DEATH_CODE))
              .join(deaths, on=S.SUBJECT_ID).filter(pl.col(S.TIME) == pl.col("t"))
              .group_by(S.SUBJECT_ID).agg(pl.col("concept_id").first().alias("cause_concept_id"),
                                          pl.col("source_value").first().alias("cause_source_value")))
    out["death"] = deaths.join(causes, on=S.SUBJECT_ID, how="left").sort(S.SUBJECT_ID).select(
        pl.col(S.SUBJECT_ID).alias("person_id"), pl.col("t").dt.date().alias("death_date"),
        pl.col("t").alias("death_datetime"), pl.lit(TYPE_CONCEPT).alias("death_type_concept_id"),
        pl.col("cause_concept_id").fill_null(0), "cause_source_value")
    clinical = timed.filter(pl.col("table").is_in(list(CLINICAL)) & (pl.col(S.CODE) != S.DEATH_CODE)
                            & ~pl.col(S.CODE).str.contains(r"//(START|END)$"))
    for table, (id_col, concept, date, when, source, type_col) in CLINICAL.items():
        part = clinical.filter(pl.col("table") == table).sort(S.SUBJECT_ID, S.TIME)
        cols = [pl.int_range(1, pl.len() + 1).alias(id_col), pl.col(S.SUBJECT_ID).alias("person_id"),
                pl.col("concept_id").alias(concept), pl.col(S.TIME).dt.date().alias(date), pl.col(S.TIME).alias(when),
                pl.lit(TYPE_CONCEPT).alias(type_col), pl.col("source_value").alias(source)]
        if table in ("measurement", "observation"):
            cols.append(pl.col(S.NUMERIC_VALUE).alias("value_as_number"))
        if table == "drug_exposure":
            cols += [pl.col(S.TIME).dt.date().alias("drug_exposure_end_date")]
        out[table] = part.select(cols)
    visit = pl.col(S.CODE).str.contains(r"//(START|END)$")
    kinds = resolved.filter(visit).select(pl.col(S.CODE).str.replace(r"//(START|END)$", "")).unique()[S.CODE]
    used = pl.concat([
        resolved.filter((pl.col("concept_id") > 0) & pl.col("vocabulary_id").is_not_null() & ~visit),
        pl.DataFrame({S.CODE: kinds, "table": "visit_occurrence",  # a visit's concept is coded without START/END
                      "concept_id": kinds.replace_strict(visit_ids, default=0, return_dtype=pl.Int64),
                      "source_value": None, "vocabulary_id": kinds.str.split(SEP).list.first(),
                      "concept_code": kinds.str.split(SEP).list.slice(1).list.join(SEP)},
                     schema=resolved.schema).filter(pl.col("concept_id") > 0),
    ])
    descriptions = {c: r.get(S.DESCRIPTION) for c, r in ref.items()}
    out["concept"] = used.select(
        pl.col("concept_id"),
        pl.col(S.CODE).replace_strict(descriptions, default=None, return_dtype=pl.String)
        .fill_null(pl.col(S.CODE)).alias("concept_name"),
        pl.col("table").replace_strict(DOMAIN, default="Observation", return_dtype=pl.String).alias("domain_id"),
        "vocabulary_id", pl.lit("Undefined").alias("concept_class_id"), pl.lit(None, pl.String).alias("standard_concept"),
        "concept_code", pl.lit(dt.date(1970, 1, 1)).alias("valid_start_date"),
        pl.lit(dt.date(2099, 12, 31)).alias("valid_end_date"), pl.lit(None, pl.String).alias("invalid_reason"),
    ).unique("concept_id").sort("concept_id")
    out["cdm_source"] = pl.DataFrame({"cdm_source_name": ["nightingale export"], "cdm_version": ["v5.4"],
                                      "source_description": [f"MEDS dataset {ds.root.name} written as OMOP"]})
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for table, frame in out.items():
            frame.write_csv(tmp / f"{table.upper()}.csv")
    counts = {t: f.height for t, f in out.items()}
    log.info("MEDS -> OMOP: %s", counts)
    return counts
