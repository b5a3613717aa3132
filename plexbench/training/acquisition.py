"""Active-learning acquisition: initial set, scores on the unlabelled pool, selection (spec §6).

Scores (higher = acquire first) from member probabilities `member_probs` (E, N, K) (rows sum
to 1) and the ensemble probabilities p = mean over members:

- `uniform`: U(0, 1) draws from the round's generator;
- `entropy`: -sum_k p_k log p_k (natural log, 0 log 0 = 0);
- `margin`: 1 - (p_(1) - p_(2)), p_(1) >= p_(2) the two largest;
- `msp`: 1 - max_k p_k;
- `bald`: H[p] - mean_m H[p_m] (mutual information of label and member); needs E > 1;
- `density`: max(s) - s with s = logsumexp_k(-d_k / 2), d_k the squared Mahalanobis distance of
  a pool embedding to the mean of class k under one shared covariance (sum of within-class
  scatter / n, no shrinkage; pseudo-inverse, numpy.linalg.pinv's default cutoff, since a small
  labelled set has fewer examples than dimensions), both fitted on the LABELLED embeddings.
  Ensembles: s is averaged over members, each fitted on its own embeddings (the reference
  code keeps only the last member's s by mistake; spec §6). The maximum runs over the pool
  rows scored, so the densest one scores 0. With no labelled example the scores are uniform.

Already-labelled rows get -inf (`mask_labelled`). Selection (`select`):
- `topk`: the k highest scores, ties to the LOWER pool index (a stable sort);
- `power`: the top-k of log(score) + Gumbel(0, 1) noise (beta = 1), rows with score <= 0
  (log = -inf) excluded; equivalent to drawing k rows without replacement with probability
  proportional to the score (the Gumbel-top-k trick).

Initial set (`initial_set`): permute the pool rows with the seed, then take for each class the
first initial / K rows of that class in the permuted order (initial divisible by K).

Worked example: p = [[0.5, 0.3, 0.2]]: entropy = 1.0297, margin = 1 - 0.2 = 0.8, msp = 0.5.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from plexbench.errors import PlexbenchError

ACQUISITIONS = ("uniform", "entropy", "margin", "msp", "bald", "density")
SELECTIONS = ("topk", "power")


def initial_set(labels: np.ndarray, initial: int, num_classes: int, seed: int) -> np.ndarray:
    """Pool rows of the class-balanced initial set, in permuted order (module docstring).

    >>> initial_set(np.array([0, 1, 0, 1, 0, 1]), 2, 2, seed=0).tolist()
    [3, 2]
    """
    labels = np.asarray(labels)
    if initial % num_classes:
        raise PlexbenchError(f"initial budget {initial} is not divisible by the {num_classes} classes")
    per_class = initial // num_classes
    perm = np.random.default_rng(seed).permutation(labels.shape[0])
    taken = np.zeros(num_classes, np.int64)
    out = []
    for row in perm:
        c = int(labels[row])
        if 0 <= c < num_classes and taken[c] < per_class:
            taken[c] += 1
            out.append(int(row))
            if len(out) == initial:
                break
    if len(out) < initial:
        short = [c for c in range(num_classes) if taken[c] < per_class]
        raise PlexbenchError(f"the pool has fewer than {per_class} examples of class(es) {short[:10]}")
    return np.asarray(out, np.int64)


def entropy(p: np.ndarray) -> np.ndarray:
    """-sum_k p log p over the last axis, with 0 log 0 = 0."""
    p = np.asarray(p, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=-1)


def margin_score(p: np.ndarray) -> np.ndarray:
    top2 = -np.partition(-np.asarray(p, np.float64), 1, axis=-1)[..., :2]
    return 1.0 - (top2[..., 0] - top2[..., 1])


def msp_score(p: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(p, np.float64).max(axis=-1)


def bald_score(member_probs: np.ndarray) -> np.ndarray:
    """H[mean_m p_m] - mean_m H[p_m]; member_probs (E, N, K) with E > 1."""
    member_probs = np.asarray(member_probs, np.float64)
    if member_probs.shape[0] < 2:
        raise PlexbenchError("bald needs an ensemble (E > 1)")
    return entropy(member_probs.mean(axis=0)) - entropy(member_probs).mean(axis=0)


def density_score(pool_embeddings: np.ndarray, labelled_embeddings: np.ndarray | None,
                  labelled_labels: np.ndarray | None) -> np.ndarray:
    """max(s) - s (module docstring); embeddings (E, N, D) / (E, n, D) or 2-D for one member."""
    pool = _members(pool_embeddings)
    if labelled_embeddings is None or len(labelled_labels) == 0:
        return np.zeros(pool.shape[1])
    labelled = _members(labelled_embeddings)
    s = np.mean([log_density(p, x, np.asarray(labelled_labels)) for p, x in zip(pool, labelled)], axis=0)
    return s.max() - s


def log_density(pool: np.ndarray, x: np.ndarray, y: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """s = logsumexp_k(-d_k / 2) for each pool row (N,), one member: class means of x, shared
    covariance S = sum_k sum_{y_i = k} (x_i - mu_k)(x_i - mu_k)^T / n and its pseudo-inverse
    (eigenvalues <= D * eps * the largest count as zero). d_k = ||(x - mu_k) W||^2 with
    W W^T = pinv(S), computed over chunks of pool rows (memory O(chunk * K))."""
    from scipy.special import logsumexp

    classes, index = np.unique(y, return_inverse=True)
    means = np.stack([x[index == c].mean(axis=0) for c in range(classes.shape[0])])
    centred = x - means[index]
    lam, vec = np.linalg.eigh(centred.T @ centred / x.shape[0])
    keep = lam > lam.shape[0] * np.finfo(np.float64).eps * max(lam.max(), 0.0)
    w = vec[:, keep] / np.sqrt(lam[keep])
    zm = means @ w
    out = np.empty(pool.shape[0])
    for lo in range(0, pool.shape[0], chunk):
        z = pool[lo:lo + chunk] @ w
        d = np.einsum("nd,nd->n", z, z)[:, None] - 2.0 * z @ zm.T + np.einsum("cd,cd->c", zm, zm)
        out[lo:lo + chunk] = logsumexp(-0.5 * np.maximum(d, 0.0), axis=1)
    return out


def scores(name: str, member_probs: np.ndarray, *, rng: np.random.Generator | None = None,
           pool_embeddings=None, labelled_embeddings=None, labelled_labels=None) -> np.ndarray:
    """Acquisition score `name` for every pool row (N,), float64 (module docstring)."""
    member_probs = np.asarray(member_probs, np.float64)
    p = member_probs.mean(axis=0)
    if name == "uniform":
        if rng is None:
            raise PlexbenchError("uniform acquisition needs a random generator")
        return rng.uniform(size=p.shape[0])
    if name == "entropy":
        return entropy(p)
    if name == "margin":
        return margin_score(p)
    if name == "msp":
        return msp_score(p)
    if name == "bald":
        return bald_score(member_probs)
    if name == "density":
        if pool_embeddings is None:
            raise PlexbenchError("density acquisition needs the pool's embeddings (pre-logits)")
        return density_score(pool_embeddings, labelled_embeddings, labelled_labels)
    raise PlexbenchError(f"unknown acquisition {name!r} (choose from {', '.join(ACQUISITIONS)})")


def mask_labelled(score: np.ndarray, labelled: Sequence[int]) -> np.ndarray:
    """A copy of `score` with the labelled rows set to -inf."""
    out = np.array(score, np.float64, copy=True)
    out[np.asarray(labelled, np.int64)] = -np.inf
    return out


def select(score: np.ndarray, k: int, *, method: str = "topk", rng: np.random.Generator | None = None) -> np.ndarray:
    """Rows to acquire (k,), in selection order (module docstring); -inf rows are never chosen.

    >>> select(np.array([0.2, 0.9, -np.inf, 0.9]), 2).tolist()
    [1, 3]
    """
    score = np.asarray(score, np.float64)
    if method == "topk":
        key = score
    elif method == "power":
        if rng is None:
            raise PlexbenchError("power selection needs a random generator")
        with np.errstate(divide="ignore"):
            key = np.where(score > 0, np.log(np.where(score > 0, score, 1.0)), -np.inf) + rng.gumbel(size=score.shape)
    else:
        raise PlexbenchError(f"unknown selection {method!r} (choose from {', '.join(SELECTIONS)})")
    order = np.argsort(-key, kind="stable")
    chosen = order[:k]
    chosen = chosen[np.isfinite(key[chosen])]
    if chosen.shape[0] < k:
        raise PlexbenchError(f"only {chosen.shape[0]} pool examples can be acquired, {k} asked for")
    return chosen.astype(np.int64)


def _members(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x[None] if x.ndim == 2 else x
