"""Shared fixtures: where the real data lives, and a CPU-only, offline environment for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NIGHTINGALE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is absent (tests that need ../shared/data skip without it)")
    return path


@pytest.fixture(scope="session")
def mimic_demo() -> Path:
    """The MIMIC-IV demo in MEDS 0.4 layout (read-only: copy before changing)."""
    return _shared("mimic-iv-demo-meds")


@pytest.fixture(scope="session")
def eunomia_omop() -> Path:
    """OHDSI Eunomia GiBleed, an OMOP CDM 5.3 database as gzipped CSVs (read-only)."""
    return _shared("eunomia-gibleed-omop")
