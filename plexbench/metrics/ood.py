"""Out-of-distribution detection: scores (higher = more OOD) and the metrics on them (spec §5).

Sign convention, one for every scorer: a HIGHER score means MORE likely OOD. In the
metrics, OOD examples are the positive class (label 1), in-distribution examples 0.

Scorers: `msp_score` = 1 - max p; `entropy_score` = -sum p log p (natural log, 0 log 0 = 0);
`mlogit_score` = -max logit; `MahalanobisScorer` -> `maha`, `rmaha`.

Metrics, all from one sort of the scores, ties never split by a threshold:
- `auroc`: Mann-Whitney AUC, ties count 1/2 (= scikit-learn roc_auc_score);
- `auprc`: average precision = sum_n (R_n - R_{n-1}) P_n over the distinct scores taken as
  thresholds from high to low (= scikit-learn average_precision_score);
- `fpr_at_95_tpr`: walking the distinct scores from high to low (an example is called OOD
  when its score >= threshold, so tied examples switch together), the FPR at the first
  threshold where TPR >= 0.95 (= fpr[argmax(tpr >= 0.95)] of scikit-learn's
  roc_curve(drop_intermediate=False)).
With no OOD or no in-distribution example these are NaN with an `UndefinedMetricWarning`.
"""

from __future__ import annotations

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.metrics import _checks as C
from plexbench.metrics import _ranking
from plexbench.metrics.vocabulary import declares


# ----------------------------------------------------------------------------- scorers
def msp_score(probs) -> np.ndarray:
    """1 - max_k p[i, k], float64 (N,). `probs` (N, K)."""
    p = C.check_probs(probs)
    return 1.0 - p.max(axis=1)


def entropy_score(probs) -> np.ndarray:
    """Predictive entropy -sum_k p log p (nats, 0 log 0 = 0), float64 (N,). `probs` (N, K)."""
    return entropy_from_probs(C.check_probs(probs))


def entropy_from_probs(p: np.ndarray) -> np.ndarray:
    """Entropy of validated probabilities, in row chunks."""
    out = np.empty(p.shape[0], dtype=np.float64)
    for rows in C.row_chunks(*p.shape):
        chunk = p[rows]
        out[rows] = -(chunk * np.log(np.where(chunk > 0, chunk, 1.0))).sum(axis=1)
    return out


