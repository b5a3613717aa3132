"""Label-quality scores and confident learning (spec §11) against hand computations, scikit-learn and
cleanlab (a test-only oracle: pyproject's `test` extra; plexbench never imports it)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexbench.errors import PlexbenchError
from plexbench.metrics import UndefinedMetricWarning
from plexbench.metrics import label_noise as LN

cleanlab = pytest.importorskip("cleanlab")
from cleanlab import count as cl_count  # noqa: E402
from cleanlab import filter as cl_filter  # noqa: E402
from cleanlab import rank as cl_rank  # noqa: E402


# --------------------------------------------------------------------------- hand computations


def test_quality_scores_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    labels = np.array([0, 1, 1, 2])
    np.testing.assert_allclose(LN.self_confidence(labels, probs), [0.7, 0.3, 0.5, 1 / 3])
    # (p_y - max_{k != y} p_k + 1) / 2
    np.testing.assert_allclose(LN.normalized_margin(labels, probs),
                               [(0.7 - 0.2 + 1) / 2, (0.3 - 0.6 + 1) / 2, (0.5 - 0.25 + 1) / 2, 0.5])


def test_confident_learning_by_hand():
    """Six examples, three classes, worked through the five steps of the module docstring."""
    probs = np.array([
        [0.80, 0.10, 0.10],   # labelled 0, confident of 0
        [0.60, 0.30, 0.10],   # labelled 0, not confident of anything (t0 = 0.7, t1 = 0.5, t2 = 0.5)
        [0.10, 0.70, 0.20],   # labelled 1, confident of 1
        [0.70, 0.30, 0.00],   # labelled 1, confident of 0 only: counted as (given 1, true 0)
        [0.05, 0.45, 0.50],   # labelled 2, confident of 2 (0.5 >= t2)
        [0.20, 0.30, 0.50],   # labelled 2, confident of 2
    ])
    labels = np.array([0, 0, 1, 1, 2, 2])
    t = LN.confident_thresholds(labels, probs)
    np.testing.assert_allclose(t, [0.7, 0.5, 0.5])
    raw = LN.confident_joint(labels, probs, calibrate=False)
    assert raw.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 2]]
    # calibration: rows to the label counts (2, 2, 2): [2, 0, 0], [1, 1, 0], [0, 0, 2]
    assert LN.confident_joint(labels, probs).tolist() == [[2, 0, 0], [1, 1, 0], [0, 0, 2]]
    assert LN.estimated_noise_rate(labels, probs) == pytest.approx(1 / 6)
    # prune 1 example labelled 1 by the margin p0 - p1: example 3 (0.4) over example 2 (-0.6)
    assert LN.find_label_issues(labels, probs).tolist() == [False, False, False, True, False, False]


def test_rounding_keeps_row_totals():
    m = np.array([[0.4, 0.3, 0.2, 1.1], [2.6, 0.3, 0.1, 0.0], [1.6, 1.7, 1.5, 0.2], [0.5, 1.5, 2.4, 0.6]])
    out = LN.round_keeping_row_totals(m)
    assert out.sum(axis=1).tolist() == [2, 3, 5, 5]
    # row 0: [0, 0, 0, 1] needs +1: the largest x - round(x) (0.4) moves up; row 2: [2, 2, 2, 0]
    # needs -1: the smallest (1.5 - 2) moves down; row 3 rounds half to even (0.5 -> 0, 1.5 -> 2)
    assert out.tolist() == [[1, 0, 0, 1], [3, 0, 0, 0], [2, 2, 1, 0], [0, 2, 2, 1]]
    from cleanlab.internal.util import round_preserving_row_totals

    tied = np.array([[0.5, 0.5, 0.0, 0.0, 1.0], [1 / 3, 1 / 3, 1 / 3, 0.0, 0.0], [2.6, 2.6, 0.4, 0.4, 0.0]])
    for matrix in (m, np.random.default_rng(0).random((50, 12)) * 7, tied):
        np.testing.assert_array_equal(LN.round_keeping_row_totals(matrix), round_preserving_row_totals(matrix))


def test_issue_precision_recall_f1_against_sklearn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    truth, flag = rng.random(500) < 0.3, rng.random(500) < 0.25
    assert LN.issue_precision(truth, flag) == pytest.approx(precision_score(truth, flag))
    assert LN.issue_recall(truth, flag) == pytest.approx(recall_score(truth, flag))
    assert LN.issue_f1(truth, flag) == pytest.approx(f1_score(truth, flag))
    assert LN.issue_f1([1, 0], [0, 1]) == 0.0
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(LN.issue_precision([1, 0], [0, 0]))
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(LN.issue_recall([0, 0], [0, 1]))
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(LN.issue_f1([0, 0], [0, 0]))


def test_detection_auroc_auprc_against_sklearn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(1)
    truth = rng.random(800) < 0.2
    quality = np.clip(rng.normal(0.7 - 0.3 * truth, 0.2), 0, 1).round(2)  # rounded: many ties
    assert LN.label_issue_auroc(truth, quality) == pytest.approx(roc_auc_score(truth, 1 - quality), abs=1e-12)
    assert LN.label_issue_auprc(truth, quality) == pytest.approx(average_precision_score(truth, 1 - quality),
                                                                 abs=1e-12)
    with pytest.warns(UndefinedMetricWarning, match="wrong and correct"):
        assert np.isnan(LN.label_issue_auroc(np.zeros(3, bool), [0.1, 0.2, 0.3]))


def test_bad_input_is_one_line():
    with pytest.raises(PlexbenchError, match="is_noisy"):
        LN.issue_f1([0.5, 1.0], [0, 1])
    with pytest.raises(PlexbenchError, match="examples"):
        LN.issue_precision([0, 1, 1], [0, 1])
    with pytest.raises(PlexbenchError, match="out of range"):
        LN.find_label_issues([0, 3], [[0.5, 0.5], [0.5, 0.5]])


# --------------------------------------------------------------------------- cleanlab as the oracle


def noisy_predictions(n: int, k: int, noise: float, sharpness: float, seed: int):
    """Given labels with `noise` of them resampled, and Dirichlet-ish probabilities centred on the
    TRUE class (a model that learnt the clean concept), float64 rows summing to 1."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    given = np.where(rng.random(n) < noise, rng.integers(0, k, n), true)
    logits = rng.normal(0.0, 1.0, (n, k))
    logits[np.arange(n), true] += sharpness
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return given, probs / probs.sum(axis=1, keepdims=True), true


