"""Per-example statistics: the checked container that every metric and OOD scorer reads (spec §5).

Predictions are validated once, at the boundary (a prediction file, a model's output, a task's
split), and in the same pass reduced to a few numbers per example. `ExampleStats` holds them:

- `conf` float64 (N,): the top-label confidence max_k p_k;
- `correct` bool (N,): argmax_k p_k == label (class ties go to the LOWEST index, numpy's argmax);
- `log_p_true` float64 (N,): log p_y, exact (-inf where p_y = 0), for hard labels;
- `brier` float64 (N,): sum_k (p_k - y_k)^2 (one-hot or soft y);
- on request: `entropy` (-sum_k p_k log p_k, nats), `margin` (p_(1) - p_(2), the two largest),
  `mlogit` (-max_k logit, mean over members; only from logits), `ged` (soft labels, spec §5).

Every metric of `plexbench score` and every OOD scorer is a function of these vectors, so a metric
costs O(N) once they exist, and a bootstrap resample costs O(N) (`resample`): the (N, K) matrix is
read once. The pass goes over row chunks of about `CHUNK_ELEMENTS` values; inside a chunk the
arithmetic is float64 (so float32 input gives the float64 result of its exact values), and nothing
of size (N, K) is allocated.

Sources and their rules (the same rules as `Predictions` and the task kinds, so results are equal
to computing on the float64 matrix):

- `probs` (N, K): finite, non-negative, each row's float64 sum within 1e-3 of 1. A row whose sum is
  off by more than 1e-12 is divided by it; rows within 1e-12 are used as given. log p = log(p).
- `log_probs` (N, K): no NaN / +inf; p = exp(log p), renormalised like `probs`; log p_y is shifted
  by the row's logsumexp when that exceeds 1e-12 (so NLL is exact for unnormalised rows).
- `logits` (N, K): finite; log p = log_softmax(logits), p = exp(log p).
- `member_logits` (E, N, K): ensemble log p = log-mean-exp over members of log_softmax (spec §3).
- `member_probs` (E, N, K): each member validated like `probs`; ensemble log p = log-mean-exp of
  the members' log p, p = exp(ensemble log p).

Labels: int (N,) in [0, K), or soft labels (N, K) (non-negative rows summing to 1); with soft
labels `labels` is argmax(soft) (ties to the lowest index, spec §5) and `nll_terms` is the
cross-entropy against the soft label. Without labels (OOD data) only label-free statistics exist.

Example:
>>> s = ExampleStats.from_probs([[0.7, 0.3], [0.2, 0.8]], labels=[0, 0])
>>> s.conf.tolist(), s.correct.tolist(), s.brier.round(2).tolist()
([0.7, 0.8], [True, False], [0.18, 1.28])
"""

from __future__ import annotations

import abc
import bisect
import math
import operator
from functools import cached_property
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.metrics import _checks as C
from plexbench.metrics.ensemble import log_mean_exp, log_softmax

if TYPE_CHECKING:  # imported where it is used (ExampleStats.resample_block)
    from plexbench.metrics.resample_block import ResampleBlock

# Plex clips the probability of the true class at 1e-7 before the log (spec §5); reported NLL
# follows it. nll_terms(None) is the exact value.
NLL_CLIP = 1e-7
# Values per chunk of the statistics pass: a float64 chunk of 2 MiB stays in cache while the
# few operations of the pass read it (measured in benchmarks/metrics.py: 2^18 beats 2^16 and 2^20).
CHUNK_ELEMENTS = 1 << 18

SOURCES = ("probs", "log_probs", "logits", "member_logits", "member_probs")
# What `ExampleStats.build` computes by default (the label statistics only when there are labels),
# and what else it can compute in the same pass.
CORE = ("conf", "correct", "brier", "nll")
LABEL_STATS = ("correct", "brier", "nll", "ged")
EXTRA_STATS = ("entropy", "margin", "mlogit", "ged")


