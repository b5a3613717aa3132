"""OOD scores and metrics against scikit-learn, hand arithmetic and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from plexbench.errors import PlexbenchError
from plexbench.metrics import (
    MahalanobisScorer,
    UndefinedMetricWarning,
    auprc,
    auroc,
    entropy_score,
    fpr_at_95_tpr,
    mlogit_score,
    msp_score,
    ood_metrics,
)

FAST = settings(max_examples=60, deadline=None)


@st.composite
def labelled_scores(draw):
    """Binary labels with both classes present and integer-valued scores (many ties)."""
    n = draw(st.integers(2, 60))
    flags = draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda f: any(f) and not all(f)))
    scores = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    return np.array(flags), np.array(scores, dtype=float)


def sklearn_fpr95(flags, scores):
    fpr, tpr, _ = roc_curve(flags, scores, drop_intermediate=False)
    return fpr[np.argmax(tpr >= 0.95)]


# ------------------------------------------------------------------ metrics
@FAST
@given(data=labelled_scores())
def test_metrics_match_sklearn(data):
    flags, scores = data
    assert auroc(flags, scores) == pytest.approx(roc_auc_score(flags, scores), abs=1e-12)
    assert auprc(flags, scores) == pytest.approx(average_precision_score(flags, scores), abs=1e-12)
    assert fpr_at_95_tpr(flags, scores) == pytest.approx(sklearn_fpr95(flags, scores), abs=1e-12)
    both = ood_metrics(scores[~flags], scores[flags])
    assert both["auroc"] == pytest.approx(roc_auc_score(flags, scores), abs=1e-12)
    assert both["auprc"] == pytest.approx(average_precision_score(flags, scores), abs=1e-12)
    assert both["fpr95"] == pytest.approx(sklearn_fpr95(flags, scores), abs=1e-12)


@FAST
@given(data=labelled_scores(), seed=st.integers(0, 1000))
def test_swapped_classes_and_permutation(data, seed):
    flags, scores = data
    assert auroc(~flags, scores) == pytest.approx(1 - auroc(flags, scores), abs=1e-12)
    assert auroc(flags, -scores) == pytest.approx(1 - auroc(flags, scores), abs=1e-12)
    perm = np.random.default_rng(seed).permutation(len(flags))
    for fn in (auroc, auprc, fpr_at_95_tpr):
        assert fn(flags[perm], scores[perm]) == pytest.approx(fn(flags, scores), abs=1e-12)


def test_continuous_scores_match_sklearn():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(0, 1, 3000), rng.normal(1, 1, 1000)
    flags = np.r_[np.zeros(3000, bool), np.ones(1000, bool)]
    scores = np.r_[s_in, s_out]
    got = ood_metrics(s_in, s_out)
    assert got["auroc"] == pytest.approx(roc_auc_score(flags, scores), abs=1e-12)
    assert got["auprc"] == pytest.approx(average_precision_score(flags, scores), abs=1e-12)
    assert got["fpr95"] == pytest.approx(sklearn_fpr95(flags, scores), abs=1e-12)


def test_fpr95_hand_derived_with_ties():
    # 20 OOD at scores 10 (x18), 5 (x1), 1 (x1); 10 in-distribution: 5 (x3), 0 (x7).
    # thresholds high -> low: 10: TPR 18/20 = 0.90; 5: TPR 19/20 = 0.95 (>= 0.95) -> FPR 3/10.
    # The 3 in-distribution ties at 5 switch together with the OOD example at 5.
    s_out = np.r_[np.full(18, 10.0), 5.0, 1.0]
    s_in = np.r_[np.full(3, 5.0), np.zeros(7)]
    assert ood_metrics(s_in, s_out)["fpr95"] == pytest.approx(0.3)
    # AUROC: OOD at 10 beat all 10 in (18*10); OOD at 5 beats 7, ties 3 (7 + 1.5);
    # OOD at 1 beats 7 -> (180 + 8.5 + 7) / 200 = 0.9775
    assert ood_metrics(s_in, s_out)["auroc"] == pytest.approx(0.9775)


def test_degenerate_one_class_is_nan_with_warning():
    for fn in (auroc, auprc, fpr_at_95_tpr):
        with pytest.warns(UndefinedMetricWarning):
            assert math.isnan(fn([1, 1], [0.2, 0.3]))


def test_bad_scores():
    with pytest.raises(PlexbenchError, match="NaN"):
        auroc([0, 1], [0.1, np.nan])
    with pytest.raises(PlexbenchError, match="examples"):
        auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(PlexbenchError, match="0 and 1"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(PlexbenchError, match="empty"):
        ood_metrics([], [0.1])


# ------------------------------------------------------------------ scorers
def test_scorer_closed_forms():
    uniform = np.full((2, 4), 0.25)
    np.testing.assert_allclose(entropy_score(uniform), np.log(4))
    np.testing.assert_allclose(entropy_score([[1.0, 0.0], [0.5, 0.5]]), [0.0, np.log(2)])  # 0 log 0 = 0
    np.testing.assert_allclose(msp_score([[0.7, 0.3], [0.5, 0.5]]), [0.3, 0.5])
    np.testing.assert_allclose(mlogit_score([[1.0, 3.0], [-2.0, -1.0]]), [-3.0, 1.0])
    # ensemble logits (E=2): mean over members of -max logit = -(3 + 5)/2, -(-1 + 0)/2
    member = np.array([[[1.0, 3.0], [-2.0, -1.0]], [[5.0, 0.0], [0.0, -4.0]]])
    np.testing.assert_allclose(mlogit_score(member), [-4.0, 0.5])


def _sklearn_class_distances(train, labels, test):
    """((N, C) squared distances to the class means with a shared covariance, background (N,)),
    via sklearn's EmpiricalCovariance."""
    classes = np.unique(labels)
    means = np.stack([train[labels == c].mean(0) for c in classes])
    shared = EmpiricalCovariance(assume_centered=True).fit(train - means[np.searchsorted(classes, labels)])
    dists = []
    for mu in means:
        shared.location_ = mu
        dists.append(shared.mahalanobis(test))
    background = EmpiricalCovariance().fit(train)  # mean and covariance / N of all embeddings
    return np.stack(dists, axis=1), background.mahalanobis(test)


