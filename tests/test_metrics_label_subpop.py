"""Label-uncertainty (soft labels) and subpopulation metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexbench.errors import PlexbenchError
from plexbench.metrics import ged, group_accuracies, nll, soft_cross_entropy, subpopulation_summary


def literal_ged(y, p):
    """Spec §5 written out with explicit double sums over i != j."""
    total = 0.0
    for yr, pr in zip(y, p):
        k = len(yr)
        dist = sum(yr[i] * pr[j] for i in range(k) for j in range(k) if i != j)
        label_div = sum(yr[i] * yr[j] for i in range(k) for j in range(k) if i != j)
        sample_div = sum(pr[i] * pr[j] for i in range(k) for j in range(k) if i != j)
        total += 2 * dist - label_div - sample_div
    return total / len(y)


def test_soft_cross_entropy_hand_value_and_hard_limit():
    # y = (0.5, 0.5), p = (0.25, 0.75): -(0.5 ln 0.25 + 0.5 ln 0.75)
    assert soft_cross_entropy([[0.5, 0.5]], np.log([[0.25, 0.75]])) == pytest.approx(
        -(math.log(0.25) + math.log(0.75)) / 2
    )
    # one-hot soft labels give the ordinary NLL
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), 30)
    y = rng.integers(0, 4, 30)
    assert soft_cross_entropy(np.eye(4)[y], np.log(p)) == pytest.approx(nll(y, np.log(p)), rel=1e-12)


def test_ged_hand_value():
    # y = (1, 0), p = (0.5, 0.5): distance = 1*0.5 = 0.5, label diversity 0, sample diversity
    # 2 * 0.25 = 0.5 -> GED = 2*0.5 - 0 - 0.5 = 0.5
    assert ged([[1.0, 0.0]], [[0.5, 0.5]]) == pytest.approx(0.5)
    assert ged([[0.3, 0.7]], [[0.3, 0.7]]) == pytest.approx(0.0, abs=1e-15)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 5))
def test_ged_matches_literal_double_sum(seed, k):
    rng = np.random.default_rng(seed)
    y = rng.dirichlet(np.ones(k), 6)
    p = rng.dirichlet(np.ones(k), 6)
    assert ged(y, p) == pytest.approx(literal_ged(y, p), abs=1e-12)


def test_soft_label_shape_mismatch():
    with pytest.raises(PlexbenchError, match="shape"):
        ged([[1.0, 0.0, 0.0]], [[0.5, 0.5]])


def test_subpopulation_summary_hand_derived():
    # acc = 0.2, 0.4, 0.6, 0.8, 1.0 (G = 5): mean 0.6, median 0.6,
    # variance (ddof 0) = (0.16 + 0.04 + 0 + 0.04 + 0.16) / 5 = 0.08
    # percentile q at position q/100 * 4: p05 -> 0.2 -> 0.2 + 0.2*0.2 = 0.24; p25 -> 1.0 -> 0.4;
    # p75 -> 3.0 -> 0.8; p95 -> 3.8 -> 0.8 + 0.8*0.2 = 0.96
    got = subpopulation_summary([1.0, 0.4, 0.2, 0.8, 0.6])
    expected = {"mean": 0.6, "median": 0.6, "variance": 0.08, "p05": 0.24, "p25": 0.4, "p75": 0.8, "p95": 0.96}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_group_accuracies_use_sorted_distinct_ids():
    # groups 7, 3, 7, 3, 10: group 3 -> rows 1, 3 (right, wrong) = 0.5; group 7 -> rows 0, 2
    # (right, right) = 1.0; group 10 -> row 4 (wrong) = 0.0
    probs = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.6, 0.4]]
    labels = [0, 0, 1, 1, 1]
    np.testing.assert_allclose(group_accuracies(labels, probs, [7, 3, 7, 3, 10]), [0.5, 1.0, 0.0])
    with pytest.raises(PlexbenchError, match="examples"):
        group_accuracies(labels, probs, [1, 2])
    with pytest.raises(PlexbenchError, match="NaN"):
        subpopulation_summary([0.5, np.nan])
