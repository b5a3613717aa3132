"""Finding wrong labels from predicted probabilities (spec §11): label-quality scores, confident
learning, and the metrics that score a detector against the true noisy mask.

Shapes: `labels` int (N,), the GIVEN (possibly noisy) labels in [0, K); `probs` float (N, K),
out-of-sample predicted probabilities (validated as in `_checks`); `is_noisy` bool (N,), True
where the given label is wrong; `is_issue` bool (N,), a detector's verdict.

Sign convention (one for the whole module, cleanlab's): a label-QUALITY score is higher when the
given label is more likely correct. The detection metrics rank by the ISSUE score 1 - quality,
with noisy labels as the positive class, so AUROC = P(quality of a noisy label < quality of a
clean one) + 1/2 P(equal).

Confident learning (Northcutt, Jiang & Chuang 2021) follows cleanlab 2.9's
`find_label_issues(filter_by="prune_by_noise_rate")` defaults rule for rule (written here from its
description and checked against it in the tests; no cleanlab code is used):

1. thresholds t_k = mean of p_k over examples labelled k (a class nobody is labelled with gets
   2.0, so no example is ever confident of it), clipped below at 2e-6;
2. p_ik counts as confident when p_ik >= t_k - 1e-6; an example with one confident class guesses
   that class, with several the argmax of its row (first index on ties), with none it is not
   counted; the confident joint C[given, guess] counts the counted examples, its diagonal clipped
   below at 1;
3. calibration: row i scaled to the number of examples labelled i, the matrix scaled to sum to N,
   each row rounded to integers keeping its (rounded) total (`round_keeping_row_totals`);
4. prune by noise rate: from the calibrated joint, per given class k with at least 2 examples and
   every other class j, the C[k, j] examples labelled k with the largest margin p_j - p_k are
   flagged; before that, a class whose calibrated diagonal is 0 gets it
   raised to 1, taken evenly from the non-zero entries of its row (cleanlab's
   `_keep_at_least_n_per_class`, with its truncation to integers);
5. an example whose given label is the argmax of p after adding 1e-6 to p[y] is never flagged.

TIES: where cleanlab orders values with numpy's default (unstable) `argsort` - the rounding of
step 3 and the margins of step 4 - this module makes the very same call on the very same array,
so the two agree on any machine. Among exactly EQUAL values that order is numpy's, and it depends
on the CPU's sort kernel (AVX2 and AVX-512 sorting networks differ from the scalar introsort), so
on such ties the results (one example more or less in a count, a different one of two equally
ranked examples) can differ between machines, as cleanlab's own do. Equal residuals are common in
step 3 (equal counts in a row scale to equal values), so a stable order would NOT reproduce
cleanlab's joint.

The estimated noise rate is 1 - trace(J) with J the calibrated joint divided by its sum
(cleanlab's `estimate_joint`; `num_label_issues(estimation_method="off_diagonal_calibrated")`
is round(N * that)).
"""

from __future__ import annotations

import math

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.metrics import _checks as C
from plexbench.metrics import _ranking
from plexbench.metrics.vocabulary import declare_metric, declares


