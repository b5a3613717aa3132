"""Input validation shared by every metric: one-line `PlexbenchError`s, float64 results.

Conventions (every public metric follows them):

- `labels`: integer array (N,), values in [0, K). Booleans and floats are refused, so a
  probability vector passed by mistake is caught instead of being truncated.
- `probs`: finite, non-negative floats (N, K), K >= 2. A row whose float64 sum differs
  from 1 by more than `SUM_TOLERANCE` (1e-3) is an error; a row within it is divided by
  its sum, except rows within `ROUNDING_TOLERANCE` (1e-12) of 1, which are used as given
  (that difference is floating-point rounding, and leaving those rows untouched keeps
  tied rows tied). `check_probs` returns a float64 array (a new one only when a copy is
  needed); the metrics apply the same rule chunk by chunk (plexbench.metrics.stats).
- `log_probs`: floats (N, K) with no NaN and no +inf (-inf is probability 0); each row's
  logsumexp must be within 1e-3 of 0 and is subtracted when it exceeds 1e-12.
- `soft_labels`: like `probs` (non-negative rows summing to 1, same tolerances).
- N >= 1 everywhere: an empty array is an error, not a NaN.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from plexbench.errors import PlexbenchError

SUM_TOLERANCE = 1e-3
ROUNDING_TOLERANCE = 1e-12
# Rows per chunk for passes over (N, K) arrays: keeps float64 temporaries small (cache-sized)
# instead of allocating full (N, K) copies.
CHUNK_ELEMENTS = 1 << 20


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for this input (e.g. AUROC with one class) and NaN is returned."""


def undefined(metric: str, why: str) -> float:
    """Warn that `metric` is undefined (`why`) and return NaN."""
    warnings.warn(f"{metric} is undefined: {why}; returning nan", UndefinedMetricWarning, stacklevel=3)
    return math.nan


