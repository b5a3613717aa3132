"""Blocks of bootstrap resamples (plexbench.metrics.resample_block) against each metric computed
directly on the resampled rows (labels[draws], probs[draws]): integer-valued metrics bit for bit,
float sums to 1e-12 relative (they are added in another order)."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plexbench.metrics as M
from plexbench.metrics import ExampleStats, UndefinedMetricWarning
from plexbench.metrics.bootstrap import bootstrap_distribution, bootstrap_distributions
from plexbench.metrics.resample_block import block_version

FRACTIONS = (0.01, 0.1, 0.25, 0.5, 0.9)
SET = {
    "accuracy": M.accuracy, "brier": M.brier, "ece": M.ece, "ece7": functools.partial(M.ece, num_bins=7),
    "rms_ce": M.rms_calibration_error, "calib_auc": M.calib_auc, "aurc": M.aurc, "eaurc": M.eaurc,
    **{f"oc{f}": functools.partial(M.oracle_collaborative_accuracy, fraction=f) for f in FRACTIONS},
}
NLL = {"nll": M.nll, "nll_exact": functools.partial(M.nll, clip=None), "nll_clip": functools.partial(M.nll, clip=0.3)}
EXACT = {"accuracy", "calib_auc", *(f"oc{f}" for f in FRACTIONS)}

# 0.4 + 1, 2 and 3 ulp: different confidences whose 1 - conf is one number (calib_auc's score
# groups are coarser than the confidence groups then)
_MERGING = [float(x) for x in np.nextafter.accumulate([0.4, 1.0, 1.0, 1.0])[1:]]
LEVELS = [0.4, *_MERGING, 0.5, 0.6, 0.75, 0.9, 1.0]


def _rows(conf, correct):
    """Three-class probabilities with these confidences (class 0 on top); labels 0 when correct."""
    rest = (1.0 - conf) / 2
    return np.stack([conf, rest, rest], axis=1), np.where(correct, 0, 1)


def _direct(fn, labels, p):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return fn(labels, p)


def _assert_close(name, got, want):
    for g, w in zip(got.tolist(), want):
        if math.isnan(w):
            assert math.isnan(g), name
        elif name in EXACT:
            assert g == w, name
        else:
            assert g == pytest.approx(w, rel=1e-12, abs=1e-15), name


def check_block(p, labels, draws):
    stats = ExampleStats.from_probs(p, labels)
    block = stats.resample_block(draws)
    for name, fn in {**SET, **NLL}.items():
        impl, options = block_version(fn)
        with np.errstate(divide="ignore"):
            source = np.log(p) if name in NLL else p  # log 0 = -inf: an infinite exact NLL
        want = [_direct(fn, labels[d], source[d]) for d in draws]
        _assert_close(name, impl(block, **options), want)


@st.composite
def tied_blocks(draw):
    n = draw(st.integers(2, 60))
    conf = np.array(draw(st.lists(st.sampled_from(LEVELS), min_size=n, max_size=n)))
    correct = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    size, seed = draw(st.integers(1, 5)), draw(st.integers(0, 10_000))
    return conf, correct, np.random.default_rng(seed).integers(0, n, (size, n))


@settings(max_examples=80, deadline=None)
@given(tied_blocks())
def test_block_equals_the_metrics_of_the_resampled_rows(data):
    # confidences tie often, with right and wrong examples in one tie (draw order decides AURC
    # and oracle referral there), and some ties appear only in 1 - conf (calib_auc)
    conf, correct, draws = data
    p, labels = _rows(conf, correct)
    check_block(p, labels, draws)


def test_merging_scores_are_exercised():
    p, labels = _rows(np.array(_MERGING * 4), np.arange(12) % 2 == 0)
    plan = ExampleStats.from_probs(p, labels).resampling
    assert plan.num_groups == 3 and plan.score_group_first is not None


@pytest.mark.parametrize("decimals", [1, 2, 6])
def test_larger_sets_with_many_mixed_groups(decimals):
    rng = np.random.default_rng(decimals)
    n, k = 3000, 5
    y = rng.integers(0, k, n)
    p = rng.dirichlet(np.ones(k) * 0.7, n)
    p[np.arange(n), y] += 0.3
    p = np.round(p / p.sum(1, keepdims=True), decimals) + 1e-3
    p /= p.sum(1, keepdims=True)
    check_block(p, y, rng.integers(0, n, (4, n)))


def test_wide_mixed_group_numbers_give_the_same_values():
    # more than 2^16 mixed groups switch the sort keys from uint16 (radix sort) to int64
    rng = np.random.default_rng(0)
    n = 400
    conf = np.round(rng.uniform(0.5, 1.0, n), 2)
    p, labels = _rows(conf, rng.random(n) < 0.7)
    stats = ExampleStats.from_probs(p, labels)
    draws = rng.integers(0, n, (3, n))

    def values():
        return (M.aurc.on_resample_block(stats.resample_block(draws)),
                M.oracle_collaborative_accuracy.on_resample_block(stats.resample_block(draws), fraction=0.3))

    narrow = values()
    plan = stats.resampling
    assert plan.mixed_numbers_ex.dtype == np.uint16 and plan.any_mixed
    plan.__dict__["mixed_numbers_ex"] = plan.mixed_numbers_ex.astype(np.int64)
    for got, want in zip(values(), narrow):
        np.testing.assert_array_equal(got, want)


def test_soft_labels():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4), 200)
    soft = rng.dirichlet(np.ones(4) * 0.5, 200)
    stats = ExampleStats.from_probs(p, soft_labels=soft)
    draws = rng.integers(0, 200, (3, 200))
    block = stats.resample_block(draws)
    for fn, source in ((M.brier, p), (M.nll, np.log(p)), (M.accuracy, p), (M.aurc, p)):
        want = [fn(soft[d], source[d]) for d in draws]
        np.testing.assert_allclose(fn.on_resample_block(block), want, rtol=1e-12)


def test_bootstrap_mixes_block_and_per_resample_metrics():
    # metrics without a block version (adaptive_ece, classwise_ece, a lambda) are evaluated one
    # resample at a time on the same draws
    rng = np.random.default_rng(1)
    n = 300
    y = rng.integers(0, 3, n)
    p = np.round(rng.dirichlet(np.ones(3), n), 1) + 1e-3
    p /= p.sum(1, keepdims=True)
    stats = ExampleStats.from_probs(p, y)
    fns = {"aurc": M.aurc, "adaptive_ece": M.adaptive_ece, "classwise_ece": M.classwise_ece,
           "acc_lambda": lambda *a: M.accuracy(*a), "oc": functools.partial(M.oracle_collaborative_accuracy, fraction=0.05)}
    got = bootstrap_distributions(fns, stats, num_samples=25, seed=4)
    for name, fn in fns.items():
        naive = bootstrap_distribution(fn, y, p, num_samples=25, seed=4)
        np.testing.assert_allclose(got[name], naive, rtol=1e-12, err_msg=name)
    np.testing.assert_array_equal(got["oc"], bootstrap_distribution(fns["oc"], y, p, num_samples=25, seed=4))


def test_no_block_for_views_or_unlabelled_sets():
    p = np.random.default_rng(0).dirichlet(np.ones(3), 20)
    draws = np.zeros((2, 20), dtype=np.int64)
    assert ExampleStats.from_probs(p).resample_block(draws) is None
    assert ExampleStats.from_probs(p, np.zeros(20, int)).take(np.arange(10)).resample_block(draws[:, :10]) is None
    assert block_version(functools.partial(M.ece, 15)) is None  # positional options: the metric itself
    assert block_version(M.adaptive_ece) is None


def test_values_do_not_depend_on_the_block_size(monkeypatch):
    import plexbench.metrics.bootstrap as B

    rng = np.random.default_rng(5)
    n = 2000
    y = rng.integers(0, 4, n)
    p = rng.dirichlet(np.ones(4), n)
    fns = {"nll": M.nll, "brier": M.brier, "ece": M.ece, "rms_ce": M.rms_calibration_error, "aurc": M.aurc}
    runs = []
    for budget in (n, 7 * n, 64 * n):  # blocks of 1, 7 and 64 resamples
        monkeypatch.setattr(B, "_STATS_INDEX_BUDGET", budget)
        runs.append(bootstrap_distributions(fns, ExampleStats.from_probs(p, y), num_samples=64, seed=2))
    for name in fns:
        for other in runs[1:]:
            np.testing.assert_array_equal(other[name], runs[0][name], err_msg=name)
