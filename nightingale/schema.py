"""Names of MEDS 0.4 columns, files, codes and dtypes: the one place they are spelled out.

The names, files and on-disk (pyarrow) schemas come from the `meds` package, the standard's own
reference; the polars dtypes below are how those columns look in memory. Everything else imports
these constants instead of writing string literals, so a schema change is one edit (STYLE.md,
direction 4). Writers align their tables to the `meds` schemas (`data.meds_io.meds_table`);
readers accept string or large_string alike.
"""

# No `from __future__ import annotations` here: flexible_schema reads the class annotations.
import os

import meds
import polars as pl
import pyarrow as pa
from flexible_schema import Required as _Required
from meds_evaluation.schema import PredictionSchema  # noqa: F401 - re-exported: predictions

# The reference schemas (flexible_schema classes with .validate / .align) and dataset.json's.
MEDSDataSchema = meds.DataSchema
MEDSCodeMetadataSchema = meds.CodeMetadataSchema
MEDSSubjectSplitSchema = meds.SubjectSplitSchema
MEDSLabelSchema = meds.LabelSchema
MEDSDatasetMetadataSchema = meds.DatasetMetadataSchema


class GeneratedTrajectorySchema(meds.DataSchema):
    """Generated rollouts as MEDS_trajectory_evaluation reads them: MEDS data plus the
    `prediction_time` (input cut-off) they continue from; one file per sample index."""

    prediction_time: _Required(pa.timestamp("us"), nullable=False)


# --- MEDS data columns (data/**/*.parquet) -------------------------------------------------------
SUBJECT_ID = meds.DataSchema.subject_id_name
TIME = meds.DataSchema.time_name
CODE = meds.DataSchema.code_name
NUMERIC_VALUE = meds.DataSchema.numeric_value_name
TEXT_VALUE = meds.DataSchema.text_value_name
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
DATA_ARROW_SCHEMA: pa.Schema = meds.DataSchema.schema()

# --- Layout of a MEDS dataset root ----------------------------------------------------------------
DATA_DIR = meds.data_subdirectory
METADATA_DIR = os.path.dirname(meds.code_metadata_filepath)
CODES_FILE = meds.code_metadata_filepath
SPLITS_FILE = meds.subject_splits_filepath
DATASET_FILE = meds.dataset_metadata_filepath
MEDS_VERSION = meds.__version__  # the `meds` release the tables are aligned to, e.g. "0.4.1"

# --- metadata/codes.parquet -------------------------------------------------------------------------
DESCRIPTION = meds.CodeMetadataSchema.description_name
PARENT_CODES = meds.CodeMetadataSchema.parent_codes_name
CODES_SCHEMA: dict[str, pl.DataType] = {
    CODE: pl.String(),
    DESCRIPTION: pl.String(),
    PARENT_CODES: pl.List(pl.String()),
}

# --- metadata/subject_splits.parquet ------------------------------------------------------------
SPLIT = meds.SubjectSplitSchema.split_name
TRAIN = meds.train_split
TUNING = meds.tuning_split
HELD_OUT = meds.held_out_split
SPLITS: tuple[str, ...] = (TRAIN, TUNING, HELD_OUT)
SPLITS_SCHEMA: dict[str, pl.DataType] = {SUBJECT_ID: pl.Int64(), SPLIT: pl.String()}

# --- Reserved codes --------------------------------------------------------------------------------
BIRTH_CODE = meds.birth_code
DEATH_CODE = meds.death_code
CODE_SEPARATOR = "//"  # e.g. "ICD10//E11", "LOINC//4548-4"

# --- Task labels and predictions (MEDS label schema, meds-evaluation columns) -------------------------
PREDICTION_TIME = meds.LabelSchema.prediction_time_name
BOOLEAN_VALUE = meds.LabelSchema.boolean_value_name
INTEGER_VALUE = meds.LabelSchema.integer_value_name
FLOAT_VALUE = meds.LabelSchema.float_value_name
CATEGORICAL_VALUE = meds.LabelSchema.categorical_value_name
PREDICTED_BOOLEAN_VALUE = PredictionSchema.predicted_boolean_value_name
PREDICTED_BOOLEAN_PROBABILITY = PredictionSchema.predicted_boolean_probability_name
# Polars dtypes of a binary-task label frame (the MEDS label schema's columns we use).
LABEL_SCHEMA: dict[str, pl.DataType] = {
    SUBJECT_ID: pl.Int64(),
    PREDICTION_TIME: pl.Datetime("us"),
    BOOLEAN_VALUE: pl.Boolean(),
}
