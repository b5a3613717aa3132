"""Predictions in memory (`Predictions`) and on disk (prediction file format v1).

Format v1 (docs/prediction-format.md): an `.npz` without object arrays holding
- targets: `labels` int (N,) or `soft_labels` float (N, K) -- exactly one; both may be
  left out only in a file used as OOD data (`require_labels=False`);
- predictions, exactly one of: `probs` (N, K), `logits` (N, K), `member_logits` (E, N, K),
  `member_probs` (E, N, K);
- optional `embeddings` (N, D) or (E, N, D) (pre-logits, for Mahalanobis scores),
  optional `ids` int (N,), optional `format_version` (integer scalar, 1).
Any other key is an error.
"""

from __future__ import annotations

import dataclasses
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from plexbench import fileio
from plexbench.errors import PlexbenchError
from plexbench.metrics import _checks as C
from plexbench.metrics.ensemble import ensemble_from_logits, log_mean_exp, log_softmax
from plexbench.metrics.stats import ExampleStats, Source, all_finite

FORMAT_VERSION = 1
PREDICTION_KEYS = ("probs", "logits", "member_logits", "member_probs")
TARGET_KEYS = ("labels", "soft_labels")
OPTIONAL_KEYS = ("embeddings", "ids", "format_version")
ALL_KEYS = TARGET_KEYS + PREDICTION_KEYS + OPTIONAL_KEYS


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)  # log 0 = -inf: probability 0 stays exactly that


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class Predictions:
    """A model's predictions on one split, validated, in float64.

    log_probs: (N, K) ensemble log-probabilities, rows with logsumexp 0 (spec §3).
    labels: int64 (N,) or None (OOD data). When only soft labels are given this is their
        argmax (ties to the lowest class index), the hard label of spec §5.
    soft_labels: float64 (N, K), rows summing to 1, or None.
    member_log_probs: (E, N, K) per-member log-probabilities, or None.
    logits: (E, N, K) raw logits when known (E = 1 for a single model), else None.
    embeddings: (E, N, D) pre-logits (float32 or float64), or None.
    ids: int64 (N,) example ids within the split, or None.

    `probs` (= exp(log_probs), or exactly the probabilities given to `from_probs`) and
    `member_probs` are computed on first use. Build with the `from_*` constructors; direct
    construction validates and renormalises the same way.
    """

    log_probs: np.ndarray
    labels: np.ndarray | None = None
    soft_labels: np.ndarray | None = None
    member_log_probs: np.ndarray | None = None
    logits: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    ids: np.ndarray | None = None
    # Set by the from_* constructors, which build log_probs / member_log_probs themselves from
    # validated input: skips re-checking their normalisation (a full pass with exp).
    _trusted: dataclasses.InitVar[bool] = False

    def __post_init__(self, _trusted: bool):
        lp = self.log_probs if _trusted else C.check_log_probs(self.log_probs)
        n, k = lp.shape
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        set_("log_probs", lp)
        if self.soft_labels is not None:
            soft = C.check_probs(self.soft_labels, "soft_labels")
            _same_shape(soft, (n, k), "soft_labels")
            hard = np.argmax(soft, axis=1)
            if self.labels is not None and not np.array_equal(C.check_labels(self.labels, k), hard):
                raise PlexbenchError("labels given together with soft_labels must equal argmax(soft_labels)")
            set_("soft_labels", soft)
            set_("labels", hard.astype(np.int64))
        elif self.labels is not None:
            labels = C.check_labels(self.labels, k)
            _same_rows(labels, n, "labels")
            set_("labels", labels)
        if self.member_log_probs is not None:
            mlp = self.member_log_probs
            if not _trusted:
                mlp = C.check_log_probs(mlp, "member_log_probs", ndim=3)
            _same_shape(mlp, (mlp.shape[0], n, k), "member_log_probs")
            set_("member_log_probs", mlp)
        if self.logits is not None:
            logits = C.check_finite(self.logits, "logits", (2, 3))
            logits = logits[None] if logits.ndim == 2 else logits
            _same_shape(logits, (logits.shape[0], n, k), "logits")
            set_("logits", logits)
        if self.embeddings is not None:
            set_("embeddings", _check_embeddings(self.embeddings, n))
        if self.ids is not None:
            ids = C.check_labels(self.ids, name="ids")
            _same_rows(ids, n, "ids")
            set_("ids", ids)

    # ------------------------------------------------------------------ derived views
    @cached_property
    def probs(self) -> np.ndarray:
        """Ensemble probabilities (N, K) float64."""
        return np.exp(self.log_probs)

    @cached_property
    def member_probs(self) -> np.ndarray | None:
        """Per-member probabilities (E, N, K) float64, or None."""
        return None if self.member_log_probs is None else np.exp(self.member_log_probs)

    @cached_property
    def stats(self) -> ExampleStats:
        """Per-example statistics (plexbench.metrics.stats.ExampleStats) of these predictions, read
        from the form they were given in (probabilities, logits, member outputs or log-probs)."""
        if self.logits is not None:
            source = Source("logits", self.logits[0]) if self.logits.shape[0] == 1 else Source(
                "member_logits", self.logits)
        elif self.member_log_probs is not None and "member_probs" in self.__dict__:
            source = Source("member_probs", self.member_probs)
        elif self.member_log_probs is None and "probs" in self.__dict__:
            source = Source("probs", self.probs)
        else:
            source = Source("log_probs", self.log_probs)
        hard = None if self.soft_labels is not None else self.labels
        return ExampleStats.build(source, labels=hard, soft_labels=self.soft_labels)

    @property
    def num_examples(self) -> int:
        return self.log_probs.shape[0]

    @property
    def num_classes(self) -> int:
        return self.log_probs.shape[1]

    @property
    def num_members(self) -> int:
        for arr in (self.member_log_probs, self.logits):
            if arr is not None:
                return arr.shape[0]
        return 1

    def __repr__(self) -> str:
        targets = "soft_labels" if self.soft_labels is not None else "labels"
        targets = targets if self.labels is not None else "no labels"
        extras = [k for k in ("member_log_probs", "logits", "embeddings", "ids") if getattr(self, k) is not None]
        return (f"Predictions(N={self.num_examples}, K={self.num_classes}, E={self.num_members}, {targets}"
                + "".join(f", {name}" for name in extras) + ")")

    def require_labels(self, what: str = "predictions") -> np.ndarray:
        if self.labels is None:
            raise PlexbenchError(f"{what} have no labels (need 'labels' or 'soft_labels')")
        return self.labels

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_log_probs(cls, log_probs, **targets) -> "Predictions":
        """From ensemble log-probabilities (N, K); `targets`: labels / soft_labels / embeddings / ids."""
        return cls(log_probs=log_probs, **targets)

    @classmethod
    def from_probs(cls, probs, **targets) -> "Predictions":
        """From probabilities (N, K); `probs` keeps these exact values (after renormalisation)."""
        p = C.check_probs(probs)
        obj = cls(log_probs=_log(p), _trusted=True, **targets)
        obj.__dict__["probs"] = p  # cached_property slot: keep the exact values, no exp(log(p)) drift
        return obj

    @classmethod
    def from_logits(cls, logits, **targets) -> "Predictions":
        """From one model's logits (N, K): log_probs = log_softmax(logits)."""
        x = C.check_finite(logits, "logits", 2)
        if x.shape[1] < 2:
            raise PlexbenchError(f"logits need at least 2 classes, got shape {x.shape}")
        return cls(log_probs=log_softmax(x), logits=x[None], _trusted=True, **targets)

    @classmethod
    def from_member_logits(cls, member_logits, **targets) -> "Predictions":
        """From member logits (E, N, K): log-mean-exp over members of log_softmax (spec §3)."""
        x = C.check_matrix(member_logits, "member_logits", ndim=3)
        if not np.all(np.isfinite(x)):
            raise PlexbenchError("member_logits contains NaN or inf")
        member, ens = ensemble_from_logits(x)
        return cls(log_probs=ens, member_log_probs=member, logits=x, _trusted=True, **targets)

    @classmethod
    def from_member_probs(cls, member_probs, **targets) -> "Predictions":
        """From member probabilities (E, N, K): ensemble = mean over members."""
        p = C.check_probs(member_probs, "member_probs", ndim=3)
        member_lp = _log(p)
        obj = cls(log_probs=log_mean_exp(member_lp), member_log_probs=member_lp, _trusted=True, **targets)
        obj.__dict__["member_probs"] = p
        return obj

    @classmethod
    def from_arrays(cls, arrays: dict, *, require_labels: bool = True) -> "Predictions":
        """From the arrays of a format-v1 file (see module docstring)."""
        key = check_keys(arrays, require_labels)
        extra = {k: arrays[k] for k in TARGET_KEYS + ("embeddings", "ids") if k in arrays}
        build = {"probs": cls.from_probs, "logits": cls.from_logits,
                 "member_logits": cls.from_member_logits, "member_probs": cls.from_member_probs}[key]
        return build(arrays[key], **extra)

    def to_file_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a format-v1 file holding these predictions (logits when known)."""
        out: dict[str, np.ndarray] = {}
        if self.logits is not None:
            if self.logits.shape[0] == 1:
                out["logits"] = self.logits[0]
            else:
                out["member_logits"] = self.logits
        elif self.member_log_probs is not None:
            out["member_probs"] = self.member_probs
        else:
            out["probs"] = self.probs
        if self.soft_labels is not None:
            out["soft_labels"] = self.soft_labels
        elif self.labels is not None:
            out["labels"] = self.labels
        if self.embeddings is not None:
            out["embeddings"] = self.embeddings[0] if self.embeddings.shape[0] == 1 else self.embeddings
        if self.ids is not None:
            out["ids"] = self.ids
        return out


def check_keys(arrays: dict, require_labels: bool = True) -> str:
    """Check the keys of format-v1 arrays (module docstring); returns the prediction key."""
    unknown = sorted(set(arrays) - set(ALL_KEYS))
    if unknown:
        raise PlexbenchError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(ALL_KEYS)}")
    _check_version(arrays.get("format_version"))
    given = [key for key in PREDICTION_KEYS if key in arrays]
    if len(given) != 1:
        found = ", ".join(given) if given else "none"
        raise PlexbenchError(f"need exactly one of {', '.join(PREDICTION_KEYS)} (found: {found})")
    targets = [key for key in TARGET_KEYS if key in arrays]
    if len(targets) > 1:
        raise PlexbenchError("give either labels or soft_labels, not both")
    if require_labels and not targets:
        raise PlexbenchError("no labels: need 'labels' (N,) or 'soft_labels' (N, K)")
    return given[0]


@dataclasses.dataclass(frozen=True)
class PredictionStats:
    """A format-v1 prediction set reduced to its per-example statistics (what `plexbench score`
    keeps): `stats` (ExampleStats, without the (N, K) arrays), `embeddings` (E, N, D) or None,
    `ids` int64 (N,) or None, `has_logits` (the file held logits, so `stats.mlogit` exists)."""

    stats: ExampleStats
    embeddings: np.ndarray | None
    ids: np.ndarray | None
    has_logits: bool

    @property
    def num_examples(self) -> int:
        return self.stats.num_examples

    @property
    def num_classes(self) -> int:
        return self.stats.num_classes


_SOURCE_OF_KEY = {"probs": "probs", "logits": "logits", "member_logits": "member_logits",
                  "member_probs": "member_probs"}


def prediction_stats(arrays: dict, *, require_labels: bool = True, want=None) -> PredictionStats:
    """Validate format-v1 arrays and reduce them in one pass to an ExampleStats (`want`: the
    statistics, default CORE), without float64 copies of the (N, K) arrays: the memory path of
    `plexbench score`. The same checks and the same numbers as `Predictions.from_arrays(...).stats`.
    """
    key = check_keys(arrays, require_labels)
    pred = np.asarray(arrays[key])
    if key == "logits" and pred.ndim != 2:
        raise PlexbenchError(f"logits must have shape (N, K), got {pred.shape}")
    source = Source(_SOURCE_OF_KEY[key], pred, key)
    n = source.num_examples
    soft = arrays.get("soft_labels")
    labels = arrays.get("labels")
    if labels is not None:
        labels = C.check_labels(labels, source.num_classes)
        _same_rows(labels, n, "labels")
    stats = ExampleStats.build(source, labels=labels, soft_labels=soft, want=want, keep_source=False)
    embeddings = _check_embeddings(arrays["embeddings"], n) if "embeddings" in arrays else None
    ids = None
    if "ids" in arrays:
        ids = C.check_labels(arrays["ids"], name="ids")
        _same_rows(ids, n, "ids")
    return PredictionStats(stats, embeddings, ids, key in ("logits", "member_logits"))


def load_prediction_stats(path: str | os.PathLike, *, require_labels: bool = True, want=None) -> PredictionStats:
    """Read a format-v1 prediction file into `PredictionStats` (see `prediction_stats`); errors are
    one line naming the file. The file's (N, K) arrays are released before this returns."""
    arrays = fileio.load_npz(path, what="prediction file")
    try:
        return prediction_stats(arrays, require_labels=require_labels, want=want)
    except PlexbenchError as e:
        raise PlexbenchError(f"{path}: {e}") from None


