"""Percentile bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plexbench.errors import PlexbenchError
from plexbench.metrics import UndefinedMetricWarning, accuracy, bootstrap_ci, calib_auc
from plexbench.metrics.bootstrap import bootstrap_distribution


def test_interval_of_a_mean_matches_normal_theory():
    # For the mean of n = 4000 normal values the bootstrap interval ~ mean +- 1.96 s / sqrt(n).
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 4000)
    low, high = bootstrap_ci(np.mean, x, num_samples=2000, seed=1)
    half = 1.96 * x.std() / math.sqrt(len(x))
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_resamples_follow_the_documented_stream():
    # metric = the first resampled row index; resample b = the b-th draw of integers(0, N, N).
    n = 37
    values = bootstrap_distribution(lambda ids: ids[0], np.arange(n), num_samples=5, seed=7)
    rng = np.random.default_rng(7)
    expected = [rng.integers(0, n, size=n)[0] for _ in range(5)]
    np.testing.assert_array_equal(values, expected)


def test_seeded_and_paired():
    x = np.random.default_rng(0).normal(size=200)
    assert bootstrap_ci(np.mean, x, num_samples=100, seed=3) == bootstrap_ci(np.mean, x, num_samples=100, seed=3)
    assert bootstrap_ci(np.mean, x, num_samples=100, seed=3) != bootstrap_ci(np.mean, x, num_samples=100, seed=4)
    # the same rows for every array: the difference of a paired copy is exactly 0 in every resample
    assert bootstrap_ci(lambda a, b: np.mean(a - b), x, x.copy(), num_samples=50) == (0.0, 0.0)


def test_vectorized_equals_loop():
    x = np.random.default_rng(2).exponential(size=300)
    loop = bootstrap_ci(np.mean, x, num_samples=200, seed=5)
    vec = bootstrap_ci(lambda a: a.mean(axis=-1), x, num_samples=200, seed=5, vectorized=True)
    assert loop == pytest.approx(vec, abs=1e-15)


def test_metric_with_two_arrays_and_nan_resamples():
    # 19 correct, 1 wrong: some resamples miss the wrong example and calib_auc is undefined there.
    probs = np.tile([0.9, 0.1], (20, 1))
    probs[0] = [0.6, 0.4]
    labels = np.zeros(20, int)
    labels[0] = 1
    with pytest.warns(UndefinedMetricWarning, match="left out"):
        low, high = bootstrap_ci(calib_auc, labels, probs, num_samples=200, seed=0)
    assert low == high == 1.0  # the wrong example is always the least confident
    low, high = bootstrap_ci(accuracy, labels, probs, num_samples=300, seed=0)
    assert 0.8 <= low <= 0.95 <= high <= 1.0


def test_bad_arguments():
    with pytest.raises(PlexbenchError, match="same number of rows"):
        bootstrap_ci(accuracy, [0, 1], [[0.5, 0.5]], num_samples=10)
    with pytest.raises(PlexbenchError, match="positive integer"):
        bootstrap_ci(np.mean, np.ones(3), num_samples=0)
    with pytest.raises(PlexbenchError, match="alpha"):
        bootstrap_ci(np.mean, np.ones(3), num_samples=5, alpha=1.5)


# ------------------------------------------------------------------ the per-example-statistics bootstrap
import functools  # noqa: E402

from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402

from plexbench.metrics import (  # noqa: E402
    DetectionScores,
    DetectionSet,
    ExampleStats,
    adaptive_ece,
    aurc,
    bootstrap_intervals,
    brier,
    classwise_ece,
    eaurc,
    ece,
    nll,
    oracle_collaborative_accuracy,
    rms_calibration_error,
    soft_cross_entropy,
)
from plexbench.metrics.bootstrap import bootstrap_distributions  # noqa: E402


def tied_predictions(n=400, k=4, seed=0):
    """Probabilities rounded to 0.1: confidences tie in groups holding right and wrong examples."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    p = rng.dirichlet(np.ones(k) * 0.7, n)
    p[np.arange(n), y] += 0.4
    p = np.round(p / p.sum(1, keepdims=True), 1) + 1e-3
    return y, p / p.sum(1, keepdims=True)


SCORE_SET = {
    "accuracy": accuracy, "ece": ece, "brier": brier, "calib_auc": calib_auc, "aurc": aurc, "eaurc": eaurc,
    "adaptive_ece": adaptive_ece, "rms_ce": rms_calibration_error, "classwise_ece": classwise_ece,
    **{f"oc{f}": functools.partial(oracle_collaborative_accuracy, fraction=f) for f in (0.005, 0.02, 0.05, 0.25)},
}


# metrics whose block version (plexbench.metrics.resample_block) sums floats in another order than
# the metric on the resampled rows: equal to 1e-12 relative; every other value is bit-for-bit equal
FLOAT_SUMS = {"ece", "brier", "aurc", "eaurc", "rms_ce", "nll"}


