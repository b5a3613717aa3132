"""Blocks of bootstrap resamples of one labelled prediction set, held as counts.

A bootstrap resample draws example i c_i times. Every metric of the score set is a function of the
counts c (N,) and, inside the tie groups of confidence holding both correct and incorrect examples
("mixed" groups), of the order of the draws (a stable sort of the resampled rows keeps draw order
there, and AURC and oracle-collaborative accuracy read that order). `ResampleBlock` holds B
resamples at once:

- `counts` (B, N): c per resample (examples in descending confidence order), one bincount each;
- `group_counts`, `group_wrong` (B, G): draws and incorrect draws per tie group of confidence,
  groups numbered by DESCENDING confidence (plexbench.metrics.stats.Resampling);
- the draws falling in mixed groups in each resample's sorted order (only when such groups exist).

Means of per-example values are count-weighted sums (`mean_of`, on the values kept in that
order); the ranking metrics (calib_auc, AURC, oracle-collaborative accuracy) and the binned ones
(ECE, RMS-CE) read the (B, G) group arrays. A resample then costs one bincount of its N draws and
O(G) (G <= N) vectorised over the block, instead of gathering each statistic at the N draws and
rebuilding the sorted sequence (plexbench.metrics.stats.ResampledOrder, the per-resample path that
metrics without a block version still take).

A metric declares its block version next to its definition with `@on_resamples(metric)`; the
bootstrap (plexbench.metrics.bootstrap) uses it for `metric` and `functools.partial(metric, ...)`.

Equality with the naive bootstrap (resample the (N, K) arrays, recompute each metric) with the
same seed: the resamples are the same; integer statistics and metrics made of them (accuracy,
calib_auc, oracle-collaborative accuracy) are bit-for-bit equal; float sums (NLL, Brier, ECE,
RMS-CE, AURC, E-AURC) are added in another order and agree to about 1e-13 relative at N = 10^6
(tested to 1e-12 in tests/test_metrics_resample_block.py). AURC is summed as sum over the
positions p of incorrect draws of T[p] = sum_{k>p} 1/k, a run of an all-wrong group as a
difference of closed-form prefix sums.
"""

from __future__ import annotations

import functools
from functools import cached_property
from typing import Callable

import numpy as np


def on_resamples(metric: Callable):
    """Declare `fn(block, **options) -> float64 (B,)` as the block version of `metric` (the same
    options as the metric's keyword options)."""
    def register(fn: Callable) -> Callable:
        metric.on_resample_block = fn
        return fn
    return register


def block_version(fn: Callable) -> tuple[Callable, dict] | None:
    """(block version, keyword options) of `fn` or of `functools.partial(fn, **options)`; None when
    there is none (the bootstrap then evaluates fn on each resample)."""
    options = {}
    if isinstance(fn, functools.partial):
        if fn.args:
            return None
        options, fn = dict(fn.keywords), fn.func
    impl = getattr(fn, "on_resample_block", None)
    return None if impl is None else (impl, options)


