"""Selective prediction: oracle-collaborative accuracy, risk-coverage, AURC, E-AURC."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexbench.errors import PlexbenchError
from plexbench.metrics import aurc, eaurc, oracle_collaborative_accuracy, risk_coverage_curve
from plexbench.metrics.selective import area, cumulative_risk, num_referred, optimal_aurc, sort_by_confidence

FAST = settings(max_examples=50, deadline=None)


@st.composite
def tied_predictions(draw, max_n=40):
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(2, 5))
    w = np.array(draw(st.lists(st.lists(st.integers(0, 3), min_size=k, max_size=k), min_size=n, max_size=n)), float)
    w[w.sum(1) == 0, 0] = 1.0
    labels = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    return labels, w / w.sum(1, keepdims=True)


def brute_force_oc_acc(labels, probs, fraction):
    """The definition, spelled out: stable ascending sort on confidence, refer the first k."""
    conf, correct = probs.max(1), probs.argmax(1) == labels
    k = int(np.floor(round(len(labels) * fraction, 9)))
    order = sorted(range(len(labels)), key=lambda i: (conf[i], i))
    kept = order[k:]
    return (k + sum(correct[i] for i in kept)) / len(labels)


def brute_force_aurc(labels, probs):
    conf, correct = probs.max(1), probs.argmax(1) == labels
    order = sorted(range(len(labels)), key=lambda i: (-conf[i], i))
    risks = [sum(not correct[i] for i in order[:k]) / k for k in range(1, len(order) + 1)]
    return sum(risks) / len(risks)


# ------------------------------------------------------------------ oracle-collaborative accuracy
def test_num_referred_floors_after_removing_float_noise():
    assert num_referred(100, 0.29) == 29  # 100 * 0.29 = 28.999999999999996 in float64
    assert num_referred(200, 0.005) == 1
    assert num_referred(199, 0.005) == 0  # 0.995 -> 0
    assert num_referred(1000, 0.05) == 50


def test_oc_acc_ties_refer_the_earliest_examples():
    # Three-class rows; confidences 0.5, 0.5, 0.5, 0.9; correctness: wrong, right, wrong, right.
    # fraction 0.5 -> k = 2. The three tied 0.5s: in stable ascending order they are rows 0, 1, 2,
    # so rows 0 and 1 are referred (counted correct); row 2 (wrong) and row 3 (right) are scored.
    # oc_acc = (2 + 1) / 4 = 0.75 (referring rows 0 and 2 instead would give 1.0).
    probs = np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.9, 0.05, 0.05]])
    labels = np.array([1, 0, 2, 0])
    assert oracle_collaborative_accuracy(labels, probs, fraction=0.5) == 0.75
    # fraction 0.25 -> k = 1: of the tied rows only row 0 is referred. Labels (1, 2, 0, 0): row 0
    # wrong, referred -> (1 + 2) / 4 = 0.75; labels (0, 1, 2, 0): row 0 right -> (1 + 1) / 4 = 0.5.
    # (Referring the LAST tied row instead would give 0.5 and 0.75.)
    assert oracle_collaborative_accuracy(labels[[0, 2, 1, 3]], probs, fraction=0.25) == 0.75
    assert oracle_collaborative_accuracy(labels[[1, 0, 2, 3]], probs, fraction=0.25) == 0.5  # row 0 right


def test_oc_acc_multiclass_is_the_definition():
    # K = 3: the least confident row (0.4) is wrong; referring it lifts accuracy from 2/4 to 3/4.
    probs = [[0.4, 0.35, 0.25], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]]
    labels = [1, 0, 2, 0]
    assert oracle_collaborative_accuracy(labels, probs, fraction=0.0) == 0.5
    assert oracle_collaborative_accuracy(labels, probs, fraction=0.25) == 0.75
    # k = 2: next least confident is 0.7 (wrong) -> 2 referred + 2 right among the rest = 1.0
    assert oracle_collaborative_accuracy(labels, probs, fraction=0.5) == 1.0


@FAST
@given(data=tied_predictions(), fraction=st.floats(0, 1))
def test_oc_acc_matches_brute_force(data, fraction):
    labels, probs = data
    assert oracle_collaborative_accuracy(labels, probs, fraction=fraction) == pytest.approx(
        brute_force_oc_acc(labels, probs, fraction), abs=1e-12
    )


@FAST
@given(data=tied_predictions())
def test_oc_acc_monotone_and_one_at_full_referral(data):
    labels, probs = data
    fractions = np.linspace(0, 1, 11)
    values = [oracle_collaborative_accuracy(labels, probs, fraction=f) for f in fractions]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert values[-1] == 1.0
    assert values[0] == pytest.approx(np.mean(probs.argmax(1) == labels))


def test_oc_acc_rejects_bad_fraction():
    with pytest.raises(PlexbenchError, match="fraction"):
        oracle_collaborative_accuracy([0], [[0.6, 0.4]], fraction=1.5)


# ------------------------------------------------------------------ risk-coverage, AURC
def test_aurc_and_eaurc_hand_derived():
    # sorted by confidence: 0.9 right, 0.8 wrong, 0.7 right, 0.6 wrong
    # risks at k = 1..4: 0/1, 1/2, 1/3, 2/4 -> AURC = (0 + 1/2 + 1/3 + 1/2) / 4 = 1/3
    # ideal order (2 right first): 0, 0, 1/3, 2/4 -> 5/24;  E-AURC = 1/3 - 5/24 = 1/8
    probs = [[0.6, 0.4], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]
    labels = [1, 0, 1, 0]
    assert aurc(labels, probs) == pytest.approx(1 / 3, abs=1e-15)
    assert eaurc(labels, probs) == pytest.approx(1 / 8, abs=1e-15)
    curve = risk_coverage_curve(labels, probs)
    np.testing.assert_allclose(curve["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve["risk"], [0, 1 / 2, 1 / 3, 1 / 2])


def test_aurc_ties_in_example_order():
    # Two rows at confidence 0.8, the first wrong: stable order on -c takes row 0 first,
    # risks 1/1, 1/2 -> 0.75. With the rows swapped: 0/1, 1/2 -> 0.25.
    probs = [[0.8, 0.2], [0.8, 0.2]]
    assert aurc([1, 0], probs) == pytest.approx(0.75)
    assert aurc([0, 1], probs) == pytest.approx(0.25)


def test_building_blocks():
    np.testing.assert_array_equal(sort_by_confidence(np.array([0.5, 0.9, 0.5, 0.7])), [1, 3, 0, 2])
    np.testing.assert_allclose(cumulative_risk(np.array([True, False, False])), [0, 0.5, 2 / 3])
    assert area(np.array([0.0, 0.5, 1.0])) == 0.5
    # 3 examples, 1 error, ideal: risks 0, 0, 1/3 -> 1/9
    assert optimal_aurc(3, 1) == pytest.approx(1 / 9)
    assert optimal_aurc(3, 0) == 0.0 and optimal_aurc(3, 3) == 1.0


@FAST
@given(data=tied_predictions())
def test_aurc_matches_brute_force_and_eaurc_nonnegative(data):
    labels, probs = data
    assert aurc(labels, probs) == pytest.approx(brute_force_aurc(labels, probs), abs=1e-12)
    assert eaurc(labels, probs) >= -1e-12
    curve = risk_coverage_curve(labels, probs)
    assert curve["risk"][-1] == pytest.approx(1 - np.mean(probs.argmax(1) == labels))


@FAST
@given(n=st.integers(1, 30), seed=st.integers(0, 10_000))
def test_eaurc_zero_for_ideal_order(n, seed):
    # Correct examples strictly more confident than wrong ones: the ideal order, E-AURC = 0.
    rng = np.random.default_rng(seed)
    correct = rng.uniform(size=n) < 0.6
    conf = np.where(correct, 0.75, 0.55) + rng.uniform(0, 0.1, n)
    probs = np.stack([conf, 1 - conf], 1)
    labels = np.where(correct, 0, 1)
    assert eaurc(labels, probs) == pytest.approx(0.0, abs=1e-12)