def _sklearn_mahalanobis(train, labels, test):
    dists, background = _sklearn_class_distances(train, labels, test)
    d = dists.min(axis=1)
    return d, d - background


def test_mahalanobis_matches_sklearn_empirical_covariance():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    train = rng.standard_normal((400, 8)) @ rng.standard_normal((8, 8)) + labels[:, None] * 0.7
    test = rng.standard_normal((50, 8)) * 2
    got = MahalanobisScorer().fit(train, labels).score(test)
    maha, rmaha = _sklearn_mahalanobis(train, labels, test)
    np.testing.assert_allclose(got["maha"], maha, rtol=1e-8)
    np.testing.assert_allclose(got["rmaha"], rmaha, rtol=1e-8, atol=1e-8)


def test_mahalanobis_singular_covariance_uses_pseudo_inverse():
    # Embeddings in a 3-dimensional subspace of R^6: the covariance has rank 3, the
    # pseudo-inverse ignores the null space (scikit-learn's pinvh does the same).
    rng = np.random.default_rng(1)
    basis = rng.standard_normal((3, 6))
    labels = rng.integers(0, 3, 200)
    train = (rng.standard_normal((200, 3)) + labels[:, None]) @ basis
    test = rng.standard_normal((20, 3)) @ basis
    got = MahalanobisScorer().fit(train, labels).score(test)
    maha, rmaha = _sklearn_mahalanobis(train, labels, test)
    assert np.all(np.isfinite(got["maha"]))
    np.testing.assert_allclose(got["maha"], maha, rtol=1e-6)
    np.testing.assert_allclose(got["rmaha"], rmaha, rtol=1e-6, atol=1e-6)


def test_mahalanobis_ensemble_follows_the_reference():
    # spec §5: maha = min over classes of the member-averaged class distances (NOT the mean of the
    # per-member minima); rmaha = mean over members of (min_k d_mk - d_m,background).
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 120)
    train = rng.standard_normal((2, 120, 4)) + labels[None, :, None]
    test = rng.standard_normal((2, 10, 4))
    got = MahalanobisScorer().fit(train, labels).score(test)
    members = [_sklearn_class_distances(train[m], labels, test[m]) for m in range(2)]
    averaged = (members[0][0] + members[1][0]) / 2
    np.testing.assert_allclose(got["maha"], averaged.min(axis=1), rtol=1e-8)
    rmaha = [d.min(axis=1) - bg for d, bg in members]
    np.testing.assert_allclose(got["rmaha"], (rmaha[0] + rmaha[1]) / 2, rtol=1e-8, atol=1e-8)
    # on these draws the two rules differ for some rows (the members' closest classes disagree)
    mean_of_minima = (members[0][0].min(axis=1) + members[1][0].min(axis=1)) / 2
    assert not np.allclose(got["maha"], mean_of_minima, rtol=1e-3)


def test_mahalanobis_errors():
    with pytest.raises(PlexbenchError, match="before fit"):
        MahalanobisScorer().score(np.zeros((2, 3)))
    scorer = MahalanobisScorer().fit(np.random.default_rng(0).standard_normal((10, 3)), np.arange(10) % 2)
    with pytest.raises(PlexbenchError, match="dimension"):
        scorer.score(np.zeros((2, 4)))
    with pytest.raises(PlexbenchError, match="member"):
        scorer.score(np.zeros((2, 5, 3)))
    with pytest.raises(PlexbenchError, match="examples"):
        MahalanobisScorer().fit(np.zeros((10, 3)), np.zeros(9, int))
