"""Check a folder or file against the `meds` package's own schemas, independently of our validator.

Used by the tests of every writer (simulator, OMOP importer, cohort downloads, labels,
predictions): what we write must pass the MEDS community's reference validation as it stands.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import meds
import pyarrow.parquet as pq
from meds_evaluation.schema import PredictionSchema


def assert_meds_dataset(root: Path) -> None:
    """Every shard, codes.parquet, subject_splits.parquet and dataset.json pass `meds` 0.4."""
    root = Path(root)
    shards = sorted((root / meds.data_subdirectory).rglob("*.parquet"))
    assert shards, f"{root}: no shards"
    for path in shards:
        meds.DataSchema.validate(pq.read_table(path))  # raises, naming the column, if not
    meds.CodeMetadataSchema.validate(pq.read_table(root / meds.code_metadata_filepath))
    meds.SubjectSplitSchema.validate(pq.read_table(root / meds.subject_splits_filepath))
    meta = json.loads((root / meds.dataset_metadata_filepath).read_text())
    meds.DatasetMetadataSchema.validate(meta)
    # the JSON schema says date-time without checking the format: check it here
    assert isinstance(meta.get("created_at"), str), meta.get("created_at")
    dt.datetime.fromisoformat(meta["created_at"])
    assert meta.get("etl_version") and meta.get("meds_version") == meds.__version__


def assert_meds_labels(path: Path) -> None:
    meds.LabelSchema.validate(pq.read_table(path))


def assert_meds_predictions(path: Path) -> None:
    PredictionSchema.validate(pq.read_table(path))
