"""ExampleStats, the checked container: statistics against float64 formulas, sources, chunking,
validation, resampling; every metric equal on the container and on raw arrays."""

from __future__ import annotations

import functools
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, logsumexp
from scipy.stats import entropy as scipy_entropy

from plexbench.errors import PlexbenchError
from plexbench import metrics as M
from plexbench.metrics import stats as S
from plexbench.metrics.stats import ExampleStats

EXTRAS = S.CORE + ("entropy", "margin", "mlogit")


def logits_data(n=300, k=6, e=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.standard_normal((e, n, k)) * 2.0
    logits[:, np.arange(n), y] += 1.5
    return y, logits


def softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def expected(p, y, member_logits=None):
    """The statistics written out on a float64 probability matrix (independent of plexbench)."""
    k = p.shape[1]
    top2 = np.sort(p, axis=1)[:, -2:]
    out = {
        "conf": p.max(1),
        "correct": p.argmax(1) == y,
        "brier": ((p - np.eye(k)[y]) ** 2).sum(1),
        "nll": -np.log(p[np.arange(len(y)), y]),
        "entropy": scipy_entropy(p, axis=1),
        "margin": top2[:, 1] - top2[:, 0],
    }
    if member_logits is not None:
        out["mlogit"] = -member_logits.max(-1).mean(0)
    return out


def check(stats, want, rtol=1e-12):
    for name, value in want.items():
        got = stats.nll_terms(None) if name == "nll" else getattr(stats, name)
        if value.dtype == bool:
            np.testing.assert_array_equal(got, value, err_msg=name)
        else:
            np.testing.assert_allclose(got, value, rtol=rtol, atol=1e-14, err_msg=name)


# ------------------------------------------------------------------ each source against the formulas
def test_probs_source():
    y, logits = logits_data()
    p = softmax(logits[0])
    check(ExampleStats.from_probs(p, y, want=EXTRAS), expected(p, y))


def test_log_probs_source_shifts_unnormalised_rows():
    y, logits = logits_data()
    lp = log_softmax(logits[0], axis=1)
    lp[:10] += 4e-4  # logsumexp 4e-4: within tolerance, the rows are renormalised
    p = softmax(lp)
    stats = ExampleStats.from_log_probs(lp, y, want=EXTRAS)
    check(stats, expected(p, y))
    np.testing.assert_allclose(stats.log_p_true, (lp - logsumexp(lp, 1, keepdims=True))[np.arange(len(y)), y],
                               rtol=1e-13)


def test_logits_and_member_logits_sources():
    y, logits = logits_data()
    check(ExampleStats.from_logits(logits[0], y, want=EXTRAS), expected(softmax(logits[0]), y, logits[:1]))
    ensemble = softmax(logits).mean(0)  # spec §3: the mean of the member probabilities
    check(ExampleStats.from_logits(logits, y, want=EXTRAS), expected(ensemble, y, logits))


def test_member_probs_source():
    y, logits = logits_data()
    members = softmax(logits)
    stats = ExampleStats.from_member_probs(members, y, want=EXTRAS)
    check(stats, expected(members.mean(0), y))
    assert stats.mlogit is None  # no logits: the statistic does not apply


def test_soft_labels():
    y, logits = logits_data(seed=1)
    p = softmax(logits[0])
    soft = np.random.default_rng(2).dirichlet(np.ones(6) * 0.4, 300)
    stats = ExampleStats.from_probs(p, soft_labels=soft, want=S.CORE + ("ged",))
    np.testing.assert_array_equal(stats.labels, soft.argmax(1))
    np.testing.assert_allclose(stats.brier, ((p - soft) ** 2).sum(1), rtol=1e-12)
    np.testing.assert_allclose(stats.ged, ((p - soft) ** 2).sum(1), rtol=1e-10, atol=1e-14)  # normalised rows
    np.testing.assert_allclose(stats.nll_terms(None), -(soft * np.log(p)).sum(1), rtol=1e-12)
    clipped = -(soft * np.log(np.maximum(p, 1e-7))).sum(1)
    np.testing.assert_allclose(stats.nll_terms(), clipped, rtol=1e-12)


def test_nll_terms_clip():
    p = np.array([[1.0, 0.0], [0.5, 0.5], [1 - 1e-9, 1e-9]])
    stats = ExampleStats.from_probs(p, [1, 0, 1])
    assert stats.nll_terms(None).tolist() == [math.inf, -math.log(0.5), pytest.approx(-math.log(1e-9))]
    np.testing.assert_allclose(stats.nll_terms(), [-math.log(1e-7), -math.log(0.5), -math.log(1e-7)])
    np.testing.assert_allclose(stats.nll_terms(1e-10), [-math.log(1e-10), -math.log(0.5), -math.log(1e-9)])
    with pytest.raises(PlexbenchError, match="clip"):
        stats.nll_terms(2.0)


# ------------------------------------------------------------------ dtype, chunking, memory
def test_float32_input_gives_the_float64_result_of_its_values():
    y, logits = logits_data(n=2000, k=9)
    p32 = softmax(logits[0]).astype(np.float32)  # rows sum to 1 only up to float32 rounding
    a, b = ExampleStats.from_probs(p32, y), ExampleStats.from_probs(p32.astype(np.float64), y)
    np.testing.assert_array_equal(a.conf, b.conf)  # the divided maximum, the same bits
    np.testing.assert_array_equal(a.correct, b.correct)
    np.testing.assert_array_equal(a.log_p_true, b.log_p_true)
    np.testing.assert_allclose(a.brier, b.brier, rtol=1e-13, atol=1e-15)


@settings(max_examples=20, deadline=None)
@given(chunk=st.integers(1, 64), seed=st.integers(0, 1000))
def test_chunk_size_changes_nothing(chunk, seed):
    y, logits = logits_data(n=97, k=5, seed=seed)
    p = softmax(logits).mean(0)
    p[::5] *= 1.0002  # some rows renormalised
    whole = ExampleStats.from_probs(p, y, want=EXTRAS)
    original = S.CHUNK_ELEMENTS
    try:
        S.CHUNK_ELEMENTS = chunk * 5
        pieces = ExampleStats.build(S.Source("probs", p), labels=y, want=EXTRAS)
    finally:
        S.CHUNK_ELEMENTS = original
    for name in ("conf", "correct", "brier", "log_p_true", "entropy", "margin"):
        np.testing.assert_array_equal(getattr(pieces, name), getattr(whole, name), err_msg=name)


def test_row_chunks_reads_the_module_setting():
    original = S.CHUNK_ELEMENTS
    try:
        S.CHUNK_ELEMENTS = 10
        assert [r.stop for r in S.row_chunks(7, 5)] == [2, 4, 6, 7]
    finally:
        S.CHUNK_ELEMENTS = original


def test_raw_float32_metrics_allocate_no_float64_matrix():
    # A float64 copy of the (N, K) input would be N * K * 8 = 80 MB; the pass holds a few float64
    # chunks of CHUNK_ELEMENTS values (2 MiB each) and O(N) statistics.
    rng = np.random.default_rng(0)
    n, k = 20_000, 500
    p = rng.random((n, k), dtype=np.float32)
    p /= p.sum(1, keepdims=True)
    y = rng.integers(0, k, n)
    for fn in (M.accuracy, M.ece, M.brier, M.calib_auc):
        tracemalloc.start()
        fn(y, p)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 0.1 * n * k * 8, (fn.__name__, peak)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("probs, labels, match", [
    ([[np.nan, 1.0]], [0], "NaN or inf"),
    ([[-0.1, 1.1]], [0], "negative"),
    ([[0.5, 0.6]], [0], "sum to 1"),
    ([[0.5, 0.5]], [2], "out of range"),
    ([[0.5, 0.5]], [0, 1], "examples"),
    ([[1.0]], [0], "at least 2 classes"),
    (np.zeros((0, 3)), np.zeros(0, int), "empty"),
    ([[0.5, 0.5]], [0.0], "integers"),
])
def test_invalid_probabilities_are_one_line_errors(probs, labels, match):
    with pytest.raises(PlexbenchError, match=match) as info:
        ExampleStats.from_probs(np.asarray(probs), np.asarray(labels))
    assert "\n" not in str(info.value)


def test_invalid_sources():
    with pytest.raises(PlexbenchError, match="NaN or \\+inf"):
        ExampleStats.from_log_probs(np.array([[np.nan, 0.0]]), [0])
    with pytest.raises(PlexbenchError, match="logsumexp"):
        ExampleStats.from_log_probs(np.log([[0.3, 0.3]]), [0])
    with pytest.raises(PlexbenchError, match="NaN or inf"):
        ExampleStats.from_logits(np.array([[np.inf, 0.0]]), [0])
    with pytest.raises(PlexbenchError, match="member 1"):
        ExampleStats.from_member_probs(np.array([[[0.5, 0.5]], [[0.5, 0.7]]]), [0])
    with pytest.raises(PlexbenchError, match="soft labels"):
        ExampleStats.from_probs([[0.5, 0.5]], soft_labels=[[0.5, 0.5, 0.0]])


def test_released_source_and_missing_labels():
    p = np.array([[0.7, 0.3], [0.2, 0.8]])
    stats = ExampleStats.from_probs(p, [0, 0], keep_source=False)
    assert stats.brier is not None and stats.source is None
    with pytest.raises(PlexbenchError, match="released"):
        stats.entropy
    unlabelled = ExampleStats.from_probs(p)
    assert unlabelled.correct is None and not unlabelled.has_labels
    with pytest.raises(PlexbenchError, match="no labels"):
        M.accuracy(unlabelled)
    with pytest.raises(PlexbenchError, match="not both"):
        M.accuracy(stats, p)


# ------------------------------------------------------------------ every metric: container == arrays
def test_metrics_on_the_container_equal_metrics_on_arrays():
    y, logits = logits_data(n=500, k=4, seed=3)
    p = softmax(logits[0])
    p[::4] = np.round(p[::4], 1)  # ties in confidence and between classes
    p[::4] /= p[::4].sum(1, keepdims=True)
    stats = ExampleStats.from_probs(p, y)
    functions = [M.accuracy, M.brier, M.ece, M.adaptive_ece, M.classwise_ece, M.rms_calibration_error, M.calib_auc,
                 M.aurc, M.eaurc] + [functools.partial(M.oracle_collaborative_accuracy, fraction=f)
                                     for f in (0.005, 0.05, 0.3, 1.0)]
    for fn in functions:
        assert fn(stats) == fn(y, p), fn
    with np.errstate(divide="ignore"):  # rounded rows hold zeros: log 0 = -inf
        lp = np.log(p)
    assert M.nll(stats) == M.nll(y, lp) and M.nll(stats, clip=None) == M.nll(y, lp, clip=None)
    for key, value in M.reliability_diagram(stats).items():
        np.testing.assert_array_equal(value, M.reliability_diagram(y, p)[key])
    np.testing.assert_array_equal(M.risk_coverage_curve(stats)["risk"], M.risk_coverage_curve(y, p)["risk"])
    np.testing.assert_array_equal(M.msp_score(stats), M.msp_score(p))
    np.testing.assert_array_equal(M.entropy_score(stats), M.entropy_score(p))
    groups = np.arange(500) % 7
    np.testing.assert_array_equal(M.group_accuracies(stats, groups=groups), M.group_accuracies(y, p, groups))


# ------------------------------------------------------------------ resamples
@st.composite
def tied_sets(draw):
    """Small sets whose confidences tie often, with mixed correctness inside ties."""
    n = draw(st.integers(2, 40))
    conf_levels = draw(st.lists(st.sampled_from([0.5, 0.6, 0.75, 0.9, 1.0]), min_size=n, max_size=n))
    correct = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    seed = draw(st.integers(0, 10_000))
    return np.array(conf_levels), np.array(correct), seed


def _stats_from(conf, correct):
    """Two-class probabilities with these confidences; the label makes each row right or wrong."""
    p = np.stack([conf, 1.0 - conf], axis=1)
    labels = np.where(correct, 0, 1)
    labels[(conf == 0.5) & ~correct] = 1  # [0.5, 0.5] predicts class 0
    return ExampleStats.from_probs(p, labels), labels, p


@settings(max_examples=60, deadline=None)
@given(tied_sets())
def test_resample_equals_the_metrics_of_the_resampled_rows(data):
    conf, correct, seed = data
    stats, labels, p = _stats_from(conf, correct)
    draws = np.random.default_rng(seed).integers(0, len(conf), len(conf))
    view = stats.resample(draws)
    fns = [M.accuracy, M.ece, M.brier, M.aurc, M.eaurc] + [
        functools.partial(M.oracle_collaborative_accuracy, fraction=f) for f in (0.1, 0.25, 0.5)]
    for fn in fns:
        assert fn(view) == fn(labels[draws], p[draws]), fn
    direct = M.calib_auc(labels[draws], p[draws]) if 0 < view.correct.sum() < len(conf) else math.nan
    got = M.calib_auc(view) if not math.isnan(direct) else math.nan
    assert got == direct or (math.isnan(got) and math.isnan(direct))
    # the resample's order: a stable sort of the resampled rows by -confidence
    order = np.argsort(-conf[draws], kind="stable")
    np.testing.assert_array_equal(view.sorted_by_confidence.correct, view.correct[order])
    np.testing.assert_array_equal(view.sorted_by_confidence.conf, conf[draws][order])


def test_take_subsets_rows():
    y, logits = logits_data(n=50, k=3)
    p = softmax(logits[0])
    stats = ExampleStats.from_probs(p, y)
    keep = np.arange(50) % 3 == 0
    sub = stats.take(keep)
    assert sub.num_examples == keep.sum()
    assert M.aurc(sub) == M.aurc(y[keep], p[keep]) and M.classwise_ece(sub) == M.classwise_ece(y[keep], p[keep])
