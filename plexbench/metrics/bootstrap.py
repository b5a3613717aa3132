"""Percentile bootstrap confidence intervals: one policy for every metric of plexbench.

Resampling: example rows are drawn with replacement, N out of N. Sample b uses the b-th block of
N draws of `numpy.random.default_rng(seed).integers(0, N, ...)`, so the resamples depend only on
the seed, N and b (not on how many are drawn at once). Data made of separate strata (OOD
detection: in-distribution rows and OOD rows) resample each stratum on its own, stratified:
stratum 0 from `default_rng(seed)` (the same draws as a single-stratum set of the same N, so an
OOD task's in-distribution rows are resampled exactly like its in-distribution metrics), stratum
`s` with stream number `t` from `default_rng([seed, t])`. Interval: the alpha/2 and
1 - alpha/2 quantiles (linear interpolation) of the resampled values. Resamples where the metric
is NaN (e.g. calib_auc of a resample without errors) are left out of the quantiles, with one
`UndefinedMetricWarning` saying how many.

Two implementations of that one policy:

- `bootstrap_intervals(functions, data, ...)`: `data` is a container of per-example statistics
  (plexbench.metrics.stats.ExampleStats, plexbench.metrics.ood.DetectionScores) whose `resample`
  gathers O(N) values and reuses the data's one sort, and every metric of `functions` is computed
  on the same resamples. This is what tasks and `plexbench score` use: O(N) per resample (O(N K)
  only for the metrics that read every class, classwise ECE). Metrics with a block version
  (plexbench.metrics.resample_block: the score set's accuracy, NLL, Brier, ECE, RMS-CE,
  calib_auc, AURC, E-AURC, oracle-collaborative accuracy) are computed on a whole block of
  resamples of an ExampleStats at once, from counts: one bincount of the draws per resample, the
  rest O(number of confidence groups) vectorised over the block.
- `bootstrap_ci(metric_fn, *arrays, ...)`: resamples the raw arrays (paired rows) and calls the
  metric on each resample; O(N K) per resample for (N, K) predictions. It is the reference the
  fast path is tested against (same seed, same resamples: the same numbers, to 1e-12 relative
  where a block version adds floats in another order).
"""

from __future__ import annotations

import warnings
from typing import Callable, Mapping

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.metrics._checks import UndefinedMetricWarning
from plexbench.metrics.resample_block import block_version
from plexbench.progress import bar

# Rows of indices drawn at once: bounds memory to about 64 MiB of int64 indices.
_INDEX_BUDGET = 8 << 20
# The same for the per-example-statistics bootstrap, whose resamples are cheap: a block of about
# 1 MiB of indices (and the block's count arrays of the same size) stays in cache while its
# resamples are evaluated; measured on 50,000 rows, 2^17 beat 2^16 and 2^18-2^20 (the stream
# does not depend on it).
_STATS_INDEX_BUDGET = 1 << 17


def check_num_samples(num_samples) -> int:
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise PlexbenchError(f"number of bootstrap samples must be a positive integer, got {num_samples}")
    return int(num_samples)


def stream_rng(seed: int, stream: int = 0) -> np.random.Generator:
    """The generator of stratum stream `stream`: default_rng(seed) for 0, default_rng([seed, stream]) else."""
    return np.random.default_rng(seed if stream == 0 else [seed, stream])


