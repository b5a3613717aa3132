"""Percentile bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plexbench.errors import PlexbenchError
from plexbench.metrics import UndefinedMetricWarning, accuracy, bootstrap_ci, calib_auc
from plexbench.metrics.bootstrap import bootstrap_distribution


def test_interval_of_a_mean_matches_normal_theory():
    # For the mean of n = 4000 normal values the bootstrap interval ~ mean +- 1.96 s / sqrt(n).
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 4000)
    low, high = bootstrap_ci(np.mean, x, num_samples=2000, seed=1)
    half = 1.96 * x.std() / math.sqrt(len(x))
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_resamples_follow_the_documented_stream():
    # metric = the first resampled row index; resample b = the b-th draw of integers(0, N, N).
    n = 37
    values = bootstrap_distribution(lambda ids: ids[0], np.arange(n), num_samples=5, seed=7)
    rng = np.random.default_rng(7)
    expected = [rng.integers(0, n, size=n)[0] for _ in range(5)]
    np.testing.assert_array_equal(values, expected)


def test_seeded_and_paired():
    x = np.random.default_rng(0).normal(size=200)
    assert bootstrap_ci(np.mean, x, num_samples=100, seed=3) == bootstrap_ci(np.mean, x, num_samples=100, seed=3)
    assert bootstrap_ci(np.mean, x, num_samples=100, seed=3) != bootstrap_ci(np.mean, x, num_samples=100, seed=4)
    # the same rows for every array: the difference of a paired copy is exactly 0 in every resample
    assert bootstrap_ci(lambda a, b: np.mean(a - b), x, x.copy(), num_samples=50) == (0.0, 0.0)


def test_vectorized_equals_loop():
    x = np.random.default_rng(2).exponential(size=300)
    loop = bootstrap_ci(np.mean, x, num_samples=200, seed=5)
    vec = bootstrap_ci(lambda a: a.mean(axis=-1), x, num_samples=200, seed=5, vectorized=True)
    assert loop == pytest.approx(vec, abs=1e-15)


def test_metric_with_two_arrays_and_nan_resamples():
    # 19 correct, 1 wrong: some resamples miss the wrong example and calib_auc is undefined there.
    probs = np.tile([0.9, 0.1], (20, 1))
    probs[0] = [0.6, 0.4]
    labels = np.zeros(20, int)
    labels[0] = 1
    with pytest.warns(UndefinedMetricWarning, match="left out"):
        low, high = bootstrap_ci(calib_auc, labels, probs, num_samples=200, seed=0)
    assert low == high == 1.0  # the wrong example is always the least confident
    low, high = bootstrap_ci(accuracy, labels, probs, num_samples=300, seed=0)
    assert 0.8 <= low <= 0.95 <= high <= 1.0


def test_bad_arguments():
    with pytest.raises(PlexbenchError, match="same number of rows"):
        bootstrap_ci(accuracy, [0, 1], [[0.5, 0.5]], num_samples=10)
    with pytest.raises(PlexbenchError, match="positive integer"):
        bootstrap_ci(np.mean, np.ones(3), num_samples=0)
    with pytest.raises(PlexbenchError, match="alpha"):
        bootstrap_ci(np.mean, np.ones(3), num_samples=5, alpha=1.5)
