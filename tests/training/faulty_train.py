"""train/train.py with a fault injected by a test, not by a product switch.

    torchrun ... tests/training/faulty_train.py <train/train.py's overrides>

With NIGHTINGALE_TEST_NAN_AT_STEP=N in the environment, the training loss of optimizer step N
(1-based; every micro-batch of it, on every rank) is replaced by NaN, as a diverging run would
produce: the trainer must stop before applying it and keep the last good checkpoint.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import nightingale.training.trainer as trainer

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "train" / "train.py"
NAN_AT_STEP = int(os.environ.get("NIGHTINGALE_TEST_NAN_AT_STEP", "0"))
_build_engine = trainer.build_engine


def build_engine_with_nan(*args, **kwargs):
    engine, optimizer, scheduler = _build_engine(*args, **kwargs)
    forward = engine.forward

    def nan_forward(*a, **kw):
        out = forward(*a, **kw)
        # Training forwards carry labels (evaluation forwards do not); global_steps counts the
        # optimizer steps already taken, so the one being computed is global_steps + 1.
        if "labels" in kw and engine.global_steps + 1 == NAN_AT_STEP:
            out.loss = out.loss * float("nan")
        return out

    engine.forward = nan_forward
    return engine, optimizer, scheduler


if __name__ == "__main__":
    trainer.build_engine = build_engine_with_nan
    sys.argv[0] = str(TRAIN_SCRIPT)
    runpy.run_path(str(TRAIN_SCRIPT), run_name="__main__")