# ----------------------------------------------------------------------------- sources
class Source:
    """Validated predictions as given (their dtype), read in float64 row chunks.

    `kind` is one of SOURCES; `array` is (N, K) or (E, N, K). `chunk(rows)` returns the float64
    ensemble probabilities p (r, K) and log-probabilities (r, K) (the latter computed only when
    asked) of the rows `rows` (a slice or an index array), applying the source's rule from the
    module docstring. Validation runs chunk by chunk in `validate`.
    """

    def __init__(self, kind: str, array: np.ndarray, name: str | None = None):
        if kind not in SOURCES:
            raise ValueError(f"unknown source kind {kind!r}")
        self.kind, self.name = kind, name or kind
        members = kind.startswith("member_")
        arr = C.check_matrix(array, self.name, ndim=3 if members else 2, convert=False)
        if kind in ("logits", "member_logits") and arr.dtype.kind != "f":
            arr = arr.astype(np.float64)  # integer logits: -max and log_softmax need floats anyway
        self.array = arr
        self.num_members = arr.shape[0] if members else 1
        self.num_examples, self.num_classes = arr.shape[-2], arr.shape[-1]

        self._index: np.ndarray | None = None  # rows of `array` this source stands for (a view)

    def rows(self, rows) -> np.ndarray:
        """The raw rows (input dtype): (r, K), or (E, r, K) for members."""
        if self._index is not None:
            rows = self._index[rows]
        return self.array[:, rows] if self.array.ndim == 3 else self.array[rows]

    def take(self, index: np.ndarray) -> "Source":
        """A view of rows `index` (no copy: rows are gathered chunk by chunk when read)."""
        out = object.__new__(Source)
        out.__dict__.update(self.__dict__)
        out._index = index if self._index is None else self._index[index]
        out.num_examples = int(index.shape[0])
        return out

    # -- validation + conversion of one chunk ------------------------------------------------
    def chunk(self, rows, need_p: bool = True, need_lp: bool = False, start: int = 0) -> "Chunk":
        """The validated float64 ensemble predictions of rows `rows` (a slice or index array).

        Raises PlexbenchError on invalid values; `start` is the index of the chunk's first row
        (for messages). `need_p` / `need_lp`: whether probabilities / log-probabilities will be read
        (work for the other is skipped where the source allows it).
        """
        raw = self.rows(rows)
        return getattr(self, f"_chunk_{self.kind}")(raw, need_p, need_lp, start)

    def _chunk_probs(self, raw, need_p, need_lp, start) -> "Chunk":
        values = raw.astype(np.float64, copy=False)
        sums = values.sum(axis=-1)
        _check_finite_sums(sums, self.name, start)
        low = raw.min()
        if low < 0:
            raise PlexbenchError(f"{self.name} contains negative values (min {low:.6g})")
        rescale = _check_sums(sums, self.name, start)
        # float64 values one ulp apart can become equal when divided (then argmax must see the
        # divided row); distinct values of a narrower float cannot, so argmax reads them as given.
        return Chunk(values, sums, rescale, argmax_as_given=raw.dtype != np.float64, raw=raw, log=need_lp)

    def _chunk_log_probs(self, raw, need_p, need_lp, start) -> "Chunk":
        lp = raw.astype(np.float64, copy=False)
        if np.isnan(lp).any() or np.isposinf(lp).any():
            raise PlexbenchError(f"{self.name} contains NaN or +inf")
        if need_p:
            values = np.exp(lp)
            sums = values.sum(axis=-1)
            # |logsumexp| ~ |sum - 1|: only rows off by more than rounding need the exact logsumexp.
            candidates = np.flatnonzero(np.abs(sums - 1.0) > 1e-13)
            lse = np.zeros(lp.shape[0])
            if candidates.size:
                lse[candidates] = C.logsumexp_rows(lp[candidates])
        else:
            lse = C.logsumexp_rows(lp)
        _check_lse(lse, self.name, start)
        shift = np.where(np.abs(lse) <= C.ROUNDING_TOLERANCE, 0.0, lse)
        if not need_p:
            return Chunk(None, lp=lp, shift=shift)
        rescale = _check_sums(sums, self.name, start)
        return Chunk(values, sums, rescale, lp=lp, shift=shift)

    def _chunk_logits(self, raw, need_p, need_lp, start) -> "Chunk":
        x = raw.astype(np.float64, copy=False)
        if not np.isfinite(x).all():
            raise PlexbenchError(f"{self.name} contains NaN or inf")
        lp = log_softmax(x)
        return Chunk(np.exp(lp) if need_p else None, lp=lp)

    def _chunk_member_logits(self, raw, need_p, need_lp, start) -> "Chunk":
        x = raw.astype(np.float64, copy=False)
        if not np.isfinite(x).all():
            raise PlexbenchError(f"{self.name} contains NaN or inf")
        lp = log_mean_exp(log_softmax(x))
        return Chunk(np.exp(lp) if need_p else None, lp=lp)

    def _chunk_member_probs(self, raw, need_p, need_lp, start) -> "Chunk":
        members = self._chunk_probs(raw, True, False, start).p  # (E, r, K), each member renormalised
        lp = log_mean_exp(_log(members))
        return Chunk(np.exp(lp) if need_p else None, lp=lp)

    def mlogit(self, rows) -> np.ndarray:
        """-max_k logit per row, the mean over members (E > 1), float64 (r,); logits sources only."""
        raw = self.rows(rows)
        top = raw.max(axis=-1).astype(np.float64)  # max is exact in any dtype
        if not np.isfinite(top).all() or not np.isfinite(raw).all():
            raise PlexbenchError(f"{self.name} contains NaN or inf")
        return -(top.mean(axis=0) if top.ndim == 2 else top)


