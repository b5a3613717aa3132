"""Classification and calibration metrics (spec §5): numpy in, Python float out.

Every metric takes either raw arrays, `(labels, probs)` (or `(labels, log_probs)` for `nll`), or
one `ExampleStats` (plexbench.metrics.stats: predictions validated once, with their per-example
statistics): `accuracy(labels, probs)` and `accuracy(stats)` give the same number. On raw arrays a
metric makes one validating pass in row chunks that computes only the statistics it reads (input in
its own dtype, float64 arithmetic inside a chunk); on `ExampleStats` it is O(N) (or O(N log N) for
the first metric that needs the confidence order, which is then shared).

Shapes: `labels` int (N,); `probs` float (N, K), rows summing to 1 (see plexbench.metrics.stats
for the tolerance and renormalisation rule); `log_probs` float (N, K). Sums are float64.

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

from plexbench.metrics import _checks as C
from plexbench.metrics import _ranking
from plexbench.metrics.resample_block import ResampleBlock, on_resamples
from plexbench.metrics.vocabulary import declares
from plexbench.metrics.stats import NLL_CLIP, ConfidenceOrder, ExampleStats, stats_of


# ----------------------------------------------------------------------------- building blocks
def equal_width_bins(conf: np.ndarray, num_bins: int) -> np.ndarray:
    """floor(num_bins * conf) clipped to [0, num_bins - 1], int64 (N,) (conf >= 0)."""
    bins = np.floor(num_bins * conf)
    np.minimum(bins, num_bins - 1, out=bins)
    np.maximum(bins, 0, out=bins)
    return bins.astype(np.int64)


def binned_sums(bins: np.ndarray, conf: np.ndarray, correct: np.ndarray, num_bins: int):
    """(count int64 (B,), sum of confidence (B,), sum of correct (B,)) per bin, float64 sums."""
    count = np.bincount(bins, minlength=num_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=num_bins)
    acc_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=num_bins)
    return count, conf_sum, acc_sum


def _labelled(labels, probs, what: str, want=("conf", "correct"), source: str = "probs") -> ExampleStats:
    stats = stats_of(labels, probs, source=source, want=want, what=what)
    stats.require_labels(what)
    return stats


# ----------------------------------------------------------------------------- public metrics
@declares("accuracy", direction="higher", category="prediction", paper="identity",
          description="fraction of examples whose top-1 class is the label")
def accuracy(labels, probs=None) -> float:
    """Top-1 accuracy: mean(argmax_k p[i, k] == labels[i]); class ties -> lowest index.

    Reads `correct` (count exact in int64).

    >>> accuracy([0, 1], [[0.6, 0.4], [0.7, 0.3]])
    0.5
    """
    stats = _labelled(labels, probs, "accuracy", want=("correct",))
    return int(np.count_nonzero(stats.correct)) / stats.num_examples


@on_resamples(accuracy)
def _accuracy_on_resamples(block: ResampleBlock) -> np.ndarray:
    return (block.n - block.total_wrong) / block.n


@declares("nll", direction="lower", category="prediction", value_range=(0.0, math.inf), paper="nll",
          plexbench="nll", description="mean negative log-likelihood of the label (nats)")
def nll(labels, log_probs=None, *, clip: float | None = NLL_CLIP) -> float:
    """Mean negative log-likelihood, from log-probabilities, with Plex's clip (spec §5).

    labels: int (N,) -> mean_i -log max(p[i, y_i], clip); or soft labels float (N, K) ->
    mean_i -sum_k y_ik log max(p_ik, clip) (soft-label cross-entropy; terms with y_ik = 0 are 0
    even where log p = -inf). log_probs: (N, K), rows with logsumexp 0 (a row off by more than
    1e-12 is shifted by its logsumexp), float64 arithmetic. `clip` (default 1e-7, as Plex: the
    per-example NLL is at most -ln 1e-7 = 16.118 and never infinite); clip=None gives the exact
    value (inf when a true class has probability 0). The clip changes nothing where p_y >= 1e-7.

    >>> round(nll([0], np.log([[0.5, 0.5]])), 6)  # -log 0.5
    0.693147
    """
    stats = _labelled(labels, log_probs, "nll", want=("nll",), source="log_probs")
    return float(np.mean(stats.nll_terms(clip)))


@on_resamples(nll)
def _nll_on_resamples(block: ResampleBlock, clip: float | None = NLL_CLIP) -> np.ndarray:
    return block.mean_of(("nll", clip), lambda: block.stats.nll_terms(clip))


@declares("brier", direction="lower", category="prediction", value_range=(0.0, 2.0), paper="identity",
          plexbench="half", paper_note="paper quirk: lower-is-better but left unflipped, as in the paper's code",
          description="mean squared distance between the probabilities and the one-hot label")
def brier(labels, probs=None) -> float:
    """Mean over examples of sum_k (p_k - y_k)^2, y one-hot (int labels) or soft (N, K).

    Per example sum p^2 - 2 p.y + sum y^2 in float64 (sum p^2 cancels against 2 p_y - 1 for
    confident rows, so float32 input is converted first), without building the one-hot matrix.
    Range [0, 2].

    >>> round(brier([0], [[0.75, 0.25]]), 4)  # 0.25^2 + 0.25^2
    0.125
    """
    stats = _labelled(labels, probs, "brier", want=("brier",))
    return float(np.mean(stats.brier))


@on_resamples(brier)
def _brier_on_resamples(block: ResampleBlock) -> np.ndarray:
    return block.mean_of("brier", lambda: block.stats.brier)


def _bins_stats(labels, probs, num_bins, what):
    stats = _labelled(labels, probs, what)
    return stats, C.check_num_bins(num_bins)


@declares("ece", direction="lower", category="uncertainty", paper="one_minus", plexbench="one_minus",
          description="expected calibration error, equal-width bins of the top-label confidence")
def ece(labels, probs=None, *, num_bins: int = 15) -> float:
    """Expected calibration error, equal-width top-label bins (Plex: 15).

    bin = floor(num_bins * c) clipped to [0, num_bins - 1] (c = max prob);
    ECE = sum_b (n_b / N) |acc_b - conf_b|; empty bins contribute 0. Bin sums in float64.

    >>> ece([0, 1], [[0.9, 0.1], [0.6, 0.4]])  # bins 13 and 9: (|1-0.9| + |0-0.6|)/2
    0.35
    """
    stats, b = _bins_stats(labels, probs, num_bins, "ece")
    conf = stats.conf
    bins = equal_width_bins(conf, b)
    conf_sum = np.bincount(bins, weights=conf, minlength=b)
    acc_sum = np.bincount(bins, weights=stats.correct, minlength=b)
    return float(np.abs(acc_sum - conf_sum).sum() / stats.num_examples)


@on_resamples(ece)
def _ece_on_resamples(block: ResampleBlock, num_bins: int = 15) -> np.ndarray:
    _, conf_sum, acc_sum = block.binned(C.check_num_bins(num_bins), equal_width_bins)
    return np.abs(acc_sum - conf_sum).sum(axis=1) / block.n


@declares("adaptive_ece", direction="lower", category="uncertainty", plexbench="one_minus",
          description="expected calibration error, equal-mass bins of the top-label confidence")
def adaptive_ece(labels, probs=None, *, num_bins: int = 15) -> float:
    """ECE with equal-mass bins.

    Examples are sorted by confidence (ties: incorrect before correct, so the result does
    not depend on example order), then cut into `num_bins` contiguous groups of sizes
    differing by at most one, larger groups first (numpy.array_split); with N < num_bins
    some groups are empty and contribute 0. ECE = sum_b |sum correct - sum conf| / N.
    """
    stats, b = _bins_stats(labels, probs, num_bins, "adaptive_ece")
    conf, correct = stats.conf, stats.correct
    order = np.lexsort((correct, conf))
    n = conf.shape[0]
    sizes = np.full(b, n // b) + (np.arange(b) < n % b)
    bins = np.empty(n, dtype=np.int64)
    bins[order] = np.repeat(np.arange(b), sizes)
    _, conf_sum, acc_sum = binned_sums(bins, conf, correct, b)
    return float(np.abs(acc_sum - conf_sum).sum() / n)


@declares("classwise_ece", direction="lower", category="uncertainty", plexbench="one_minus",
          description="calibration error of every class probability, averaged over classes")
def classwise_ece(labels, probs=None, *, num_bins: int = 15) -> float:
    """Classwise (static) calibration error: mean over classes k of the equal-width ECE of p_k.

    For class k every example is binned by p[i, k] (floor(num_bins * p) clipped), and
    CE_k = sum_b |sum_{i in b} 1[y_i = k] - sum_{i in b} p[i, k]| / N; result = mean_k CE_k
    (Nixon et al. 2019, "SCE"). Reads every class: O(N K), also per bootstrap resample.
    """
    stats = stats_of(labels, probs, want=(), what="classwise_ece")
    stats.require_labels("classwise_ece")
    b = C.check_num_bins(num_bins)
    n, k = stats.num_examples, stats.num_classes
    y = stats.labels
    conf_sum = np.zeros(k * b)
    hit_sum = np.zeros(k * b)
    offsets = np.arange(k) * b
    for rows, p in stats.prob_chunks():
        bins = equal_width_bins(p, b) + offsets
        conf_sum += np.bincount(bins.ravel(), weights=p.ravel(), minlength=k * b)
        hits = np.take_along_axis(bins, y[rows, None], axis=1)[:, 0]
        hit_sum += np.bincount(hits, minlength=k * b)
    return float(np.abs(hit_sum - conf_sum).sum() / n / k)


@declares("rms_ce", "rms_calibration_error", direction="lower", category="uncertainty", plexbench="one_minus",
          description="root-mean-square calibration error, equal-width bins")
def rms_calibration_error(labels, probs=None, *, num_bins: int = 15) -> float:
    """Root-mean-square calibration error, equal-width top-label bins (same bins as `ece`).

    RMSCE = sqrt(sum_b (n_b / N) (acc_b - conf_b)^2); empty bins contribute 0.
    """
    stats, b = _bins_stats(labels, probs, num_bins, "rms_ce")
    conf, correct = stats.conf, stats.correct
    count, conf_sum, acc_sum = binned_sums(equal_width_bins(conf, b), conf, correct, b)
    full = count > 0
    gap2 = (acc_sum[full] - conf_sum[full]) ** 2 / count[full]
    return float(np.sqrt(gap2.sum() / conf.shape[0]))


@on_resamples(rms_calibration_error)
def _rms_ce_on_resamples(block: ResampleBlock, num_bins: int = 15) -> np.ndarray:
    count, conf_sum, acc_sum = block.binned(C.check_num_bins(num_bins), equal_width_bins)
    gap2 = np.divide((acc_sum - conf_sum) ** 2, count, out=np.zeros_like(count), where=count > 0)
    return np.sqrt(gap2.sum(axis=1) / block.n)


def reliability_diagram(labels, probs=None, *, num_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin data of the equal-width top-label bins used by `ece`.

    Returns float64 arrays (B,) `bin_lower` = b/B, `bin_upper` = (b+1)/B, int64 `count`,
    and `accuracy`, `confidence` (means within the bin; NaN for an empty bin).
    """
    stats, b = _bins_stats(labels, probs, num_bins, "reliability_diagram")
    conf, correct = stats.conf, stats.correct
    count, conf_sum, acc_sum = binned_sums(equal_width_bins(conf, b), conf, correct, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "bin_lower": np.arange(b) / b,
            "bin_upper": np.arange(1, b + 1) / b,
            "count": count.astype(np.int64),
            "accuracy": np.where(count > 0, acc_sum / count, np.nan),
            "confidence": np.where(count > 0, conf_sum / count, np.nan),
        }