def degenerate_predictions():
    """Class 3 is never given and never confident; class 2 has one example; tied and uniform rows."""
    given, probs, _ = noisy_predictions(120, 5, 0.3, 2.0, seed=7)
    given = np.where(given == 3, 0, given)          # nobody is labelled 3: threshold 2.0
    given[given == 2] = 4
    given[5] = 2                                     # a single example labelled 2: never pruned
    probs[:, 3] *= 0.1                               # ... and class 3 is confident for nobody
    probs /= probs.sum(axis=1, keepdims=True)
    probs[10:14] = 0.2                               # uniform rows: argmax ties go to class 0
    probs[20] = [0.4, 0.4, 0.0, 0.0, 0.2]
    return given, probs


def cleanlab_results(given, probs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "thresholds": cl_count.get_confident_thresholds(given, probs),
            "raw": cl_count.compute_confident_joint(given, probs, calibrate=False),
            "calibrated": cl_count.compute_confident_joint(given, probs, calibrate=True),
            "joint": cl_count.estimate_joint(given, probs),
            "issues": cl_filter.find_label_issues(given, probs, n_jobs=1),
            "self_confidence": cl_rank.get_self_confidence_for_each_label(given, probs),
            "normalized_margin": cl_rank.get_normalized_margin_for_each_label(given, probs),
        }