class Chunk:
    """One row chunk of validated ensemble predictions, float64.

    `values` (r, K): the probabilities before renormalisation; rows flagged in `rescale` (their sum
    is off by more than 1e-12) are divided by `sums`, the others used as given, so `p` is the
    matrix every metric sees. Per-row statistics read only what they need: `top()` and `at(cols)`
    divide just the picked entries (fl(x / s) is monotone in x, so the maximum of the divided row is
    the divided maximum: the same bits as dividing the whole row first); `p` is built only for
    statistics that read every class. `lp` (r, K): log-probabilities when the source has them
    (`shift`: the per-row logsumexp to subtract, log_probs sources), else log(p) on request.
    """

    def __init__(self, values, sums=None, rescale=None, *, argmax_as_given: bool = False, raw=None, lp=None,
                 shift=None, log: bool = False):
        self.values, self.sums, self.raw = values, sums, raw
        self.rescale = rescale if rescale is not None and rescale.any() else None
        self.argmax_as_given = argmax_as_given or self.rescale is None
        self._lp, self.shift, self._log = lp, shift, log

    @cached_property
    def p(self) -> np.ndarray:
        if self.rescale is None:
            return self.values
        out = self.values.copy()  # `values` may be the caller's array, and top()/at() read it
        np.divide(out, self.sums[..., None], out=out, where=self.rescale[..., None])
        return out

    @property
    def lp(self) -> np.ndarray | None:
        if self._lp is None and self._log:
            self._lp = _log(self.p)
        return self._lp

    def _divided(self, picked: np.ndarray) -> np.ndarray:
        if self.rescale is None:
            return picked
        return np.where(self.rescale, picked / self.sums, picked)

    def top(self) -> tuple[np.ndarray, np.ndarray]:
        """(argmax int64 (r,), confidence float64 (r,)); class ties go to the lowest index."""
        if not self.argmax_as_given:
            pred = np.argmax(self.p, axis=1)
            return pred, self.p[np.arange(pred.shape[0]), pred]
        source = self.raw if self.raw is not None else self.values
        pred = np.argmax(source, axis=1)
        return pred, self._divided(self.values[np.arange(pred.shape[0]), pred])

    def at(self, cols: np.ndarray) -> np.ndarray:
        """p[i, cols[i]] float64 (r,)."""
        return self._divided(self.values[np.arange(cols.shape[0]), cols])

    def squared_norms(self) -> np.ndarray:
        """sum_k p_k^2 per row, float64 (for rows divided by their sum: sum_k x_k^2 / s^2)."""
        if self.rescale is None or not self.argmax_as_given:
            return np.einsum("ij,ij->i", self.p, self.p)
        sq = np.einsum("ij,ij->i", self.values, self.values)
        return np.where(self.rescale, sq / (self.sums * self.sums), sq)


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)  # log 0 = -inf: probability 0 stays exactly that


def _where(flat_index: int, shape: tuple, start: int) -> str:
    """'row i' or 'row i of member m' for the flat index of a chunk's row sums."""
    if len(shape) == 1:
        return f"row {start + flat_index}"
    member, row = np.unravel_index(flat_index, shape)
    return f"row {start + int(row)} of member {int(member)}"


def _check_finite_sums(sums: np.ndarray, name: str, start: int) -> None:
    bad = np.flatnonzero(~np.isfinite(sums.ravel()))
    if bad.size:
        raise PlexbenchError(f"{name} contains NaN or inf ({_where(int(bad[0]), sums.shape, start)})")


def _check_sums(sums: np.ndarray, name: str, start: int) -> np.ndarray:
    """Raise if a row sum is off by more than SUM_TOLERANCE; return the mask of rows to rescale."""
    dev = np.abs(sums - 1.0)
    worst = int(np.argmax(dev))
    if not dev.ravel()[worst] <= C.SUM_TOLERANCE:  # also catches NaN
        raise PlexbenchError(f"{name} rows must sum to 1: {_where(worst, sums.shape, start)} sums to "
                             f"{sums.ravel()[worst]:.6g} (tolerance {C.SUM_TOLERANCE:g})")
    return dev > C.ROUNDING_TOLERANCE


def _check_lse(lse: np.ndarray, name: str, start: int) -> None:
    dev = np.abs(lse)
    worst = int(np.argmax(dev))
    if not dev[worst] <= C.SUM_TOLERANCE:
        raise PlexbenchError(f"{name} rows must be normalised (logsumexp 0): row {start + worst} has "
                             f"logsumexp {lse[worst]:.6g} (tolerance {C.SUM_TOLERANCE:g})")


def row_chunks(n_rows: int, n_values_per_row: int):
    """Slices covering range(n_rows) with about CHUNK_ELEMENTS values each (the statistics pass)."""
    return C.row_chunks(n_rows, n_values_per_row, CHUNK_ELEMENTS)


