"""The import-linter contracts of pyproject.toml: layers point down, the cluster layer stands
beside the product, no import cycles inside a package. Run on the tree, and on a copy with one
upward import added, which they must refuse."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the copy's `nightingale` is analysed, not the installed checkout.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_contracts_hold():
    r = lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BROKEN" not in r.stdout and "Contracts: 4 kept, 0 broken." in r.stdout, r.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    shutil.copytree(REPO / "nightingale", tmp_path / "nightingale", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    module = tmp_path / "nightingale" / "data" / "ingest.py"
    module.write_text(module.read_text() + "\nimport nightingale.evaluation.report  # an upward import\n")
    r = lint(tmp_path)
    assert r.returncode != 0
    assert "Layers point down BROKEN" in r.stdout
    assert "nightingale.data.ingest -> nightingale.evaluation.report" in r.stdout, r.stdout