def index_blocks(n: int, num_samples: int, seed: int, stream: int = 0, per_block: int | None = None):
    """Yield (start, indices (b, n) int64) blocks covering samples 0..num_samples-1."""
    rng = stream_rng(seed, stream)
    per_block = per_block or max(1, _INDEX_BUDGET // max(1, n))
    for start in range(0, num_samples, per_block):
        size = min(per_block, num_samples - start)
        yield start, rng.integers(0, n, size=(size, n))


def percentile_interval(values, alpha: float = 0.05, what: str = "metric") -> tuple[float, float]:
    """(alpha/2, 1 - alpha/2) quantiles of the finite-or-inf values, NaNs left out."""
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    if nan.all():
        return float("nan"), float("nan")
    if nan.any():
        warnings.warn(
            f"bootstrap: {what} undefined in {int(nan.sum())} of {v.size} resamples; they are left out",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    lo, hi = np.quantile(v[~nan], [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_distribution(metric_fn: Callable, *arrays, num_samples: int, seed: int = 0,
                           vectorized: bool = False) -> np.ndarray:
    """The metric on each of `num_samples` resamples, float64 (num_samples,).

    `vectorized=True`: metric_fn takes arrays with a leading resample axis (b, N, ...) and
    returns (b,) values, and is called once per block of resamples.
    """
    num_samples = check_num_samples(num_samples)
    data = [np.asarray(a) for a in arrays]
    if not data:
        raise PlexbenchError("bootstrap needs at least one array")
    n = data[0].shape[0] if data[0].ndim else 0
    if n == 0 or any(a.ndim == 0 or a.shape[0] != n for a in data):
        shapes = ", ".join(str(a.shape) for a in data)
        raise PlexbenchError(f"bootstrap arrays must be non-empty with the same number of rows, got {shapes}")
    out = np.empty(num_samples, dtype=np.float64)
    with warnings.catch_warnings(), bar(num_samples, "bootstrap", unit="resample") as progress:
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # counted once in percentile_interval
        for start, idx in index_blocks(n, num_samples, seed):
            if vectorized:
                out[start:start + idx.shape[0]] = metric_fn(*(a[idx] for a in data))
            else:
                for j, rows in enumerate(idx):
                    out[start + j] = metric_fn(*(a[rows] for a in data))
            progress.update(idx.shape[0])
    return out


def bootstrap_distributions(functions: Mapping[str, Callable], data, *, num_samples: int,
                            seed: int = 0) -> dict[str, np.ndarray]:
    """{name: fn(resample) over `num_samples` resamples of `data`}, float64 (num_samples,) each.

    `data` has `strata` (((rows, stream), ...): see the module docstring) and `resample(draws)`
    (draws: one int64 index array per stratum, in draw order) returning an object of the same
    kind; each fn maps such an object to a float. Every fn sees the same resamples.
    """
    num_samples = check_num_samples(num_samples)
    strata = tuple(data.strata)
    if any(n < 1 for n, _ in strata):
        raise PlexbenchError(f"bootstrap needs at least one row in every stratum, got {[n for n, _ in strata]}")
    per_block = max(1, _STATS_INDEX_BUDGET // sum(n for n, _ in strata))
    out = {name: np.empty(num_samples, dtype=np.float64) for name in functions}
    batched = {name: found for name, fn in functions.items() if (found := block_version(fn))} \
        if hasattr(data, "resample_block") else {}
    blocks = [index_blocks(n, num_samples, seed, stream, per_block) for n, stream in strata]
    with warnings.catch_warnings(), bar(num_samples, "bootstrap", unit="resample") as progress:
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # counted once in percentile_interval
        for parts in zip(*blocks):
            start, size = parts[0][0], parts[0][1].shape[0]
            block = data.resample_block(tuple(idx for _, idx in parts)) if batched else None
            if block is not None:
                for name, (impl, options) in batched.items():
                    out[name][start:start + size] = impl(block, **options)
            one_by_one = {name: fn for name, fn in functions.items() if block is None or name not in batched}
            if one_by_one:
                for j in range(size):
                    view = data.resample(tuple(idx[j] for _, idx in parts))
                    for name, fn in one_by_one.items():
                        out[name][start + j] = fn(view)
            progress.update(size)
    return out


def bootstrap_intervals(functions: Mapping[str, Callable], data, *, num_samples: int, seed: int = 0,
                        alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """{name: (low, high)}: percentile-bootstrap (1 - alpha) intervals of every fn(data) on the
    same resamples (see `bootstrap_distributions` and the module docstring).

    Example: `bootstrap_intervals({"accuracy": accuracy, "nll": nll}, stats, num_samples=1000, seed=0)`
    with `stats` an ExampleStats.
    """
    if not 0 < alpha < 1:
        raise PlexbenchError(f"alpha must be in (0, 1), got {alpha}")
    values = bootstrap_distributions(functions, data, num_samples=num_samples, seed=seed)
    return {name: percentile_interval(v, alpha, name) for name, v in values.items()}


def bootstrap_ci(metric_fn: Callable, *arrays, num_samples: int, seed: int = 0, alpha: float = 0.05,
                 vectorized: bool = False) -> tuple[float, float]:
    """Percentile-bootstrap (1 - alpha) interval of metric_fn(*arrays) -> (low, high).

    Example: `bootstrap_ci(accuracy, labels, probs, num_samples=1000, seed=0)`.
    See the module docstring for the resampling rule.
    """
    if not 0 < alpha < 1:
        raise PlexbenchError(f"alpha must be in (0, 1), got {alpha}")
    values = bootstrap_distribution(metric_fn, *arrays, num_samples=num_samples, seed=seed, vectorized=vectorized)
    return percentile_interval(values, alpha, getattr(metric_fn, "__name__", "metric"))