def all_finite(x: np.ndarray) -> bool:
    """np.isfinite(x).all() in row chunks (no boolean array of x's size)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        return True
    flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x[:, None]
    return all(np.isfinite(flat[rows]).all() for rows in row_chunks(flat.shape[0], flat.shape[1]))


# ----------------------------------------------------------------------------- the container
class ExampleStats:
    """Per-example statistics of one prediction set (module docstring); build with the `from_*`
    constructors (or `ExampleStats.build`).

    Attributes (arrays of shape (N,)): conf, correct, log_p_true, brier, entropy, margin, mlogit,
    ged, labels (int64) and soft (the soft labels (N, K), or None). Statistics that were not
    computed in the pass are computed from `source` on first use (None without labels / logits).
    `num_examples`, `num_classes`, `num_members`. Views made by `resample` and `take` share the
    parent's arrays and read rows lazily.
    """

    def __init__(self, *, num_classes: int, num_members: int = 1, arrays: dict, labels=None, soft=None,
                 source: Source | None = None, num_examples: int | None = None):
        self._arrays = dict(arrays)
        self._soft_nll: dict = {}
        self.num_classes, self.num_members = int(num_classes), int(num_members)
        self._labels, self._soft, self.source = labels, soft, source
        self.has_labels, self.has_soft = labels is not None, soft is not None
        self._parent: ExampleStats | None = None
        self._index: np.ndarray | None = None
        self._resample = False
        self.num_examples = int(num_examples if num_examples is not None else
                                next(iter(self._arrays.values())).shape[0])

    @property
    def labels(self) -> np.ndarray | None:
        """Hard labels int64 (N,) (argmax of the soft labels when those are given), or None."""
        if self._labels is None and self._parent is not None and self.has_labels:
            self._labels = self._parent.labels[self._index]
        return self._labels

    @property
    def soft(self) -> np.ndarray | None:
        """Soft labels float64 (N, K), or None."""
        if self._soft is None and self._parent is not None and self.has_soft:
            self._soft = self._parent.soft[self._index]
        return self._soft

    # ------------------------------------------------------------------ constructors
    @classmethod
    def build(cls, source: Source, *, labels=None, soft_labels=None, want: Iterable[str] | None = None,
              keep_source: bool = True) -> "ExampleStats":
        """One validating pass over `source` computing the statistics named in `want` (default
        CORE: conf and, with labels, correct, brier and the NLL terms; add EXTRA_STATS or `ged`
        as needed; names that do not apply, e.g. mlogit without logits, are skipped).
        `keep_source=False` drops the reference to the (N, K) input after the pass (statistics not
        computed then are unavailable). Statistics left out are computed from the source on first
        use."""
        y, soft = _check_targets(labels, soft_labels, source.num_examples, source.num_classes)
        stats = cls(num_classes=source.num_classes, num_members=source.num_members, arrays={}, labels=y,
                    soft=soft, source=source, num_examples=source.num_examples)
        stats._fill_pass(CORE if want is None else tuple(want))
        if not keep_source:
            stats.source = None
        return stats

    @classmethod
    def from_probs(cls, probs, labels=None, *, soft_labels=None, want=None, keep_source=True) -> "ExampleStats":
        """From probabilities (N, K); see the module docstring for the rules."""
        return cls.build(Source("probs", probs), labels=labels, soft_labels=soft_labels, want=want,
                         keep_source=keep_source)

    @classmethod
    def from_log_probs(cls, log_probs, labels=None, *, soft_labels=None, want=None,
                       keep_source=True) -> "ExampleStats":
        """From log-probabilities (N, K) (e.g. a task's ensemble log-probabilities)."""
        return cls.build(Source("log_probs", log_probs), labels=labels, soft_labels=soft_labels, want=want,
                         keep_source=keep_source)

    @classmethod
    def from_logits(cls, logits, labels=None, *, soft_labels=None, want=None, keep_source=True) -> "ExampleStats":
        """From one model's logits (N, K) or member logits (E, N, K)."""
        kind = "member_logits" if np.ndim(logits) == 3 else "logits"
        return cls.build(Source(kind, logits), labels=labels, soft_labels=soft_labels, want=want,
                         keep_source=keep_source)

    @classmethod
    def from_member_probs(cls, member_probs, labels=None, *, soft_labels=None, want=None,
                          keep_source=True) -> "ExampleStats":
        """From member probabilities (E, N, K); the ensemble is their mean."""
        return cls.build(Source("member_probs", member_probs), labels=labels, soft_labels=soft_labels,
                         want=want, keep_source=keep_source)

    # ------------------------------------------------------------------ statistics
    def _get(self, name: str) -> np.ndarray | None:
        if name in self._arrays:
            return self._arrays[name]
        if self._parent is None and self.source is None and self._released(name):
            raise PlexbenchError(f"statistic '{name}' was released")
        if self._parent is not None:
            value = self._from_parent(name)
        else:
            value = self._compute(name)
        self._arrays[name] = value
        return value

    def _from_parent(self, name: str) -> np.ndarray | None:
        """A statistic of a view: the parent's at the view's rows. `conf` and `correct` of a
        labelled set come from one read of the parent's confidences signed by correctness (random
        reads of the parent's rows are what a resample costs; conf > 0 always, so the sign is free)."""
        if name in ("conf", "correct") and self._parent.has_labels:
            signed = self._arrays.get("_signed")
            if signed is None:
                signed = self._arrays["_signed"] = self._parent._signed_conf[self._index]
            return np.abs(signed) if name == "conf" else signed > 0
        base = self._parent._get(name)
        return None if base is None else base[self._index]

    @cached_property
    def _signed_conf(self) -> np.ndarray:
        """conf where correct, -conf where wrong (full set, labelled; kept while it is resampled)."""
        return np.where(self.correct, self.conf, -self.conf)

    def _released(self, name: str) -> bool:
        stat = "nll" if name == "log_p_true" else name
        return _applies(stat, self.has_labels, self.has_soft, None) and not (name == "log_p_true" and self.has_soft)

    def _compute(self, name: str) -> np.ndarray | None:
        """A statistic left out of the pass: another pass over the source (None when it does not
        apply: label statistics without labels, mlogit without logits, ged without soft labels)."""
        stat = "nll" if name == "log_p_true" else name
        if not _applies(stat, self.has_labels, self.has_soft, self.source) or (
                name == "log_p_true" and self.has_soft):
            return None
        if self.source is None:
            raise PlexbenchError(f"statistic '{name}' was not computed and the predictions were released")
        self._fill_pass((stat,))
        return self._arrays[name]

    def _fill_pass(self, names) -> None:
        """Compute the statistics `names` (those that apply) in one pass over the source."""
        src, n = self.source, self.num_examples
        names = [x for x in dict.fromkeys(names) if _applies(x, self.has_labels, self.has_soft, src)]
        out = {x: np.empty(n, bool if x == "correct" else np.float64) for x in names if x != "nll"}
        soft_nll = {}
        if "nll" in names:
            if not self.has_soft:
                out["log_p_true"] = np.empty(n)
            else:
                soft_nll = {None: np.empty(n), NLL_CLIP: np.empty(n)}
        need_p = any(x in out for x in ("conf", "correct", "brier", "entropy", "margin", "ged")) or (
            "log_p_true" in out and src.kind == "probs")
        need_lp = bool(soft_nll)
        for rows in row_chunks(n, self.num_classes * self.num_members):
            chunk = src.chunk(rows, need_p=need_p, need_lp=need_lp, start=rows.start)
            _fill(out, soft_nll, rows, chunk, src, self.labels, self.soft)
        self._arrays.update(out)
        self._soft_nll.update(soft_nll)

    conf = property(lambda self: self._get("conf"), doc="top-label confidence (N,) float64")
    correct = property(lambda self: self._get("correct"), doc="argmax == label (N,) bool, or None")
    log_p_true = property(lambda self: self._get("log_p_true"), doc="log p_y (N,) float64 (hard labels), or None")
    brier = property(lambda self: self._get("brier"), doc="sum_k (p_k - y_k)^2 (N,) float64, or None")
    entropy = property(lambda self: self._get("entropy"), doc="-sum_k p_k log p_k (N,) float64 (nats)")
    margin = property(lambda self: self._get("margin"), doc="largest minus second largest p (N,)")
    mlogit = property(lambda self: self._get("mlogit"), doc="-max_k logit (member mean) (N,), or None")
    ged = property(lambda self: self._get("ged"), doc="GED term against the soft label (N,), or None")

    def require_labels(self, what: str = "predictions") -> None:
        if not self.has_labels:
            raise PlexbenchError(f"{what} have no labels (need 'labels' or 'soft_labels')")

    def release(self, *names: str) -> None:
        """Drop computed statistics (names of CORE / EXTRA_STATS, or "order" for the confidence
        order) that no later metric reads, to bound memory; with the source released they cannot be
        read again. A full set only."""
        for name in names:
            if name == "order":
                self.__dict__.pop("sorted_by_confidence", None)
            elif name == "nll":
                self._arrays.pop("log_p_true", None)
                self._soft_nll.clear()
            else:
                self._arrays.pop(name, None)

    def nll_terms(self, clip: float | None = NLL_CLIP) -> np.ndarray:
        """Per-example NLL (N,) float64: -log max(p_y, clip) for hard labels (clip=None: exact,
        inf where p_y = 0), or the soft-label cross-entropy -sum_k y_k log max(p_k, clip)
        (terms with y_k = 0 are 0)."""
        self.require_labels()
        if clip is not None and not 0 < clip < 1:
            raise PlexbenchError(f"clip must be in (0, 1), got {clip}")
        if not self.has_soft:
            return _hard_nll(self._get("log_p_true"), clip)
        return self._soft_terms(clip)

    def _soft_terms(self, clip):
        if clip in self._soft_nll:
            return self._soft_nll[clip]
        if self._parent is not None:
            value = self._parent._soft_terms(clip)[self._index]
        else:
            if self.source is None:
                raise PlexbenchError("soft-label NLL at this clip needs the predictions, which were released")
            value = np.empty(self.num_examples)
            for rows in row_chunks(self.num_examples, self.num_classes * self.num_members):
                chunk = self.source.chunk(rows, need_lp=True, start=rows.start)
                lp = chunk.lp if chunk.shift is None else chunk.lp - chunk.shift[:, None]
                value[rows] = soft_cross_entropy_rows(self.soft[rows], lp, clip)
        self._soft_nll[clip] = value
        return value

    # ------------------------------------------------------------------ views
    def _view(self, index: np.ndarray, resample: bool) -> "ExampleStats":
        view = ExampleStats(num_classes=self.num_classes, num_members=self.num_members, arrays={},
                            source=None if self.source is None else self.source.take(index),
                            num_examples=index.shape[0])
        view.has_labels, view.has_soft = self.has_labels, self.has_soft
        view._parent, view._index, view._resample = self, index, resample
        return view

    def take(self, index) -> "ExampleStats":
        """The statistics of rows `index` (a boolean mask or integer indices), in that order."""
        index = np.asarray(index)
        index = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64, copy=False)
        return self._view(index, resample=False)

    def resample(self, draws) -> "ExampleStats":
        """A bootstrap resample: rows `draws` (int (N,), or a 1-tuple of it) in draw order.

        The resample's confidence order (`sorted_by_confidence`) comes from this set's sort by
        repeating each example as often as it was drawn, O(N) instead of a new sort.
        """
        idx = draws[0] if isinstance(draws, tuple) else draws
        if self._parent is not None:
            raise PlexbenchError("resample a full prediction set, not a view")
        return self._view(np.asarray(idx, dtype=np.int64), resample=True)

    def resample_block(self, draws) -> "ResampleBlock | None":
        """Resamples `draws` (int (B, N), or a 1-tuple of it) as one block of counts
        (plexbench.metrics.resample_block), for the metrics that have a block version; None for a
        view or a set without labels (the bootstrap then resamples one at a time)."""
        from plexbench.metrics.resample_block import ResampleBlock

        idx = draws[0] if isinstance(draws, tuple) else draws
        if self._parent is not None or not self.has_labels:
            return None
        return ResampleBlock(self, np.asarray(idx, dtype=np.int64))

    @property
    def strata(self) -> tuple[tuple[int, int], ...]:
        """(rows, stream) of each stratum the bootstrap resamples: one, stream 0 (the seed itself)."""
        return ((self.num_examples, 0),)

    def prob_chunks(self) -> Iterator[tuple[slice, np.ndarray]]:
        """(rows, float64 ensemble probabilities (r, K)) over these examples, for the metrics that
        need every class (classwise ECE): O(N K) per call."""
        if self.source is None:
            raise PlexbenchError("this metric needs the full predictions, which were released")
        for rows in row_chunks(self.num_examples, self.num_classes * self.num_members):
            yield rows, self.source.chunk(rows, start=rows.start).p

    # ------------------------------------------------------------------ the confidence order
    @cached_property
    def sorted_by_confidence(self) -> ConfidenceOrder:
        """Examples by DESCENDING confidence, ties in example order (a stable sort on -conf); for
        a resample, ties in draw order (what sorting the resampled rows would give), from the full
        set's `resampling` plan without a sort."""
        if self._resample:
            return ResampledOrder(self._parent.resampling, self._index, self._parent.correct)
        return SortedOrder(self.conf, self.correct)

    @cached_property
    def resampling(self) -> Resampling:
        """The plan a resample's confidence order is built from (computed on the first resample)."""
        return Resampling(self.conf, self.correct)


