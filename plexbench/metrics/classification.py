"""Classification and calibration metrics (spec §5): numpy in, Python float out.

Shapes: `labels` int (N,); `probs` float (N, K), rows summing to 1 (see `_checks` for the
tolerance and renormalisation rule); `log_probs` float (N, K). All sums are float64.

Shared rules:
- prediction = argmax of the row; a tie between classes goes to the LOWEST class index
  (numpy's argmax), and confidence = the probability of that class (the row maximum).
- equal-width binning (ece, rms_calibration_error, reliability_diagram, classwise_ece):
  bin index = floor(num_bins * c) computed in float64, clipped to [0, num_bins - 1], so
  c = 1 falls in the last bin and c = 0 in the first (Plex: num_bins = 15).
- calibration error of a set of bins: sum_b (n_b / N) |acc_b - conf_b|
  = sum_b |sum_{i in b} correct_i - sum_{i in b} c_i| / N; empty bins contribute 0.
"""

from __future__ import annotations

import math

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.metrics import _checks as C
from plexbench.metrics import _ranking
from plexbench.metrics.vocabulary import declares


# ----------------------------------------------------------------------------- building blocks
def top_label(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence float64 (N,), prediction int64 (N,)); ties go to the lowest class index."""
    pred = np.argmax(probs, axis=1)
    conf = np.take_along_axis(probs, pred[:, None], axis=1)[:, 0].astype(np.float64, copy=False)
    return conf, pred.astype(np.int64, copy=False)


def equal_width_bins(conf: np.ndarray, num_bins: int) -> np.ndarray:
    """floor(num_bins * conf) clipped to [0, num_bins - 1], int64 (N,)."""
    return np.clip(np.floor(num_bins * conf), 0, num_bins - 1).astype(np.int64)


def binned_sums(bins: np.ndarray, conf: np.ndarray, correct: np.ndarray, num_bins: int):
    """(count int64 (B,), sum of confidence (B,), sum of correct (B,)) per bin, float64 sums."""
    count = np.bincount(bins, minlength=num_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=num_bins)
    acc_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=num_bins)
    return count, conf_sum, acc_sum


def ece_from(conf: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> float:
    """Equal-width top-label ECE from confidences and correctness flags (already validated)."""
    _, conf_sum, acc_sum = binned_sums(equal_width_bins(conf, num_bins), conf, correct, num_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / conf.shape[0])


def probability_of_label(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p[i, labels[i]] as float64 (N,)."""
    return np.take_along_axis(probs, labels[:, None], axis=1)[:, 0].astype(np.float64, copy=False)


