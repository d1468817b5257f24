"""OMOP CDM 5.3/5.4 -> MEDS 0.4: `nightingale import-omop --cdm PATH --out DIR`.

Sources: a folder with one CSV / CSV.gz / parquet file a table (file and column names in any case)
or a DuckDB file with the tables in its ``main`` schema (`tables`). Conversion (`convert`) emits:

- ``MEDS_BIRTH`` at birth; gender, race, ethnicity as static (null-time) facts; ``MEDS_DEATH`` from
  the death table where there is one (5.4; Eunomia's 5.3 GiBleed has none);
- ``<visit code>//START`` and ``//END`` per visit; one event per condition, procedure, drug
  exposure, measurement and observation at its start time (datetime preferred, else date);
- measurement/observation values: number -> ``numeric_value``; string or value concept name ->
  ``text_value``; unit code (e.g. UCUM ``mg/dL``) -> the ``unit`` extension column.

Codes are ``VOCABULARY_ID//concept_code`` via CONCEPT, ``OMOP//<concept_id>`` when the concept is
unknown, and ``SOURCE//<table>//<source_value>`` (or ``OMOP//0``) for concept 0 (`concepts`).
`metadata/codes.parquet` lists every emitted code with its concept name and direct parents from
CONCEPT_ANCESTOR (min_levels_of_separation == 1), in the same format.
"""

from nightingale.data.omop.convert import OMOPImportConfig, convert_omop
from nightingale.data.omop.tables import CDMSource, OMOPInputError

__all__ = ["CDMSource", "OMOPImportConfig", "OMOPInputError", "convert_omop"]