def assert_matches_cleanlab(given, probs):
    ref = cleanlab_results(given, probs)
    np.testing.assert_array_equal(LN.confident_thresholds(given, probs), ref["thresholds"])
    np.testing.assert_array_equal(LN.confident_joint(given, probs, calibrate=False), ref["raw"])
    np.testing.assert_array_equal(LN.confident_joint(given, probs), ref["calibrated"])
    np.testing.assert_allclose(LN.estimate_joint(given, probs), ref["joint"], rtol=0, atol=1e-15)
    assert LN.estimated_noise_rate(given, probs) == pytest.approx(1 - np.trace(ref["joint"]), abs=1e-12)
    np.testing.assert_array_equal(LN.find_label_issues(given, probs), ref["issues"])
    np.testing.assert_allclose(LN.self_confidence(given, probs), ref["self_confidence"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(LN.normalized_margin(given, probs), ref["normalized_margin"], rtol=0, atol=1e-15)
    return ref


@pytest.mark.parametrize("n,k,noise,sharpness,seed", [
    (2000, 10, 0.2, 2.5, 0),     # CIFAR-10-like, 20% noise
    (3000, 10, 0.4, 1.5, 1),     # heavy noise, a weaker model
    (300, 3, 0.3, 1.0, 2),       # few classes
    (4000, 25, 0.25, 3.0, 3),    # more than 16 classes (rounding sorts longer rows)
    (60, 4, 0.5, 0.5, 4),        # tiny and nearly uninformative
])
def test_confident_learning_matches_cleanlab(n, k, noise, sharpness, seed):
    given, probs, _ = noisy_predictions(n, k, noise, sharpness, seed)
    ref = assert_matches_cleanlab(given, probs)
    assert ref["issues"].any()  # the comparison is not vacuous


def test_confident_learning_matches_cleanlab_when_a_class_has_no_confident_examples():
    given, probs = degenerate_predictions()
    ref = assert_matches_cleanlab(given, probs)
    counted = LN.confident_joint(given, probs, calibrate=False)
    # nobody is counted as class 3 (its diagonal is the clipped 1), nobody is labelled 3
    assert counted[[0, 1, 2, 4], 3].sum() == 0 and counted[3].tolist() == [0, 0, 0, 1, 0]
    assert LN.confident_thresholds(given, probs)[3] == 2.0
    assert not ref["issues"][5]  # the lone example of class 2 is kept


def test_prune_count_adjustment_for_a_zero_diagonal_matches_cleanlab():
    """A class whose calibrated diagonal is 0 gets 1 taken from its row (cleanlab's
    `_keep_at_least_n_per_class` with n = 1, on the transposed matrix; truncation included)."""
    rng = np.random.default_rng(6)
    for _ in range(20):
        joint = rng.integers(0, 6, (5, 5)) * (rng.random((5, 5)) < 0.7)
        np.fill_diagonal(joint, rng.integers(0, 2, 5) * rng.integers(0, 9, 5))
        expected = cl_filter._keep_at_least_n_per_class(joint.T, n=1).T
        np.testing.assert_array_equal(LN._prune_counts(joint), expected)
    # by hand: row [0, 3, 0, 2] (given class 0) -> diagonal 1, the two non-zero entries each
    # lose 1 / max(2 - 1, 1) = 1: [1, 2, 0, 1]
    joint = np.array([[0, 3, 0, 2], [1, 4, 0, 0], [0, 0, 5, 0], [0, 0, 0, 6]])
    assert LN._prune_counts(joint)[0].tolist() == [1, 2, 0, 1]


def test_confident_learning_matches_cleanlab_when_a_class_is_mostly_mislabelled():
    rng = np.random.default_rng(5)
    n, k = 400, 4
    given = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k) * 0.3, n)
    # examples labelled 1 are confidently class 0 or 2, never 1
    rows = np.flatnonzero(given == 1)
    probs[rows] = rng.dirichlet([5, 0.05, 5, 0.5], rows.shape[0])
    assert LN.confident_joint(given, probs)[1, 1] <= 1
    assert_matches_cleanlab(given, probs)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(5, 300), k=st.integers(2, 8), noise=st.floats(0, 0.9), sharpness=st.floats(0, 4),
       seed=st.integers(0, 10**6))
def test_confident_learning_matches_cleanlab_property(n, k, noise, sharpness, seed):
    given, probs, _ = noisy_predictions(n, k, noise, sharpness, seed)
    if np.bincount(given, minlength=k).min() == 0 and len(np.unique(given)) < 2:
        return  # cleanlab refuses a single given class
    assert_matches_cleanlab(given, probs)


def test_detection_finds_injected_noise():
    """On predictions of a good model, confident learning recovers most injected noise."""
    given, probs, true = noisy_predictions(3000, 10, 0.2, 4.0, seed=9)
    truth = given != true
    flagged = LN.find_label_issues(given, probs)
    assert LN.issue_f1(truth, flagged) > 0.8
    assert LN.label_issue_auroc(truth, LN.self_confidence(given, probs)) > 0.9
    assert abs(LN.estimated_noise_rate(given, probs) - truth.mean()) < 0.05
