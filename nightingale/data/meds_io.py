"""Read and write MEDS 0.4 datasets, shard by shard.

A dataset root holds `data/**/*.parquet` shards and `metadata/` (codes, splits, dataset.json).
Reading is lazy (`polars.scan_parquet`), one shard at a time, so memory stays flat as data grows.
Writing goes through `MEDSWriter`, which builds the dataset in a temporary folder beside the target
and renames it into place only when every part is written. Every table written is first aligned to
the `meds` package's reference schema (`meds_table`: `code` as string, not polars' large_string,
and so on) and `dataset.json` is checked against `meds.DatasetMetadataSchema`, so what this
project writes passes the standard's own validator. Reading stays liberal (string or large_string).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import ExitStack
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from flexible_schema import SchemaValidationError, TableValidationError
from typing_extensions import Self

from nightingale import schema as S
from nightingale.atomic import atomic_dir, atomic_file


def etl_version() -> str:
    """This package's version, recorded as `etl_version` in dataset.json."""
    try:
        return version("nightingale")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown"


def _narrow(t: pa.DataType) -> pa.DataType:
    """large_string -> string and large_list -> list, recursively (polars writes the large ones)."""
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(_narrow(t.value_type))
    return t


def meds_table(df: pl.DataFrame | pa.Table, schema: type, what: str) -> pa.Table:
    """`df` as a pyarrow table that passes `schema.validate` (a `meds` / flexible_schema class).

    Extension columns are kept, with large types narrowed to the standard's; the schema's own
    columns are cast (`schema.align`) and ordered first. `what` names the table in errors.
    """
    table = df.to_arrow() if isinstance(df, pl.DataFrame) else df
    table = table.cast(pa.schema([pa.field(f.name, _narrow(f.type), f.nullable) for f in table.schema]))
    try:
        table = schema.align(table)
        schema.validate(table)
    except (SchemaValidationError, TableValidationError, ValueError, TypeError) as e:
        raise ValueError(f"{what}: does not fit the MEDS {schema.__name__}: {e}") from None
    return table


def write_meds_parquet(df: pl.DataFrame | pa.Table, path: str | Path, schema: type, *,
                       what: str | None = None, atomic: bool = True, **kwargs: Any) -> Path:
    """Align `df` to `schema` (see `meds_table`) and write it to `path` as parquet, through a
    temporary file renamed into place unless `atomic=False` (inside an already-atomic folder)."""
    path = Path(path)
    table = meds_table(df, schema, what or str(path))
    kwargs.setdefault("compression", "zstd")
    if not atomic:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, **kwargs)
        return path
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, **kwargs)
    return path


class MEDSDataset:
    """A MEDS dataset on disk. Cheap to construct; nothing is read until asked."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"MEDS dataset {self.root}: folder does not exist")

    @property
    def data_dir(self) -> Path:
        return self.root / S.DATA_DIR

    def shards(self) -> list[Path]:
        """All data shards, in a stable (sorted) order."""
        return sorted(self.data_dir.rglob("*.parquet"))

    def shard_name(self, path: Path) -> str:
        """A shard's name relative to `data/` without the suffix, e.g. ``train/0``."""
        return path.relative_to(self.data_dir).with_suffix("").as_posix()

    def scan(self, shard: str | Path | None = None) -> pl.LazyFrame:
        """Lazily scan one shard (by name or path) or, with no argument, all of them."""
        if shard is None:
            paths = self.shards()
            if not paths:
                raise FileNotFoundError(f"MEDS dataset {self.root}: no parquet shards under data/")
            return pl.scan_parquet(paths)
        path = Path(shard)
        if not path.is_absolute() and path.suffix != ".parquet":
            path = self.data_dir / f"{shard}.parquet"
        return pl.scan_parquet(path)

    def iter_shards(self) -> Iterator[tuple[str, pl.LazyFrame]]:
        for path in self.shards():
            yield self.shard_name(path), pl.scan_parquet(path)

    def codes(self) -> pl.DataFrame:
        path = self.root / S.CODES_FILE
        if not path.exists():
            return pl.DataFrame(schema=S.CODES_SCHEMA)
        return pl.read_parquet(path)

    def splits(self) -> pl.DataFrame:
        path = self.root / S.SPLITS_FILE
        if not path.exists():
            return pl.DataFrame(schema=S.SPLITS_SCHEMA)
        return pl.read_parquet(path)

    def metadata(self) -> dict[str, Any]:
        path = self.root / S.DATASET_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def subjects(self, split: str | None = None) -> pl.Series:
        """Subject ids of one split (from subject_splits.parquet) or of the whole dataset."""
        if split is not None:
            splits = self.splits()
            return splits.filter(pl.col(S.SPLIT) == split)[S.SUBJECT_ID]
        return self.scan().select(pl.col(S.SUBJECT_ID).unique()).collect()[S.SUBJECT_ID]


