"""Tasks defined outside Nightingale: ACES task configs and MEDS label files.

MEDS users define prediction tasks with ACES (`es-aces`: predicates, a trigger and windows) and
exchange labels as MEDS label parquet files. Both can stand beside the built-in task YAMLs in a
task folder given to the evaluation; `tasks.load_task` recognises them by their keys.

An ACES task is an ordinary ACES config, runnable by `aces-cli` as it is; what Nightingale needs
beyond ACES sits in its free-form `metadata` section, which ACES ignores:

    metadata:
      description: Death within a year of a clinical event.
      nightingale:            # all optional
        name: mortality_1y    # default: the file name
        one_per_subject: true # draw one of ACES's rows per subject (seeded, as the built-in draw)
        draws_per_subject: 1  # with one_per_subject: independent draws per subject
        seed: 0
        outcome_codes: [MEDS_DEATH]   # default: derived from the label predicate
        horizon_days: 365             # default: derived from the label window
    predicates: {death: {code: MEDS_DEATH}, ...}
    trigger: ...
    windows: ...

Labels come from `es-aces` itself (predicates over each MEDS shard, then its window query), one
row per trigger ACES keeps. The zero-shot forecast needs what the model must roll out for: which
codes make the outcome and over what horizon. They are derived from the config where it says so
exactly: the label predicate's codes (exact, `any` lists, `or(...)` of those, or a `^PREFIX`
regex as `PREFIX*`) and a label window that starts at the prediction time and ends a fixed time
later. Anything else (value ranges, event-bound label windows, gap windows before the label
window) must be given in `metadata.nightingale`, and the report says the forecast approximates it.

A label-file task points at a MEDS label file (or folder) of held-out rows; the model is scored on
exactly those rows. Optional `train_labels` give the supervised baseline its training rows.

    name: my_mortality
    labels: labels/mortality_held_out.parquet   # relative to this YAML file
    train_labels: labels/mortality_train.parquet
    outcome_codes: [MEDS_DEATH]
    horizon_days: 365
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nightingale import schema as S
from nightingale.config import check_fields, field_names
from nightingale.data.codes import check_code_patterns
from nightingale.data.meds_io import MEDSDataset, observation_end
from nightingale.evaluation.labels import (
    LabelReport,
    draw_end,
    draw_one_per_subject,
    draw_rule,
)

log = logging.getLogger(__name__)

ACES_KEYS = ("predicates", "trigger", "windows")
_PREFIX_REGEX = re.compile(r"^\^([A-Za-z0-9_/\-.:]+)$")


def is_aces_config(mapping: Any) -> bool:
    return isinstance(mapping, Mapping) and all(k in mapping for k in ("trigger", "windows"))


def is_label_file_task(mapping: Any) -> bool:
    return isinstance(mapping, Mapping) and "labels" in mapping


# --- ACES ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AcesTask:
    """A task whose labels `es-aces` extracts from an ACES config (see the module docstring)."""

    name: str
    config_path: str
    outcome_codes: tuple[str, ...]
    horizon_days: float
    description: str = ""
    one_per_subject: bool = False
    draws_per_subject: int = 1
    seed: int = 0
    new_only: bool = False  # ACES expresses exclusions itself; the oracle matching reads this
    forecast_note: str = ""  # how the zero-shot outcome and horizon relate to the ACES windows
    source: str = "aces"

    def label_split(self, dataset: MEDSDataset, split: str):
        return aces_labels(self, dataset, split)


def _fail(source: str, msg: str) -> ValueError:
    return ValueError(f"{source}: {msg}")


def load_aces_task(path: Path, mapping: Mapping[str, Any]) -> AcesTask:
    """Parse an ACES config with `es-aces` and derive the zero-shot outcome and horizon."""
    from aces.config import TaskExtractorConfig

    source = str(path)
    try:
        cfg = TaskExtractorConfig.load(config_path=path)
    except Exception as e:  # noqa: BLE001 - ACES raises many types for a bad config
        raise _fail(source, f"not a valid ACES task config: {type(e).__name__}: {e}") from None
    meta = mapping.get("metadata") or {}
    ours = (meta.get("nightingale") if isinstance(meta, Mapping) else None) or {}
    if not isinstance(ours, Mapping):
        raise _fail(source, "field 'metadata.nightingale': must be a mapping")
    allowed = {"name", "one_per_subject", "draws_per_subject", "seed", "outcome_codes", "horizon_days"}
    check_fields(ours, allowed, f"{source}: field 'metadata.nightingale'")
    if cfg.label_window is None:
        raise _fail(source, "field 'windows': no window has a `label`; a binary task needs one")
    if cfg.index_timestamp_window is None:
        raise _fail(source, "field 'windows': no window has an `index_timestamp`; it sets the prediction time")

    notes = []
    codes = ours.get("outcome_codes")
    if codes is None:
        codes, why = _outcome_codes(cfg)
        if codes is None:
            raise _fail(source, f"field 'metadata.nightingale.outcome_codes': needed because {why}")
    else:
        notes.append("outcome codes given in metadata.nightingale")
    horizon = ours.get("horizon_days")
    if horizon is None:
        horizon, why = _horizon_days(cfg)
        if horizon is None:
            raise _fail(source, f"field 'metadata.nightingale.horizon_days': needed because {why}")
    else:
        notes.append("horizon given in metadata.nightingale: the forecast approximates the label window")
    description = meta.get("description", "") if isinstance(meta, Mapping) else ""
    if not description and isinstance(mapping.get("description"), str):
        description = mapping["description"]
    name = ours.get("name", path.stem.removesuffix(".aces"))
    try:
        task = AcesTask(
            name=str(name), config_path=str(Path(path).resolve()),
            outcome_codes=tuple(codes) if not isinstance(codes, str) else (codes,),
            horizon_days=float(horizon), description=str(description),
            one_per_subject=ours.get("one_per_subject", False), seed=ours.get("seed", 0),
            draws_per_subject=ours.get("draws_per_subject", 1),
            forecast_note="; ".join(notes) or "outcome and horizon derived from the ACES label window",
        )
    except (TypeError, ValueError) as e:
        raise _fail(source, f"field 'metadata.nightingale': {e}") from None
    _check_common(task, source)
    return task


def _check_common(task, source: str) -> None:
    problem = check_code_patterns(task.outcome_codes)
    if problem or not task.outcome_codes:
        raise _fail(source, f"field 'outcome_codes': {problem or 'must list at least one code'}")
    if not np.isfinite(task.horizon_days) or task.horizon_days <= 0:
        raise _fail(source, f"field 'horizon_days': must be > 0, got {task.horizon_days}")
    for field in ("one_per_subject",):
        if not isinstance(getattr(task, field, False), bool):
            raise _fail(source, f"field '{field}': must be true or false")
    for field, low in (("seed", 0), ("draws_per_subject", 1)):
        v = getattr(task, field, low)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise _fail(source, f"field '{field}': must be an integer >= {low}, got {v!r}")


def _predicate_codes(cfg, name: str) -> tuple[list[str] | None, str]:
    """Codes (exact or ``PREFIX*``) that make predicate `name` true, or None and why not."""
    plain = cfg.plain_predicates
    if name in plain:
        p = plain[name]
        if any(v is not None for v in (p.value_min, p.value_max)) or p.other_cols:
            return None, f"predicate {name!r} constrains values or other columns"
        code = p.code
        if isinstance(code, str):
            return [code], ""
        if isinstance(code, Mapping) and code.get("any"):
            return [str(c) for c in code["any"]], ""
        if isinstance(code, Mapping) and isinstance(code.get("regex"), str):
            m = _PREFIX_REGEX.match(code["regex"])
            if m:
                return [m.group(1) + "*"], ""
            return None, f"predicate {name!r} is a regex other than a plain ^PREFIX"
        return None, f"predicate {name!r} has an unsupported code form {code!r}"
    derived = cfg.derived_predicates
    if name in derived:
        d = derived[name]
        if not d.expr.strip().lower().startswith("or("):
            return None, f"predicate {name!r} is {d.expr!r}, not an or(...) of codes"
        codes: list[str] = []
        for sub in d.input_predicates:
            c, why = _predicate_codes(cfg, sub)
            if c is None:
                return None, why
            codes += c
        return codes, ""
    return None, f"predicate {name!r} is not defined"


def _outcome_codes(cfg) -> tuple[list[str] | None, str]:
    window = cfg.windows[cfg.label_window]
    return _predicate_codes(cfg, window.label)


def _offset(cfg, window: str, endpoint: str, depth: int = 0) -> dt.timedelta | None:
    """Time of a window endpoint relative to the trigger, or None where it is bound to an event."""
    from aces.utils import parse_timedelta

    if depth > 32:
        return None
    w = cfg.windows[window]
    parsed = w._parsed_start if endpoint == "start" else w._parsed_end  # es-aces 0.7 internals
    if parsed is None or parsed.get("event_bound"):
        return None
    ref = parsed["referenced"]
    off = parse_timedelta(parsed["offset"]) if parsed.get("offset") else dt.timedelta(0)
    if parsed.get("occurs_before"):
        off = -off
    if ref == "trigger":
        base = dt.timedelta(0)
    elif ref in ("start", "end"):
        base = _offset(cfg, window, ref, depth + 1)
    else:
        other, _, other_end = ref.partition(".")
        if other not in cfg.windows or other_end not in ("start", "end"):
            return None
        base = _offset(cfg, other, other_end, depth + 1)
    return None if base is None else base + off


def _horizon_days(cfg) -> tuple[float | None, str]:
    label = cfg.label_window
    index_w = cfg.index_timestamp_window
    t0 = _offset(cfg, index_w, cfg.windows[index_w].index_timestamp)
    start, end = _offset(cfg, label, "start"), _offset(cfg, label, "end")
    if t0 is None:
        return None, f"the prediction time (window {index_w!r}) is bound to an event, not the trigger"
    if start is None or end is None:
        return None, f"the label window {label!r} is bound to an event, not a fixed length"
    if start != t0:
        return None, (f"the label window {label!r} starts {start - t0} after the prediction time "
                      "(a gap); the forecast counts outcomes from the prediction time")
    if end <= t0:
        return None, f"the label window {label!r} ends at or before the prediction time"
    return (end - t0) / dt.timedelta(days=1), ""


def _check_predicates_in_data(task: AcesTask, cfg, dataset: MEDSDataset) -> None:
    """Each plain predicate must match at least one code the dataset has (codes.parquet, or the
    data when that is empty): a typo would otherwise give all-negative labels silently. MEDS's
    reserved codes (MEDS_BIRTH, MEDS_DEATH) are exempt: a dataset without deaths is not a typo."""
    known = dataset.codes()[S.CODE].drop_nulls()
    if known.is_empty():
        known = dataset.scan().select(pl.col(S.CODE).unique()).collect()[S.CODE]
    frame = pl.DataFrame({S.CODE: known.cast(pl.String)})
    for name, p in cfg.plain_predicates.items():
        if isinstance(p.code, str) and (p.code.startswith("_") or p.code in (S.BIRTH_CODE, S.DEATH_CODE)):
            continue  # ACES's own predicates; MEDS's reserved codes may rightly be absent (no deaths)
        hits = frame.select(_code_only(p).alias("hit"))["hit"].sum()  # the code part only
        if not hits:
            raise _fail(task.config_path, f"field 'predicates.{name}': code {p.code!r} matches no code in "
                        f"{dataset.root} (checked against {S.CODES_FILE})")


def _code_only(p) -> pl.Expr:
    from aces.config import PlainPredicateConfig

    return PlainPredicateConfig(code=p.code).MEDS_eval_expr()


def aces_labels(task: AcesTask, dataset: MEDSDataset, split: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """ACES's labels for the subjects of one split: (labels in the MEDS label schema, counts)."""
    from aces import predicates, query
    from aces.config import TaskExtractorConfig
    from omegaconf import OmegaConf

    cfg = TaskExtractorConfig.load(config_path=Path(task.config_path))
    _check_predicates_in_data(task, cfg, dataset)
    ids = dataset.subjects(split)
    id_frame = pl.DataFrame({S.SUBJECT_ID: ids.cast(pl.Int64)})
    frames = []
    for path in dataset.shards():
        present = pl.scan_parquet(path).select(S.SUBJECT_ID).unique().collect()
        if present.join(id_frame, on=S.SUBJECT_ID).is_empty():
            continue
        data_cfg = OmegaConf.create({"path": str(path), "standard": "meds"})
        result = query.query(cfg, predicates.get_predicates_df(cfg, data_cfg))
        if result.is_empty():
            continue
        frames.append(result.select(
            pl.col(S.SUBJECT_ID).cast(pl.Int64),
            pl.col("index_timestamp").cast(pl.Datetime("us")).alias(S.PREDICTION_TIME),
            (pl.col("label") > 0).alias(S.BOOLEAN_VALUE),
        ).join(id_frame, on=S.SUBJECT_ID))
    rows = pl.concat(frames) if frames else pl.DataFrame(schema=S.LABEL_SCHEMA)
    candidates = rows.height
    end = observation_end(dataset)
    if task.one_per_subject:
        rows = draw_one_per_subject(rows, task.seed, draw_end(task.horizon_days, end), draws=task.draws_per_subject)
    labels = rows.select([pl.col(c).cast(t) for c, t in S.LABEL_SCHEMA.items()]).sort(
        S.SUBJECT_ID, S.PREDICTION_TIME)
    report = label_report(task.name, "aces", labels, subjects=int(ids.len()), candidates=candidates,
                          rule="labels extracted by es-aces from " + Path(task.config_path).name
                          + (f"; {draw_rule(end is not None, task.draws_per_subject)}" if task.one_per_subject else ""))
    log.info("task %s (ACES): %d rows, %d kept, %d positive", task.name, candidates, labels.height,
             report["positives"])
    return labels, report


