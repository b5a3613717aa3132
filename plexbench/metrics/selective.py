"""Selective prediction: oracle-collaborative accuracy, risk-coverage curve, AURC, E-AURC.

Shapes: `labels` int (N,), `probs` float (N, K). Confidence = max_k p (top label, class
ties to the lowest index); correct = (argmax == label).

Orders (both stable, i.e. ties keep example order, index 0 first):
- oracle referral ranks examples by confidence ASCENDING: among examples of equal
  confidence, the one that comes first in the data is referred to the oracle first;
- the risk-coverage curve ranks examples by confidence DESCENDING (a stable sort on
  -confidence): among equal confidences, the one that comes first in the data is accepted
  first.

AURC = sort_by_confidence -> cumulative_risk -> area, each a function here.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from plexbench.metrics import _checks as C
from plexbench.metrics.resample_block import ResampleBlock, on_resamples
from plexbench.metrics.vocabulary import declares
from plexbench.metrics.stats import ConfidenceOrder, stats_of


# ----------------------------------------------------------------------------- building blocks
def num_referred(n: int, fraction: float) -> int:
    """floor(n * fraction), with n * fraction first rounded to 9 decimals.

    The rounding removes binary floating-point noise: 100 * 0.29 is 28.999999999999996 in
    float64 and must give 29, not 28.
    """
    return int(math.floor(round(n * fraction, 9)))


def oc_acc_sorted(order: ConfidenceOrder, fraction: float) -> float:
    """Oracle-collaborative accuracy from the descending confidence order, O(log N).

    The k = num_referred(N, fraction) least confident examples count as correct. With t the k-th
    smallest confidence, every example with conf < t is referred, and of those with conf == t
    the first (k - #{conf < t}) in the order's tie order (example order; draw order for a
    bootstrap resample), which is exactly the first k of a stable ascending sort. The counts of
    correct examples come from the running error count, so no example is visited.
    """
    n = order.n
    k = num_referred(n, fraction)
    errors = order.errors
    total_correct = n - int(errors[n])
    if k == 0:
        return total_correct / n
    if k >= n:
        return 1.0
    ties_start, below_start = order.tie_bounds(n - k)  # the run of confidence t = the k-th smallest
    tied = k - (n - below_start)

    def correct_in(a: int, b: int) -> int:
        return (b - a) - int(errors[b] - errors[a])

    referred_correct = correct_in(below_start, n) + correct_in(ties_start, ties_start + tied)
    return (k + total_correct - referred_correct) / n


def sort_by_confidence(conf: np.ndarray) -> np.ndarray:
    """Indices by descending confidence, ties in example order (stable sort on -conf)."""
    return np.argsort(-conf, kind="stable")


def cumulative_risk(sorted_correct: np.ndarray) -> np.ndarray:
    """risk[k-1] = (# incorrect among the first k) / k for k = 1..N, float64 (N,)."""
    errors = np.cumsum(~sorted_correct.astype(bool), dtype=np.int64)
    return errors / np.arange(1, errors.shape[0] + 1)


def area(risk: np.ndarray) -> float:
    """Mean of the risk over the N coverage levels k/N (a right Riemann sum)."""
    return float(np.mean(risk))


@functools.lru_cache(maxsize=4096)  # the bootstrap asks for the same few error counts again and again
def optimal_aurc(n: int, num_errors: int) -> float:
    """AURC of the ideal order (all correct examples first): mean_k max(0, k - (n - e)) / k."""
    k = np.arange(n - num_errors + 1, n + 1, dtype=np.float64)
    return float(np.sum((k - (n - num_errors)) / k) / n)


def _order(labels, probs, what: str) -> ConfidenceOrder:
    stats = stats_of(labels, probs, want=("conf", "correct"), what=what)
    stats.require_labels(what)
    return stats.sorted_by_confidence


# ----------------------------------------------------------------------------- public metrics
@declares("oc_acc@*", direction="higher", category="uncertainty",
          description="accuracy when the given fraction of least confident examples goes to an oracle")
def oracle_collaborative_accuracy(labels, probs=None, *, fraction: float) -> float:
    """Accuracy when the least confident `fraction` of examples is handed to an oracle.

    k = floor(N * fraction) examples with the lowest confidence are counted correct, the
    rest are scored as they are: (k + #correct among the others) / N. Ties in confidence:
    stable ascending order, so among equal confidences the examples that come FIRST in the
    data are referred. fraction = 0 gives the accuracy, fraction = 1 gives 1. Reads the
    confidence order (shared with AURC and calib_auc; O(log N) once it exists).

    Works for any number of classes. (Plex's reference code computes this metric in a
    binary-only way that degenerates for K > 2; this is the definition, spec §5.)

    >>> probs = [[.9, .1], [.6, .4], [.55, .45], [.2, .8]]  # accuracy 3/4, the .55 row is wrong
    >>> oracle_collaborative_accuracy([0, 0, 1, 1], probs, fraction=0.25)  # k = 1: that row
    1.0
    """
    fraction = C.check_fraction(fraction)
    return oc_acc_sorted(_order(labels, probs, "oracle_collaborative_accuracy"), fraction)


@on_resamples(oracle_collaborative_accuracy)
def _oc_acc_on_resamples(block: ResampleBlock, fraction: float) -> np.ndarray:
    """`oc_acc_sorted` on each resample: the same integer counts, from the groups."""
    n, k = block.n, num_referred(block.n, C.check_fraction(fraction))
    total_correct = n - block.total_wrong
    if k == 0:
        return total_correct / n
    if k >= n:
        return np.ones(block.size)
    rows = np.arange(block.size)
    group = block.group_at(n - k)  # the run of confidence t = the k-th smallest
    below_start = block.group_ends[rows, group]
    tied = k - (n - below_start)
    errors_below = block.wrong_after(group)
    referred_correct = (n - below_start) - errors_below + tied - block.wrong_in_first(group, tied)
    return (k + total_correct - referred_correct) / n


def risk_coverage_curve(labels, probs=None) -> dict[str, np.ndarray]:
    """Selective risk at each coverage k/N, k = 1..N, most confident examples accepted first.

    Returns float64 arrays (N,) `coverage` = k/N and `risk` = error rate among the k
    accepted examples (stable order on -confidence; ties in example order).
    """
    order = _order(labels, probs, "risk_coverage_curve")
    n = order.n
    return {"coverage": np.arange(1, n + 1) / n, "risk": risk_from(order)}


def risk_from(order: ConfidenceOrder) -> np.ndarray:
    """cumulative_risk of the descending confidence order, from its running error count."""
    return order.errors[1:] / np.arange(1.0, order.n + 1.0)


def aurc_sorted(order: ConfidenceOrder) -> float:
    """AURC of the order (kept on it: E-AURC reads it too)."""
    cache = order.__dict__.setdefault("_aurc", [])
    if not cache:
        cache.append(area(risk_from(order)))
    return cache[0]


def eaurc_sorted(order: ConfidenceOrder) -> float:
    return aurc_sorted(order) - optimal_aurc(order.n, int(order.errors[order.n]))


@declares("aurc", direction="lower", category="uncertainty", plexbench="one_minus",
          description="area under the risk-coverage curve")
def aurc(labels, probs=None) -> float:
    """Area under the risk-coverage curve: mean over k = 1..N of the risk at coverage k/N.

    Order: stable sort on -confidence (ties in example order). Geifman et al. 2019.

    >>> aurc([0, 1], [[0.9, 0.1], [0.8, 0.2]])  # risks 0/1, 1/2 -> mean 0.25
    0.25
    """
    return aurc_sorted(_order(labels, probs, "aurc"))


@declares("eaurc", direction="lower", category="uncertainty", plexbench="one_minus",
          description="AURC minus the AURC of an oracle ranking")
def eaurc(labels, probs=None) -> float:
    """Excess AURC: AURC - AURC of the ideal order (all correct examples first). >= 0."""
    return eaurc_sorted(_order(labels, probs, "eaurc"))


@functools.lru_cache(maxsize=4)
def _tail_harmonic(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, P) float64 (n + 1,): T[p] = sum_{k=p+1..n} 1/k (summed from the small end), and its
    prefix sums P[p] = T[0] + ... + T[p-1] = p (T[p] + 1) (closed form: no running-sum error)."""
    tail = np.zeros(n + 1)
    tail[:n] = np.cumsum(1.0 / np.arange(n, 0, -1, dtype=np.float64))[::-1]
    p = np.arange(n + 1, dtype=np.float64)
    return tail, p * (tail + 1.0)


def _aurc_values(block: ResampleBlock) -> np.ndarray:
    cache = block.__dict__.setdefault("_aurc", [])
    if not cache:
        # N AURC = sum_k E_k / k (E_k: errors among the first k) = sum over the positions p of the
        # errors of T[p] = sum_{k > p} 1/k, so only incorrect draws are visited.
        tail, prefix = _tail_harmonic(block.n)
        cache.append(block.sum_at_wrong_positions(tail, prefix) / block.n)
    return cache[0]


@on_resamples(aurc)
def _aurc_on_resamples(block: ResampleBlock) -> np.ndarray:
    return _aurc_values(block)


@on_resamples(eaurc)
def _eaurc_on_resamples(block: ResampleBlock) -> np.ndarray:
    return _aurc_values(block) - np.array([optimal_aurc(block.n, e) for e in block.total_wrong.tolist()])
