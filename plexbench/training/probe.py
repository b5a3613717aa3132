"""Linear probes on frozen features, per ensemble member (spec §6 few-shot rules).

    probe = fit_probe(x_train (E, n, D), y (n,), num_classes, l2s=[1.0, 2.0, ...], kind="logistic")
    probs = probe.predict(x_test (E, N, D))          # (L, N, C): one row block per l2, members averaged

Steps, for each ensemble member m separately:

1. standardise: mu = mean of the training features, sigma = their (population) std + 1e-5;
   train and test features become (x - mu) / sigma (`standardise`);
2. fit, for every l2 of the grid:
   - `logistic`: multinomial logistic regression minimising
     (1/n) sum_i [logsumexp_k z_ik - z_i,y_i] + l2 / (2 n) ||W||^2,  z = X W + b (bias unpenalised),
     which is scikit-learn's LogisticRegression(C = 1 / l2) objective (lbfgs; for C = 2 classes,
     like scikit-learn, one binary logistic regression). Solved from zero with scipy's L-BFGS-B
     under scikit-learn's settings (max_iter 150, gtol 1e-4, ftol 64 eps, 50 line-search steps,
     10 corrections): one run per l2, all runs advanced in lockstep so that each round of
     objective evaluations is one batched numpy computation over the grid. Predictions: softmax(z).
   - `closed_form`: ridge regression on targets T = 2 * onehot - 1 with a bias column of value 100
     appended: W = solve(X^T X + l2 I, X^T T), the Gram matrix X^T X and X^T T computed once for
     the grid (a linear solve per l2, not an eigendecomposition shared by the grid: with fewer
     examples than features the shared form leaks rounding from the null space into test
     scores). Predictions: scores X W (no probabilities).
3. the ensemble's output is the mean over members of their probabilities (logistic) or scores
   (closed form).

The l2 grid of one (member, data set) is fitted jointly in one call (one batched solver; one
Gram matrix). Why not warm starts along the regularisation path: scikit-learn's gtol 1e-4
(on the mean loss) stops weakly regularised fits (l2 << 1) far from their optimum, so a fit
that starts elsewhere stops elsewhere; measured on the embedded few-shot data, warm-started
fits differed from the separate fits by up to 2.5 accuracy points at l2 = 2^-10..2^-4. The
lockstep runs are the separate fits (tests/test_training_probe.py compares them with
scikit-learn to 1e-8).

Worked example (closed form, one feature, no standardisation): x = [[1], [-1]], y = [1, 0],
l2 = 0: with the bias column the system is exactly determined and the scores reproduce the
targets [[-1, 1], [1, -1]].

Shapes and dtypes: features float (E, n, D) (or (n, D) for one member), computed in float64;
labels int (n,) in 0..C-1; outputs float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from plexbench.errors import PlexbenchError

STD_EPS = 1e-5
BIAS_VALUE = 100.0
MAX_ITER = 150
TOL = 1e-4  # scikit-learn's default tol = L-BFGS-B gtol
ProbeKind = Literal["logistic", "closed_form"]


def standardise(train: np.ndarray, *others: np.ndarray, eps: float = STD_EPS) -> list[np.ndarray]:
    """(x - mean) / (std + eps) with the mean and population std of `train` along its row axis
    (-2), applied to `train` and each of `others`; float64.

    >>> [a.tolist() for a in standardise(np.array([[0.0], [2.0]]), np.array([[1.0]]), eps=0.0)]
    [[[-1.0], [1.0]], [[0.0]]]
    """
    train = np.asarray(train, np.float64)
    mean = train.mean(axis=-2, keepdims=True)
    std = train.std(axis=-2, keepdims=True) + eps
    return [(train - mean) / std] + [(np.asarray(o, np.float64) - mean) / std for o in others]


# ----------------------------------------------------------------------------- logistic


@dataclass(frozen=True)
class LinearModel:
    """z = x @ weights + bias. `weights` (D, C), `bias` (C,); for a binary logistic model C = 2
    with the first column zero (the parametrisation scikit-learn fits)."""

    weights: np.ndarray
    bias: np.ndarray
    iterations: int = 0

    def scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.weights + self.bias

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.scores(x))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _multinomial_objective(x: np.ndarray, onehot: np.ndarray):
    """Batched objective over L problems sharing the data: f(thetas (L, D*C + C), l2 (L,)) ->
    (values (L,), gradients (L, D*C + C)), theta = [W (D, C) row-major, b (C)] (module docstring)."""
    n, d = x.shape
    c = onehot.shape[1]

    def f(theta, l2):
        w, b = theta[:, :d * c].reshape(-1, d, c), theta[:, d * c:]
        z = np.matmul(x, w) + b[:, None, :]  # (L, n, C)
        zmax = z.max(axis=2, keepdims=True)
        e = np.exp(z - zmax)
        s = e.sum(axis=2, keepdims=True)
        loss = np.mean(np.log(s[..., 0]) + zmax[..., 0] - np.sum(z * onehot, axis=2), axis=1)
        r = (e / s - onehot) / n
        reg = (l2 / n)[:, None, None] * w
        value = loss + 0.5 * (l2 / n) * np.einsum("ldc,ldc->l", w, w)
        grad = np.concatenate([(np.matmul(x.T, r) + reg).reshape(len(l2), -1), r.sum(axis=1)], axis=1)
        return value, grad

    return f, d * c + c


def _binary_objective(x: np.ndarray, y01: np.ndarray):
    """Batched binary logistic regression (scikit-learn's parametrisation for two classes):
    z = x w + b, loss = log(1 + e^z) - y z, penalty l2 / (2 n) ||w||^2; f(thetas (L, D + 1), l2 (L,))."""
    n, d = x.shape

    def f(theta, l2):
        w, b = theta[:, :d], theta[:, d]
        z = w @ x.T + b[:, None]  # (L, n)
        loss = np.mean(np.logaddexp(0.0, z) - y01 * z, axis=1)
        r = (0.5 * (1.0 + np.tanh(0.5 * z)) - y01) / n  # sigmoid(z) - y, overflow-free
        value = loss + 0.5 * (l2 / n) * np.einsum("ld,ld->l", w, w)
        return value, np.concatenate([r @ x + (l2 / n)[:, None] * w, r.sum(axis=1, keepdims=True)], axis=1)

    return f, d + 1


def logistic_path(x: np.ndarray, y: np.ndarray, num_classes: int, l2s: Sequence[float], *,
                  max_iter: int = MAX_ITER, tol: float = TOL) -> list[LinearModel]:
    """Logistic probes for every l2 of `l2s` on (n, D) features, in the order of `l2s`.

    Each l2 is its own L-BFGS-B run from zero with scikit-learn's settings, so every probe is the
    one LogisticRegression(C = 1 / l2, max_iter) fits; the runs advance in lockstep and every
    round of objective evaluations is ONE batched computation over the l2 still running
    (`_lockstep_lbfgsb`). Labels y in 0..num_classes-1, every class present.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.int64)
    _check_labels(y, num_classes)
    l2 = np.asarray(l2s, np.float64)
    binary = num_classes == 2
    if binary:
        objective, size = _binary_objective(x, (y == 1).astype(np.float64))
    else:
        objective, size = _multinomial_objective(x, np.eye(num_classes)[y])
    thetas, iterations = _lockstep_lbfgsb(objective, l2, size, max_iter=max_iter, tol=tol)
    return [_linear_model(t, x.shape[1], num_classes, binary, it) for t, it in zip(thetas, iterations)]