def label_report(task: str, source: str, labels: pl.DataFrame, *, subjects: int, candidates: int,
                 rule: str) -> dict[str, Any]:
    """A `labels.LabelReport` for labels made elsewhere (their source did any censoring), as a
    dict with where they came from and by what rule."""
    report = LabelReport(task=task, subjects=subjects, candidates=candidates, excluded_new_only=0,
                         censored=0, kept=labels.height, positives=int(labels[S.BOOLEAN_VALUE].sum()),
                         censoring=f"by the {source} definition, not here")
    return {**report.as_dict(), "source": source, "rule": rule}


# --- MEDS label files ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelFileTask:
    """Scores the model on exactly the rows of a MEDS label file (see the module docstring)."""

    name: str
    labels: str
    outcome_codes: tuple[str, ...]
    horizon_days: float
    train_labels: str | None = None
    description: str = ""
    new_only: bool = False
    source: str = "label_file"

    def label_split(self, dataset: MEDSDataset, split: str):
        if split == S.HELD_OUT:
            path = self.labels
        elif split == S.TRAIN and self.train_labels:
            path = self.train_labels
        else:
            raise ValueError(f"task {self.name}: no {split} labels given (field "
                             f"'{'train_labels' if split == S.TRAIN else 'labels'}')")
        labels = read_label_file(path, dataset, split)
        report = label_report(self.name, "label_file", labels, subjects=int(labels[S.SUBJECT_ID].n_unique()),
                              candidates=labels.height, rule=f"rows of the MEDS label file {Path(path).name}, as given")
        return labels, report


