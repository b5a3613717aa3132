"""Out-of-distribution detection: scores (higher = more OOD) and the metrics on them (spec §5).

Sign convention, one for every scorer: a HIGHER score means MORE likely OOD. In the
metrics, OOD examples are the positive class (label 1), in-distribution examples 0.

Scorers: `msp_score` = 1 - max p; `entropy_score` = -sum p log p (natural log, 0 log 0 = 0);
`mlogit_score` = -max logit; `MahalanobisScorer` -> `maha`, `rmaha`; `gp_variance_score` = an
SNGP head's predictive variance (mean over members). `msp_score` and
`entropy_score` take probabilities (N, K) or an `ExampleStats` (they read its `conf` / `entropy`).

Metrics, all from one sort of the scores, ties never split by a threshold:
- `auroc`: Mann-Whitney AUC, ties count 1/2 (= scikit-learn roc_auc_score);
- `auprc`: average precision = sum_n (R_n - R_{n-1}) P_n over the distinct scores taken as
  thresholds from high to low (= scikit-learn average_precision_score);
- `fpr_at_95_tpr`: walking the distinct scores from high to low (an example is called OOD
  when its score >= threshold, so tied examples switch together), the FPR at the first
  threshold where TPR >= 0.95 (= fpr[argmax(tpr >= 0.95)] of scikit-learn's
  roc_curve(drop_intermediate=False)).
With no OOD or no in-distribution example these are NaN with an `UndefinedMetricWarning`.
Each takes `(is_ood, score)` or one `DetectionScores` (one scorer's in-distribution and OOD scores,
sorted once; its `resample` is O(N + M), so bootstrap intervals need no new sort).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.metrics import _checks as C
from plexbench.metrics import _ranking
from plexbench.metrics.vocabulary import declares
from plexbench.metrics.stats import ExampleStats, Source, all_finite, row_chunks


# ----------------------------------------------------------------------------- scorers
def msp_score(probs) -> np.ndarray:
    """1 - max_k p[i, k], float64 (N,). `probs` (N, K) or an ExampleStats (1 - conf)."""
    stats = probs if isinstance(probs, ExampleStats) else ExampleStats.from_probs(probs, want=("conf",))
    return 1.0 - stats.conf


def entropy_score(probs) -> np.ndarray:
    """Predictive entropy -sum_k p log p (nats, 0 log 0 = 0), float64 (N,). `probs` (N, K) or an
    ExampleStats (its `entropy`)."""
    stats = probs if isinstance(probs, ExampleStats) else ExampleStats.from_probs(probs, want=("entropy",))
    return stats.entropy


def mlogit_score(logits) -> np.ndarray:
    """-max_k logit, float64 (N,). `logits` (N, K), or (E, N, K): mean over members of -max_k.

    The max is taken in the input's dtype (exact), then converted to float64; row chunks.
    """
    arr = np.asarray(logits)
    if arr.dtype == object or arr.dtype.kind not in "iuf" or arr.dtype.kind == "b":
        raise PlexbenchError(f"logits must be real numbers, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise PlexbenchError(f"logits must have 2 or 3 dimensions, got shape {arr.shape}")
    C._check_nonempty(arr if arr.ndim == 2 else arr[0], "logits")
    source = Source("member_logits" if arr.ndim == 3 else "logits", arr, "logits")
    out = np.empty(source.num_examples)
    for rows in row_chunks(source.num_examples, source.num_classes * source.num_members):
        out[rows] = source.mlogit(rows)
    return out


def gp_variance_score(variance) -> np.ndarray:
    """The SNGP head's predictive variance as an OOD score (spec §12), float64 (N,): `variance`
    (N,) or (E, N), one row per ensemble member (a BatchEnsemble model's members each have their
    own GP variance); members are averaged, mean_e var[e, i].

    The variance is ridge * phi(h) P^-1 phi(h)^T of the example's random features phi(h) under the
    Laplace precision P of the training features (plexbench.models.sngp): large far from the
    training data, so it needs no sign change. Example: [[0.1, 0.4], [0.3, 0.2]] -> [0.2, 0.3].
    """
    arr = _real_array(variance, "GP variance", (1, 2), "be (N,) or (E, N)")
    arr = arr[None] if arr.ndim == 1 else arr
    C._check_nonempty(arr.T, "GP variance")
    if not all_finite(arr):
        raise PlexbenchError("GP variance contains NaN or inf")
    return arr.astype(np.float64).mean(axis=0)


# ----------------------------------------------------------------------------- Mahalanobis
def _whitener(cov: np.ndarray) -> np.ndarray:
    """W (D, r) with W W^T = pinv(cov), from the symmetric eigendecomposition.

    Eigenvalues <= D * eps * max eigenvalue are treated as 0 (the default cutoff of
    numpy.linalg.pinv(hermitian=True) and scipy.linalg.pinvh), so a singular covariance
    (fewer examples than dimensions, constant features) gives the pseudo-inverse instead
    of blowing up. The distance is ||(x - mu) W||^2 = (x - mu)^T pinv(cov) (x - mu).
    """
    lam, vec = np.linalg.eigh(cov)
    keep = lam > cov.shape[0] * np.finfo(np.float64).eps * max(lam.max(), 0.0)
    return vec[:, keep] / np.sqrt(lam[keep])


class _MemberFit:
    """Class means, shared within-class covariance and background Gaussian of one member."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        classes, y_index = np.unique(y, return_inverse=True)
        n, d = x.shape
        counts = np.bincount(y_index).astype(np.float64)
        self.classes = classes
        sums = np.zeros((classes.shape[0], d))
        total = np.zeros((1, d))
        for rows in C.row_chunks(n, d):  # float64 sums, one chunk of float64 at a time
            chunk = x[rows].astype(np.float64, copy=False)
            np.add.at(sums, y_index[rows], chunk)
            # running total row by row, the order of x.sum(axis=0) on the whole float64 array
            total = np.concatenate([total, chunk]).sum(axis=0, keepdims=True)
        self.mean_all = total[0] / n
        means = sums / counts[:, None]
        within = np.zeros((d, d))
        background = np.zeros((d, d))
        for rows in C.row_chunks(n, d):
            chunk = x[rows].astype(np.float64, copy=False)
            r = chunk - means[y_index[rows]]  # centred per class: no X^T X - n mu mu^T cancellation
            within += r.T @ r
            r0 = chunk - self.mean_all
            background += r0.T @ r0
        self.w = _whitener(within / n)
        self.w0 = _whitener(background / n)
        # Class means in whitened coordinates relative to the overall mean (smaller numbers
        # make the expanded ||z - m||^2 = ||z||^2 - 2 z.m + ||m||^2 more accurate).
        self.zmeans = (means - self.mean_all) @ self.w
        self.zmeans_sq = np.einsum("cd,cd->c", self.zmeans, self.zmeans)

    def distances(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d (r, C) squared distances to the class means, d_background (r,)), float64, of rows x."""
        centred = x.astype(np.float64, copy=False) - self.mean_all
        z = centred @ self.w
        d_all = np.einsum("nd,nd->n", z, z)[:, None] - 2.0 * (z @ self.zmeans.T) + self.zmeans_sq
        z0 = centred @ self.w0
        return d_all, np.einsum("nd,nd->n", z0, z0)


def _real_array(values, name: str, ndims: tuple[int, ...], shape_rule: str) -> np.ndarray:
    """`values` as an array of real numbers with one of `ndims` dimensions, else a one-line error."""
    arr = np.asarray(values)
    if arr.dtype == object or arr.dtype.kind not in "iuf" or arr.dtype.kind == "b":
        raise PlexbenchError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.ndim not in ndims:
        raise PlexbenchError(f"{name} must {shape_rule}, got shape {arr.shape}")
    return arr


def _as_members(embeddings, name: str) -> np.ndarray:
    """(E, N, D) view of finite real embeddings (N, D) or (E, N, D), in their own dtype."""
    arr = _real_array(embeddings, name, (2, 3), "have 2 or 3 dimensions")
    arr = arr[None] if arr.ndim == 2 else arr
    C._check_nonempty(arr[0], name)
    if not all_finite(arr.reshape(-1, arr.shape[-1])):
        raise PlexbenchError(f"{name} contains NaN or inf")
    return arr


class MahalanobisScorer:
    """Mahalanobis and relative Mahalanobis OOD scores (Lee et al. 2018; Ren et al. 2021; spec §5).

    fit(embeddings, labels): embeddings (N, D) or (E, N, D) of the training split, labels
    int (N,). Per member: class means mu_k over the classes present in `labels`, one shared
    covariance S = sum_k sum_{i: y_i = k} (x_i - mu_k)(x_i - mu_k)^T / N (no shrinkage), and
    a background Gaussian (mean and covariance / N of all training embeddings).

    score(embeddings) -> {"maha": (N,), "rmaha": (N,)} float64, higher = more OOD, with
    d_mk = (x_m - mu_mk)^T pinv(S_m) (x_m - mu_mk) (pseudo-inverse via eigh, see `_whitener`)
    and d_m0 the background distance of member m:
    maha = min_k mean_m d_mk (the class distances averaged over members FIRST, then the min over
    classes, as the Plex reference does), rmaha = mean_m (min_k d_mk - d_m0) (per member, then
    the mean). For one member both are the plain min_k d_k and min_k d_k - d_0. The embeddings
    scored must have the same E and D as those fitted. Arithmetic in float64, in row chunks.
    """

    def __init__(self):
        self._members: list[_MemberFit] | None = None
        self.dim: int | None = None

    def fit(self, embeddings, labels) -> "MahalanobisScorer":
        x = _as_members(embeddings, "training embeddings")
        y = C.check_labels(labels, name="training labels")
        if x.shape[1] != y.shape[0]:
            raise PlexbenchError(f"training embeddings have {x.shape[1]} examples but labels have {y.shape[0]}")
        self._members = [_MemberFit(member, y) for member in x]
        self.dim = x.shape[2]
        return self

    @property
    def num_members(self) -> int:
        if self._members is None:
            raise PlexbenchError("MahalanobisScorer.score called before fit")
        return len(self._members)

    def score(self, embeddings) -> dict[str, np.ndarray]:
        e = self.num_members
        x = _as_members(embeddings, "embeddings")
        if x.shape[0] != e or x.shape[2] != self.dim:
            raise PlexbenchError(
                f"embeddings have {x.shape[0]} member(s) of dimension {x.shape[2]}, "
                f"but the scorer was fitted on {e} of dimension {self.dim}"
            )
        n = x.shape[1]
        maha, rmaha = np.empty(n), np.empty(n)
        width = max(self.dim, self._members[0].zmeans.shape[0])
        for rows in C.row_chunks(n, width):
            d_sum = 0.0
            r_sum = np.zeros(rows.stop - rows.start)
            for fit, member in zip(self._members, x):
                d_all, d_bg = fit.distances(member[rows])
                d_sum = d_sum + d_all
                r_sum += np.maximum(d_all.min(axis=1), 0.0) - d_bg  # rounding can go a hair below 0
            maha[rows] = np.maximum((d_sum / e).min(axis=1), 0.0)
            rmaha[rows] = r_sum / e
        return {"maha": maha, "rmaha": rmaha}


# ----------------------------------------------------------------------------- metrics
def _check_binary(is_ood, score) -> tuple[np.ndarray, np.ndarray]:
    flags = np.asarray(is_ood)
    if flags.dtype.kind not in "biu":
        raise PlexbenchError(f"is_ood must be booleans or 0/1 integers, got dtype {flags.dtype}")
    if flags.ndim != 1:
        raise PlexbenchError(f"is_ood must have shape (N,), got {flags.shape}")
    if flags.dtype.kind != "b":
        if flags.size and (flags.min() < 0 or flags.max() > 1):
            raise PlexbenchError("is_ood must hold only 0 and 1")
        flags = flags.astype(bool)
    s = C.check_finite(score, "score", 1)
    C.check_same_rows(flags, s, "is_ood", "score")
    return flags, s


class DetectionScores:
    """One scorer's in-distribution scores (N,) and OOD scores (M,), sorted together when needed.

    `metrics()` -> {"auroc", "auprc", "fpr95"} (NaN with a warning when a side is empty), from one
    stable ascending sort of the N + M scores; the sorted arrays are not kept afterwards unless the
    scores are being resampled. `resample((in, out))` -> the DetectionScores of rows `in` of the
    in-distribution side and rows `out` of the OOD side (the two strata are resampled separately),
    held as its OOD and in-distribution draws per run of tied scores of this set's one sort, so no
    new sort and nothing of size N + M per resample beyond the counts (tied scores never split a
    threshold, so their order does not matter). `strata`: ((N, 0), (M, stream)): the
    bootstrap draws in-distribution rows from the task seed and OOD rows from stream `stream` of it
    (plexbench.metrics.bootstrap).
    """

    def __init__(self, score_in, score_out, *, stream: int = 1, _groups=None):
        self.stream = stream
        self._metrics: dict | None = None
        self._keep = False
        self._sorted_arrays = None
        self._groups = None
        if _groups is None:
            self._in = C.check_finite(score_in, "in-distribution scores", 1)
            self._out = C.check_finite(score_out, "OOD scores", 1)
            self.num_in, self.num_out = self._in.shape[0], self._out.shape[0]
        else:
            positives, negatives, self.num_in, self.num_out = _groups
            self._groups = (positives, negatives)

    @property
    def strata(self) -> tuple[tuple[int, int], ...]:
        return ((self.num_in, 0), (self.num_out, self.stream))

    def _sorted(self) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(order, scores ascending, is_ood in that order); order is None for a resample, and
        not kept unless resampling (memory: each array here has N + M entries)."""
        if self._sorted_arrays is None:
            scores = np.concatenate([self._in, self._out])
            order = np.argsort(scores, kind="stable")
            is_ood = order >= self.num_in
            if not self._keep:
                order = None
            scores.sort()  # in place: the same values as scores[order]
            self._sorted_arrays = (order, scores, is_ood)
        return self._sorted_arrays

    def resample(self, draws) -> "DetectionScores":
        idx_in, idx_out = draws
        return self.resample_counts(np.bincount(idx_in, minlength=self.num_in),
                                    np.bincount(idx_out, minlength=self.num_out))

    def resample_counts(self, counts_in: np.ndarray, counts_out: np.ndarray) -> "DetectionScores":
        """The resample that draws in-distribution example i counts_in[i] times and OOD example j
        counts_out[j] times: its OOD and in-distribution draws per run of tied scores (runs
        without a draw left out), from this set's one sort: O(N + M), no new sort."""
        order, is_ood, starts = self._resampling
        counts = np.take(np.concatenate([counts_in, counts_out]), order)
        positives = counts * is_ood
        negatives = counts - positives
        if starts is not None:
            positives, negatives = np.add.reduceat(positives, starts), np.add.reduceat(negatives, starts)
        drawn = np.flatnonzero(positives + negatives)
        return DetectionScores(None, None, stream=self.stream,
                               _groups=(positives[drawn], negatives[drawn], int(counts_in.sum()), int(counts_out.sum())))

    @cached_property
    def _resampling(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(the stable ascending order of the N + M scores, the OOD flags in that order, the first
        position of each run of tied scores, or None when all scores differ), kept while resampling."""
        self._keep, self._sorted_arrays = True, None
        order, scores, is_ood = self._sorted()
        new = np.empty(scores.shape[0], dtype=bool)
        new[0] = True
        np.not_equal(scores[1:], scores[:-1], out=new[1:])
        starts = None if new.all() else np.flatnonzero(new)
        self._sorted_arrays = None  # memory: the order and flags are what resampling reads
        return order, is_ood.astype(np.int64), starts

    def metrics(self) -> dict[str, float]:
        if self._metrics is None:
            if self.num_in == 0 or self.num_out == 0:
                nan = C.undefined("ood metrics", "needs both OOD and in-distribution examples")
                self._metrics = {"auroc": nan, "auprc": nan, "fpr95": nan}
            elif self._groups is not None:
                self._metrics = ood_metrics_from_groups(*self._groups)
            else:
                _, scores, is_ood = self._sorted()
                self._metrics = ood_metrics_sorted(scores, is_ood)
            if not self._keep and self.__dict__.get("_in") is not None:
                self._sorted_arrays = None  # memory: the point values are known, a resample sorts again
        return self._metrics


def _sorted(is_ood, score):
    flags, s = _check_binary(is_ood, score)
    order = np.argsort(s, kind="stable")
    return s[order], flags[order]


def _points(sorted_scores, sorted_pos, metric):
    if not sorted_pos.any() or sorted_pos.all():
        return None, C.undefined(metric, "needs both OOD and in-distribution examples")
    return _ranking.descending_operating_points(sorted_scores, sorted_pos), None


def _from_detection(is_ood, score, metric: str):
    if isinstance(is_ood, DetectionScores):
        if score is not None:
            raise PlexbenchError(f"{metric}: pass either DetectionScores or (is_ood, score), not both")
        return is_ood.metrics()[metric]
    return None


@declares("auroc", direction="higher", category="uncertainty", paper="identity",
          description="ROC AUC with OOD as the positive class")
def auroc(is_ood, score=None) -> float:
    """ROC AUC with OOD as positive: P(s_ood > s_in) + 1/2 P(s_ood = s_in).

    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    if isinstance(is_ood, DetectionScores):
        return _from_detection(is_ood, score, "auroc")
    s, pos = _sorted(is_ood, score)
    value = _ranking.mann_whitney_auc(s, pos)
    return C.undefined("auroc", "needs both OOD and in-distribution examples") if np.isnan(value) else value


@declares("auprc", direction="higher", category="uncertainty",
          description="average precision with OOD as the positive class")
def auprc(is_ood, score=None) -> float:
    """Average precision with OOD as positive (scikit-learn's definition, no interpolation)."""
    if isinstance(is_ood, DetectionScores):
        return _from_detection(is_ood, score, "auprc")
    points, nan = _points(*_sorted(is_ood, score), "auprc")
    return nan if points is None else _ranking.average_precision(points[0], points[1])


@declares("fpr95", "fpr_at_95_tpr", direction="lower", category="uncertainty", plexbench="one_minus",
          description="false-positive rate at the first threshold with true-positive rate >= 0.95")
def fpr_at_95_tpr(is_ood, score=None) -> float:
    """FPR at the first threshold (from high to low) where TPR >= 0.95; see the module doc."""
    if isinstance(is_ood, DetectionScores):
        return _from_detection(is_ood, score, "fpr95")
    points, nan = _points(*_sorted(is_ood, score), "fpr95")
    return nan if points is None else _ranking.fpr_at_tpr(points[0], points[1], 0.95)


def ood_metrics(score_in, score_out) -> dict[str, float]:
    """{"auroc", "auprc", "fpr95"} for in-distribution scores (N,) vs OOD scores (M,), one sort."""
    s_in = C.check_finite(score_in, "in-distribution scores", 1)
    s_out = C.check_finite(score_out, "OOD scores", 1)
    return dict(DetectionScores(s_in, s_out).metrics())


def ood_metrics_sorted(sorted_scores: np.ndarray, sorted_pos: np.ndarray) -> dict[str, float]:
    """ood_metrics from scores sorted ascending and the matching OOD flags (both classes present),
    through the counts of OOD and in-distribution examples per run of tied scores (few arrays of
    the number of distinct scores; the same numbers as the rank-sum and operating-point forms)."""
    return ood_metrics_from_groups(*_ranking.group_counts(sorted_scores, sorted_pos))


def ood_metrics_from_groups(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """ood_metrics from the OOD (pos) and in-distribution (neg) counts int64 (G,) per run of tied
    scores, runs in ascending score order, each run non-empty, both classes present."""
    auroc = _ranking.auc_from_groups(pos, neg)
    tps, fps = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])  # thresholds from high to low
    return {"auroc": auroc, "auprc": _ranking.average_precision(tps, fps), "fpr95": _ranking.fpr_at_tpr(tps, fps, 0.95)}


class DetectionSet(dict):
    """{scorer: DetectionScores} of one in-distribution set against one OOD set (equal N and M):
    resampled together, so every scorer sees the same bootstrap draws."""

    @property
    def strata(self) -> tuple[tuple[int, int], ...]:
        return next(iter(self.values())).strata

    def resample(self, draws) -> "DetectionSet":
        first = next(iter(self.values()))
        idx_in, idx_out = draws
        counts_in = np.bincount(idx_in, minlength=first.num_in)  # counted once for all the scorers
        counts_out = np.bincount(idx_out, minlength=first.num_out)
        return DetectionSet({name: scores.resample_counts(counts_in, counts_out) for name, scores in self.items()})
