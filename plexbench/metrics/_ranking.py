"""Rank statistics on scores sorted once: Mann-Whitney AUC, ROC/PR operating points.

Every function here takes scores already sorted ascending (`sorted_scores`) and the
positive flags in the same order (`sorted_pos`), so callers sort once and reuse the order
(calib_auc, AURC and the OOD metrics all do). Tied scores form one group: a threshold
never separates equal scores.
"""

from __future__ import annotations

import numpy as np


def tie_groups(sorted_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of equal values in an ascending array; ends exclusive."""
    n = sorted_scores.shape[0]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    return starts, ends


def mann_whitney_auc(sorted_scores: np.ndarray, sorted_pos: np.ndarray) -> float:
    """P(score_pos > score_neg) + 1/2 P(score_pos = score_neg), from average ranks.

    AUC = (R_pos - P(P+1)/2) / (P * Q) with R_pos the sum of the 1-based average ranks of
    the P positives among P + Q examples. Twice the average rank of the group occupying
    0-based positions [s, e) is s + e + 1, an integer, so the rank sum is exact in int64 and
    the only rounding is the final division. Returns NaN when P or Q is 0 (callers warn).
    """
    n = sorted_scores.shape[0]
    num_pos = int(np.count_nonzero(sorted_pos))
    num_neg = n - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    starts, ends = tie_groups(sorted_scores)
    two_ranks = np.repeat(starts + ends + 1, ends - starts)
    two_rank_sum = int(two_ranks[sorted_pos].sum())
    return (two_rank_sum - num_pos * (num_pos + 1)) / (2.0 * num_pos * num_neg)


def group_counts(sorted_scores: np.ndarray, sorted_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positives int64 (G,), negatives int64 (G,)) per run of equal scores, runs in ascending order."""
    new = np.empty(sorted_scores.shape[0], dtype=bool)
    new[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    del new
    pos = np.add.reduceat(sorted_pos.view(np.uint8), starts, dtype=np.int64)
    neg = np.empty_like(pos)  # run sizes minus positives, without temporaries
    np.subtract(starts[1:], starts[:-1], out=neg[:-1])
    neg[-1] = sorted_scores.shape[0] - starts[-1]
    neg -= pos
    return pos, neg


def auc_from_groups(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Mann-Whitney AUC from per-group counts int64 (G,), groups of tied scores in ascending order.

    2U = sum_g P_g (2 Q_<g + Q_g): a positive beats every negative of a lower group and ties with
    half of its own group's; exact in int64 and equal to the rank-sum form of `mann_whitney_auc`
    (2U = twice the positives' rank sum - P (P + 1)). NaN when P or Q is 0.
    """
    return float(auc_from_group_rows(positives[None], negatives[None])[0])


def auc_from_group_rows(positives: np.ndarray, negatives: np.ndarray, pure: bool = False) -> np.ndarray:
    """`auc_from_groups` of each row of int64 (B, G) counts -> float64 (B,) (NaN where P or Q is 0).
    `pure=True`: the caller knows that no group holds both positives and negatives."""
    num_pos, num_neg = positives.sum(axis=1), negatives.sum(axis=1)
    # 2U = sum_g P_g (2 Q_<g + Q_g) = 2 P.cumsum(Q) - P.Q (the last term is 0 unless a group
    # holds both), exact in int64
    two_u = 2 * np.einsum("bg,bg->b", positives, np.cumsum(negatives, axis=1))
    if not pure:
        two_u -= np.einsum("bg,bg->b", positives, negatives)
    defined = (num_pos > 0) & (num_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, two_u / (2.0 * num_pos * num_neg), np.nan)


def descending_operating_points(sorted_scores: np.ndarray, sorted_pos: np.ndarray):
    """Cumulative (tp, fp, threshold) at each distinct score, thresholds from high to low.

    At threshold t every example with score >= t is called positive, so all members of a
    tie group switch together. Same points as scikit-learn's `_binary_clf_curve`.
    """
    scores = sorted_scores[::-1]
    pos = sorted_pos[::-1]
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    tps = np.cumsum(pos, dtype=np.int64)[last]
    fps = (last + 1) - tps
    return tps, fps, scores[last]


def average_precision(tps: np.ndarray, fps: np.ndarray) -> float:
    """sum_n (R_n - R_{n-1}) P_n over descending thresholds, R_0 = 0 (scikit-learn's AP)."""
    num_pos = tps[-1]
    precision = tps + fps
    precision = tps / precision
    step = np.diff(tps / num_pos, prepend=0.0)
    step *= precision
    return float(np.sum(step))


def fpr_at_tpr(tps: np.ndarray, fps: np.ndarray, tpr_level: float = 0.95) -> float:
    """FPR at the first (highest) threshold whose TPR = tp / P reaches `tpr_level`."""
    tpr = tps / tps[-1]
    first = int(np.argmax(tpr >= tpr_level))  # exists: the last point has TPR = 1
    return float(fps[first] / fps[-1])