def tie_groups(sorted_values: np.ndarray) -> np.ndarray:
    """Group id (int64, from 0) of each entry of a sorted array: runs of equal values share one."""
    new = np.empty(sorted_values.shape[0], bool)
    new[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=new[1:])
    return np.cumsum(new) - 1


class ConfidenceOrder(abc.ABC):
    """The examples in DESCENDING confidence order (a stable sort on -conf: ties in example order),
    as AURC, oracle-collaborative accuracy and calib_auc read them.

    `n`; `correct` bool (N,): correctness in that order; `errors` int64 (N + 1,): errors[k] =
    incorrect among the first k; `conf` float64 (N,): the confidences in that order;
    `tie_bounds(position)`: (start, end) of the run of equal confidence holding `position`;
    `score_groups()`: (examples, incorrect examples) per group of equal score 1 - conf, in ascending
    score order (calib_auc; 1 - conf can tie confidences that differ, so these groups can be coarser).
    Two implementations: `SortedOrder` (a full set, from one sort) and `ResampledOrder` (a bootstrap
    resample of it, O(N) without sorting).
    """

    n: int
    correct: np.ndarray
    conf: np.ndarray

    @cached_property
    def errors(self) -> np.ndarray:
        out = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(~self.correct, out=out[1:])
        return out

    @abc.abstractmethod
    def tie_bounds(self, position: int) -> tuple[int, int]:
        """(start, end) of the run of equal confidence holding `position`."""

    @abc.abstractmethod
    def score_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """(examples, incorrect examples) per group of equal 1 - conf, ascending."""