def squared_norms(x: np.ndarray) -> np.ndarray:
    """sum_k x[i, k]^2 per row, float64, in row chunks (no (N, K) temporary)."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for rows in C.row_chunks(x.shape[0], x.shape[1]):
        chunk = x[rows].astype(np.float64, copy=False)
        out[rows] = np.einsum("ij,ij->i", chunk, chunk)
    return out


def row_dots(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sum_k x[i, k] y[i, k] per row, float64, in row chunks."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for rows in C.row_chunks(x.shape[0], x.shape[1]):
        out[rows] = np.einsum("ij,ij->i", x[rows].astype(np.float64, copy=False), y[rows])
    return out


def nll_per_example(labels: np.ndarray | None, soft: np.ndarray | None, log_probs: np.ndarray,
                    clip: float | None = None) -> np.ndarray:
    """-log p_y (hard labels) or -sum_k y_k log p_k (soft labels; 0 * log 0 = 0), (N,)."""
    floor = -np.inf if clip is None else np.log(clip)
    if soft is None:
        return -np.maximum(probability_of_label(log_probs, labels), floor)
    out = np.empty(log_probs.shape[0], dtype=np.float64)
    for rows in C.row_chunks(*log_probs.shape):
        y = soft[rows]
        lp = np.maximum(log_probs[rows], floor)
        out[rows] = -(y * np.where(y > 0, lp, 0.0)).sum(axis=1)  # 0 * log 0 = 0
    return out


def brier_per_example(labels: np.ndarray | None, soft: np.ndarray | None, probs: np.ndarray,
                      probs_sq: np.ndarray | None = None) -> np.ndarray:
    """sum_k (p_k - y_k)^2 = sum p^2 - 2 p.y + sum y^2 per example, (N,).

    `probs_sq` (sum p^2 per row) can be passed when already computed.
    """
    sq = squared_norms(probs) if probs_sq is None else probs_sq
    if soft is None:
        return sq - 2.0 * probability_of_label(probs, labels) + 1.0
    return sq - 2.0 * row_dots(probs, soft) + squared_norms(soft)


def _check_bins(labels, probs, num_bins):
    y, p = C.check_labels_probs(labels, probs)
    conf, pred = top_label(p)
    return conf, pred == y, C.check_num_bins(num_bins)


# ----------------------------------------------------------------------------- public metrics
@declares("accuracy", direction="higher", category="prediction", paper="identity",
          description="fraction of examples whose top-1 class is the label")
def accuracy(labels, probs) -> float:
    """Top-1 accuracy: mean(argmax_k p[i, k] == labels[i]); class ties -> lowest index.

    >>> accuracy([0, 1], [[0.6, 0.4], [0.7, 0.3]])
    0.5
    """
    y, p = C.check_labels_probs(labels, probs)
    return float(np.mean(np.argmax(p, axis=1) == y))


@declares("nll", direction="lower", category="prediction", value_range=(0.0, math.inf), paper="nll",
          plexbench="nll", description="mean negative log-likelihood of the label (nats)")
def nll(labels, log_probs, *, clip: float | None = None) -> float:
    """Mean negative log-likelihood, exact from log-probabilities.

    labels: int (N,) -> mean_i -log p[i, y_i]; or soft labels float (N, K) ->
    mean_i -sum_k y_ik log p_ik (soft-label cross-entropy; terms with y_ik = 0 are 0 even
    where log p = -inf). log_probs: (N, K), rows with logsumexp 0. A true class with
    probability 0 gives inf. `clip`: Plex clips probabilities at 1e-7 before the log;
    pass clip=1e-7 to reproduce that (default None: exact).

    >>> round(nll([0], np.log([[0.5, 0.5]])), 6)  # -log 0.5
    0.693147
    """
    lp = C.check_log_probs(log_probs)
    y, soft = C.check_targets(labels, lp.shape[1])
    C.check_same_rows(soft if y is None else y, lp, "labels", "log_probs")
    if clip is not None and not 0 < clip < 1:
        raise PlexbenchError(f"clip must be in (0, 1), got {clip}")
    return float(np.mean(nll_per_example(y, soft, lp, clip)))


@declares("brier", direction="lower", category="prediction", value_range=(0.0, 2.0), paper="identity",
          plexbench="half", paper_note="paper quirk: lower-is-better but left unflipped, as in the paper's code",
          description="mean squared distance between the probabilities and the one-hot label")
def brier(labels, probs) -> float:
    """Mean over examples of sum_k (p_k - y_k)^2, y one-hot (int labels) or soft (N, K).

    Computed as sum p^2 - 2 p.y + sum y^2 without building the one-hot matrix. Range [0, 2].

    >>> round(brier([0], [[0.75, 0.25]]), 4)  # 0.25^2 + 0.25^2
    0.125
    """
    p = C.check_probs(probs)
    y, soft = C.check_targets(labels, p.shape[1])
    C.check_same_rows(soft if y is None else y, p, "labels", "probs")
    return float(np.mean(brier_per_example(y, soft, p)))


@declares("ece", direction="lower", category="uncertainty", paper="one_minus", plexbench="one_minus",
          description="expected calibration error, equal-width bins of the top-label confidence")
def ece(labels, probs, *, num_bins: int = 15) -> float:
    """Expected calibration error, equal-width top-label bins (Plex: 15).

    bin = floor(num_bins * c) clipped to [0, num_bins - 1] (c = max prob);
    ECE = sum_b (n_b / N) |acc_b - conf_b|; empty bins contribute 0.

    >>> ece([0, 1], [[0.9, 0.1], [0.6, 0.4]])  # bins 13 and 9: (|1-0.9| + |0-0.6|)/2
    0.35
    """
    conf, correct, b = _check_bins(labels, probs, num_bins)
    return ece_from(conf, correct, b)


@declares("adaptive_ece", direction="lower", category="uncertainty", plexbench="one_minus",
          description="expected calibration error, equal-mass bins of the top-label confidence")
def adaptive_ece(labels, probs, *, num_bins: int = 15) -> float:
    """ECE with equal-mass bins.

    Examples are sorted by confidence (ties: incorrect before correct, so the result does
    not depend on example order), then cut into `num_bins` contiguous groups of sizes
    differing by at most one, larger groups first (numpy.array_split); with N < num_bins
    some groups are empty and contribute 0. ECE = sum_b |sum correct - sum conf| / N.
    """
    conf, correct, b = _check_bins(labels, probs, num_bins)
    order = np.lexsort((correct, conf))
    n = conf.shape[0]
    sizes = np.full(b, n // b) + (np.arange(b) < n % b)
    bins = np.empty(n, dtype=np.int64)
    bins[order] = np.repeat(np.arange(b), sizes)
    _, conf_sum, acc_sum = binned_sums(bins, conf, correct, b)
    return float(np.abs(acc_sum - conf_sum).sum() / n)


@declares("classwise_ece", direction="lower", category="uncertainty", plexbench="one_minus",
          description="calibration error of every class probability, averaged over classes")
def classwise_ece(labels, probs, *, num_bins: int = 15) -> float:
    """Classwise (static) calibration error: mean over classes k of the equal-width ECE of p_k.

    For class k every example is binned by p[i, k] (floor(num_bins * p) clipped), and
    CE_k = sum_b |sum_{i in b} 1[y_i = k] - sum_{i in b} p[i, k]| / N; result = mean_k CE_k
    (Nixon et al. 2019, "SCE").
    """
    y, p = C.check_labels_probs(labels, probs)
    b = C.check_num_bins(num_bins)
    n, k = p.shape
    conf_sum = np.zeros(k * b)
    hit_sum = np.zeros(k * b)
    offsets = np.arange(k) * b
    for rows in C.row_chunks(n, k):
        bins = equal_width_bins(p[rows], b) + offsets
        conf_sum += np.bincount(bins.ravel(), weights=p[rows].ravel(), minlength=k * b)
        hits = np.take_along_axis(bins, y[rows, None], axis=1)[:, 0]
        hit_sum += np.bincount(hits, minlength=k * b)
    return float(np.abs(hit_sum - conf_sum).sum() / n / k)


@declares("rms_ce", "rms_calibration_error", direction="lower", category="uncertainty", plexbench="one_minus",
          description="root-mean-square calibration error, equal-width bins")
def rms_calibration_error(labels, probs, *, num_bins: int = 15) -> float:
    """Root-mean-square calibration error, equal-width top-label bins (same bins as `ece`).

    RMSCE = sqrt(sum_b (n_b / N) (acc_b - conf_b)^2); empty bins contribute 0.
    """
    conf, correct, b = _check_bins(labels, probs, num_bins)
    count, conf_sum, acc_sum = binned_sums(equal_width_bins(conf, b), conf, correct, b)
    full = count > 0
    gap2 = (acc_sum[full] - conf_sum[full]) ** 2 / count[full]
    return float(np.sqrt(gap2.sum() / conf.shape[0]))


def reliability_diagram(labels, probs, *, num_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin data of the equal-width top-label bins used by `ece`.

    Returns float64 arrays (B,) `bin_lower` = b/B, `bin_upper` = (b+1)/B, int64 `count`,
    and `accuracy`, `confidence` (means within the bin; NaN for an empty bin).
    """
    conf, correct, b = _check_bins(labels, probs, num_bins)
    count, conf_sum, acc_sum = binned_sums(equal_width_bins(conf, b), conf, correct, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "bin_lower": np.arange(b) / b,
            "bin_upper": np.arange(1, b + 1) / b,
            "count": count.astype(np.int64),
            "accuracy": np.where(count > 0, acc_sum / count, np.nan),
            "confidence": np.where(count > 0, conf_sum / count, np.nan),
        }


def calib_auc_sorted(sorted_conf_desc: np.ndarray, sorted_incorrect: np.ndarray) -> float:
    """calib_auc from confidences sorted in descending order and the matching flags."""
    value = _ranking.mann_whitney_auc(1.0 - sorted_conf_desc, sorted_incorrect)
    if np.isnan(value):
        return C.undefined("calib_auc", "all predictions are correct, or all are incorrect")
    return value


@declares("calib_auc", direction="higher", category="uncertainty", paper="identity",
          description="ROC AUC of 1 - confidence against 'prediction incorrect'")
def calib_auc(labels, probs) -> float:
    """ROC AUC of "prediction incorrect" (positive) scored by 1 - confidence (spec §5).

    Ties in the score count 1/2 (Mann-Whitney statistic, as scikit-learn's roc_auc_score).
    NaN with an `UndefinedMetricWarning` when every prediction is correct or every one is
    wrong.
    """
    y, p = C.check_labels_probs(labels, probs)
    conf, pred = top_label(p)
    order = np.argsort(-conf, kind="stable")
    return calib_auc_sorted(conf[order], (pred != y)[order])