def row_chunks(n_rows: int, n_cols: int, chunk_elements: int | None = None):
    """Slices covering range(n_rows) with about `chunk_elements` (default CHUNK_ELEMENTS) elements each."""
    step = max(1, (chunk_elements or CHUNK_ELEMENTS) // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _as_float_array(x, name: str, convert: bool = True) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object:
        raise PlexbenchError(f"{name} is an object array; expected numbers")
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise PlexbenchError(f"{name} must be real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False) if convert else arr


def _check_nonempty(arr: np.ndarray, name: str) -> None:
    if arr.size == 0 or arr.shape[0] == 0:
        raise PlexbenchError(f"{name} is empty (shape {arr.shape}); need at least one example")


def check_labels(labels, num_classes: int | None = None, name: str = "labels") -> np.ndarray:
    """Integer labels (N,) as int64; values in [0, num_classes) when num_classes is given."""
    arr = np.asarray(labels)
    if arr.dtype == object or arr.dtype.kind not in "iu":
        raise PlexbenchError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise PlexbenchError(f"{name} must have shape (N,), got {arr.shape}")
    _check_nonempty(arr, name)
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise PlexbenchError(f"{name} out of range: values span [{lo}, {hi}], expected {bound}")
    return arr


def check_matrix(x, name: str, ndim: int = 2, convert: bool = True) -> np.ndarray:
    """A real array with `ndim` dimensions, at least one row and 2 classes (float64 if `convert`)."""
    arr = _as_float_array(x, name, convert)
    if arr.ndim != ndim:
        want = "(N, K)" if ndim == 2 else "(E, N, K)"
        raise PlexbenchError(f"{name} must have shape {want}, got {arr.shape}")
    _check_nonempty(arr, name)
    if arr.shape[-1] < 2:
        raise PlexbenchError(f"{name} needs at least 2 classes (last axis), got shape {arr.shape}")
    return arr


def _check_sums(sums: np.ndarray, name: str, shape: tuple) -> np.ndarray:
    """Raise if a row sum is off by more than SUM_TOLERANCE; return the mask of rows to rescale."""
    dev = np.abs(sums - 1.0)
    worst = int(np.argmax(dev))
    if not dev[worst] <= SUM_TOLERANCE:  # also catches NaN
        at = np.unravel_index(worst, shape[:-1])
        where = f"row {at[-1]}" + (f" of member {at[0]}" if len(at) > 1 else "")
        raise PlexbenchError(
            f"{name} rows must sum to 1: {where} sums to {sums[worst]:.6g} (tolerance {SUM_TOLERANCE:g})"
        )
    return dev > ROUNDING_TOLERANCE


def check_probs(probs, name: str = "probs", ndim: int = 2) -> np.ndarray:
    """Validated probabilities (N, K) (or (E, N, K) with ndim=3) as float64, rows renormalised.

    One pass in row chunks: each chunk is converted to float64 (sums accumulate in float64),
    checked (finite, non-negative, sum) and, for non-float64 input, written into the float64
    result; a float64 input is returned as is unless a row has to be rescaled.
    """
    arr = check_matrix(probs, name, ndim, convert=False)
    flat = arr.reshape(-1, arr.shape[-1])
    out = flat if flat.dtype == np.float64 else np.empty(flat.shape, dtype=np.float64)
    sums = np.empty(flat.shape[0])
    for rows in row_chunks(*flat.shape):
        chunk = flat[rows].astype(np.float64, copy=False)
        sums[rows] = chunk.sum(axis=1)
        bad = np.flatnonzero(~np.isfinite(sums[rows]))
        if bad.size:
            at = np.unravel_index(rows.start + int(bad[0]), arr.shape[:-1])
            where = f"row {at[-1]}" + (f" of member {at[0]}" if len(at) > 1 else "")
            raise PlexbenchError(f"{name} contains NaN or inf ({where})")
        low = chunk.min()
        if low < 0:
            raise PlexbenchError(f"{name} contains negative values (min {low:.6g})")
        if out is not flat:
            out[rows] = chunk
    rescale = np.flatnonzero(_check_sums(sums, name, arr.shape))
    if rescale.size:
        if out is flat:
            out = flat.copy()  # never modify the caller's array
        out[rescale] /= sums[rescale, None]
    return out.reshape(arr.shape)


def logsumexp_rows(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x), axis=-1)) in float64, stable; rows of all -inf give -inf."""
    m = x.max(axis=-1)
    safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(x - safe[..., None]).sum(axis=-1)) + safe


def check_log_probs(log_probs, name: str = "log_probs", ndim: int = 2) -> np.ndarray:
    """Validated log-probabilities as float64; rows shifted so that logsumexp = 0."""
    arr = check_matrix(log_probs, name, ndim)
    if np.isnan(arr).any() or np.isposinf(arr).any():
        raise PlexbenchError(f"{name} contains NaN or +inf")
    lse = logsumexp_rows(arr)
    dev = np.abs(lse)
    worst = np.unravel_index(int(np.argmax(dev)), dev.shape)
    if not dev[worst] <= SUM_TOLERANCE:
        where = f"row {worst[-1]}" + (f" of member {worst[0]}" if len(worst) > 1 else "")
        raise PlexbenchError(
            f"{name} rows must be normalised (logsumexp 0): {where} has logsumexp "
            f"{lse[worst]:.6g} (tolerance {SUM_TOLERANCE:g})"
        )
    if dev[worst] <= ROUNDING_TOLERANCE:
        return arr
    return arr - np.where(dev <= ROUNDING_TOLERANCE, 0.0, lse)[..., None]


def check_finite(x, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """A float64 array with the given number of dimensions, non-empty, all finite."""
    arr = _as_float_array(x, name)
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in dims:
        raise PlexbenchError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {arr.shape}")
    _check_nonempty(arr, name)
    if not np.all(np.isfinite(arr)):
        raise PlexbenchError(f"{name} contains NaN or inf")
    return arr


def check_same_rows(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise PlexbenchError(f"{name_a} has {a.shape[0]} examples but {name_b} has {b.shape[0]}")


def check_labels_probs(labels, probs, probs_name: str = "probs") -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 (N,), probs (N, K)) validated together (the label-noise scores read both)."""
    p = check_probs(probs, probs_name)
    y = check_labels(labels, p.shape[1])
    check_same_rows(y, p, "labels", probs_name)
    return y, p


def check_fraction(fraction) -> float:
    f = float(fraction)
    if not 0.0 <= f <= 1.0:
        raise PlexbenchError(f"fraction must be in [0, 1], got {fraction}")
    return f


def check_num_bins(num_bins) -> int:
    if isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 1:
        raise PlexbenchError(f"num_bins must be a positive integer, got {num_bins}")
    return int(num_bins)