def conform_events(df: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Cast to the MEDS dtypes, add missing optional columns, and sort by subject then time.

    Static facts (null time) sort first within a subject; extension columns (e.g. `unit`) are kept
    after the MEDS ones. The sort is stable, so same-time events keep the order they came in.
    """
    lf = df.lazy()
    names = lf.collect_schema().names()
    missing = [c for c in S.REQUIRED_DATA_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"events are missing required MEDS column(s) {missing}; have {names}")
    for col in (S.NUMERIC_VALUE, S.TEXT_VALUE):
        if col not in names:
            lf = lf.with_columns(pl.lit(None, dtype=S.DATA_SCHEMA[col]).alias(col))
    extra = [c for c in names if c not in S.DATA_SCHEMA]
    lf = lf.select(
        [pl.col(c).cast(t) for c, t in S.DATA_SCHEMA.items()] + [pl.col(c) for c in extra]
    )
    return lf.sort([S.SUBJECT_ID, S.TIME], nulls_last=False, maintain_order=True).collect()


class MEDSWriter:
    """Build a MEDS dataset atomically.

    >>> with MEDSWriter(out) as w:                      # doctest: +SKIP
    ...     w.write_shard("train/0", events)
    ...     w.write_codes(codes); w.write_splits(splits)
    ...     w.write_dataset_json({"dataset_name": "demo"})

    The target appears only when the `with` block ends without an exception; otherwise the
    temporary folder is removed and nothing is left behind.
    """

    def __init__(self, root: str | Path, *, overwrite: bool = False):
        self.root = Path(root)
        self.overwrite = overwrite
        self._stack = ExitStack()
        self._tmp: Path | None = None
        self._shards: list[str] = []
        self._wrote_json = False

    def __enter__(self) -> Self:
        self._tmp = self._stack.enter_context(atomic_dir(self.root, overwrite=self.overwrite))
        (self._tmp / S.DATA_DIR).mkdir()
        (self._tmp / S.METADATA_DIR).mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            if not self._shards:
                self._stack.__exit__(ValueError, None, None)
                raise ValueError(f"MEDS dataset {self.root}: nothing was written (no shards)")
            if not self._wrote_json:
                self.write_dataset_json({})
        return bool(self._stack.__exit__(exc_type, exc, tb))

    @property
    def tmp_root(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("MEDSWriter must be used as a context manager")
        return self._tmp

    def write_shard(self, name: str, events: pl.DataFrame | pl.LazyFrame, *, conform: bool = True):
        """Write one shard, e.g. ``name="train/0"``; `conform` casts and sorts (see conform_events)."""
        if name in self._shards:
            raise ValueError(f"shard {name!r} written twice")
        df = conform_events(events) if conform else events
        path = self.tmp_root / S.DATA_DIR / f"{name}.parquet"
        write_meds_parquet(df, path, S.MEDSDataSchema, what=f"{S.DATA_DIR}/{name}.parquet", atomic=False)
        self._shards.append(name)

    def write_codes(self, codes: pl.DataFrame) -> None:
        """Write metadata/codes.parquet (code, description, parent_codes; extra columns kept)."""
        for col, dtype in S.CODES_SCHEMA.items():
            if col not in codes.columns:
                codes = codes.with_columns(pl.lit(None, dtype=dtype).alias(col))
        cols = list(S.CODES_SCHEMA) + [c for c in codes.columns if c not in S.CODES_SCHEMA]
        codes = codes.select(cols).with_columns(
            [pl.col(c).cast(t) for c, t in S.CODES_SCHEMA.items()]
        )
        codes = codes.unique(S.CODE, keep="first", maintain_order=True).sort(S.CODE)
        write_meds_parquet(codes, self.tmp_root / S.CODES_FILE, S.MEDSCodeMetadataSchema,
                           what=S.CODES_FILE, atomic=False)

    def write_splits(self, splits: pl.DataFrame) -> None:
        bad = set(splits[S.SPLIT].unique().to_list()) - set(S.SPLITS)
        if bad:
            raise ValueError(f"subject_splits: unknown split name(s) {sorted(bad)}; allowed {S.SPLITS}")
        splits = splits.select(
            pl.col(S.SUBJECT_ID).cast(pl.Int64), pl.col(S.SPLIT).cast(pl.String)
        ).sort(S.SUBJECT_ID)
        write_meds_parquet(splits, self.tmp_root / S.SPLITS_FILE, S.MEDSSubjectSplitSchema,
                           what=S.SPLITS_FILE, atomic=False)

    def write_dataset_json(self, meta: dict[str, Any]) -> None:
        """Write metadata/dataset.json; MEDS version, ETL name and version and the creation time
        (now, UTC) are filled in unless given. The result must pass `meds.DatasetMetadataSchema`
        (e.g. `created_at` an ISO 8601 date-time, not null)."""
        meta = json.loads(json.dumps({
            "meds_version": S.MEDS_VERSION,
            "etl_name": "nightingale",
            "etl_version": etl_version(),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **meta,
        }, default=str))
        problem = dataset_metadata_problem(meta)
        if problem:
            raise ValueError(f"{S.DATASET_FILE}: does not fit meds.DatasetMetadataSchema: {problem}")
        (self.tmp_root / S.DATASET_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        self._wrote_json = True


def dataset_metadata_problem(meta: Any) -> str | None:
    """Why `meta` fails `meds.DatasetMetadataSchema` (naming the field), or None if it passes."""
    if not isinstance(meta, dict):
        return f"expected a JSON object, got {type(meta).__name__}"
    try:
        S.MEDSDatasetMetadataSchema.validate(meta)
    except Exception:  # noqa: BLE001 - flexible_schema wraps jsonschema's error; find the field below
        import jsonschema

        validator = jsonschema.Draft202012Validator(S.MEDSDatasetMetadataSchema.schema())
        errors = sorted(validator.iter_errors(meta), key=lambda e: list(e.path))
        if not errors:
            return "fails meds.DatasetMetadataSchema"
        e = errors[0]
        field = ".".join(str(p) for p in e.path) or "(root)"
        return f"field {field!r}: {e.message}"
    created = meta.get("created_at")  # the schema says date-time but does not check the format
    if created is not None:
        try:
            dt.datetime.fromisoformat(created)
        except ValueError:
            return f"field 'created_at': {created!r} is not an ISO 8601 date-time"
    return None


def observation_end(dataset: MEDSDataset) -> dt.datetime | None:
    """The time every living subject of `dataset` is observed until, when its dataset.json says
    (`observation_end`, naive ISO 8601); None otherwise."""
    value = dataset.metadata().get("observation_end")
    if value is None:
        return None
    try:
        end = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{dataset.root / S.DATASET_FILE}: field 'observation_end': {value!r} is not an "
                         "ISO 8601 date-time") from None
    return end.replace(tzinfo=None) if end.tzinfo is None else end.astimezone(dt.timezone.utc).replace(tzinfo=None)
