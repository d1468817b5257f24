"""EvalConfig: what the evaluation stage reads from configs/eval.yaml (and an experiment),
validated before any work.

Each section (intrinsic, zeroshot, task_scoring, synthetic) is its own typed config; a section
with `enabled: false`, or left out, is skipped (None), except task scoring, which then takes its
defaults. `engine` stays a mapping: the harness adds the model folder and builds the EngineConfig.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nightingale.config import check_fields, field_names
from nightingale.evaluation.harness import SyntheticConfig, TasksConfig
from nightingale.evaluation.intrinsic import IntrinsicConfig
from nightingale.evaluation.zeroshot import ZeroShotConfig
from nightingale.tokenizer.prepare import REPORT_FILE as PREPARE_REPORT


def _section(cls, m: Mapping[str, Any] | None, name: str):
    """cls(**m) for the section `eval.<name>`, or None when it is absent or `enabled: false`
    (the other fields of a disabled section are not read)."""
    if m is None:
        return None
    m = dict(m)
    if not m.pop("enabled", True):
        return None
    check_fields(m, field_names(cls) | {"enabled"}, f"eval.{name}")
    return cls(**m)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """model_dir: the exported model folder; data_dir: the prepared corpus it was trained on;
    meds_dir: the MEDS dataset (from_mapping reads it from data_dir/prepare_report.json when
    null); task_dir: a folder of task YAMLs or one file (None: no tasks); gate: the gate file.
    intrinsic / zeroshot / synthetic: None skips that part (tasks need zeroshot);
    engine: EngineConfig fields but model_dir; progress: progress bars."""

    model_dir: Path
    data_dir: Path
    meds_dir: Path
    gate: Path
    task_dir: Path | None = None
    intrinsic: IntrinsicConfig | None = None
    zeroshot: ZeroShotConfig | None = None
    task_scoring: TasksConfig = dataclasses.field(default_factory=TasksConfig)
    synthetic: SyntheticConfig | None = None
    engine: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("model_dir", "data_dir", "meds_dir", "gate"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if self.task_dir is not None:
            object.__setattr__(self, "task_dir", Path(self.task_dir))
        object.__setattr__(self, "engine", dict(self.engine or {}))
        object.__setattr__(self, "progress", bool(self.progress))

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> EvalConfig:
        """From the stage's resolved Hydra config (eval/evaluate.py). Keys of other stages (train,
        serve, data: a shared experiment file may set them) are not read."""
        data_dir = Path(m["data_dir"])
        meds_dir = m.get("meds_dir")
        if meds_dir is None:
            rep = data_dir / PREPARE_REPORT
            if not rep.is_file():
                raise ValueError(f"meds_dir: not given and {rep} does not exist to say where the MEDS data are")
            meds_dir = json.loads(rep.read_text())["meds_dir"]
        return cls(
            model_dir=m["model_dir"], data_dir=data_dir, meds_dir=meds_dir, gate=m["gate"],
            task_dir=m.get("task_dir") or None,
            intrinsic=_section(IntrinsicConfig, m.get("intrinsic"), "intrinsic"),
            zeroshot=_section(ZeroShotConfig, m.get("zeroshot"), "zeroshot"),
            task_scoring=_section(TasksConfig, m.get("task_scoring") or {}, "task_scoring") or TasksConfig(),
            synthetic=_section(SyntheticConfig, m.get("synthetic"), "synthetic"),
            engine=m.get("engine") or {}, progress=m.get("progress", True),
        )
