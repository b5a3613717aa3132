"""plexbench.training.probe against scikit-learn (separate LogisticRegression fits, Ridge) and
hand computations, on real data (scikit-learn's digits pixels as features)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge

from plexbench.errors import PlexbenchError
from plexbench.training import probe as P


@pytest.fixture(scope="module")
def digits():
    """Few-shot style split of the real digits: 5 per class to train, the rest to test, standardised."""
    x, y = load_digits(return_X_y=True)
    train = np.concatenate([np.flatnonzero(y == c)[:5] for c in range(10)])
    test = np.setdiff1d(np.arange(len(y)), train)
    xs, xt = P.standardise(x[train], x[test])
    return xs, y[train], xt, y[test]


def sklearn_fit(x, y, l2, max_iter=150):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=1.0 / l2, max_iter=max_iter).fit(x, y)


def test_logistic_grid_equals_separate_sklearn_fits(digits):
    x, y, xt, yt = digits
    grid = 2.0 ** np.arange(-10, 20)
    path = P.logistic_path(x, y, 10, grid)
    for l2, model in zip(grid, path):
        ref = sklearn_fit(x, y, l2)
        np.testing.assert_allclose(model.probabilities(xt), ref.predict_proba(xt), atol=1e-8)
        acc, acc_ref = np.mean(model.scores(xt).argmax(1) == yt), np.mean(ref.predict(xt) == yt)
        assert abs(acc - acc_ref) <= 1e-3
        assert model.iterations == ref.n_iter_[0]


def test_iteration_cap_is_sklearns(digits):
    x, y, xt, _ = digits
    path = P.logistic_path(x, y, 10, [2.0 ** -10, 1.0], max_iter=3)
    for l2, model in zip([2.0 ** -10, 1.0], path):
        ref = sklearn_fit(x, y, l2, max_iter=3)
        assert model.iterations == 3 == ref.n_iter_[0]
        np.testing.assert_allclose(model.probabilities(xt), ref.predict_proba(xt), atol=1e-8)


def test_binary_probe_is_sklearns_binary_logistic_regression(digits):
    x, y, xt, yt = digits
    keep, keep_t = y < 2, yt < 2
    path = P.logistic_path(x[keep], y[keep], 2, [0.5, 8.0])
    for l2, model in zip([0.5, 8.0], path):
        ref = sklearn_fit(x[keep], y[keep], l2)
        np.testing.assert_allclose(model.probabilities(xt[keep_t]), ref.predict_proba(xt[keep_t]), atol=1e-8)


def test_lockstep_equals_one_by_one_minimize(digits):
    x, y, _, _ = digits
    objective, size = P._multinomial_objective(x, np.eye(10)[y])
    l2 = np.array([0.01, 1.0, 100.0])
    a, it_a = P._lockstep_lbfgsb(objective, l2, size, max_iter=150, tol=1e-4)
    b, it_b = P._one_by_one(objective, l2, size, max_iter=150, tol=1e-4)
    np.testing.assert_allclose(a, b, atol=1e-10)
    assert it_a == it_b


def test_objective_gradient_matches_finite_differences(digits):
    x, y, _, _ = digits
    f, size = P._multinomial_objective(x[:12, :6], np.eye(10)[y[:12] % 10])
    theta = np.random.default_rng(0).normal(size=(1, size)) * 0.1
    value, grad = f(theta, np.array([0.7]))
    eps = 1e-6
    for j in range(0, size, 7):
        e = np.zeros_like(theta)
        e[0, j] = eps
        numeric = (f(theta + e, np.array([0.7]))[0] - f(theta - e, np.array([0.7]))[0]) / (2 * eps)
        assert numeric[0] == pytest.approx(grad[0, j], rel=1e-5, abs=1e-8)


def test_closed_form_path_equals_ridge_and_solve(digits):
    x, y, xt, _ = digits
    grid = [2.0 ** -3, 1.0, 64.0]
    targets = 2.0 * np.eye(10)[y] - 1.0
    xb, xtb = (np.hstack([a, np.full((len(a), 1), 100.0)]) for a in (x, xt))
    for l2, model in zip(grid, P.closed_form_path(x, y, 10, grid)):
        ridge = Ridge(alpha=l2, fit_intercept=False, solver="cholesky").fit(xb, targets)
        np.testing.assert_allclose(model.scores(xt), ridge.predict(xtb), rtol=1e-7, atol=1e-7)
        w = np.linalg.solve(xb.T @ xb + l2 * np.eye(xb.shape[1]), xb.T @ targets)
        np.testing.assert_allclose(model.scores(xt), xtb @ w, rtol=1e-7, atol=1e-7)


def test_closed_form_worked_example():
    # the module docstring's example: one feature, l2 = 0, exactly determined with the bias column
    (model,) = P.closed_form_path(np.array([[1.0], [-1.0]]), np.array([1, 0]), 2, [0.0])
    np.testing.assert_allclose(model.scores(np.array([[1.0], [-1.0]])), [[-1, 1], [1, -1]], atol=1e-9)


def test_fit_probe_standardises_per_member_and_averages_probabilities(digits):
    x, y, xt, yt = digits
    rng = np.random.default_rng(1)
    # two "members": the features and an affine, noisy copy (each standardised with its own stats)
    members = np.stack([x, 3.0 * x + 5.0 + rng.normal(size=x.shape)])
    members_t = np.stack([xt, 3.0 * xt + 5.0 + rng.normal(size=xt.shape)])
    fitted = P.fit_probe(members, y, 10, [0.5, 4.0])
    got = fitted.predict(members_t)
    for i, l2 in enumerate([0.5, 4.0]):
        probs = []
        for m in range(2):
            mean, std = members[m].mean(0), members[m].std(0) + 1e-5
            ref = sklearn_fit((members[m] - mean) / std, y, l2)
            probs.append(ref.predict_proba((members_t[m] - mean) / std))
        np.testing.assert_allclose(got[i], np.mean(probs, axis=0), atol=1e-8)
    assert got.shape == (2, len(yt), 10)


def test_missing_class_and_bad_kind_are_errors(digits):
    x, y, _, _ = digits
    with pytest.raises(PlexbenchError, match="no example of class"):
        P.logistic_path(x[y < 9], y[y < 9], 10, [1.0])
    with pytest.raises(PlexbenchError, match="logistic or closed_form"):
        P.fit_probe(x, y, 10, [1.0], kind="svm")
