"""MEDS validation of the `metadata/` files: `codes.parquet`, `dataset.json` and
`subject_splits.parquet` (the splits against the subjects found in the data shards).
What is an error and what a warning is listed in `validate.py`."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from nightingale import schema as S
from nightingale.data.validate_report import MAX_EXAMPLES, ROW, SHARD, Findings


def read_metadata(root: Path, rel: str, findings: Findings) -> pl.DataFrame | None:
    """The parquet file `rel` under `root`, or None (and an error) if it cannot be read."""
    try:
        return pl.read_parquet(root / rel)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable file
        findings.error(f"not a readable parquet file: {exc}", file=rel)
        return None


def check_metadata(root: Path, findings: Findings) -> pl.Series | None:
    """Check that the metadata files exist, `codes.parquet`'s code column and `dataset.json`;
    return the codes `codes.parquet` lists (None where it is missing or malformed)."""
    known_codes = None
    codes_path = root / S.CODES_FILE
    if not codes_path.exists():
        findings.error("metadata file is missing (expected columns code, description, "
                       "parent_codes)", file=S.CODES_FILE)
    elif (codes := read_metadata(root, S.CODES_FILE, findings)) is not None:
        if S.CODE not in codes.columns or codes.schema[S.CODE] != pl.String:
            findings.error(f"expected a string column {S.CODE!r}; have {dict(codes.schema)}",
                           file=S.CODES_FILE, column=S.CODE)
        else:
            known_codes = codes[S.CODE].drop_nulls()
            n_dup = known_codes.is_duplicated().sum()
            if n_dup:
                findings.warn(f"{n_dup} rows repeat a code", file=S.CODES_FILE, column=S.CODE)
    if not (root / S.SPLITS_FILE).exists():
        findings.error("metadata file is missing (expected columns subject_id, split)",
                       file=S.SPLITS_FILE)
    _check_dataset_file(root, findings)
    return known_codes


def _check_dataset_file(root: Path, findings: Findings) -> None:
    meta_path = root / S.DATASET_FILE
    if not meta_path.exists():
        findings.warn("metadata file is missing (MEDS 0.4 expects dataset_name, meds_version, ...)",
                      file=S.DATASET_FILE)
        return
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        findings.error(f"not valid JSON: {exc}", file=S.DATASET_FILE)
        return
    if not isinstance(meta, dict):
        findings.error("expected a JSON object", file=S.DATASET_FILE)
    elif "meds_version" not in meta:
        findings.warn("no 'meds_version' key", file=S.DATASET_FILE)


def check_splits(root: Path, per_subject: pl.DataFrame, names: list[str],
                 findings: Findings) -> pl.DataFrame | None:
    """Check subject_splits.parquet against the data subjects (`per_subject`: subject_id, first
    row and shard index into `names`); return (subject_id, split) or None if unusable."""
    path = root / S.SPLITS_FILE
    if not path.exists():
        return None  # already an error
    splits = read_metadata(root, S.SPLITS_FILE, findings)
    if splits is None:
        return None
    for col, dtype in S.SPLITS_SCHEMA.items():
        if col not in splits.columns or splits.schema[col] != dtype:
            got = splits.schema.get(col, "missing")
            findings.error(f"column {col!r} is {got}; expected {dtype}", file=S.SPLITS_FILE,
                           column=col)
            return None
    splits = splits.select(S.SUBJECT_ID, S.SPLIT).with_row_index(ROW)
    bad = splits.filter(~pl.col(S.SPLIT).is_in(list(S.SPLITS)) | pl.col(S.SPLIT).is_null())
    if bad.height:
        r = bad.row(0, named=True)
        findings.error(f"split {r[S.SPLIT]!r} for subject {r[S.SUBJECT_ID]}; expected one of "
                       f"{list(S.SPLITS)} ({bad.height} such row(s))", file=S.SPLITS_FILE,
                       column=S.SPLIT, row=r[ROW])
    repeated = splits.filter(~pl.col(S.SUBJECT_ID).is_first_distinct())
    if repeated.height:
        r = repeated.row(0, named=True)
        findings.error(f"subject {r[S.SUBJECT_ID]} is listed more than once; every subject needs "
                       "exactly one split", file=S.SPLITS_FILE, column=S.SUBJECT_ID, row=r[ROW])
    data_subjects = per_subject.unique(S.SUBJECT_ID, keep="first")
    no_split = data_subjects.join(splits, on=S.SUBJECT_ID, how="anti").sort(S.SUBJECT_ID)
    if no_split.height:
        r = no_split.row(0, named=True)
        findings.error(
            f"subject {r[S.SUBJECT_ID]} (first row {r[ROW]} of {names[r[SHARD]]}) has no "
            f"split; {no_split.height} data subject(s) are missing from {S.SPLITS_FILE}",
            file=S.SPLITS_FILE, column=S.SUBJECT_ID)
    no_data = splits.join(data_subjects, on=S.SUBJECT_ID, how="anti")
    if no_data.height:
        findings.warn(f"{no_data.height} subject(s) have a split but no data (e.g. "
                      f"{no_data[S.SUBJECT_ID].head(MAX_EXAMPLES).to_list()})",
                      file=S.SPLITS_FILE, column=S.SUBJECT_ID, row=no_data[ROW][0])
    return splits.unique(S.SUBJECT_ID, keep="first").select(S.SUBJECT_ID, S.SPLIT)
