"""Observability on rank 0: a JSONL metrics file, wandb, a rich progress bar, and MFU.

Metric names are namespaced (`loss/train`, `loss/eval`, `optim/lr`, `optim/grad_norm`,
`throughput/tokens_per_s`, `throughput/mfu`, ...). The JSONL file is the source of truth (one
object per logged step, appended and flushed, so a killed run keeps what it logged); wandb mirrors
it. The wandb run id is kept in the run folder, so a resumed run continues the same wandb run.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
METRICS_FILE, WANDB_ID_FILE = "metrics.jsonl", "wandb_id.txt"

# Peak dense bf16 tensor FLOP/s per device (vendor data sheets), matched by name substring; the
# first match wins, so the more specific names come first.
PEAK_BF16_FLOPS = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),  # SXM; the PCIe card is 756e12: configure train.peak_flops for it
    ("A100", 312e12),
)


def device_peak_flops(precision: str) -> float | None:
    """Peak FLOP/s of this process's GPU for bf16 from PEAK_BF16_FLOPS; None on the CPU or an
    unknown device (then MFU is only reported with a configured `train.peak_flops`)."""
    if not torch.cuda.is_available() or precision != "bf16":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float, n_devices: int) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the devices' peak (PaLM, App. B)."""
    return tokens_per_s * flops_per_token / (peak_flops * n_devices)


class MetricsLogger:
    """Writes metrics on rank 0; a no-op on other ranks."""

    def __init__(self, run_dir: Path, *, enabled: bool, wandb_mode: str, project: str,
                 name: str | None, config: dict[str, Any]):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._file = None
        self._wandb = None
        if not enabled:
            return
        self._file = open(self.path, "a", buffering=1)
        if wandb_mode != "disabled":
            import wandb

            id_file = Path(run_dir) / WANDB_ID_FILE
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
            self._wandb = wandb.init(project=project, name=name, id=run_id, resume="allow",
                                     dir=str(run_dir), mode=wandb_mode, config=config)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update(values)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl, in order (a resumed run appends to it)."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class ProgressDisplay:
    """A rich progress bar with the latest loss and throughput, on rank 0 when enabled."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, info="")
        self.progress.start()

    def update(self, step: int, info: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