def calib_auc_sorted(order: ConfidenceOrder) -> float:
    """calib_auc from the groups of equal score 1 - conf in ascending order, with their counts of
    examples and of incorrect (positive) ones: the Mann-Whitney statistic
    2U = sum_g P_g (2 Q_<g + Q_g) over groups (P positives, Q negatives; ties count 1/2), exact in
    int64, then AUC = 2U / (2 P Q) (the same number as the rank-sum form)."""
    counts, positives = order.score_groups()
    value = _ranking.auc_from_groups(positives, counts - positives)
    if np.isnan(value):
        return C.undefined("calib_auc", "all predictions are correct, or all are incorrect")
    return value


@declares("calib_auc", direction="higher", category="uncertainty", paper="identity",
          description="ROC AUC of 1 - confidence against 'prediction incorrect'")
def calib_auc(labels, probs=None) -> float:
    """ROC AUC of "prediction incorrect" (positive) scored by 1 - confidence (spec §5).

    Ties in the score count 1/2 (Mann-Whitney statistic, as scikit-learn's roc_auc_score).
    NaN with an `UndefinedMetricWarning` when every prediction is correct or every one is
    wrong. Reads the confidence order (one sort, shared with AURC; O(N) per bootstrap resample).
    """
    stats = _labelled(labels, probs, "calib_auc")
    return calib_auc_sorted(stats.sorted_by_confidence)


@on_resamples(calib_auc)
def _calib_auc_on_resamples(block: ResampleBlock) -> np.ndarray:
    counts, positives = block.score_groups()
    pure = not block.plan.any_mixed and block.plan.score_group_first is None
    return _ranking.auc_from_group_rows(positives, counts - positives, pure=pure)