def test_statistics_bootstrap_equals_the_naive_bootstrap_with_the_same_seed():
    # The naive bootstrap resamples the (N, K) arrays and recomputes every metric (O(N K) per
    # resample); the statistics bootstrap works on per-example statistics (counts per block of
    # resamples, or a gathered view with the set's one sort). Same seed -> the same resamples ->
    # the same values, ties in confidence included.
    y, p = tied_predictions()
    stats = ExampleStats.from_probs(p, y)
    fast = bootstrap_distributions(SCORE_SET, stats, num_samples=60, seed=13)
    for name, fn in SCORE_SET.items():
        naive = bootstrap_distribution(fn, y, p, num_samples=60, seed=13)
        if name in FLOAT_SUMS:
            np.testing.assert_allclose(fast[name], naive, rtol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(fast[name], naive, err_msg=name)
    lp = np.log(p)
    np.testing.assert_allclose(bootstrap_distributions({"nll": nll}, stats, num_samples=60, seed=13)["nll"],
                               bootstrap_distribution(nll, y, lp, num_samples=60, seed=13), rtol=1e-12)


def test_statistics_bootstrap_intervals_equal_bootstrap_ci_and_follow_the_seed():
    y, p = tied_predictions(seed=1)
    stats = ExampleStats.from_probs(p, y)
    got = bootstrap_intervals({"aurc": aurc, "ece": ece}, stats, num_samples=80, seed=5)
    assert got["aurc"] == pytest.approx(bootstrap_ci(aurc, y, p, num_samples=80, seed=5), rel=1e-12)
    assert got["ece"] == pytest.approx(bootstrap_ci(ece, y, p, num_samples=80, seed=5), rel=1e-12)
    assert bootstrap_intervals({"aurc": aurc}, stats, num_samples=80, seed=6)["aurc"] != got["aurc"]


def test_soft_label_bootstrap_equals_naive():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(3), 150)
    soft = rng.dirichlet(np.ones(3), 150)
    stats = ExampleStats.from_log_probs(np.log(p), soft_labels=soft)
    fast = bootstrap_distributions({"nll": soft_cross_entropy}, stats, num_samples=30, seed=2)["nll"]
    np.testing.assert_array_equal(fast, bootstrap_distribution(soft_cross_entropy, soft, np.log(p), num_samples=30,
                                                               seed=2))


def test_ood_bootstrap_is_stratified_and_equals_a_plain_loop():
    # In-distribution rows are drawn from default_rng(seed), OOD rows from default_rng([seed, stream]),
    # each stratum N out of N; every scorer of a DetectionSet sees the same draws.
    rng = np.random.default_rng(0)
    n, m = 300, 120
    s_in, s_out = np.round(rng.normal(0, 1, n), 1), np.round(rng.normal(0.8, 1, m), 1)  # ties across sides
    t_in, t_out = rng.normal(0, 1, n), rng.normal(0.3, 1, m)
    detection = DetectionSet({"a": DetectionScores(s_in, s_out, stream=3), "b": DetectionScores(t_in, t_out, stream=3)})
    from plexbench.metrics import auprc, auroc, fpr_at_95_tpr

    fns = {"a/auroc": lambda d: auroc(d["a"]), "a/auprc": lambda d: auprc(d["a"]),
           "b/auroc": lambda d: auroc(d["b"]), "b/fpr95": lambda d: fpr_at_95_tpr(d["b"])}
    fast = bootstrap_distributions(fns, detection, num_samples=40, seed=9)
    rng_in, rng_out = np.random.default_rng(9), np.random.default_rng([9, 3])
    flags = np.r_[np.zeros(n), np.ones(m)]
    for b in range(40):
        i, j = rng_in.integers(0, n, n), rng_out.integers(0, m, m)
        assert fast["a/auroc"][b] == pytest.approx(roc_auc_score(flags, np.r_[s_in[i], s_out[j]]), abs=1e-12)
        assert fast["a/auprc"][b] == pytest.approx(average_precision_score(flags, np.r_[s_in[i], s_out[j]]), abs=1e-12)
        assert fast["b/auroc"][b] == auroc(flags.astype(int), np.r_[t_in[i], t_out[j]])
        assert fast["b/fpr95"][b] == fpr_at_95_tpr(flags.astype(int), np.r_[t_in[i], t_out[j]])


def test_in_distribution_stratum_uses_the_seed_itself():
    # An OOD set's in-distribution draws are those of the in-distribution metrics (stream 0).
    first = bootstrap_distribution(lambda ids: ids[0], np.arange(50), num_samples=7, seed=4)

    class Probe:
        strata = ((50, 0), (20, 1))

        def resample(self, draws):
            return draws

    got = bootstrap_distributions({"first": lambda d: d[0][0], "ood": lambda d: d[1][0]}, Probe(), num_samples=7,
                                  seed=4)
    np.testing.assert_array_equal(got["first"], first)
    rng = np.random.default_rng([4, 1])
    np.testing.assert_array_equal(got["ood"], [rng.integers(0, 20, 20)[0] for _ in range(7)])


def test_ood_resamples_equal_the_metrics_of_the_resampled_scores():
    # a resample is held as counts per run of tied scores (runs it does not draw from left out):
    # the same integers as sorting the resampled scores, so the same values bit for bit
    from plexbench.metrics import auprc, auroc, fpr_at_95_tpr

    rng = np.random.default_rng(11)
    n, m = 200, 90
    s_in, s_out = np.round(rng.normal(0, 1, n), 0), np.round(rng.normal(0.7, 1, m), 1)  # long tie runs
    detection = DetectionSet({"s": DetectionScores(s_in, s_out, stream=2)})
    fns = {"auroc": lambda d: auroc(d["s"]), "auprc": lambda d: auprc(d["s"]), "fpr95": lambda d: fpr_at_95_tpr(d["s"])}
    fast = bootstrap_distributions(fns, detection, num_samples=30, seed=1)
    rng_in, rng_out = np.random.default_rng(1), np.random.default_rng([1, 2])
    flags = np.r_[np.zeros(n, int), np.ones(m, int)]
    for b in range(30):
        scores = np.r_[s_in[rng_in.integers(0, n, n)], s_out[rng_out.integers(0, m, m)]]
        for name, fn in (("auroc", auroc), ("auprc", auprc), ("fpr95", fpr_at_95_tpr)):
            assert fast[name][b] == fn(flags, scores), (name, b)