class SortedOrder(ConfidenceOrder):
    """The order of a full set: its sorted confidences and correctness flags, nothing of size N more
    (tie runs are found by binary search; calib_auc's groups are built when asked and not kept)."""

    def __init__(self, conf: np.ndarray, correct: np.ndarray | None):
        order = np.argsort(-conf, kind="stable")
        self.n = conf.shape[0]
        self.conf = conf[order]
        self.correct = None if correct is None else correct[order]

    def tie_bounds(self, position: int) -> tuple[int, int]:
        value = self.conf[position]
        start = bisect.bisect_left(self.conf, -value, 0, position, key=operator.neg)
        end = bisect.bisect_right(self.conf, -value, position, self.n, key=operator.neg)
        return start, end

    def score_groups(self) -> tuple[np.ndarray, np.ndarray]:
        group = tie_groups(1.0 - self.conf)
        return np.bincount(group), np.bincount(group, weights=~self.correct).astype(np.int64)


class ResampledOrder(ConfidenceOrder):
    """The order of a bootstrap resample (rows `draws` of a full set, in draw order), from the full
    set's tie groups (`Resampling`): the resample's examples per group are bincounts of the drawn
    examples' groups; the correctness sequence repeats each group's flag, except inside groups
    holding both correct and incorrect examples, where the draws go in draw order (what a stable
    sort of the resampled rows gives). O(N) per resample."""

    def __init__(self, plan: "Resampling", draws: np.ndarray, correct: np.ndarray):
        self.plan, self.draws, self._correct_ex = plan, draws, correct
        self.n = draws.shape[0]
        self.group = plan.group_ex[draws]
        self.group_counts = np.bincount(self.group, minlength=plan.num_groups)

    @cached_property
    def group_ends(self) -> np.ndarray:
        return np.cumsum(self.group_counts)

    @cached_property
    def _mixed_draws(self) -> np.ndarray:
        """Positions (in draw order) of the draws falling in mixed groups, stably by group."""
        in_mixed = np.flatnonzero(self.plan.mixed[self.group])
        return in_mixed[np.argsort(self.group[in_mixed], kind="stable")]

    @cached_property
    def correct(self) -> np.ndarray:
        seq = ~np.repeat(self.plan.all_wrong, self.group_counts)  # one flag per pure group
        if self.plan.any_mixed:
            at = self._mixed_draws
            if at.size:
                seq[np.flatnonzero(np.repeat(self.plan.mixed, self.group_counts))] = \
                    self._correct_ex[self.draws[at]]
        return seq

    @cached_property
    def conf(self) -> np.ndarray:
        return np.repeat(self.plan.group_conf, self.group_counts)

    def tie_bounds(self, position: int) -> tuple[int, int]:
        t = int(np.searchsorted(self.group_ends, position, side="right"))
        end = int(self.group_ends[t])
        return end - int(self.group_counts[t]), end

    def score_groups(self) -> tuple[np.ndarray, np.ndarray]:
        plan = self.plan
        if plan.score_group_ex is not None:  # 1 - conf ties confidences that differ (rare)
            sg = plan.score_group_ex[self.draws]
            wrong = np.bincount(sg, weights=~self._correct_ex[self.draws], minlength=plan.num_score_groups)
            return np.bincount(sg, minlength=plan.num_score_groups), wrong.astype(np.int64)
        wrong = np.where(plan.all_wrong, self.group_counts, 0)  # pure groups: all or none of their draws
        if plan.any_mixed:
            at = self._mixed_draws
            if at.size:
                wrong += np.bincount(self.group[at], weights=~self._correct_ex[self.draws[at]],
                                     minlength=plan.num_groups).astype(np.int64)
        return self.group_counts, wrong


