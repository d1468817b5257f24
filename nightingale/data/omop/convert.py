"""Convert an OMOP CDM 5.3/5.4 database to a MEDS 0.4 dataset (`convert_omop`).

Stages: read persons -> apply the privacy policy (opt-out, pseudonyms) -> assign each subject a
split by a seeded hash of its OMOP person_id and a shard within the split -> turn each clinical
table into events (one table in memory at a time, narrow columns only), written to scratch parquet
sorted by shard -> write each shard (subjects sorted, events sorted by time, static rows first) ->
codes, splits and dataset.json. All of it happens inside `MEDSWriter`, so a failure at any point
leaves no output folder.

Implausible times: an event more than `max_days_before_birth` (default 365) before its subject's
birth, or after `max_time` (default: the moment of conversion), is dropped; the counts per table are
logged and recorded in dataset.json under ``dropped_events``. Events of persons absent from the
person table (or opted out) are dropped too, counted the same way.
"""

from __future__ import annotations

import datetime as dt
import logging
import time as _time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.config import check_ints
from nightingale.data.meds_io import MEDSWriter
from nightingale.data.omop.concepts import CONCEPT_ID, OMOP_TABLE, ConceptMap, build_codes
from nightingale.data.omop.events import (
    BIRTH_TIME,
    ORDER,
    ORDER_STATIC,
    PERSON_ID,
    death_events,
    person_events,
    read_persons,
    table_events,
)
from nightingale.data.omop.tables import DEATH, EVENT_TABLES, CDMSource, OMOPInputError
from nightingale.data.privacy import PrivacyPolicy

log = logging.getLogger(__name__)

SHARD = "__shard"
SCRATCH = "_scratch"
CDM_VERSIONS = ("auto", "5.3", "5.4")


