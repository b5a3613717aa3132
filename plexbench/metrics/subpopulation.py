"""Subpopulation shift: accuracy per group and its summary (spec §5).

Reported as metrics `subpop/<key>` with key in mean, median, variance, p05, p25, p75, p95.
"""

from __future__ import annotations

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.metrics import _checks as C
from plexbench.metrics.stats import stats_of


def group_accuracies(labels, probs=None, groups=None) -> np.ndarray:
    """Top-1 accuracy of each group, float64 (G,), groups in ascending order of their id.

    `(labels, probs, groups)` or `(stats, groups=groups)` with an ExampleStats (reads `correct`).
    `groups` int (N,): any integer ids; only ids that occur are reported, so G = the number
    of distinct ids and the i-th value belongs to the i-th smallest id (np.unique order).
    """
    stats = stats_of(labels, probs, want=("correct",), what="group_accuracies")
    stats.require_labels("group_accuracies")
    g = _check_groups(groups)
    C.check_same_rows(stats.correct, g, "labels", "groups")
    _, index = np.unique(g, return_inverse=True)
    return np.bincount(index, weights=stats.correct.astype(np.float64)) / np.bincount(index)


def _check_groups(groups) -> np.ndarray:
    if groups is None:
        raise PlexbenchError("group_accuracies needs groups (N,)")
    arr = np.asarray(groups)
    if arr.dtype == object or arr.dtype.kind not in "iu":
        raise PlexbenchError(f"groups must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise PlexbenchError(f"groups must have shape (N,) with N >= 1, got {arr.shape}")
    return arr.astype(np.int64)


def subpopulation_summary(acc) -> dict[str, float]:
    """mean, median, variance and 5/25/75/95th percentiles of per-group accuracies (G,).

    variance is the population variance (ddof = 0: mean squared deviation over the G
    groups). Percentiles and the median use linear interpolation between order statistics
    (numpy's default "linear" method): the q-th percentile sits at position q/100 * (G - 1)
    of the sorted values.

    >>> subpopulation_summary([0.5, 1.0])["p25"]  # position 0.25 between 0.5 and 1.0
    0.625
    """
    a = C.check_finite(acc, "group accuracies", 1)
    q = np.percentile(a, [5, 25, 75, 95], method="linear")
    return {
        "mean": float(np.mean(a)),
        "median": float(np.median(a)),
        "variance": float(np.var(a, ddof=0)),
        "p05": float(q[0]),
        "p25": float(q[1]),
        "p75": float(q[2]),
        "p95": float(q[3]),
    }
