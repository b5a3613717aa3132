"""Ensembles: combining members (spec §3) and their diversity.

`member_logits`: float (E, N, K), member-major. Combination is probability averaging:
ensemble log p = logsumexp_m(log_softmax(logits_m)) - log E. All arithmetic is float64
and done in row chunks, so no (E, N, K) float64 temporary is built at once.
"""

from __future__ import annotations

import itertools

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.metrics import _checks as C


def _check_members(member_logits, name: str = "member_logits") -> np.ndarray:
    arr = C.check_matrix(member_logits, name, ndim=3)
    if not np.all(np.isfinite(arr)):
        raise PlexbenchError(f"{name} contains NaN or inf")
    return arr


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis in float64: x - max - log(sum(exp(x - max)))."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def log_mean_exp(member_log_probs: np.ndarray) -> np.ndarray:
    """log(mean_m exp(x_m)) over the first axis, stable; (E, N, K) -> (N, K) float64.

    Entries that are -inf in every member stay -inf.
    """
    x = np.asarray(member_log_probs, dtype=np.float64)
    m = x.max(axis=0)
    safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(x - safe).mean(axis=0)) + safe


def ensemble_from_logits(member_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(member log-probs (E, N, K), ensemble log-probs (N, K)), float64, from validated logits."""
    e, n, k = member_logits.shape
    member = np.empty((e, n, k), dtype=np.float64)
    ens = np.empty((n, k), dtype=np.float64)
    for rows in C.row_chunks(n, e * k):
        member[:, rows] = log_softmax(member_logits[:, rows])
        ens[rows] = log_mean_exp(member[:, rows])
    return member, ens


def ensemble_log_probs(member_logits) -> np.ndarray:
    """Ensemble log-probabilities (N, K) float64 from member logits (E, N, K) (spec §3).

    log p = logsumexp_m(log_softmax(logits_m)) - log E, i.e. the log of the mean of the
    member probabilities. E = 1 gives log_softmax of the single member.

    >>> np.exp(ensemble_log_probs(np.log([[[0.5, 0.5]], [[0.9, 0.1]]]))).round(3)
    array([[0.7, 0.3]])
    """
    return ensemble_from_logits(_check_members(member_logits))[1]


def _member_predictions(member_logits: np.ndarray) -> np.ndarray:
    return np.argmax(member_logits, axis=-1)  # (E, N); ties to the lowest class index


def disagreement(member_logits) -> float:
    """Mean over unordered member pairs (a < b) of the fraction of examples whose argmax differ.

    Argmax ties go to the lowest class index. Needs E >= 2; E = 1 gives NaN with an
    `UndefinedMetricWarning`.
    """
    x = _check_members(member_logits)
    if x.shape[0] < 2:
        return C.undefined("disagreement", "fewer than 2 ensemble members")
    pred = _member_predictions(x)
    pairs = itertools.combinations(range(x.shape[0]), 2)
    return float(np.mean([np.mean(pred[a] != pred[b]) for a, b in pairs]))


def mean_pairwise_kl(member_logits) -> float:
    """Mean over ordered member pairs (a != b) and examples of KL(p_a || p_b), natural log.

    KL(p_a || p_b) = sum_k p_a,k (log p_a,k - log p_b,k), from exact log_softmax. Averaging
    over ordered pairs makes the result symmetric in the members. E = 1: NaN with warning.
    """
    x = _check_members(member_logits)
    e, n, k = x.shape
    if e < 2:
        return C.undefined("mean_pairwise_kl", "fewer than 2 ensemble members")
    total = 0.0
    for rows in C.row_chunks(n, e * k):
        lp = log_softmax(x[:, rows])
        p = np.exp(lp)
        for a, b in itertools.permutations(range(e), 2):
            total += float(np.sum(p[a] * (lp[a] - lp[b])))
    return total / (e * (e - 1) * n)