class Resampling:
    """What resampling a labelled set needs, computed once per set (one more sort): the tie group
    (runs of equal confidence, numbered in descending confidence) of each example, each group's
    confidence, whether a group is all wrong or mixed, and calib_auc's groups of equal 1 - conf when
    they differ from the confidence groups."""

    def __init__(self, conf: np.ndarray, correct: np.ndarray):
        order = np.argsort(-conf, kind="stable")
        sorted_conf = conf[order]
        group = tie_groups(sorted_conf)
        self.num_examples = conf.shape[0]
        self.num_groups = int(group[-1]) + 1
        self.order = order  # examples by descending confidence (the groups' members, group by group)
        self.group_ex = np.empty(conf.shape[0], dtype=np.int64)
        self.group_ex[order] = group
        counts = np.bincount(group)
        right = np.bincount(group, weights=correct[order])
        self.all_wrong = right == 0
        self.mixed = (right > 0) & (right < counts)
        self.any_mixed = bool(self.mixed.any())
        ends = np.cumsum(counts)
        self.group_starts = ends - counts  # first position of each group in `order`
        self.group_conf = sorted_conf[ends - 1]
        score_group = tie_groups(1.0 - sorted_conf)
        self.score_group_ex, self.num_score_groups = None, self.num_groups
        self.score_group_first = None  # the first confidence group of each score group, when coarser
        if score_group[-1] != group[-1]:
            self.score_group_ex = np.empty(conf.shape[0], dtype=np.int64)
            self.score_group_ex[order] = score_group
            self.num_score_groups = int(score_group[-1]) + 1
            self.score_group_first = np.flatnonzero(np.diff(score_group[ends - 1], prepend=-1))
        self._correct = correct

    # what the blocks of resamples read (plexbench.metrics.resample_block), made on first use
    @cached_property
    def rank_ex(self) -> np.ndarray:
        """int64 (N,): each example's position in `order` (the inverse permutation)."""
        rank = np.empty(self.num_examples, dtype=np.int64)
        rank[self.order] = np.arange(self.num_examples)
        return rank

    def in_order(self, name, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """values()[order] kept under `name` (a statistic is put in order once per set), split into
        (the values with the non-finite ones set to 0, the positions of the non-finite ones, their
        values): a count-weighted sum must not read 0 * inf for an example that was not drawn."""
        cache = self.__dict__.setdefault("_in_order", {})
        if name not in cache:
            v = np.array(values()[self.order], dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(v))
            cache[name] = v, bad, v[bad].copy()
            v[bad] = 0.0
        return cache[name]

    def bins(self, num_bins: int, binning) -> tuple[np.ndarray, np.ndarray]:
        """(the equal-width bin of each group's confidence via `binning(conf, num_bins)`, the first
        group of each bin that holds one), kept per bin count (groups are in descending
        confidence, so a bin's groups are consecutive)."""
        cache = self.__dict__.setdefault("_bins", {})
        if num_bins not in cache:
            bins = binning(self.group_conf, num_bins)
            cache[num_bins] = bins, np.flatnonzero(np.diff(bins, prepend=bins[0] + 1))
        return cache[num_bins]

    @cached_property
    def mixed_ex(self) -> np.ndarray:
        """bool (N,): whether an example's group is mixed."""
        return self.mixed[self.group_ex]

    @cached_property
    def mixed_groups(self) -> np.ndarray:
        """int64: the mixed groups, in group order."""
        return np.flatnonzero(self.mixed)

    @cached_property
    def mixed_number(self) -> np.ndarray:
        """int64 (G,): a mixed group's index in `mixed_groups` (-1 for the others)."""
        out = np.full(self.num_groups, -1, dtype=np.int64)
        out[self.mixed_groups] = np.arange(self.mixed_groups.shape[0])
        return out

    @cached_property
    def mixed_numbers_ex(self) -> np.ndarray:
        """(N,): `mixed_number` of each example's group, in the narrowest unsigned type that holds
        it (16-bit keys sort stably by radix sort); 0 for examples outside mixed groups."""
        dtype = np.uint16 if self.mixed_groups.shape[0] <= 1 << 16 else np.int64
        return np.maximum(self.mixed_number, 0)[self.group_ex].astype(dtype)

    @cached_property
    def wrong_groups(self) -> np.ndarray:
        """int64: the all-wrong groups."""
        return np.flatnonzero(self.all_wrong)

    @cached_property
    def mixed_wrong_members(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the positions in `order` of the incorrect examples of mixed groups, ascending; the first
        index of each group's run among them; those groups)."""
        positions = np.flatnonzero((self.mixed_ex & ~self._correct)[self.order])
        groups = self.group_ex[self.order[positions]]
        first = np.flatnonzero(np.diff(groups, prepend=-1))
        return positions, first, groups[first]


# ----------------------------------------------------------------------------- the pass
def _check_targets(labels, soft_labels, n: int, k: int):
    """(hard labels int64 (N,) or None, soft labels float64 (N, K) or None)."""
    if labels is not None and soft_labels is None and np.ndim(labels) == 2:
        labels, soft_labels = None, labels  # soft labels passed positionally
    if soft_labels is not None:
        soft = C.check_probs(soft_labels, "soft labels")
        if soft.shape != (n, k):
            raise PlexbenchError(f"soft labels have shape {soft.shape} but the predictions have {(n, k)}")
        hard = np.argmax(soft, axis=1).astype(np.int64)
        if labels is not None and not np.array_equal(C.check_labels(labels, k), hard):
            raise PlexbenchError("labels given together with soft_labels must equal argmax(soft_labels)")
        return hard, soft
    if labels is None:
        return None, None
    y = C.check_labels(labels, k)
    if y.shape[0] != n:
        raise PlexbenchError(f"labels have {y.shape[0]} examples but the predictions have {n}")
    return y, None


def _applies(name: str, labels: bool, soft: bool, source: Source | None) -> bool:
    if name not in CORE + EXTRA_STATS:
        raise ValueError(f"unknown statistic {name!r}; known: {', '.join(CORE + EXTRA_STATS)}")
    if name in LABEL_STATS and not labels:
        return False
    if name == "ged" and not soft:
        return False
    return not (name == "mlogit" and (source is None or source.kind not in ("logits", "member_logits")))


def _fill(out, soft_nll, rows, chunk: Chunk, source, y, soft) -> None:
    """Write one chunk's statistics into `out` / `soft_nll` (float64 arithmetic on the chunk)."""
    if "conf" in out or "correct" in out:
        pred, conf = chunk.top()
        if "conf" in out:
            out["conf"][rows] = conf
        if "correct" in out:
            out["correct"][rows] = pred == y[rows]
    if soft is None:
        if "brier" in out:
            out["brier"][rows] = chunk.squared_norms() - 2.0 * chunk.at(y[rows]) + 1.0
        if "log_p_true" in out:
            if chunk.lp is None:
                out["log_p_true"][rows] = _log(chunk.at(y[rows]))
            else:
                lp_y = chunk.lp[np.arange(chunk.lp.shape[0]), y[rows]]
                out["log_p_true"][rows] = lp_y if chunk.shift is None else lp_y - chunk.shift
    else:
        s = soft[rows]
        if "brier" in out:
            p = chunk.p
            out["brier"][rows] = (np.einsum("ij,ij->i", p, p) - 2.0 * np.einsum("ij,ij->i", p, s)
                                  + np.einsum("ij,ij->i", s, s))
        if soft_nll:
            lp = chunk.lp if chunk.shift is None else chunk.lp - chunk.shift[:, None]
            for clip, terms in soft_nll.items():
                terms[rows] = soft_cross_entropy_rows(s, lp, clip)
        if "ged" in out:
            out["ged"][rows] = ged_rows(s, chunk.p)
    if "entropy" in out:
        out["entropy"][rows] = entropy_rows(chunk.p)
    if "margin" in out:
        out["margin"][rows] = margin_rows(chunk.p)
    if "mlogit" in out:
        out["mlogit"][rows] = source.mlogit(rows)


def _hard_nll(log_p_true: np.ndarray, clip: float | None) -> np.ndarray:
    if clip is None:
        return -log_p_true
    out = np.maximum(log_p_true, math.log(clip))
    return np.negative(out, out=out)


def entropy_rows(p: np.ndarray) -> np.ndarray:
    """-sum_k p log p per row (0 log 0 = 0), float64."""
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


def margin_rows(p: np.ndarray) -> np.ndarray:
    """Largest minus second largest probability per row."""
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def soft_cross_entropy_rows(soft: np.ndarray, lp: np.ndarray, clip: float | None) -> np.ndarray:
    """-sum_k y_k log max(p_k, clip) per row; terms with y_k = 0 are 0 (even where log p = -inf)."""
    floor = -np.inf if clip is None else math.log(clip)
    return -(soft * np.where(soft > 0, np.maximum(lp, floor), 0.0)).sum(axis=1)


def ged_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """2 (Sy Sp - y.p) - (Sy^2 - y.y) - (Sp^2 - p.p) per row (spec §5; see plexbench.metrics.ged)."""
    sy, sp = y.sum(axis=1), p.sum(axis=1)
    yp, yy, pp = (np.einsum("ij,ij->i", a, b) for a, b in ((y, p), (y, y), (p, p)))
    return 2.0 * (sy * sp - yp) - (sy * sy - yy) - (sp * sp - pp)


def stats_of(labels, probs, *, source: str = "probs", want=(), what: str = "metric") -> ExampleStats:
    """The ExampleStats a public metric works on: `labels` itself when it is one (then `probs`
    must be None), else one pass over the raw arrays (`source`: how to read `probs`)."""
    if isinstance(labels, ExampleStats):
        if probs is not None:
            raise PlexbenchError(f"{what}: pass either ExampleStats or (labels, {source}), not both")
        return labels
    if probs is None:
        raise PlexbenchError(f"{what}: missing {source}")
    return ExampleStats.build(Source(source, probs), labels=labels, want=want)
