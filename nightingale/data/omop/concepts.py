"""OMOP concepts as MEDS codes, and `metadata/codes.parquet` with descriptions and parents.

Code format (one place, so every table agrees):

- a concept found in CONCEPT becomes ``<vocabulary_id>//<concept_code>``, e.g. ``SNOMED//195662009``,
  ``RxNorm//213469``, ``Gender//F``, ``Visit//IP``;
- a concept id absent from CONCEPT (or no CONCEPT table) becomes ``OMOP//<concept_id>``;
- concept id 0 ("no matching concept") or null keeps what the source said:
  ``SOURCE//<table>//<source value>`` (e.g. ``SOURCE//condition//K92.2``), or ``OMOP//0`` when the
  source value is empty too. Visits have no source fallback (their source values are identifiers).

A few demographic and visit concepts are built in (`WELL_KNOWN_CONCEPTS`), used only when the
CONCEPT table lacks them: Eunomia's cut-down CONCEPT has none of the Gender/Race/Ethnicity ones.
"""

from __future__ import annotations

import logging

import polars as pl

from nightingale import schema as S
from nightingale.data.omop.parse import to_int, to_text, with_row_index
from nightingale.data.omop.tables import CONCEPT, CONCEPT_ANCESTOR, CDMSource

log = logging.getLogger(__name__)

OMOP_PREFIX = "OMOP"
SOURCE_PREFIX = "SOURCE"
SEP = S.CODE_SEPARATOR
CONCEPT_ID = "concept_id"
OMOP_TABLE = "omop_table"  # codes.parquet: the CDM table a code's events came from
_CODE, _NAME = "__concept_code", "__concept_name"

# (concept_id, vocabulary_id, concept_code, concept_name) from the OMOP standard vocabularies.
WELL_KNOWN_CONCEPTS: tuple[tuple[int, str, str, str], ...] = (
    (8507, "Gender", "M", "MALE"),
    (8532, "Gender", "F", "FEMALE"),
    (8657, "Race", "1", "American Indian or Alaska Native"),
    (8515, "Race", "2", "Asian"),
    (8516, "Race", "3", "Black or African American"),
    (8557, "Race", "4", "Native Hawaiian or Other Pacific Islander"),
    (8527, "Race", "5", "White"),
    (38003563, "Ethnicity", "Hispanic", "Hispanic or Latino"),
    (38003564, "Ethnicity", "Not Hispanic", "Not Hispanic or Latino"),
    (9201, "Visit", "IP", "Inpatient Visit"),
    (9202, "Visit", "OP", "Outpatient Visit"),
    (9203, "Visit", "ER", "Emergency Room Visit"),
    (262, "Visit", "ERIP", "Emergency Room and Inpatient Visit"),
)


class ConceptMap:
    """concept_id -> (MEDS code, concept name), from CONCEPT plus the built-in few."""

    def __init__(self, concepts: pl.DataFrame):
        known = pl.DataFrame(
            WELL_KNOWN_CONCEPTS,
            schema={CONCEPT_ID: pl.Int64, "vocabulary_id": pl.String, "concept_code": pl.String,
                    "concept_name": pl.String},
            orient="row",
        )  # fmt: skip
        known = known.filter(~pl.col(CONCEPT_ID).is_in(concepts[CONCEPT_ID].implode()))
        table = pl.concat([concepts, known], how="vertical_relaxed")
        self.table = table.select(
            CONCEPT_ID,
            pl.concat_str(pl.col("vocabulary_id"), pl.lit(SEP), pl.col("concept_code")).alias(
                _CODE
            ),
            pl.col("concept_name").alias(_NAME),
            pl.col("concept_code"),
        ).unique(CONCEPT_ID, keep="first")
        self.from_table = concepts.height

    @classmethod
    def load(cls, source: CDMSource) -> ConceptMap:
        """Read CONCEPT if the source has it (ids parsed strictly, names optional)."""
        schema = {CONCEPT_ID: pl.Int64, "vocabulary_id": pl.String, "concept_code": pl.String,
                  "concept_name": pl.String}  # fmt: skip
        if not source.has(CONCEPT.name):
            log.warning(
                "no CONCEPT table in %s: codes fall back to OMOP//<concept_id>", source.path
            )
            return cls(pl.DataFrame(schema=schema))
        raw = with_row_index(source.read(CONCEPT).collect())
        where = source.where(CONCEPT.name)
        concepts = pl.DataFrame(
            {
                CONCEPT_ID: to_int(raw, CONCEPT_ID, where),
                "vocabulary_id": to_text(raw, "vocabulary_id"),
                "concept_code": to_text(raw, "concept_code"),
                "concept_name": to_text(raw, "concept_name"),
            }
        ).filter(pl.col(CONCEPT_ID).is_not_null() & pl.col("concept_code").is_not_null())
        log.info("CONCEPT: %d concepts", concepts.height)
        return cls(concepts)

    def _lookup(self, ids: pl.Expr, column: str) -> pl.Expr:
        return ids.replace_strict(self.table[CONCEPT_ID], self.table[column], default=None)

    def code(
        self, ids: pl.Expr, source: pl.Expr | None = None, prefix: str | None = None
    ) -> pl.Expr:
        """MEDS code for concept ids (see module docstring); `source` is the fallback for id 0."""
        ids = ids.cast(pl.Int64)
        known = self._lookup(ids, _CODE)
        fallback = pl.concat_str(pl.lit(OMOP_PREFIX + SEP), ids.fill_null(0).cast(pl.String))
        code = pl.when(ids.is_not_null() & (ids != 0)).then(pl.coalesce(known, fallback))
        if source is not None:
            code = code.when(source.is_not_null()).then(
                pl.concat_str(pl.lit(f"{SOURCE_PREFIX}{SEP}{prefix}{SEP}"), source)
            )
        return code.otherwise(pl.lit(OMOP_PREFIX + SEP + "0"))

    def name(self, ids: pl.Expr) -> pl.Expr:
        """concept_name for concept ids (null when unknown)."""
        return self._lookup(ids.cast(pl.Int64), _NAME)

    def concept_code(self, ids: pl.Expr) -> pl.Expr:
        """Bare concept_code (e.g. a UCUM unit such as ``mg/dL``), null when unknown."""
        return self._lookup(ids.cast(pl.Int64), "concept_code")


