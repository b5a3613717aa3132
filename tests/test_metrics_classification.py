"""Classification and calibration metrics against hand arithmetic, scikit-learn and properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

from plexbench.errors import PlexbenchError
from plexbench.metrics import (
    UndefinedMetricWarning,
    accuracy,
    adaptive_ece,
    brier,
    calib_auc,
    classwise_ece,
    ece,
    nll,
    reliability_diagram,
    rms_calibration_error,
)

FAST = settings(max_examples=40, deadline=None)


def softmax_data(n, k, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, k)) * scale
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return rng.integers(0, k, n), p


@st.composite
def tied_predictions(draw, max_n=30):
    """Probabilities from small integer weights, so ties in confidence and in classes are common."""
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(2, 4))
    w = np.array(draw(st.lists(st.lists(st.integers(0, 4), min_size=k, max_size=k), min_size=n, max_size=n)), float)
    w[w.sum(1) == 0, 0] = 1.0
    labels = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    return labels, w / w.sum(1, keepdims=True)


# ------------------------------------------------------------------ accuracy
def test_accuracy_class_tie_goes_to_lowest_index():
    # [0.5, 0.5] predicts class 0: correct for label 0, wrong for label 1.
    assert accuracy([0], [[0.5, 0.5]]) == 1.0
    assert accuracy([1], [[0.5, 0.5]]) == 0.0


def test_accuracy_matches_sklearn():
    y, p = softmax_data(500, 7, 0)
    assert accuracy(y, p) == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-15)


# ------------------------------------------------------------------ nll
def test_nll_matches_sklearn_log_loss():
    y, p = softmax_data(400, 5, 1)
    assert nll(y, np.log(p)) == pytest.approx(log_loss(y, p, labels=range(5)), rel=1e-12)


def test_nll_hand_values_soft_and_zero_probability():
    # soft label (0.5, 0.5) against p = (0.25, 0.75): -(0.5 ln 0.25 + 0.5 ln 0.75) = 0.836988...
    assert nll(np.array([[0.5, 0.5]]), np.log([[0.25, 0.75]])) == pytest.approx(-(math.log(0.25) + math.log(0.75)) / 2)
    # 0 * log 0 = 0: a soft label that puts no mass where p = 0 has finite loss 0.
    assert nll(np.array([[1.0, 0.0]]), np.array([[0.0, -np.inf]])) == 0.0
    # the true class has probability 0: Plex's clip at 1e-7 (the default) gives -ln 1e-7 = 16.118...;
    # the exact value (clip=None) is inf.
    assert nll([1], np.array([[0.0, -np.inf]])) == pytest.approx(-math.log(1e-7))
    assert nll([1], np.array([[0.0, -np.inf]]), clip=1e-7) == pytest.approx(16.11809565095832, rel=1e-15)
    assert nll([1], np.array([[0.0, -np.inf]]), clip=None) == math.inf
    # the clip changes nothing where p_y >= 1e-7: (ln 0.5 + ln 2e-7) / 2 both ways
    lp = np.log([[0.5, 0.5], [1 - 2e-7, 2e-7]])
    assert nll([0, 1], lp) == nll([0, 1], lp, clip=None) == pytest.approx(-(math.log(0.5) + math.log(2e-7)) / 2)


def test_nll_exact_far_in_the_tail():
    # log p = -800 underflows to 0 in probability space; from log-probs the exact NLL stays exact,
    # and the reported (clipped) one is -ln 1e-7.
    lp = np.array([[0.0, -800.0]])
    assert nll([1], lp, clip=None) == pytest.approx(800.0)
    assert nll([1], lp) == pytest.approx(-math.log(1e-7))


def test_nll_renormalises_log_probs_within_tolerance_only():
    lp = np.log([[0.3, 0.7]]) + 5e-4  # logsumexp = 5e-4: within 1e-3, shifted back
    assert nll([0], lp) == pytest.approx(-math.log(0.3), rel=1e-12)
    with pytest.raises(PlexbenchError, match="logsumexp"):
        nll([0], np.log([[0.3, 0.7]]) + 0.01)


# ------------------------------------------------------------------ brier
def test_brier_matches_one_hot_and_sklearn():
    y, p = softmax_data(300, 6, 2)
    one_hot = np.eye(6)[y]
    assert brier(y, p) == pytest.approx(np.mean(np.sum((p - one_hot) ** 2, axis=1)), rel=1e-12)
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p, labels=range(6), scale_by_half=False), rel=1e-12)


def test_brier_soft_label_hand_value():
    # y = (0.5, 0.5), p = (1, 0): (1 - 0.5)^2 + (0 - 0.5)^2 = 0.5
    assert brier(np.array([[0.5, 0.5]]), [[1.0, 0.0]]) == pytest.approx(0.5)


# ------------------------------------------------------------------ ECE
def test_ece_hand_derived_bins():
    # 15 bins, bin = floor(15 c), c = top-label confidence:
    #   row 0: c = 0.95 -> floor(14.25) = 14, correct
    #   row 1: c = 1.00 -> floor(15)    = 15 -> clipped to 14, wrong
    #   row 2: c = 0.60 -> floor(9.0)   = 9, correct      (15 * 0.6 rounds to exactly 9.0)
    #   row 3: c = 0.55 -> floor(8.25)  = 8, wrong
    #   row 4: c = 0.70 -> floor(10.5)  = 10, correct (class 1)
    # bin 14: n=2, acc 1/2, conf 0.975 -> 2/5 * |0.5 - 0.975| = 0.19
    # bin 9: 1/5 * |1 - 0.6| = 0.08;  bin 8: 1/5 * |0 - 0.55| = 0.11;  bin 10: 1/5 * |1 - 0.7| = 0.06
    # ECE = 0.19 + 0.08 + 0.11 + 0.06 = 0.44
    probs = np.array([[0.95, 0.05], [1.0, 0.0], [0.6, 0.4], [0.55, 0.45], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1, 1])
    assert ece(labels, probs) == pytest.approx(0.44, abs=1e-12)
    diagram = reliability_diagram(labels, probs)
    expected_counts = np.zeros(15, int)
    expected_counts[[8, 9, 10, 14]] = [1, 1, 1, 2]
    np.testing.assert_array_equal(diagram["count"], expected_counts)
    assert diagram["accuracy"][14] == 0.5 and diagram["confidence"][14] == pytest.approx(0.975)
    assert np.isnan(diagram["accuracy"][0]) and np.isnan(diagram["confidence"][0])  # empty bin
    assert diagram["bin_lower"][14] == pytest.approx(14 / 15) and diagram["bin_upper"][14] == 1.0


def test_ece_three_classes_low_confidence_bins():
    # c = 0.4 (class 0 of [0.4, 0.3, 0.3]) -> bin 6, correct; c = 0.34 -> floor(5.1) = 5, wrong.
    # ECE = (|1 - 0.4| + |0 - 0.34|) / 2 = 0.47
    probs = [[0.4, 0.3, 0.3], [0.33, 0.34, 0.33]]
    assert ece([0, 0], probs) == pytest.approx(0.47, abs=1e-12)
    assert ece([0, 0], probs, num_bins=1) == pytest.approx(abs(0.5 - 0.37), abs=1e-12)  # one bin: |acc - mean conf|


def test_ece_constant_overconfidence_closed_form():
    # every example at confidence 0.9 (one bin), 6 of 10 correct: ECE = |0.6 - 0.9| = 0.3
    probs = np.tile([0.9, 0.1], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)
    assert ece(labels, probs) == pytest.approx(0.3, abs=1e-12)
    assert rms_calibration_error(labels, probs) == pytest.approx(0.3, abs=1e-12)


def test_ece_matches_loop_oracle():
    y, p = softmax_data(2000, 10, 3)
    conf, correct = p.max(1), p.argmax(1) == y
    total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        in_bin = (conf >= lo) & ((conf < hi) if b < 14 else (conf <= hi))
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    assert ece(y, p) == pytest.approx(total, rel=1e-10)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_ece_of_calibrated_data_shrinks_with_n(seed):
    # Binary, perfectly calibrated: p ~ U(0, 1), label ~ Bernoulli(p). The expected ECE is about
    # 1/sqrt(N); 5/sqrt(N) is many standard deviations away.
    rng = np.random.default_rng(seed)
    values = {}
    for n in (1_000, 100_000):
        p1 = rng.uniform(size=n)
        labels = (rng.uniform(size=n) < p1).astype(int)
        values[n] = ece(labels, np.stack([1 - p1, p1], axis=1))
        assert values[n] < 5 / math.sqrt(n)
    assert values[100_000] < values[1_000]


def test_adaptive_ece_hand_derived():
    # confidences (sorted) 0.6 x, 0.7 ok, 0.8 ok, 0.9 x; 2 equal-mass bins of 2:
    # bin A {0.6 wrong, 0.7 right}: |1 - 1.3| = 0.3; bin B {0.8 right, 0.9 wrong}: |1 - 1.7| = 0.7
    # ECE = (0.3 + 0.7) / 4 = 0.25
    probs = [[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.8, 0.2]]
    labels = [1, 0, 1, 0]
    assert adaptive_ece(labels, probs, num_bins=2) == pytest.approx(0.25, abs=1e-12)
    # 5 examples in 2 bins: sizes 3 and 2 (larger first). Sorted c: .6 x, .7 ok, .8 ok | .9 x, .95 ok
    # bin A: |2 - 2.1| = 0.1; bin B: |1 - 1.85| = 0.85 -> 0.95 / 5 = 0.19
    probs5 = probs + [[0.95, 0.05]]
    assert adaptive_ece(labels + [0], probs5, num_bins=2) == pytest.approx(0.19, abs=1e-12)


def test_classwise_ece_hand_derived():
    # K = 2, 2 bins, bin = floor(2 p):
    # class 0: p0 = (0.8, 0.3), hits (1, 0): bin 1 {0.8, hit}: |1 - 0.8| = 0.2; bin 0 {0.3}: 0.3 -> 0.5/2 = 0.25
    # class 1: p1 = (0.2, 0.7), hits (0, 1): bin 0 {0.2}: 0.2; bin 1 {0.7, hit}: 0.3 -> 0.5/2 = 0.25
    # classwise ECE = mean(0.25, 0.25) = 0.25
    assert classwise_ece([0, 1], [[0.8, 0.2], [0.3, 0.7]], num_bins=2) == pytest.approx(0.25, abs=1e-12)


def test_classwise_ece_matches_loop_oracle():
    y, p = softmax_data(800, 4, 4)
    per_class = []
    for k in range(4):
        pk, hit = p[:, k], (y == k).astype(float)
        bins = np.minimum((pk * 15).astype(int), 14)
        per_class.append(sum(abs(hit[bins == b].sum() - pk[bins == b].sum()) for b in range(15)) / len(y))
    assert classwise_ece(y, p) == pytest.approx(np.mean(per_class), rel=1e-10)


def test_rms_calibration_error_hand_derived():
    # bins from test_ece_hand_derived: gaps 0.475 (n=2), 0.4, 0.55, 0.3 (n=1 each), N = 5
    # RMSCE = sqrt((2*0.475^2 + 0.4^2 + 0.55^2 + 0.3^2) / 5)
    probs = np.array([[0.95, 0.05], [1.0, 0.0], [0.6, 0.4], [0.55, 0.45], [0.3, 0.7]])
    expected = math.sqrt((2 * 0.475**2 + 0.4**2 + 0.55**2 + 0.3**2) / 5)
    assert rms_calibration_error([0, 1, 0, 1, 1], probs) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------ calib_auc
def test_calib_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(5)
    w = rng.integers(1, 4, size=(600, 3)).astype(float)  # coarse: many tied confidences
    p = w / w.sum(1, keepdims=True)
    y = rng.integers(0, 3, 600)
    incorrect = p.argmax(1) != y
    assert calib_auc(y, p) == pytest.approx(roc_auc_score(incorrect, 1 - p.max(1)), abs=1e-12)


def test_calib_auc_hand_value_and_degenerate():
    # wrong predictions at confidence 0.6, 0.9; right ones at 0.7, 0.8; score = 1 - c.
    # pairs (wrong, right) with the wrong one less confident: (0.6, 0.7), (0.6, 0.8) -> 2 of 4
    probs = [[0.6, 0.4], [0.9, 0.1], [0.7, 0.3], [0.8, 0.2]]
    assert calib_auc([1, 1, 0, 0], probs) == pytest.approx(0.5)
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(calib_auc([0, 0], [[0.9, 0.1], [0.7, 0.3]]))


# ------------------------------------------------------------------ properties
@FAST
@given(data=tied_predictions(), seed=st.integers(0, 1000))
def test_permutation_invariance(data, seed):
    labels, probs = data
    perm = np.random.default_rng(seed).permutation(len(labels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for fn in (accuracy, brier, ece, adaptive_ece, classwise_ece, rms_calibration_error, calib_auc):
            a, b = fn(labels, probs), fn(labels[perm], probs[perm])
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12), fn.__name__
        with np.errstate(divide="ignore"):
            lp = np.log(probs)
        assert nll(labels, lp) == pytest.approx(nll(labels[perm], lp[perm]), abs=1e-12)


@FAST
@given(data=tied_predictions())
def test_calibration_errors_are_bounded(data):
    labels, probs = data
    for fn in (ece, adaptive_ece, classwise_ece, rms_calibration_error):
        assert 0.0 <= fn(labels, probs) <= 1.0 + 1e-12
    assert ece(labels, probs) <= rms_calibration_error(labels, probs) + 1e-12  # mean |g| <= sqrt(mean g^2)
    assert 0.0 <= brier(labels, probs) <= 2.0 + 1e-12


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "labels, probs, match",
    [
        ([0], [[np.nan, 1.0]], "NaN or inf"),
        ([0], [[np.inf, 0.0]], "NaN or inf"),
        ([0], [[-0.1, 1.1]], "negative"),
        ([0], [[0.5, 0.6]], "sum to 1"),
        ([2], [[0.5, 0.5]], "out of range"),
        ([-1], [[0.5, 0.5]], "out of range"),
        ([0, 1], [[0.5, 0.5]], "examples"),
        (np.zeros(0, int), np.zeros((0, 2)), "empty"),
        ([0.0], [[0.5, 0.5]], "integers"),
        ([0], [0.5, 0.5], "shape"),
        ([0], [[1.0]], "at least 2 classes"),
        ([0], np.array([[0.5, 0.5]], dtype=object), "object"),
    ],
)
def test_bad_input_raises_one_line(labels, probs, match):
    for fn in (accuracy, ece, calib_auc):
        with pytest.raises(PlexbenchError, match=match) as info:
            fn(labels, probs)
        assert "\n" not in str(info.value)


def test_rows_within_tolerance_are_renormalised():
    raw = np.array([[0.6004, 0.4], [0.2, 0.8]])  # first row sums to 1.0004
    fixed = raw / raw.sum(1, keepdims=True)
    for fn in (brier, ece, rms_calibration_error):
        assert fn([0, 1], raw) == pytest.approx(fn([0, 1], fixed), abs=1e-15)
