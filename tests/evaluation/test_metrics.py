"""Evaluation metrics: hand-computed cases, agreement with scikit-learn, edge cases, bootstrap."""

from __future__ import annotations

import doctest
import math
import time

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    roc_auc_score,
    top_k_accuracy_score,
)

from nightingale.evaluation import metrics as M
from nightingale.inference.risk import wilson_interval

Y = [0, 0, 1, 1]
P = [0.1, 0.4, 0.35, 0.8]


def _random(n: int, seed: int = 0, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 3, size=n)
    y = (rng.random(n) < np.clip(p * 1.2, 0, 1)).astype(int)  # a little miscalibrated
    return y, (np.round(p, decimals) if decimals is not None else p)


# ---------------------------------------------------------------------------------------------
# hand-computed


def test_binary_metrics_hand_case():
    m = M.binary_metrics(Y, P)
    assert m["n"] == 4 and m["positives"] == 2 and m["prevalence"] == 0.5
    assert m["auroc"] == pytest.approx(0.75)  # 3 of 4 (positive, negative) pairs ordered right
    # thresholds from the top: 0.8 (+) P=1 R=1/2; 0.4 (-); 0.35 (+) P=2/3 R=1
    assert m["auprc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["brier"] == pytest.approx((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4)  # 0.158125
    # 10 bins: every prediction alone in its bin, so ECE = mean |p - y|
    assert m["ece"] == pytest.approx((0.1 + 0.4 + 0.65 + 0.2) / 4)
    # calibration in the large: 1.65 events expected, 2 happened
    assert m["mean_predicted"] == pytest.approx(1.65 / 4)
    assert m["expected_over_observed"] == pytest.approx(1.65 / 2)


def test_expected_over_observed_sees_what_ece_misses():
    """A rare outcome predicted at a third of its rate: ECE is small, expected / observed is not."""
    y = np.r_[np.ones(9), np.zeros(91)]
    assert M.expected_calibration_error(y, np.full(100, 0.03)) == pytest.approx(0.06)
    assert M.expected_over_observed(y, np.full(100, 0.03)) == pytest.approx(1 / 3)
    assert M.expected_over_observed(y, np.full(100, 0.09)) == pytest.approx(1.0)


def test_ece_hand_cases():
    # 2 uniform bins: [0, .5) holds p .1 .4 .35 (y 0 0 1), [.5, 1] holds .8 (y 1)
    # 3/4 * |0.85/3 - 1/3| + 1/4 * |0.8 - 1| = 0.0375 + 0.05
    assert M.expected_calibration_error(Y, P, n_bins=2) == pytest.approx(0.0875)
    # 2 quantile bins: median edge 0.375, so {.1, .35} (y 0 1) and {.4, .8} (y 0 1)
    # 1/2 * |0.225 - 0.5| + 1/2 * |0.6 - 0.5| = 0.1375 + 0.05
    ece = M.expected_calibration_error(Y, P, n_bins=2, strategy="quantile")
    assert ece == pytest.approx(0.1875)
    assert M.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    assert M.expected_calibration_error([1, 0], [0.0, 1.0]) == 1.0


def test_calibration_table_hand_case():
    rows = M.calibration_table(Y, P, n_bins=2)
    assert [(r["lower"], r["upper"], r["count"], r["positives"]) for r in rows] == [
        (0.0, 0.5, 3, 1), (0.5, 1.0, 1, 1)]
    assert rows[0]["mean_predicted"] == pytest.approx(0.85 / 3)
    assert rows[0]["observed_rate"] == pytest.approx(1 / 3)
    assert (rows[0]["observed_low"], rows[0]["observed_high"]) == wilson_interval(1, 3)
    assert (rows[1]["observed_low"], rows[1]["observed_high"]) == wilson_interval(1, 1)
    assert rows[1]["observed_high"] == 1.0 and rows[1]["observed_low"] < 1.0


def test_bins_are_left_closed_and_one_is_counted():
    # 0.3 is an edge of 10 uniform bins: it opens [0.3, 0.4) (linspace would put the edge at
    # 0.30000000000000004 and the value in [0.2, 0.3)); p = 1 is in the last bin, p = 0 the first
    rows = M.calibration_table([1, 0, 1, 0], [0.3, 1.0, 0.0, 0.5], n_bins=10)
    edges = [(r["lower"], r["upper"]) for r in rows]
    assert edges == [(0.0, 0.1), (0.3, 0.4), (0.5, 0.6), (0.9, 1.0)]
    assert [r["count"] for r in rows] == [1, 1, 1, 1]


def test_empty_bins_are_left_out_and_ece_matches_the_table():
    y, p = _random(300, seed=3)
    for strategy in M.STRATEGIES:
        rows = M.calibration_table(y, p, n_bins=15, strategy=strategy)
        assert all(r["count"] > 0 for r in rows) and sum(r["count"] for r in rows) == 300
        ece = sum(r["count"] / 300 * abs(r["mean_predicted"] - r["observed_rate"]) for r in rows)
        got = M.expected_calibration_error(y, p, n_bins=15, strategy=strategy)
        assert got == pytest.approx(ece)
    rows = M.calibration_table([0, 1, 1], [0.05, 0.06, 0.97], n_bins=10)
    assert len(rows) == 2


# ---------------------------------------------------------------------------------------------
# against scikit-learn


@pytest.mark.parametrize("decimals", [None, 2])  # continuous scores, and many ties
def test_agrees_with_sklearn(decimals):
    y, p = _random(1000, seed=1, decimals=decimals)
    m = M.binary_metrics(y, p)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)