def _same_rows(arr: np.ndarray, n: int, name: str) -> None:
    if arr.shape[0] != n:
        raise PlexbenchError(f"{name} has {arr.shape[0]} examples but the predictions have {n}")


def _same_shape(arr: np.ndarray, shape: tuple, name: str) -> None:
    if arr.shape != tuple(shape):
        raise PlexbenchError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")


def _check_embeddings(embeddings, n: int) -> np.ndarray:
    arr = np.asarray(embeddings)
    if arr.dtype.kind != "f":
        raise PlexbenchError(f"embeddings must be floats, got dtype {arr.dtype}")
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.ndim not in (2, 3):
        raise PlexbenchError(f"embeddings must have shape (N, D) or (E, N, D), got {arr.shape}")
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.shape[1] != n or 0 in arr.shape:
        raise PlexbenchError(f"embeddings have shape {arr.shape} but the predictions have {n} examples")
    if not all_finite(arr.reshape(-1, arr.shape[-1])):
        raise PlexbenchError("embeddings contain NaN or inf")
    return arr


def _check_version(version) -> None:
    if version is None:
        return
    v = np.asarray(version)
    if v.ndim != 0 or v.dtype.kind not in "iu" or int(v) != FORMAT_VERSION:
        raise PlexbenchError(f"format_version {v.tolist()!r} is not supported (this plexbench reads {FORMAT_VERSION})")