def load_parents(source: CDMSource, concept_ids: pl.Series, concepts: ConceptMap) -> pl.DataFrame:
    """Direct parents (min_levels_of_separation == 1) of `concept_ids` as MEDS codes.

    Returns columns concept_id and parent_codes (sorted list of codes); empty without the table.
    """
    empty = pl.DataFrame(schema={CONCEPT_ID: pl.Int64, S.PARENT_CODES: pl.List(pl.String)})
    if not source.has(CONCEPT_ANCESTOR.name):
        log.warning("no CONCEPT_ANCESTOR table in %s: parent_codes left empty", source.path)
        return empty
    anc = source.read(CONCEPT_ANCESTOR).collect()
    where = source.where(CONCEPT_ANCESTOR.name)
    anc = with_row_index(anc)
    edges = pl.DataFrame(
        {
            "parent": to_int(anc, "ancestor_concept_id", where),
            CONCEPT_ID: to_int(anc, "descendant_concept_id", where),
            "levels": to_int(anc, "min_levels_of_separation", where),
        }
    ).filter(
        (pl.col("levels") == 1)
        & (pl.col("parent") != pl.col(CONCEPT_ID))
        & pl.col(CONCEPT_ID).is_in(concept_ids.implode())
    )
    if edges.is_empty():
        return empty
    return (
        edges.with_columns(concepts.code(pl.col("parent")).alias("parent_code"))
        .group_by(CONCEPT_ID)
        .agg(pl.col("parent_code").unique().sort().alias(S.PARENT_CODES))
    )


def build_codes(
    code_rows: list[pl.DataFrame], source: CDMSource, concepts: ConceptMap
) -> pl.DataFrame:
    """metadata/codes.parquet rows for every emitted code.

    `code_rows` hold code, description, concept_id (the visit's for its START/END codes; null for
    derived codes such as MEDS_BIRTH) and the CDM table the events came from; parents come from
    CONCEPT_ANCESTOR by concept id. The concept id and table let a dataset of these codes be
    written back as OMOP (export.py).
    """
    codes = (
        pl.concat(code_rows, how="vertical_relaxed")
        .sort([S.CODE, S.DESCRIPTION, CONCEPT_ID], nulls_last=True)
        .group_by(S.CODE, maintain_order=True)
        .agg(pl.col(S.DESCRIPTION).drop_nulls().first(), pl.col(CONCEPT_ID).drop_nulls().first(),
             pl.col(OMOP_TABLE).drop_nulls().first())
    )
    ids = codes[CONCEPT_ID].drop_nulls().unique()
    parents = load_parents(source, ids.filter(ids != 0), concepts)
    codes = codes.join(parents, on=CONCEPT_ID, how="left")
    return codes.select(
        S.CODE,
        S.DESCRIPTION,
        pl.col(S.PARENT_CODES).fill_null(pl.lit([], dtype=pl.List(pl.String))),
        pl.col(CONCEPT_ID).alias("omop_concept_id"),
        OMOP_TABLE,
    ).sort(S.CODE)