def mlogit_score(logits) -> np.ndarray:
    """-max_k logit, float64 (N,). `logits` (N, K), or (E, N, K): mean over members of -max_k."""
    arr = C.check_finite(logits, "logits", (2, 3))
    return -(arr.max(axis=-1) if arr.ndim == 2 else arr.max(axis=-1).mean(axis=0))


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
        self.mean_all = x.sum(axis=0) / n
        sums = np.zeros((classes.shape[0], d))
        np.add.at(sums, y_index, x)
        means = sums / counts[:, None]
        within = np.zeros((d, d))
        background = np.zeros((d, d))
        for rows in C.row_chunks(n, d):
            r = x[rows] - means[y_index[rows]]  # centred per class: no X^T X - n mu mu^T cancellation
            within += r.T @ r
            r0 = x[rows] - self.mean_all
            background += r0.T @ r0
        self.w = _whitener(within / n)
        self.w0 = _whitener(background / n)
        # Class means in whitened coordinates relative to the overall mean (smaller numbers
        # make the expanded ||z - m||^2 = ||z||^2 - 2 z.m + ||m||^2 more accurate).
        self.zmeans = (means - self.mean_all) @ self.w
        self.zmeans_sq = np.einsum("cd,cd->c", self.zmeans, self.zmeans)

    def distances(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(min_k d_k, d_background) per row, float64."""
        n, d = x.shape
        dmin = np.empty(n)
        dbg = np.empty(n)
        for rows in C.row_chunks(n, max(d, self.zmeans.shape[0])):
            centred = x[rows] - self.mean_all
            z = centred @ self.w
            d_all = np.einsum("nd,nd->n", z, z)[:, None] - 2.0 * (z @ self.zmeans.T) + self.zmeans_sq
            dmin[rows] = np.maximum(d_all.min(axis=1), 0.0)  # rounding can go a hair below 0
            z0 = centred @ self.w0
            dbg[rows] = np.einsum("nd,nd->n", z0, z0)
        return dmin, dbg


def _as_members(embeddings, name: str) -> np.ndarray:
    arr = C.check_finite(embeddings, name, (2, 3))
    return arr[None] if arr.ndim == 2 else arr


class MahalanobisScorer:
    """Mahalanobis and relative Mahalanobis OOD scores (Lee et al. 2018; Ren et al. 2021).

    fit(embeddings, labels): embeddings (N, D) or (E, N, D) of the training split, labels
    int (N,). Per member: class means mu_k over the classes present in `labels`, one shared
    covariance S = sum_k sum_{i: y_i = k} (x_i - mu_k)(x_i - mu_k)^T / N (no shrinkage), and
    a background Gaussian (mean and covariance / N of all training embeddings).

    score(embeddings) -> {"maha": (N,), "rmaha": (N,)} float64, higher = more OOD:
    maha = min_k d_k(x), rmaha = min_k (d_k(x) - d_0(x)) = min_k d_k - d_0, where
    d = (x - mu)^T pinv(S) (x - mu) (pseudo-inverse via eigh, see `_whitener`). For
    ensembles each member is fitted on its own embeddings and the scores are averaged over
    members; the embeddings scored must have the same E and D as those fitted.
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
        maha = np.zeros(x.shape[1])
        rmaha = np.zeros(x.shape[1])
        for fit, member in zip(self._members, x):
            dmin, dbg = fit.distances(member)
            maha += dmin
            rmaha += dmin - dbg
        return {"maha": maha / e, "rmaha": rmaha / e}


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


def _sorted(is_ood, score):
    flags, s = _check_binary(is_ood, score)
    order = np.argsort(s, kind="stable")
    return s[order], flags[order]


def _points(sorted_scores, sorted_pos, metric):
    if not sorted_pos.any() or sorted_pos.all():
        return None, C.undefined(metric, "needs both OOD and in-distribution examples")
    return _ranking.descending_operating_points(sorted_scores, sorted_pos), None


@declares("auroc", direction="higher", category="uncertainty", paper="identity",
          description="ROC AUC with OOD as the positive class")
def auroc(is_ood, score) -> float:
    """ROC AUC with OOD as positive: P(s_ood > s_in) + 1/2 P(s_ood = s_in).

    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    s, pos = _sorted(is_ood, score)
    value = _ranking.mann_whitney_auc(s, pos)
    return C.undefined("auroc", "needs both OOD and in-distribution examples") if np.isnan(value) else value


@declares("auprc", direction="higher", category="uncertainty",
          description="average precision with OOD as the positive class")
def auprc(is_ood, score) -> float:
    """Average precision with OOD as positive (scikit-learn's definition, no interpolation)."""
    points, nan = _points(*_sorted(is_ood, score), "auprc")
    return nan if points is None else _ranking.average_precision(points[0], points[1])


@declares("fpr95", "fpr_at_95_tpr", direction="lower", category="uncertainty", plexbench="one_minus",
          description="false-positive rate at the first threshold with true-positive rate >= 0.95")
def fpr_at_95_tpr(is_ood, score) -> float:
    """FPR at the first threshold (from high to low) where TPR >= 0.95; see the module doc."""
    points, nan = _points(*_sorted(is_ood, score), "fpr95")
    return nan if points is None else _ranking.fpr_at_tpr(points[0], points[1], 0.95)


def ood_metrics(score_in, score_out) -> dict[str, float]:
    """{"auroc", "auprc", "fpr95"} for in-distribution scores (N,) vs OOD scores (M,), one sort."""
    s_in = C.check_finite(score_in, "in-distribution scores", 1)
    s_out = C.check_finite(score_out, "OOD scores", 1)
    return ood_metrics_from(s_in, s_out)


def ood_metrics_from(s_in: np.ndarray, s_out: np.ndarray) -> dict[str, float]:
    """ood_metrics on validated, non-empty float64 arrays."""
    scores = np.concatenate([s_in, s_out])
    pos = np.concatenate([np.zeros(s_in.shape[0], bool), np.ones(s_out.shape[0], bool)])
    order = np.argsort(scores, kind="stable")
    return ood_metrics_sorted(scores[order], pos[order])


def ood_metrics_sorted(sorted_scores: np.ndarray, sorted_pos: np.ndarray) -> dict[str, float]:
    """ood_metrics from scores sorted ascending and the matching OOD flags (both classes present)."""
    tps, fps, _ = _ranking.descending_operating_points(sorted_scores, sorted_pos)
    return {
        "auroc": _ranking.mann_whitney_auc(sorted_scores, sorted_pos),
        "auprc": _ranking.average_precision(tps, fps),
        "fpr95": _ranking.fpr_at_tpr(tps, fps, 0.95),
    }
