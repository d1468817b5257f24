"""Utility on the model's own tasks: the supervised baseline trained on synthetic labels and tested
on real held-out ones (TSTR), against the same baseline trained on real training labels (TRTR).

`utility.py` asks one question of a whole record (does it hold a death?). This asks the questions
the model is gated on (`mortality_1y`, ...): the task's own labelling (tasks.build_labels, with
the cohort's end of follow-up as its observation end) runs on the synthetic cohort, and the
evaluation's supervised baseline (baseline.py: counts, last values, age, statics before each
prediction time) is fitted on those labels and scored by AUROC on the task's held-out real labels.
Synthetic subject ids are moved out of the real ones' way (SYNTHETIC_ID_OFFSET) so that both
cohorts' events can be featurised together. Delphi-2M reports TSTR within about 3 AUROC points of
TRTR; a ratio near 1 means the cohort carries the signal of the real data for that task.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import polars as pl
from sklearn.metrics import roc_auc_score

from nightingale import schema as S
from nightingale.data.meds_io import MEDSDataset
from nightingale.evaluation.baseline import fit_and_predict
from nightingale.evaluation.tasks import Task, build_labels, label_dataset

log = logging.getLogger(__name__)
SYNTHETIC_ID_OFFSET = 10**15
COLUMNS = {S.SUBJECT_ID: pl.Int64, S.TIME: pl.Datetime("us"), S.CODE: pl.String, S.NUMERIC_VALUE: pl.Float32}


def _events(lf: pl.LazyFrame) -> pl.LazyFrame:
    return lf.select(*(pl.col(c).cast(t) for c, t in COLUMNS.items()))


def _auc(labels: pl.DataFrame, p) -> float:
    return float(roc_auc_score(labels[S.BOOLEAN_VALUE].to_numpy(), p))


def task_utility(cohort: MEDSDataset | pl.DataFrame, reference: MEDSDataset, task: Task,
                 cohort_end: dt.datetime | None = None) -> dict[str, Any]:
    """TSTR and TRTR AUROC of `task` (see the module docstring) for a cohort (a MEDS dataset or its
    events); None where a side has one class. Keys: auc_tstr, auc_trtr, ratio, labels_synth,
    positives_synth, labels_held_out, positives_held_out."""
    lf = cohort.lazy() if isinstance(cohort, pl.DataFrame) else cohort.scan()
    synth = _events(lf).with_columns(pl.col(S.SUBJECT_ID) + SYNTHETIC_ID_OFFSET).collect()
    y_synth = build_labels(task, synth, observation_end=cohort_end)
    y_train = label_dataset(task, reference, S.TRAIN)
    y_held = label_dataset(task, reference, S.HELD_OUT)
    out: dict[str, Any] = {"labels_synth": y_synth.height, "positives_synth": int(y_synth[S.BOOLEAN_VALUE].sum()),
                           "labels_held_out": y_held.height, "positives_held_out": int(y_held[S.BOOLEAN_VALUE].sum())}
    events = pl.concat([_events(reference.scan()).collect(), synth])
    one_class = y_held[S.BOOLEAN_VALUE].n_unique() < 2
    for side, labels in (("tstr", y_synth), ("trtr", y_train)):
        if one_class or labels[S.BOOLEAN_VALUE].n_unique() < 2:
            out[f"auc_{side}"] = None
            continue
        out[f"auc_{side}"] = _auc(y_held, fit_and_predict(events, labels, y_held, name=f"{task.name} ({side})"))
    t, r = out["auc_tstr"], out["auc_trtr"]
    out["ratio"] = t / r if t is not None and r else None
    log.info("task utility %s: TSTR %s, TRTR %s", task.name, t, r)
    return out