def probability_of_label(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p[i, labels[i]] as float64 (N,)."""
    return np.take_along_axis(probs, labels[:, None], axis=1)[:, 0].astype(np.float64, copy=False)

CONFIDENCE_SLACK = 1e-6  # p >= t - slack is confident; also the bonus the given label gets in step 5
THRESHOLD_FLOOR = 2e-6
ABSENT_CLASS_THRESHOLD = 2.0  # above any probability: a class without labelled examples is never confident
ROUNDING_SLACK = 1e-6


# ----------------------------------------------------------------------------- label-quality scores


def self_confidence(labels, probs) -> np.ndarray:
    """Quality score p[i, y_i], float64 (N,) (higher = label more likely correct).

    >>> self_confidence([0, 1], [[0.8, 0.2], [0.7, 0.3]]).tolist()
    [0.8, 0.3]
    """
    y, p = C.check_labels_probs(labels, probs)
    return probability_of_label(p, y)


def normalized_margin(labels, probs) -> np.ndarray:
    """Quality score (p[i, y_i] - max_{k != y_i} p[i, k] + 1) / 2 in [0, 1], float64 (N,).

    >>> normalized_margin([0, 2], [[0.6, 0.3, 0.1], [0.5, 0.3, 0.2]]).round(6).tolist()
    [0.65, 0.35]
    """
    y, p = C.check_labels_probs(labels, probs)
    own = probability_of_label(p, y)
    others = p.copy()
    others[np.arange(y.shape[0]), y] = -np.inf
    return (own - others.max(axis=1) + 1.0) / 2.0


QUALITY_SCORES = {"self_confidence": self_confidence, "normalized_margin": normalized_margin}


# ----------------------------------------------------------------------------- confident learning


def confident_thresholds(labels, probs) -> np.ndarray:
    """t_k = mean of p[:, k] over examples labelled k (2.0 for absent classes), >= 2e-6; (K,).

    Each class's mean is taken over its examples in index order (the same float sum as a mean of
    `probs[labels == k, k]`).

    >>> confident_thresholds([0, 0, 1], [[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]).tolist()
    [0.7, 0.8]
    """
    y, p = C.check_labels_probs(labels, probs)
    return _thresholds(y, p)


def _thresholds(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    k = p.shape[1]
    order = np.argsort(y, kind="stable")  # within a class, index order is kept
    own = p[order, y[order]]
    bounds = np.searchsorted(y[order], np.arange(k + 1))
    t = np.full(k, ABSENT_CLASS_THRESHOLD)
    for c in range(k):
        if bounds[c + 1] > bounds[c]:
            t[c] = own[bounds[c]:bounds[c + 1]].copy().mean()  # a fresh array, as probs[labels == c, c]
    return np.maximum(t, THRESHOLD_FLOOR)


def _confident_guess(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(counted bool (N,), guessed class int64 (N,)): step 2 of the module docstring."""
    confident = p >= _thresholds(y, p) - CONFIDENCE_SLACK
    num = confident.sum(axis=1)
    guess = np.where(num > 1, p.argmax(axis=1), confident.argmax(axis=1))
    return num > 0, guess.astype(np.int64)


def confident_joint(labels, probs, *, calibrate: bool = True) -> np.ndarray:
    """The confident joint C[given, guessed] int64 (K, K), diagonal >= 1; calibrated by default.

    Calibrated: row i sums to the number of examples labelled i (up to rounding of the total) and
    the matrix to N (module docstring, steps 1-3).

    >>> confident_joint([0, 0, 1, 1], [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.95, 0.05]], calibrate=False).tolist()
    [[1, 0], [1, 1]]
    """
    y, p = C.check_labels_probs(labels, probs)
    return _joint(y, p, calibrate)


def _joint(y: np.ndarray, p: np.ndarray, calibrate: bool) -> np.ndarray:
    k = p.shape[1]
    counted, guess = _confident_guess(y, p)
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (y[counted], guess[counted]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    return calibrate_joint(joint, y) if calibrate else joint


def calibrate_joint(joint: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows scaled to the label counts, total scaled to N, rows rounded keeping their totals (int64)."""
    y = np.asarray(labels)
    counts = np.bincount(y, minlength=joint.shape[0])
    row_sums = np.maximum(joint.sum(axis=1), 1e-100)
    # Built guess-major and summed in that memory order, as cleanlab does: the total's last bit
    # decides on which side of .5 an entry lands, and so how the rows round.
    by_guess = np.ascontiguousarray(joint.T) / row_sums * counts
    scaled = (by_guess / max(float(by_guess.sum()), 1e-100) * int(counts.sum())).T
    return round_keeping_row_totals(scaled)


def round_keeping_row_totals(matrix: np.ndarray) -> np.ndarray:
    """Each row rounded to integers whose sum is the row's rounded sum, int64.

    Per row: round half to even; while the sum differs from round(row sum), the entries furthest
    from their rounded value in the needed direction move by 1 (largest x - round(x) first when
    adding, smallest first when removing; equal residuals in numpy's default argsort order, see
    TIES), at most one step per entry per pass.

    >>> round_keeping_row_totals(np.array([[0.4, 0.3, 0.2, 1.1]])).tolist()   # row sum 2.0
    [[1, 0, 0, 1]]
    """
    values = np.asarray(matrix, dtype=np.float64)
    return np.stack([_round_keeping_sum(row) for row in values]).astype(np.int64)


def _round_keeping_sum(row: np.ndarray) -> np.ndarray:
    ints = np.round(row)
    target, total = np.round(row.sum()), np.round(ints.sum())
    while abs(total - target) > ROUNDING_SLACK:
        gap = np.round(target - total)
        step = -1.0 if gap < 0 else 1.0
        changes = min(int(abs(gap)), row.shape[0])
        ascending = np.argsort(row - ints)  # numpy's default sort, as cleanlab: see TIES
        chosen = (ascending[::-1] if step > 0 else ascending)[:changes]
        ints[chosen] += step
        total = np.round(ints.sum())
    return ints


def estimate_joint(labels, probs) -> np.ndarray:
    """The calibrated confident joint divided by its sum: P(given = i, true = j), float64 (K, K)."""
    joint = confident_joint(labels, probs)
    return joint / max(float(joint.sum()), 1e-100)


@declares("est_noise_rate", direction=None, category="uncertainty",
          description="confident learning's estimate of the fraction of wrong labels (compare with noise_rate)")
def estimated_noise_rate(labels, probs) -> float:
    """1 - trace(estimate_joint): the confident-learning estimate of the fraction of wrong labels.

    >>> estimated_noise_rate([0, 0, 1, 1], [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.95, 0.05]])
    0.25
    """
    return float(1.0 - np.trace(estimate_joint(labels, probs)))


def find_label_issues(labels, probs) -> np.ndarray:
    """Confident learning's issue mask, bool (N,): prune by noise rate (module docstring, steps 1-5).

    >>> find_label_issues([0, 0, 1, 1], [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.95, 0.05]]).tolist()
    [False, False, False, True]
    """
    y, p = C.check_labels_probs(labels, probs)
    prune = _prune_counts(_joint(y, p, calibrate=True))
    flagged = np.zeros(y.shape[0], dtype=bool)
    for k in range(p.shape[1]):
        rows = np.flatnonzero(y == k)
        if rows.shape[0] <= 1:  # a class with one example keeps it
            continue
        for j in np.flatnonzero(prune[k] > 0):
            if j == k:
                continue
            margin = p[rows, j] - p[rows, k]
            top = np.argsort(-margin)[:prune[k, j]]  # numpy's default sort, as cleanlab: see TIES
            flagged[rows[top]] = True
    return flagged & ~_predicted_as_given(y, p)


def _prune_counts(joint: np.ndarray) -> np.ndarray:
    """Examples to prune per (given k, true j), int64 (K, K); diagonals raised to >= 1 first.

    A given class k whose calibrated diagonal is 0 gets 1 there; its row's entries are all lowered
    by 1 / max(#non-zero entries of the row - 1, 1) and clipped at 0, then truncated to integers.
    """
    counts = joint.astype(np.float64)
    diag = counts.diagonal().copy()
    raised = np.maximum(diag, 1.0)
    spread = np.maximum(np.count_nonzero(counts, axis=1) - 1.0, 1.0)
    lowered = np.maximum(counts - ((raised - diag) / spread)[:, None], 0.0)
    np.fill_diagonal(lowered, raised)
    return lowered.astype(np.int64)  # truncation toward zero, as cleanlab's int cast


def _predicted_as_given(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """True where argmax(p with p[y] + 1e-6) is the given label (never an issue)."""
    bumped = p.copy()
    bumped[np.arange(y.shape[0]), y] += CONFIDENCE_SLACK
    return bumped.argmax(axis=1) == y


# ----------------------------------------------------------------------------- metrics against the true noisy mask


def _check_masks(is_noisy, is_issue) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_mask(is_noisy, "is_noisy"), _as_mask(is_issue, "is_issue")
    C.check_same_rows(a, b, "is_noisy", "is_issue")
    return a, b


def _as_mask(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.dtype.kind not in "biu":
        raise PlexbenchError(f"{name} must be booleans or 0/1 integers of shape (N,), got dtype {arr.dtype} "
                             f"shape {arr.shape}")
    if arr.size == 0:
        raise PlexbenchError(f"{name} is empty; need at least one example")
    if arr.dtype.kind != "b" and (arr.min() < 0 or arr.max() > 1):
        raise PlexbenchError(f"{name} must hold only 0 and 1")
    return arr.astype(bool)


@declares("issue_precision", direction="higher", category="uncertainty",
          description="fraction of the labels a detector flags that are wrong")
def issue_precision(is_noisy, is_issue) -> float:
    """Fraction of flagged labels that are wrong: TP / (TP + FP); NaN (warned) when none is flagged.

    >>> issue_precision([1, 1, 0, 0], [1, 0, 1, 0])
    0.5
    """
    truth, flag = _check_masks(is_noisy, is_issue)
    if not flag.any():
        return C.undefined("issue_precision", "no label is flagged")
    return float(np.count_nonzero(truth & flag) / np.count_nonzero(flag))


@declares("issue_recall", direction="higher", category="uncertainty",
          description="fraction of the wrong labels a detector flags")
def issue_recall(is_noisy, is_issue) -> float:
    """Fraction of wrong labels that are flagged: TP / (TP + FN); NaN (warned) without wrong labels."""
    truth, flag = _check_masks(is_noisy, is_issue)
    if not truth.any():
        return C.undefined("issue_recall", "no label is wrong")
    return float(np.count_nonzero(truth & flag) / np.count_nonzero(truth))


@declares("issue_f1", direction="higher", category="uncertainty",
          description="F1 of a detector's flagged labels against the wrong ones")
def issue_f1(is_noisy, is_issue) -> float:
    """2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall (0 when TP = 0 but
    something is wrong or flagged); NaN (warned) when no label is wrong and none is flagged.

    >>> issue_f1([1, 1, 0, 0], [1, 0, 1, 0])
    0.5
    """
    truth, flag = _check_masks(is_noisy, is_issue)
    tp = np.count_nonzero(truth & flag)
    denominator = 2 * tp + np.count_nonzero(flag & ~truth) + np.count_nonzero(truth & ~flag)
    if denominator == 0:
        return C.undefined("issue_f1", "no label is wrong and none is flagged")
    return float(2 * tp / denominator)


def _issue_ranking(is_noisy, quality) -> tuple[np.ndarray, np.ndarray] | None:
    """(issue scores sorted ascending, noisy flags in that order), or None (warned) without both classes."""
    truth = _as_mask(is_noisy, "is_noisy")
    q = C.check_finite(quality, "quality", 1)
    C.check_same_rows(truth, q, "is_noisy", "quality")
    if truth.all() or not truth.any():
        return None
    issue = 1.0 - q
    order = np.argsort(issue, kind="stable")
    return issue[order], truth[order]


def label_issue_auroc(is_noisy, quality) -> float:
    """ROC AUC of the issue score 1 - quality with wrong labels positive (plexbench.metrics ranking).

    >>> label_issue_auroc([1, 0, 0, 1], [0.2, 0.9, 0.6, 0.7])
    0.75
    """
    ranked = _issue_ranking(is_noisy, quality)
    if ranked is None:
        return C.undefined("auroc", "needs both wrong and correct labels")
    return float(_ranking.mann_whitney_auc(*ranked))


def label_issue_auprc(is_noisy, quality) -> float:
    """Average precision of the issue score 1 - quality with wrong labels positive (no interpolation).

    Its chance level is the noise rate, so compare it across noise settings with care.
    """
    ranked = _issue_ranking(is_noisy, quality)
    if ranked is None:
        return C.undefined("auprc", "needs both wrong and correct labels")
    tps, fps, _ = _ranking.descending_operating_points(*ranked)
    return _ranking.average_precision(tps, fps)


# ----------------------------------------------------------------------------- names computed by the label_noise task kind
# (the realised noise rate of a draw, and the differences between a probe trained on noisy and
# on clean labels; shown beside the scored metrics, never scored themselves)

declare_metric("noise_rate", direction=None, category="uncertainty",
               description="realised fraction of wrong labels in a noisy labelled set")
declare_metric("accuracy_drop", direction="lower", category="prediction", value_range=(-1.0, 1.0), plexbench=None,
               description="clean-label-trained minus noisy-label-trained clean test accuracy of the same adaptation")
declare_metric("nll_increase", direction="lower", category="prediction", value_range=(-math.inf, math.inf),
               plexbench=None, description="noisy-label-trained minus clean-label-trained clean test NLL (nats)")
declare_metric("ece_increase", direction="lower", category="uncertainty", value_range=(-1.0, 1.0), plexbench=None,
               description="noisy-label-trained minus clean-label-trained clean test ECE")