@pytest.mark.parametrize("strategy", M.STRATEGIES)
def test_calibration_table_agrees_with_sklearn(strategy):
    y, p = _random(1000, seed=2)  # continuous: no value on a bin edge, where conventions differ
    rows = M.calibration_table(y, p, n_bins=10, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy=strategy)
    assert len(rows) == len(prob_true)
    np.testing.assert_allclose([r["observed_rate"] for r in rows], prob_true, atol=1e-12)
    np.testing.assert_allclose([r["mean_predicted"] for r in rows], prob_pred, atol=1e-12)


def test_bool_labels_equal_int_labels():
    y, p = _random(200, seed=4)
    assert M.binary_metrics(y.astype(bool), p) == M.binary_metrics(y, p)
    assert M.binary_metrics(y.astype(float), list(p)) == M.binary_metrics(y, p)


# ---------------------------------------------------------------------------------------------
# edge cases and validation


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_nan_not_an_error(label):
    m = M.binary_metrics([label] * 5, [0.1, 0.2, 0.3, 0.4, 0.5])
    assert math.isnan(m["auroc"]) and math.isnan(m["auprc"])
    assert m["prevalence"] == label and not math.isnan(m["brier"]) and not math.isnan(m["ece"])
    # no event: nothing to compare the expected events with
    assert math.isnan(m["expected_over_observed"]) == (label == 0)


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1, 1], [0.1, 0.2], "y_true and y_prob: expected the same length"),
        ([0, 1], [0.1, 1.2], r"y_prob: expected probabilities in \[0, 1\]"),
        ([0, 1], [-0.1, 0.5], r"y_prob: expected probabilities in \[0, 1\]"),
        ([0, 1], [0.1, float("nan")], "y_prob: expected finite"),
        ([0, 1], [0.1, float("inf")], "y_prob: expected finite"),
        ([0, 2], [0.1, 0.2], "y_true: expected labels 0/1"),
        ([0, float("nan")], [0.1, 0.2], "y_true: expected labels 0/1"),
        (["a", "b"], [0.1, 0.2], "y_true: expected labels 0/1"),
        ([0, 1], ["x", "y"], "y_prob: expected numeric"),
        ([[0, 1]], [0.1, 0.2], "y_true: expected a 1-D array"),
        ([0, 1], [[0.1, 0.2]], "y_prob: expected a 1-D array"),
        ([], [], "y_true: expected at least one sample"),
    ],
)
def test_bad_inputs_name_the_argument(y, p, match):
    for fn in (M.binary_metrics, M.expected_calibration_error, M.calibration_table):
        with pytest.raises(ValueError, match=match):
            fn(y, p)
    with pytest.raises(ValueError, match=match):
        M.bootstrap_ci(y, p, M.auroc, n_boot=10)