# scikit-learn's L-BFGS-B options for LogisticRegression (sklearn/linear_model/_logistic.py).
_MAXCOR, _MAXLS, _FTOL = 10, 50, 64 * np.finfo(float).eps


def _lockstep_lbfgsb(objective, l2: np.ndarray, size: int, *, max_iter: int, tol: float):
    """Minimise one problem per l2 from zero with scipy's L-BFGS-B, advancing them together.

    `objective(thetas (L, size), l2 (L,))` evaluates L problems at once. Each problem runs
    scipy's own L-BFGS-B (its reverse-communication routine, driven as
    scipy.optimize.minimize drives it: an iteration counted at each new point, a stop after
    max_iter), so each result is exactly what minimize(method="L-BFGS-B", jac=True,
    options={maxiter, maxls 50, gtol, ftol}) returns for that problem; only the objective
    evaluations are batched. Without that routine (another scipy layout) the problems are solved
    one by one with minimize, with the same results. Returns (thetas (L, size), iterations).
    """
    from threadpoolctl import threadpool_limits

    # L-BFGS-B calls BLAS on tiny (10 x 10) matrices thousands of times; a multi-threaded BLAS
    # spends more time waking its threads than computing (10x slower on a busy 2-core machine).
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            from scipy.optimize import _lbfgsb

            solvers = [_ReverseLbfgsb(_lbfgsb.setulb, size, max_iter, tol) for _ in l2]
            for solver in solvers:
                solver.advance()
        except (ImportError, AttributeError, TypeError):  # scipy's private routine moved or changed
            return _one_by_one(objective, l2, size, max_iter=max_iter, tol=tol)
        while True:
            asking = [i for i, s in enumerate(solvers) if s.wants_values]
            if not asking:
                break
            values, grads = objective(np.stack([solvers[i].x for i in asking]), l2[asking])
            for i, v, g in zip(asking, values, grads):
                solvers[i].advance(v, g)
    return np.stack([s.x for s in solvers]), [s.iterations for s in solvers]