@dataclass
class OMOPImportConfig:
    """Options of `convert_omop` (defaults mirror configs/data/omop.yaml)."""

    cdm: str | Path
    out: str | Path
    cdm_version: str = "auto"
    shard_size: int = 10_000
    seed: int = 0
    split_fractions: dict[str, float] = field(
        default_factory=lambda: {S.TRAIN: 0.8, S.TUNING: 0.1, S.HELD_OUT: 0.1}
    )
    overwrite: bool = False
    max_days_before_birth: int = 365
    max_time: dt.datetime | None = None

    def __post_init__(self) -> None:
        self.cdm_version = str(self.cdm_version)
        if self.cdm_version not in CDM_VERSIONS:
            raise ValueError(f"cdm_version: {self.cdm_version!r} is not one of {CDM_VERSIONS}")
        check_ints(self, ("shard_size",), "OMOPImportConfig")
        fractions = dict(self.split_fractions)
        if set(fractions) != set(S.SPLITS) or any(v < 0 for v in fractions.values()):
            raise ValueError(
                f"split_fractions: need non-negative fractions for exactly {S.SPLITS}, got {fractions}"
            )
        if abs(sum(fractions.values()) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions: must sum to 1, got {sum(fractions.values())}")
        self.split_fractions = fractions
        check_ints(self, ("max_days_before_birth",), "OMOPImportConfig", low=0)


def split_hash(ids: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) values from int64 ids and a seed (splitmix64; stable across versions)."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_subjects(
    persons: pl.DataFrame, policy: PrivacyPolicy, cfg: OMOPImportConfig
) -> tuple[pl.DataFrame, list[str]]:
    """person_id -> subject_id, split and shard (index into the returned shard names).

    Splits hash the OMOP person_id (not the pseudonym), so they do not change with the key.
    """
    subjects = policy.apply(
        persons.with_columns(pl.col(PERSON_ID).alias(S.SUBJECT_ID)), S.SUBJECT_ID
    )
    if subjects.is_empty():
        raise OMOPInputError(
            "every person is on the opt-out list; nothing to convert (empty dataset)"
        )
    u = split_hash(subjects[PERSON_ID].to_numpy(), cfg.seed)
    edges = np.cumsum([cfg.split_fractions[s] for s in S.SPLITS])
    which = np.minimum(np.searchsorted(edges, u, side="right"), len(S.SPLITS) - 1)
    subjects = subjects.with_columns(pl.Series(S.SPLIT, np.asarray(S.SPLITS)[which]))
    names: list[str] = []
    parts = []
    for split in S.SPLITS:
        part = subjects.filter(pl.col(S.SPLIT) == split).sort(S.SUBJECT_ID)
        n_shards = -(-part.height // cfg.shard_size)
        offset = len(names)
        names += [f"{split}/{k}" for k in range(n_shards)]
        parts.append(
            part.with_columns((pl.int_range(pl.len()) // cfg.shard_size + offset).alias(SHARD))
        )
    return pl.concat(parts), names


def _keep_plausible(
    events: pl.DataFrame, subjects: pl.DataFrame, cfg: OMOPImportConfig, max_time: dt.datetime
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Attach subject ids and shards; drop orphan, timeless and implausibly timed events."""
    joined = events.join(
        subjects.select(PERSON_ID, S.SUBJECT_ID, BIRTH_TIME, SHARD), on=PERSON_ID, how="inner"
    )
    static = pl.col(ORDER) == ORDER_STATIC
    t = pl.col(S.TIME)
    early = t < pl.col(BIRTH_TIME) - pl.duration(days=cfg.max_days_before_birth)
    counts = joined.select(
        no_time=(~static & t.is_null()).sum(),
        before_birth=(~static & early).sum(),
        after_max_time=(~static & (t > max_time)).sum(),
    ).row(0, named=True)
    counts["unknown_person"] = events.height - joined.height
    kept = joined.filter(static | (t.is_not_null() & ~early & (t <= max_time)))
    return kept, {k: int(v) for k, v in counts.items() if v}


def convert_omop(cfg: OMOPImportConfig, policy: PrivacyPolicy | None = None) -> dict[str, Any]:
    """Convert `cfg.cdm` to a MEDS dataset at `cfg.out`; returns the dataset.json contents.

    Raises OMOPInputError (a ValueError) with the table, column and value at fault on bad input,
    and FileExistsError if `cfg.out` exists without `overwrite`; no output is left either way.
    """
    policy = policy or PrivacyPolicy()
    started = _time.perf_counter()
    max_time = cfg.max_time or dt.datetime.now()
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already exists; choose another output or pass overwrite")
    with CDMSource.open(cfg.cdm) as source, MEDSWriter(out, overwrite=cfg.overwrite) as writer:
        version = source.detect_version()
        if cfg.cdm_version != "auto" and version not in ("unknown", cfg.cdm_version):
            log.warning(
                "cdm_version %s was asked but the tables look like %s", cfg.cdm_version, version
            )
        version = version if cfg.cdm_version == "auto" else cfg.cdm_version
        log.info(
            "OMOP CDM %s at %s (%s): tables %s", version, source.path, source.kind, source.tables()
        )
        persons = read_persons(source)
        subjects, shard_names = assign_subjects(persons, policy, cfg)
        removed = persons.height - subjects.height
        concepts = ConceptMap.load(source)

        scratch = writer.tmp_root / SCRATCH
        scratch.mkdir()
        parts: list[tuple[str, Any]] = [("person", lambda: person_events(persons, concepts))]
        if source.has(DEATH.name):
            parts.append((DEATH.name, lambda: death_events(source, concepts)))
        for spec in EVENT_TABLES:
            if source.has(spec.table):
                parts.append((spec.table, lambda spec=spec: table_events(source, spec, concepts)))
            else:
                log.warning("no %s table in %s: skipped", spec.table, source.path)
        rows_in: dict[str, int] = {"person": persons.height}
        events_out: dict[str, int] = {}
        dropped: dict[str, dict[str, int]] = {}
        code_rows = []
        for table, make in parts:
            events = make()
            if table != "person":
                rows_in[table] = source.row_count(table)
            kept, drops = _keep_plausible(events, subjects, cfg, max_time)
            if drops:
                dropped[table] = drops
                log.warning("%s: dropped events %s", table, drops)
            events_out[table] = kept.height
            log.info("%s: %d rows -> %d events", table, rows_in[table], kept.height)
            code_rows.append(kept.select(S.CODE, S.DESCRIPTION, CONCEPT_ID, pl.lit(table).alias(OMOP_TABLE)).unique())
            kept.drop(PERSON_ID, BIRTH_TIME, S.DESCRIPTION, CONCEPT_ID).sort(SHARD).write_parquet(
                scratch / f"{table}.parquet", row_group_size=100_000
            )

        all_events = pl.scan_parquet(sorted(scratch.glob("*.parquet")))
        for k, name in enumerate(shard_names):
            shard = (
                all_events.filter(pl.col(SHARD) == k)
                .sort([S.SUBJECT_ID, S.TIME, ORDER, S.CODE], nulls_last=False)
                .drop(SHARD, ORDER)
            )
            writer.write_shard(name, shard)
        for f in scratch.iterdir():
            f.unlink()
        scratch.rmdir()

        codes = build_codes(code_rows, source, concepts)
        writer.write_codes(codes)
        writer.write_splits(subjects.select(S.SUBJECT_ID, S.SPLIT))
        n_events = sum(events_out.values())
        meta = {
            "dataset_name": Path(cfg.cdm).name,
            "source": {
                "format": "OMOP CDM",
                "path": str(Path(cfg.cdm).resolve()),
                "kind": source.kind,
            },
            "cdm_version": version,
            "table_rows": rows_in,
            "table_events": events_out,
            "dropped_events": dropped,
            "subjects": subjects.height,
            "events": n_events,
            "codes": codes.height,
            "shards": shard_names,
            "split_counts": dict(subjects.group_by(S.SPLIT).len().iter_rows()),
            "privacy": policy.describe(removed_subjects=removed),
            "options": {k: v for k, v in asdict(cfg).items() if k not in ("cdm", "out")},
            "code_format": "VOCABULARY_ID//concept_code; OMOP//concept_id when not in CONCEPT; "
            "SOURCE//<table>//<source_value> for concept 0; units in the `unit` column",
        }
        writer.write_dataset_json(meta)
    log.info(
        "OMOP -> MEDS: %d subjects, %d events, %d codes, %d shards in %.1f s -> %s",
        subjects.height, n_events, codes.height, len(shard_names), _time.perf_counter() - started, out,
    )  # fmt: skip
    return meta