def test_bad_bins_and_bootstrap_settings():
    with pytest.raises(ValueError, match="n_bins"):
        M.expected_calibration_error(Y, P, n_bins=0)
    with pytest.raises(ValueError, match="strategy"):
        M.calibration_table(Y, P, strategy="equal")
    with pytest.raises(ValueError, match="alpha"):
        M.bootstrap_ci(Y, P, M.auroc, alpha=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        M.bootstrap_metrics(Y, P, n_boot=0)


# ---------------------------------------------------------------------------------------------
# bootstrap


def test_bootstrap_contains_estimate_and_narrows_with_n():
    widths = {}
    for n in (200, 5000):
        y, p = _random(n, seed=5)
        for fn in (M.auroc, M.auprc, M.brier_score):
            low, high = M.bootstrap_ci(y, p, fn, n_boot=500, seed=1)
            assert low < fn(y, p) < high, (n, fn.__name__)
        low, high = M.bootstrap_ci(y, p, M.auroc, n_boot=500, seed=1)
        widths[n] = high - low
    # the width shrinks like 1 / sqrt(n): 5 times narrower here, asked for at least 3
    assert widths[5000] < widths[200] / 3


def test_bootstrap_is_reproducible_for_a_seed():
    y, p = _random(300, seed=6)
    a = M.bootstrap_ci(y, p, M.auroc, n_boot=200, seed=7)
    assert a == M.bootstrap_ci(y, p, M.auroc, n_boot=200, seed=7)
    assert a != M.bootstrap_ci(y, p, M.auroc, n_boot=200, seed=8)


@pytest.mark.parametrize("metric", [M.auroc, M.auprc, M.brier_score, M.expected_calibration_error,
                                    M.expected_over_observed])
def test_vectorised_bootstrap_equals_the_plain_metric(metric):
    # a lambda is not in the vectorised table, so it runs metric() per resample on the same draws
    y, p = _random(150, seed=8, decimals=1)  # ties, and bins with p on their edges
    fast = M.bootstrap_ci(y, p, metric, n_boot=100, alpha=0.1, seed=3)
    slow = M.bootstrap_ci(y, p, lambda a, b: metric(a, b), n_boot=100, alpha=0.1, seed=3)
    np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_bootstrap_nan_resamples_are_dropped_unless_most_are_nan():
    y, p = _random(100, seed=9)
    assert all(math.isnan(v) for v in M.bootstrap_ci([0] * 10, [0.5] * 10, M.auroc, n_boot=50))
    assert all(math.isnan(v) for v in M.bootstrap_ci(y, p, lambda a, b: math.nan, n_boot=50))

    def nan_for(share):  # NaN on a fixed share of calls, else the mean label
        calls = iter(range(10**6))
        return lambda a, b: math.nan if next(calls) % 10 < share * 10 else float(np.mean(a))

    assert all(math.isnan(v) for v in M.bootstrap_ci(y, p, nan_for(0.6), n_boot=100))
    low, high = M.bootstrap_ci(y, p, nan_for(0.4), n_boot=100)
    assert 0 < low < np.mean(y) < high < 1
    # one positive among 20: about a third of resamples miss it and are dropped, not fatal
    one = np.zeros(20, dtype=int)
    one[3] = 1
    low, high = M.bootstrap_ci(one, np.linspace(0, 1, 20), M.auroc, n_boot=200)
    assert 0 <= low <= high <= 1


def test_bootstrap_metrics_shape_values_and_speed():
    y, p = _random(1000, seed=10)
    start = time.perf_counter()
    out = M.bootstrap_metrics(y, p, n_boot=1000, seed=0)
    elapsed = time.perf_counter() - start
    point = M.binary_metrics(y, p)
    assert set(out) == {"auroc", "auprc", "brier", "ece", "expected_over_observed"}
    for name, ci in out.items():
        assert ci["value"] == point[name]
        assert ci["low"] <= ci["high"]
    for name in ("auroc", "auprc", "brier"):
        assert out[name]["low"] < out[name]["value"] < out[name]["high"]
    assert elapsed < 10, f"bootstrap of 1000 x 1000 took {elapsed:.1f}s; vectorised it is ~0.2s"


# ---------------------------------------------------------------------------------------------
# top-k


def test_top_k_hand_case_with_tie_and_ignored_row():
    scores = np.array([
        [0.1, 0.5, 0.2, 0.2],  # target 1 is the top score: a hit for every k
        [0.3, 0.3, 0.1, 0.3],  # target 0 ties with two others: in top 1 with p 1/3, top 2 with 2/3
        [0.9, 0.0, 0.0, 0.0],  # ignored (-100)
        [0.1, 0.2, 0.3, 0.4],  # target 0 is last: only top 4 holds it
    ])
    acc = M.top_k_accuracy(scores, [1, 0, -100, 0], ks=(1, 2, 3, 4, 10))
    assert acc[1] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert acc[2] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert acc[3] == pytest.approx(2 / 3)
    assert acc[4] == 1.0 and acc[10] == 1.0


def test_top_k_constant_scores_is_chance():
    acc = M.top_k_accuracy(np.zeros((7, 20)), np.arange(7), ks=(1, 5, 10))
    assert acc == {1: pytest.approx(1 / 20), 5: pytest.approx(5 / 20), 10: pytest.approx(10 / 20)}


def test_top_k_agrees_with_sklearn_without_ties():
    rng = np.random.default_rng(11)
    scores, targets = rng.normal(size=(500, 30)), rng.integers(0, 30, size=500)
    acc = M.top_k_accuracy(scores, targets, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert acc[k] == pytest.approx(top_k_accuracy_score(targets, scores, k=k, labels=range(30)))
    # ignoring rows is the same as dropping them; logits and their softmax rank alike
    targets[:50] = -100
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    assert M.top_k_accuracy(scores, targets) == M.top_k_accuracy(probs[50:], targets[50:])


def test_top_k_edge_cases():
    assert all(math.isnan(v) for v in M.top_k_accuracy(np.zeros((2, 3)), [-100, -100]).values())
    for scores, targets, match in [
        (np.zeros(3), [0, 1, 2], "scores: expected a 2-D"),
        (np.zeros((2, 3)), [0], "targets: expected a 1-D array of 2"),
        (np.zeros((2, 3)), [0, 3], "targets: expected ids < 3"),
        (np.zeros((2, 3)), [0.0, 1.0], "targets: expected integer"),
        (np.array([[0.1, np.nan, 0.2]]), [0], "scores: expected no NaN"),
    ]:
        with pytest.raises(ValueError, match=match):
            M.top_k_accuracy(scores, targets)
    with pytest.raises(ValueError, match="ks"):
        M.top_k_accuracy(np.zeros((1, 3)), [0], ks=(0,))


# ---------------------------------------------------------------------------------------------
# AUROC ratio and doctests


def test_auroc_ratio():
    assert M.auroc_ratio(0.72, 0.8) == pytest.approx(0.9)
    assert M.auroc_ratio(0.9, 0.8) == pytest.approx(1.125)  # above the reference is allowed
    undefined = [(math.nan, 0.8), (0.8, math.nan), (None, 0.8), (0.8, None), (0.8, 0.0)]
    for model, reference in undefined:
        assert math.isnan(M.auroc_ratio(model, reference))


def test_docstring_examples():
    result = doctest.testmod(M)
    assert result.attempted >= 5 and result.failed == 0


def test_no_interval_on_too_few_events():
    """An interval from a handful of positives would look like evidence: none below the threshold."""
    from nightingale.evaluation.harness import score

    rng = np.random.default_rng(0)
    few = np.r_[np.ones(5), np.zeros(300)].astype(np.int64)
    out = score(few, rng.random(few.size), n_boot=50, seed=0, interval_min_class=30)
    assert "auroc" in out and not any(k.endswith("_ci") for k in out)
    assert out["interval_note"] == "no interval: 5 labels in the smaller class (< 30)"
    many = np.r_[np.ones(40), np.zeros(300)].astype(np.int64)
    out = score(many, rng.random(many.size), n_boot=50, seed=0, interval_min_class=30)
    assert "auroc_ci" in out and "interval_note" not in out


def test_bootstrap_over_subjects_does_not_count_repeated_rows_as_evidence():
    """Each subject's row three times over: resampling subjects gives the interval of the rows
    taken once; resampling rows would shrink it as if there were three times the subjects."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1)
    once = M.bootstrap_metrics(y, p, n_boot=300, seed=1)
    y3, p3, g3 = np.tile(y, 3), np.tile(p, 3), np.tile(np.arange(300), 3)
    grouped = M.bootstrap_metrics(y3, p3, n_boot=300, seed=1, groups=g3)
    rows = M.bootstrap_metrics(y3, p3, n_boot=300, seed=1)
    for name in ("auroc", "brier"):
        assert grouped[name]["low"] == pytest.approx(once[name]["low"])
        assert grouped[name]["high"] == pytest.approx(once[name]["high"])
        assert rows[name]["high"] - rows[name]["low"] < 0.75 * (once[name]["high"] - once[name]["low"])
    with pytest.raises(ValueError, match="groups"):
        M.bootstrap_ci(y, p, M.auroc, groups=np.arange(5))