class _ReverseLbfgsb:
    """One L-BFGS-B run driven through scipy's reverse-communication routine `setulb`, in the
    loop of scipy.optimize._lbfgsb_py._minimize_lbfgsb (no bounds)."""

    def __init__(self, setulb, n: int, max_iter: int, tol: float):
        self.setulb, self.max_iter, self.tol = setulb, max_iter, tol
        self.x = np.zeros(n)
        self.f = np.array(0.0)
        self.g = np.zeros(n)
        self.nbd = np.zeros(n, np.int32)
        self.low = np.zeros(n)
        self.up = np.zeros(n)
        self.wa = np.zeros(2 * _MAXCOR * n + 5 * n + 11 * _MAXCOR ** 2 + 8 * _MAXCOR)
        self.iwa = np.zeros(3 * n, np.int32)
        self.task = np.zeros(2, np.int32)
        self.ln_task = np.zeros(2, np.int32)
        self.lsave = np.zeros(4, np.int32)
        self.isave = np.zeros(44, np.int32)
        self.dsave = np.zeros(29)
        self.iterations = 0
        self.wants_values = False
        self.done = False

    def advance(self, f: float | None = None, g: np.ndarray | None = None) -> None:
        """Hand in f, g at self.x (when asked) and run until the routine asks again or stops."""
        if f is not None:
            self.f, self.g = float(f), np.asarray(g, np.float64)
        factr = _FTOL / np.finfo(float).eps
        while True:
            self.setulb(_MAXCOR, self.x, self.low, self.up, self.nbd, self.f, self.g, factr, self.tol, self.wa,
                        self.iwa, self.task, self.lsave, self.isave, self.dsave, _MAXLS, self.ln_task)
            if self.task[0] == 3:  # FG: evaluate at self.x
                self.wants_values = True
                return
            if self.task[0] == 1:  # NEW_X: one iteration done
                self.iterations += 1
                if self.iterations >= self.max_iter:
                    self.task[0], self.task[1] = 5, 504  # STOP: maximum iterations, as minimize does
                continue
            self.wants_values, self.done = False, True
            return


def _one_by_one(objective, l2: np.ndarray, size: int, *, max_iter: int, tol: float):
    """The same problems, each with scipy.optimize.minimize (the reference path of `_lockstep_lbfgsb`)."""
    from scipy.optimize import minimize

    thetas, iterations = [], []
    for value in l2:
        def fun(theta, value=value):
            v, g = objective(theta[None], np.array([value]))
            return v[0], g[0]

        res = minimize(fun, np.zeros(size), method="L-BFGS-B", jac=True,
                       options={"maxiter": max_iter, "maxls": _MAXLS, "gtol": tol, "ftol": _FTOL})
        thetas.append(res.x)
        iterations.append(int(res.nit))
    return np.stack(thetas), iterations