def load_prediction_file(path: str | os.PathLike, *, require_labels: bool = True) -> Predictions:
    """Read and validate a format-v1 prediction file; errors are one line naming the file."""
    arrays = fileio.load_npz(path, what="prediction file")
    try:
        return Predictions.from_arrays(arrays, require_labels=require_labels)
    except PlexbenchError as e:
        raise PlexbenchError(f"{path}: {e}") from None


def save_prediction_file(path: str | os.PathLike, *, labels=None, soft_labels=None, probs=None, logits=None,
                         member_logits=None, member_probs=None, embeddings=None, ids=None,
                         compress: bool = False) -> Path:
    """Validate and write a format-v1 prediction file atomically; returns the path.

    Arrays are written as given (dtypes kept) plus `format_version` = 1; the same checks as
    `load_prediction_file` run first, so a file this writes always loads.
    """
    given = {"labels": labels, "soft_labels": soft_labels, "probs": probs, "logits": logits,
             "member_logits": member_logits, "member_probs": member_probs, "embeddings": embeddings, "ids": ids}
    arrays = {k: np.asarray(v) for k, v in given.items() if v is not None}
    Predictions.from_arrays(arrays, require_labels=False)
    arrays["format_version"] = np.asarray(FORMAT_VERSION, dtype=np.int64)
    fileio.save_npz(path, arrays, compress=compress)
    return Path(path)


def load_fit_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, D) or (E, N, D), labels (N,)) of a training split for Mahalanobis fits.

    Any file with `embeddings` and `labels` (e.g. a prediction file of the training split)
    is accepted; other keys are ignored.
    """
    arrays = fileio.load_npz(path, what="fit file")
    missing = [key for key in ("embeddings", "labels") if key not in arrays]
    if missing:
        raise PlexbenchError(
            f"{path}: fit file lacks {' and '.join(missing)} (needs training 'embeddings' and 'labels')"
        )
    try:
        labels = C.check_labels(arrays["labels"], name="labels")
        return _check_embeddings(arrays["embeddings"], labels.shape[0]), labels
    except PlexbenchError as e:
        raise PlexbenchError(f"{path}: {e}") from None