def load_label_file_task(path: Path, mapping: Mapping[str, Any]) -> LabelFileTask:
    source = str(path)
    fields = field_names(LabelFileTask) - {"source"}
    check_fields(mapping, fields, source)
    for required in ("name", "labels", "outcome_codes", "horizon_days"):
        if required not in mapping:
            raise _fail(source, f"field '{required}' is required")
    m = dict(mapping)
    for key in ("labels", "train_labels"):
        if m.get(key) is not None:
            p = Path(str(m[key]))
            m[key] = str(p if p.is_absolute() else (path.parent / p).resolve())
            if not Path(m[key]).exists():
                raise _fail(source, f"field '{key}': {m[key]} does not exist")
    codes = m["outcome_codes"]
    m["outcome_codes"] = (codes,) if isinstance(codes, str) else tuple(codes)
    h = m["horizon_days"]
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise _fail(source, f"field 'horizon_days': must be a number of days, got {h!r}")
    m["horizon_days"] = float(h)
    task = LabelFileTask(**m)
    _check_common(task, source)
    return task


def read_label_file(path: str | Path, dataset: MEDSDataset, split: str) -> pl.DataFrame:
    """A MEDS label file (or a folder of them) as (subject_id, prediction_time, boolean_value),
    checked: the columns and types of the MEDS label schema, no nulls, every subject in `split`.
    Errors name the file and the field."""
    path = Path(path)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: no label parquet files in this folder")
    frames = []
    for f in files:
        try:
            schema = pl.read_parquet_schema(f)
        except Exception as e:  # noqa: BLE001 - any reader failure: not a parquet file
            raise ValueError(f"{f}: not a readable parquet file ({e})") from None
        for col in S.LABEL_SCHEMA:
            if col not in schema:
                raise ValueError(f"{f}: field '{col}' is missing; a MEDS label file has "
                                 f"{list(S.LABEL_SCHEMA)} (have {list(schema)})")
        checks = ((S.SUBJECT_ID, lambda t: t.is_integer(), "an integer (int64)"),
                  (S.PREDICTION_TIME, lambda t: isinstance(t, pl.Datetime) and t.time_zone is None,
                   "a naive timestamp (timestamp[us])"),
                  (S.BOOLEAN_VALUE, lambda t: t == pl.Boolean, "boolean"))
        for col, ok, want in checks:
            if not ok(schema[col]):
                raise ValueError(f"{f}: field '{col}' is {schema[col]}; expected {want}")
        frame = pl.read_parquet(f, columns=list(S.LABEL_SCHEMA))
        for col in S.LABEL_SCHEMA:
            nulls = frame[col].null_count()
            if nulls:
                raise ValueError(f"{f}: field '{col}' has {nulls} null value(s); labels must be complete")
        frames.append(frame.select([pl.col(c).cast(t) for c, t in S.LABEL_SCHEMA.items()])
                      .with_columns(pl.lit(str(f)).alias("_file")).with_row_index("_row"))
    rows = pl.concat(frames)
    allowed = pl.DataFrame({S.SUBJECT_ID: dataset.subjects(split).cast(pl.Int64)})
    outside = rows.join(allowed, on=S.SUBJECT_ID, how="anti")
    if outside.height:
        first = outside.row(0, named=True)
        raise ValueError(f"{first['_file']}: field '{S.SUBJECT_ID}': {outside[S.SUBJECT_ID].n_unique()} "
                         f"subject(s) are not in the {split} split of {dataset.root} (first at row "
                         f"{first['_row']}); score a model only on subjects it was not trained on")
    return rows.drop("_file", "_row").unique(maintain_order=True).sort(S.SUBJECT_ID, S.PREDICTION_TIME)
