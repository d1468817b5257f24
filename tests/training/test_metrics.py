"""Metrics: JSONL always, wandb offline mirrored (and resumed under the same run id), MFU."""

from __future__ import annotations

import math

import pytest

from nightingale.model import ModelConfig
from nightingale.training.metrics import MetricsLogger, device_peak_flops, mfu, read_metrics


def test_jsonl_appends_across_restarts_and_nonfinite_becomes_null(tmp_path):
    for step in (1, 2):
        m = MetricsLogger(tmp_path, enabled=True, wandb_mode="disabled", project="t", name=None, config={})
        m.log({"loss/train": 1.0 / step, "optim/grad_norm": float("nan")}, step)
        m.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2] and records[0]["optim/grad_norm"] is None


def test_other_ranks_write_nothing(tmp_path):
    m = MetricsLogger(tmp_path, enabled=False, wandb_mode="offline", project="t", name=None, config={})
    m.log({"loss/train": 1.0}, 1)
    m.close()
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_wandb_offline_run_is_written_and_resumed(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    ids = []
    for step in (1, 2):
        m = MetricsLogger(tmp_path, enabled=True, wandb_mode="offline", project="t", name="x", config={"a": 1})
        m.log({"loss/train": 2.0}, step)
        ids.append((tmp_path / "wandb_id.txt").read_text())
        m.close()
    assert ids[0] == ids[1]
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{ids[0].strip()}"))


def test_mfu_formula_and_no_peak_on_cpu():
    cfg = ModelConfig.from_name("tiny").with_vocab(135)
    assert mfu(1000.0, cfg.flops_per_token(), 1e12, 2) == pytest.approx(1000 * cfg.flops_per_token() / 2e12)
    assert device_peak_flops("bf16") is None and math.isfinite(cfg.flops_per_token())
