"""Names of MEDS 0.4 columns, files, codes and dtypes: the one place they are spelled out.

Everything else imports these constants instead of writing string literals, so a schema change is
one edit (STYLE.md, direction 4).
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

# --- MEDS data columns (data/**/*.parquet) -------------------------------------------------------
SUBJECT_ID = "subject_id"
TIME = "time"
CODE = "code"
NUMERIC_VALUE = "numeric_value"
TEXT_VALUE = "text_value"
UNIT = "unit"  # optional extra column: MEDS allows extension columns; we keep units there.

DATA_COLUMNS: tuple[str, ...] = (SUBJECT_ID, TIME, CODE, NUMERIC_VALUE, TEXT_VALUE)
REQUIRED_DATA_COLUMNS: tuple[str, ...] = (SUBJECT_ID, TIME, CODE)

# Polars dtypes of the MEDS columns; `time` is a naive timestamp in microseconds.
DATA_SCHEMA: dict[str, pl.DataType] = {
    SUBJECT_ID: pl.Int64(),
    TIME: pl.Datetime("us"),
    CODE: pl.String(),
    NUMERIC_VALUE: pl.Float32(),
    TEXT_VALUE: pl.String(),
}
DATA_ARROW_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, pa.int64(), nullable=False),
        pa.field(TIME, pa.timestamp("us"), nullable=True),
        pa.field(CODE, pa.string(), nullable=False),
        pa.field(NUMERIC_VALUE, pa.float32(), nullable=True),
        pa.field(TEXT_VALUE, pa.string(), nullable=True),
    ]
)

# --- Layout of a MEDS dataset root ----------------------------------------------------------------
DATA_DIR = "data"
METADATA_DIR = "metadata"
CODES_FILE = "metadata/codes.parquet"
SPLITS_FILE = "metadata/subject_splits.parquet"
DATASET_FILE = "metadata/dataset.json"
MEDS_VERSION = "0.4"

# --- metadata/codes.parquet -------------------------------------------------------------------------
DESCRIPTION = "description"
PARENT_CODES = "parent_codes"
CODES_SCHEMA: dict[str, pl.DataType] = {
    CODE: pl.String(),
    DESCRIPTION: pl.String(),
    PARENT_CODES: pl.List(pl.String()),
}

# --- metadata/subject_splits.parquet ------------------------------------------------------------
SPLIT = "split"
TRAIN = "train"
TUNING = "tuning"
HELD_OUT = "held_out"
SPLITS: tuple[str, ...] = (TRAIN, TUNING, HELD_OUT)
SPLITS_SCHEMA: dict[str, pl.DataType] = {SUBJECT_ID: pl.Int64(), SPLIT: pl.String()}

# --- Reserved codes --------------------------------------------------------------------------------
BIRTH_CODE = "MEDS_BIRTH"
DEATH_CODE = "MEDS_DEATH"
CODE_SEPARATOR = "//"  # e.g. "ICD10//E11", "LOINC//4548-4"

# --- Task labels and predictions (MEDS label schema, meds-evaluation columns) -------------------------
PREDICTION_TIME = "prediction_time"
BOOLEAN_VALUE = "boolean_value"
INTEGER_VALUE = "integer_value"
FLOAT_VALUE = "float_value"
CATEGORICAL_VALUE = "categorical_value"
PREDICTED_BOOLEAN_VALUE = "predicted_boolean_value"
PREDICTED_BOOLEAN_PROBABILITY = "predicted_boolean_probability"