def _linear_model(theta: np.ndarray, d: int, c: int, binary: bool, iterations: int) -> LinearModel:
    if binary:
        w = np.zeros((d, 2))
        w[:, 1] = theta[:d]
        return LinearModel(w, np.array([0.0, theta[d]]), iterations)
    return LinearModel(theta[:d * c].reshape(d, c).copy(), theta[d * c:].copy(), iterations)


def _check_labels(y: np.ndarray, num_classes: int) -> None:
    present = np.unique(y)
    if y.ndim != 1 or present.min() < 0 or present.max() >= num_classes:
        raise PlexbenchError(f"probe labels must lie in 0..{num_classes - 1}, got {present.tolist()[:10]}")
    if present.shape[0] != num_classes:
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        raise PlexbenchError(f"probe training data has no example of class(es) {missing[:10]}")


# ----------------------------------------------------------------------------- closed form


def closed_form_path(x: np.ndarray, y: np.ndarray, num_classes: int, l2s: Sequence[float]) -> list[LinearModel]:
    """Ridge probes W(l2) = solve(Xb^T Xb + l2 I, Xb^T (2 onehot - 1)) on Xb = [X, 100] for every
    l2 (the Gram matrix and right-hand side computed once); LinearModel.weights = W[:D],
    bias = 100 W[D]."""
    x = np.asarray(x, np.float64)
    xb = np.hstack([x, np.full((x.shape[0], 1), BIAS_VALUE)])
    targets = 2.0 * np.eye(num_classes)[np.asarray(y, np.int64)] - 1.0
    gram, rhs, eye = xb.T @ xb, xb.T @ targets, np.eye(xb.shape[1])
    out = []
    for l2 in l2s:
        w = np.linalg.solve(gram + float(l2) * eye, rhs)
        out.append(LinearModel(w[:-1], BIAS_VALUE * w[-1]))
    return out


# ----------------------------------------------------------------------------- ensembles


@dataclass(frozen=True)
class EnsembleProbe:
    """Fitted probes: `models[l][m]` for l2 index l and member m; `mean`/`std` the members'
    standardisation statistics (E, 1, D); `kind` logistic or closed_form."""

    kind: str
    l2s: tuple[float, ...]
    models: tuple[tuple[LinearModel, ...], ...]
    mean: np.ndarray
    std: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardise (E, N, D) features with the training statistics."""
        return (np.asarray(x, np.float64) - self.mean) / self.std

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(L, N, C): per l2, the members' probabilities (logistic) or scores (closed form) averaged."""
        z = self.transform(_members(x))
        out = []
        for per_member in self.models:
            if self.kind == "logistic":
                out.append(np.mean([m.probabilities(zm) for m, zm in zip(per_member, z)], axis=0))
            else:
                out.append(np.mean([m.scores(zm) for m, zm in zip(per_member, z)], axis=0))
        return np.stack(out)


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, l2s: Sequence[float], *,
              kind: ProbeKind = "logistic", max_iter: int = MAX_ITER) -> EnsembleProbe:
    """Standardise each member's features and fit the whole l2 grid per member (module docstring).

    x: (E, n, D) or (n, D); y: int (n,) in 0..num_classes-1 (every class present).
    """
    if kind not in ("logistic", "closed_form"):
        raise PlexbenchError(f"probe kind must be logistic or closed_form, got {kind!r}")
    x = _members(x)
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True) + STD_EPS
    z = (x - mean) / std
    if kind == "logistic":
        per_member = [logistic_path(zm, y, num_classes, l2s, max_iter=max_iter) for zm in z]
    else:
        per_member = [closed_form_path(zm, y, num_classes, l2s) for zm in z]
    models = tuple(tuple(pm[i] for pm in per_member) for i in range(len(l2s)))
    return EnsembleProbe(kind, tuple(float(v) for v in l2s), models, mean, std)


def _members(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        return x[None]
    if x.ndim != 3:
        raise PlexbenchError(f"probe features must be (E, N, D) or (N, D), got shape {x.shape}")
    return x
