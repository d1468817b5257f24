"""Evaluation plots: valid images of the promised size, written atomically."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from nightingale.evaluation import plots
from nightingale.evaluation.metrics import calibration_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    p = rng.random(400)
    y = (rng.random(400) < p).astype(int)
    return y, p


def _draw(kind: str, path, data):
    y, p = data
    if kind == "calibration":
        curves = {"model": calibration_table(y, p),
                  "shifted": calibration_table(y, p**2, strategy="quantile")}
        return plots.plot_calibration(curves, path, title="reliability")
    if kind == "roc":
        return plots.plot_roc({"model": (y, p), "noise": (y, p[::-1])}, path, title="ROC")
    if kind == "lines":
        return plots.plot_lines([8, 16, 32, 64], {"auroc": [0.7, 0.74, float("nan"), 0.78]}, path,
                                "rollouts", "AUROC")
    return plots.plot_scatter(p, p**2 + 1e-3, path, "real", "synthetic", log=True)


def _assert_png(path, figsize):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    height, width = round(figsize[1] * plots.DPI), round(figsize[0] * plots.DPI)
    assert image.shape[:2] == (height, width)
    assert image.std() > 0.01  # something was drawn, not a blank canvas


KINDS = ["calibration", "roc", "lines", "scatter"]


@pytest.mark.parametrize("kind", KINDS)
def test_plot_writes_a_png_and_nothing_else(kind, tmp_path, data):
    path = tmp_path / "figures" / "nested" / f"{kind}.png"  # parents are created
    assert _draw(kind, path, data) == path
    _assert_png(path, plots.CALIBRATION_FIGSIZE if kind == "calibration" else plots.FIGSIZE)
    assert [f.name for f in path.parent.iterdir()] == [path.name]  # no temporary left behind


@pytest.mark.parametrize("kind", KINDS)
def test_unwritable_path_raises_and_leaves_nothing(kind, tmp_path, data):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OSError):
        _draw(kind, blocker / f"{kind}.png", data)
    assert [f.name for f in tmp_path.iterdir()] == ["not_a_dir"]
    assert blocker.read_text() == "a file where a folder should be"


def test_failure_while_saving_leaves_no_partial_file(tmp_path, data, monkeypatch):
    path = tmp_path / "roc.png"
    path.write_bytes(b"previous figure")

    def half_write(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(PNG_SIGNATURE + b"trunc")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        _draw("roc", path, data)
    assert [f.name for f in tmp_path.iterdir()] == ["roc.png"]
    assert path.read_bytes() == b"previous figure"  # the old plot survives intact


def test_format_follows_suffix(tmp_path, data):
    path = _draw("lines", tmp_path / "lines.svg", data)
    assert b"<svg" in path.read_bytes()[:2000]


def test_bad_inputs_raise_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"series\['auroc'\]"):
        plots.plot_lines([1, 2, 3], {"auroc": [0.5, 0.6]}, tmp_path / "l.png", "x", "y")
    with pytest.raises(ValueError, match="x and y"):
        plots.plot_scatter([1, 2], [1], tmp_path / "s.png", "x", "y")
    with pytest.raises(ValueError, match="y_prob"):
        plots.plot_roc({"m": ([0, 1], [0.2, 1.5])}, tmp_path / "r.png")
    assert list(tmp_path.iterdir()) == []


def test_degenerate_inputs_still_plot(tmp_path):
    # one-class ROC series, an empty calibration curve, zeros on log axes: a figure, not a crash
    roc = plots.plot_roc({"one class": ([1, 1, 1], [0.2, 0.5, 0.9])}, tmp_path / "roc.png")
    cal = plots.plot_calibration({"empty": []}, tmp_path / "cal.png")
    sc = plots.plot_scatter([0.0, 0.1, 0.2], [0.0, 0.0, 0.3], tmp_path / "sc.png", "x", "y",
                            log=True)
    for path, size in [(roc, plots.FIGSIZE), (cal, plots.CALIBRATION_FIGSIZE), (sc, plots.FIGSIZE)]:
        _assert_png(path, size)
