"""The `meds` package's own schema checks, run over a dataset root file by file.

`validate.py` checks what the standard says about rows (sorting, one shard per subject, codes,
splits) and reads liberally; this module asks the reference implementation (`meds` 0.4:
`DataSchema`, `CodeMetadataSchema`, `SubjectSplitSchema`, `DatasetMetadataSchema`) whether each
file has the exact types the standard names, e.g. `code` as `string` rather than the
`large_string` polars writes by default, or `created_at` a date-time rather than null. Data shards
are streamed one record batch at a time, so memory stays flat.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from flexible_schema import SchemaValidationError, TableValidationError

from nightingale import schema as S
from nightingale.data.meds_io import dataset_metadata_problem


@dataclass(frozen=True)
class ReferenceFinding:
    """One file that fails a `meds` schema: which file, which schema, and its message."""

    file: str
    schema: str
    message: str


def _check_table(table: pa.Table, schema: type) -> str | None:
    try:
        schema.validate(table)
    except (SchemaValidationError, TableValidationError) as e:
        return str(e)
    return None


def _batches(path: Path) -> Iterator[pa.Table]:
    pf = pq.ParquetFile(path)
    if pf.metadata.num_rows == 0:
        yield pf.schema_arrow.empty_table()
        return
    for batch in pf.iter_batches(batch_size=262_144):
        yield pa.Table.from_batches([batch])


def reference_findings(root: str | Path) -> list[ReferenceFinding]:
    """Every file under `root` that the `meds` reference schemas reject (empty: all conform).

    Files that are missing or unreadable are left to `validate.py`, which reports them already.
    """
    root = Path(root)
    out: list[ReferenceFinding] = []

    def check_parquet(path: Path, schema: type) -> None:
        rel = path.relative_to(root).as_posix()
        try:
            for table in _batches(path):
                problem = _check_table(table, schema)
                if problem:
                    out.append(ReferenceFinding(rel, f"meds.{schema.__name__}", problem))
                    return
        except (OSError, pa.ArrowException):
            return  # unreadable: validate.py reports it

    data_dir = root / S.DATA_DIR
    for path in sorted(data_dir.rglob("*.parquet")) if data_dir.is_dir() else []:
        check_parquet(path, S.MEDSDataSchema)
    for rel, schema in ((S.CODES_FILE, S.MEDSCodeMetadataSchema),
                        (S.SPLITS_FILE, S.MEDSSubjectSplitSchema)):
        if (root / rel).is_file():
            check_parquet(root / rel, schema)
    meta_path = root / S.DATASET_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return out  # validate.py reports invalid JSON
        problem = dataset_metadata_problem(meta)
        if problem:
            out.append(ReferenceFinding(S.DATASET_FILE, "meds.DatasetMetadataSchema", problem))
    return out