class ResampleBlock:
    """B resamples (rows of `draws`, int (B, N)) of a full labelled ExampleStats `stats` (module
    docstring). `size` = B, `n` = N; arrays are computed on first use and kept for the block.
    Columns are gathered with np.take(axis=1): `a[:, index]` returns a column-major result, on
    which every later row-wise pass is strided (measured 5-10x slower)."""

    def __init__(self, stats, draws: np.ndarray):
        self.stats, self.plan = stats, stats.resampling
        self.draws = draws
        self.size, self.n = draws.shape

    # ------------------------------------------------------------------ counts
    @cached_property
    def counts(self) -> np.ndarray:
        """int64 (B, N): how often each example is drawn, examples in descending confidence order
        (`plan.order`): a bincount of the draws' positions per resample (a row's bins stay in
        cache, which one bincount over the whole block does not)."""
        positions = np.take(self.plan.rank_ex, self.draws)
        out = np.empty((self.size, self.n), dtype=np.int64)
        for row, drawn in zip(out, positions):
            row[:] = np.bincount(drawn, minlength=self.n)  # (np.stack of the rows measured 4x slower)
        return out

    @cached_property
    def _weights(self) -> np.ndarray:
        return self.counts.astype(np.float64)

    def mean_of(self, name, values: Callable[[], np.ndarray]) -> np.ndarray:
        """float64 (B,): the mean over each resample's draws of the per-example values (N,) of the
        full set (example order) that `values()` returns; the plan keeps them in sorted order
        under `name`, so `values` is called once per set."""
        finite, bad, bad_values = self.plan.in_order(name, values)
        # a product and a row-wise (pairwise) sum: a resample's value does not depend on the block
        # size, which a matrix-vector product (or einsum) over the block does not promise, and no
        # BLAS call (OpenBLAS' threads keep spinning after one, taking the other core from numpy)
        total = (self._weights * finite).sum(axis=1)
        if bad.size:  # an infinite value counts only where its example is drawn (inf, as the plain mean)
            drawn = np.take(self.counts, bad, axis=1) > 0
            total += np.where(drawn, bad_values, 0.0).sum(axis=1)
        return total / self.n

    @cached_property
    def group_counts(self) -> np.ndarray:
        """int64 (B, G): draws per tie group of confidence (groups by descending confidence)."""
        if self.plan.num_groups == self.n:
            return self.counts
        return np.add.reduceat(self.counts, self.plan.group_starts, axis=1)

    @cached_property
    def group_wrong(self) -> np.ndarray:
        """int64 (B, G): incorrect draws per group (all of an all-wrong group's, those of the
        incorrect members of a mixed one)."""
        plan = self.plan
        out = self.group_counts * plan.all_wrong
        if plan.any_mixed:
            positions, first, groups = plan.mixed_wrong_members
            out[:, groups] += np.add.reduceat(np.take(self.counts, positions, axis=1), first, axis=1)
        return out

    @cached_property
    def total_wrong(self) -> np.ndarray:
        """int64 (B,): incorrect draws per resample."""
        return self.group_wrong.sum(axis=1)

    @cached_property
    def group_ends(self) -> np.ndarray:
        """int64 (B, G): one past the last position of each group in a resample's descending order."""
        return np.cumsum(self.group_counts, axis=1)

    @cached_property
    def group_positions(self) -> np.ndarray:
        """int64 (B, G): the first position of each group in a resample's descending order."""
        return self.group_ends - self.group_counts

    # ------------------------------------------------------------------ the sorted order
    @cached_property
    def _mixed_draws(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per resample, its draws that fall in mixed groups in sorted order (group by group in
        descending confidence, draw order inside a group): (start of each mixed group's run among
        them (M + 1,), their positions in the resample's descending order, prefix sums of their
        incorrect flags)."""
        plan = self.plan
        numbers, groups = plan.mixed_numbers_ex, plan.mixed_groups
        out = []
        for row, counts, starts in zip(self.draws, np.take(self.group_counts, groups, axis=1),
                                       np.take(self.group_positions, groups, axis=1)):
            examples = row[plan.mixed_ex[row]]
            # a stable sort by mixed-group number keeps draw order inside a group (numpy sorts
            # 16-bit keys stably by radix sort: O(draws))
            examples = examples[np.argsort(numbers[examples], kind="stable")]
            run = np.zeros(groups.shape[0] + 1, dtype=np.int64)
            np.cumsum(counts, out=run[1:])
            # the j-th of these draws, in group g's run, sits at starts[g] + (j - run[g])
            positions = np.arange(examples.shape[0]) + np.repeat(starts - run[:-1], counts)
            prefix = np.zeros(examples.shape[0] + 1, dtype=np.int64)
            np.cumsum(~self.stats.correct[examples], out=prefix[1:])
            out.append((run, positions, prefix))
        return out

    def wrong_after(self, groups: np.ndarray) -> np.ndarray:
        """int64 (B,): incorrect draws in the groups after groups[b] (lower confidence), summed over
        that tail only (oracle referral reads the tail of the order)."""
        return np.array([int(wrong[g + 1:].sum()) for wrong, g in zip(self.group_wrong, groups.tolist())],
                        dtype=np.int64)

    def group_at(self, position: int) -> np.ndarray:
        """int64 (B,): the group holding `position` (0-based) of each resample's descending order."""
        return np.array([np.searchsorted(ends, position, side="right") for ends in self.group_ends])

    def wrong_in_first(self, groups: np.ndarray, m: np.ndarray) -> np.ndarray:
        """int64 (B,): incorrect draws among the first m[b] (in sorted order) of group groups[b]."""
        plan = self.plan
        out = np.where(plan.all_wrong[groups], m, 0)
        if plan.any_mixed:
            for b in np.flatnonzero(plan.mixed[groups] & (m > 0)).tolist():
                run, _, prefix = self._mixed_draws[b]
                start = run[plan.mixed_number[groups[b]]]
                out[b] = prefix[start + m[b]] - prefix[start]
        return out

    def sum_at_wrong_positions(self, table: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        """float64 (B,): sum of table[p] over the positions p of each resample's descending order
        that hold an incorrect draw. `prefix[p]` = sum of table[:p] (N + 1 entries): an all-wrong
        group [start, end) adds prefix[end] - prefix[start]. (Summing the differences, not
        sum_g (w_g - w_(g+1)) prefix[end_g] over the changes of the all-wrong flag w: that
        telescoped form adds terms of size N and loses about 1e-11 relative at N = 20,000.)"""
        plan = self.plan
        cols = plan.wrong_groups
        end = np.take(self.group_ends, cols, axis=1)
        out = (prefix[end] - prefix[end - np.take(self.group_counts, cols, axis=1)]).sum(axis=1)
        if plan.any_mixed:
            for b, (_, positions, wrong_prefix) in enumerate(self._mixed_draws):
                out[b] += table[positions[np.diff(wrong_prefix) > 0]].sum()
        return out

    def score_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """(draws, incorrect draws) int64 (B, S) per group of equal score 1 - conf, ascending
        (calib_auc; 1 - conf can tie confidences that differ, then groups merge)."""
        first = self.plan.score_group_first
        if first is None:
            return self.group_counts, self.group_wrong
        return (np.add.reduceat(self.group_counts, first, axis=1),
                np.add.reduceat(self.group_wrong, first, axis=1))

    def binned(self, num_bins: int, binning) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(draws, sum of confidence, correct draws) float64 (B, nb) per equal-width bin of the
        confidence (`binning(conf, num_bins)` -> bin indices), only the bins that hold a group
        (the others hold nothing in any resample). A bin's groups are consecutive: its sums are
        reductions over a run of columns (row by row, so a resample's value does not depend on
        the block size)."""
        _, first = self.plan.bins(num_bins, binning)
        weights = self._weights if self.plan.num_groups == self.n else self.group_counts.astype(np.float64)
        conf_sum = np.add.reduceat(weights * self.plan.group_conf, first, axis=1)
        count = np.add.reduceat(self.group_counts, first, axis=1)
        correct = count - np.add.reduceat(self.group_wrong, first, axis=1)
        return count.astype(np.float64), conf_sum, correct.astype(np.float64)
