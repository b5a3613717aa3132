"""Ensemble combination and diversity."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import entropy as scipy_kl

from plexbench.errors import PlexbenchError
from plexbench.metrics import UndefinedMetricWarning, disagreement, ensemble_log_probs, mean_pairwise_kl


def naive_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_ensemble_log_probs_is_log_of_mean_probability():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 50, 7)) * 3
    expected = np.log(naive_softmax(logits).mean(0))
    np.testing.assert_allclose(ensemble_log_probs(logits), expected, rtol=1e-12, atol=1e-12)


def test_ensemble_hand_value_and_single_member():
    # members p = (0.5, 0.5) and (0.9, 0.1) -> mean (0.7, 0.3)
    got = np.exp(ensemble_log_probs(np.log([[[0.5, 0.5]], [[0.9, 0.1]]])))
    np.testing.assert_allclose(got, [[0.7, 0.3]], rtol=1e-12)
    # one member: log_softmax; logits shifted by a constant give the same result
    logits = np.array([[[1.0, 2.0, 3.0]]])
    np.testing.assert_allclose(ensemble_log_probs(logits), ensemble_log_probs(logits + 100.0), atol=1e-12)
    np.testing.assert_allclose(ensemble_log_probs(logits)[0], np.log(naive_softmax(logits[0, 0])), rtol=1e-12)


def test_ensemble_is_stable_for_extreme_logits():
    # Member 0 puts ~all mass on class 0 (p1 = e^-2000), member 1 on class 1: mean ~ (0.5, 0.5).
    logits = np.array([[[1000.0, -1000.0]], [[-1000.0, 1000.0]]])
    lp = ensemble_log_probs(logits)
    assert np.all(np.isfinite(lp))
    np.testing.assert_allclose(lp, np.log([[0.5, 0.5]]), atol=1e-12)


def test_disagreement_hand_value():
    # member argmaxes: A = (0, 1, 1), B = (0, 0, 1), C = (1, 0, 1)
    # pairs: A-B differ on 1 of 3, A-C on 2 of 3, B-C on 1 of 3 -> mean = (1 + 2 + 1) / 9 = 4/9
    eye = np.eye(2) * 5
    logits = np.stack([eye[[0, 1, 1]], eye[[0, 0, 1]], eye[[1, 0, 1]]])
    assert disagreement(logits) == pytest.approx(4 / 9)


def test_mean_pairwise_kl_matches_scipy():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 20, 5))
    p = naive_softmax(logits)
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    expected = np.mean([np.mean([scipy_kl(p[a, i], p[b, i]) for i in range(20)]) for a, b in pairs])
    assert mean_pairwise_kl(logits) == pytest.approx(expected, rel=1e-10)
    same = np.stack([logits[0]] * 3)
    assert mean_pairwise_kl(same) == pytest.approx(0.0, abs=1e-14)
    assert disagreement(same) == 0.0


def test_single_member_diversity_is_undefined():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        with pytest.raises(UndefinedMetricWarning):
            disagreement(np.zeros((1, 3, 2)))
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(mean_pairwise_kl(np.zeros((1, 3, 2))))


def test_bad_member_logits():
    with pytest.raises(PlexbenchError, match=r"\(E, N, K\)"):
        ensemble_log_probs(np.zeros((3, 2)))
    with pytest.raises(PlexbenchError, match="NaN"):
        ensemble_log_probs(np.full((1, 2, 2), np.nan))
