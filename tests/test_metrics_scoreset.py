"""The `score` metric set: key sets, agreement with scikit-learn, soft-label rules, bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, log_loss, roc_auc_score

from plexbench.errors import PlexbenchError
from plexbench.metrics import (
    MahalanobisScorer,
    Predictions,
    aurc,
    bootstrap_ci,
    accuracy,
    eaurc,
    ece,
    oracle_collaborative_accuracy,
)
from plexbench.metrics.scoreset import BASE_KEYS, score

OOD_BASE = [f"ood/{s}/{m}" for s in ("msp", "entropy", "mlogit") for m in ("auroc", "auprc", "fpr95")]
MAHA = [f"ood/{s}/{m}" for s in ("maha", "rmaha") for m in ("auroc", "auprc", "fpr95")]


def make(n, k=5, seed=0, shift=0.0, members=1, labels=True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.standard_normal((members, n, k)) * 1.5
    logits[:, np.arange(n), y] += 1.5 - shift
    emb = rng.standard_normal((members, n, 6)) + (y[None, :, None] if not shift else shift)
    kw = {"labels": y} if labels else {}
    return Predictions.from_member_logits(logits, embeddings=emb, **kw)


def test_base_keys_and_sklearn_agreement():
    preds = make(3000)
    got = score(preds)
    assert list(got) == list(BASE_KEYS)
    y, p = preds.labels, preds.probs
    incorrect = p.argmax(1) != y
    assert got["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-15)
    assert got["nll"] == pytest.approx(log_loss(y, p, labels=range(5)), rel=1e-10)
    assert got["brier"] == pytest.approx(np.mean(np.sum((p - np.eye(5)[y]) ** 2, 1)), rel=1e-12)
    assert got["calib_auc"] == pytest.approx(roc_auc_score(incorrect, 1 - p.max(1)), abs=1e-12)
    assert got["ece"] == pytest.approx(ece(y, p), abs=1e-15)
    for key, f in (("oc_acc@0.5%", 0.005), ("oc_acc@1%", 0.01), ("oc_acc@2%", 0.02), ("oc_acc@5%", 0.05)):
        assert got[key] == oracle_collaborative_accuracy(y, p, fraction=f)
    assert got["aurc"] == pytest.approx(aurc(y, p), abs=1e-15)
    assert got["eaurc"] == pytest.approx(eaurc(y, p), abs=1e-15)


def test_calib_auc_left_out_when_undefined():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    got = score(Predictions.from_probs(probs, labels=[0, 1]))  # all correct
    assert "calib_auc" not in got and got["accuracy"] == 1.0
    assert list(got) == [k for k in BASE_KEYS if k != "calib_auc"]


def test_soft_label_rules():
    # Row 0: soft (0.6, 0.4) -> hard label 0, p = (0.7, 0.3) correct.
    # Row 1: soft (0.3, 0.7) -> hard label 1, p = (0.8, 0.2) wrong.
    soft = np.array([[0.6, 0.4], [0.3, 0.7]])
    probs = np.array([[0.7, 0.3], [0.8, 0.2]])
    got = score(Predictions.from_probs(probs, soft_labels=soft))
    assert got["accuracy"] == 0.5
    # nll = soft cross-entropy: mean(-(0.6 ln .7 + 0.4 ln .3), -(0.3 ln .8 + 0.7 ln .2))
    expected_nll = np.mean([-(0.6 * np.log(0.7) + 0.4 * np.log(0.3)), -(0.3 * np.log(0.8) + 0.7 * np.log(0.2))])
    assert got["nll"] == pytest.approx(expected_nll, rel=1e-12)
    # brier against the soft label: mean((0.1^2 + 0.1^2), (0.5^2 + 0.5^2)) = mean(0.02, 0.5) = 0.26
    assert got["brier"] == pytest.approx(0.26, rel=1e-12)
    # ece with argmax labels: conf 0.7 (bin 10, right) and 0.8 (bin 12, wrong): (0.3 + 0.8) / 2
    assert got["ece"] == pytest.approx(0.55, abs=1e-12)


def test_ood_keys_and_sklearn_agreement():
    preds, ood = make(800, seed=1), make(300, seed=2, shift=1.5, labels=False)
    got = score(preds, ood=ood)
    assert list(got) == list(BASE_KEYS) + OOD_BASE
    msp_in, msp_out = 1 - preds.probs.max(1), 1 - ood.probs.max(1)
    flags = np.r_[np.zeros(800), np.ones(300)]
    assert got["ood/msp/auroc"] == pytest.approx(roc_auc_score(flags, np.r_[msp_in, msp_out]), abs=1e-12)
    ent = lambda p: -(p * np.log(p)).sum(1)  # noqa: E731
    scores = np.r_[ent(preds.probs), ent(ood.probs)]
    assert got["ood/entropy/auprc"] == pytest.approx(average_precision_score(flags, scores), abs=1e-12)
    mlogit = np.r_[-preds.logits[0].max(1), -ood.logits[0].max(1)]
    assert got["ood/mlogit/auroc"] == pytest.approx(roc_auc_score(flags, mlogit), abs=1e-12)


def test_mlogit_left_out_without_logits():
    preds = make(200)
    probs_only = Predictions.from_probs(preds.probs, labels=preds.labels)
    got = score(probs_only, ood=make(100, seed=3, labels=False))
    assert not any(k.startswith("ood/mlogit") for k in got)
    assert "ood/msp/auroc" in got


def test_mahalanobis_keys_and_fit_forms():
    preds, ood, train = make(300, seed=1, members=2), make(200, seed=2, shift=2.0, members=2, labels=False), make(
        600, seed=4, members=2
    )
    got = score(preds, ood=ood, fit=(train.embeddings, train.labels))
    assert list(got) == list(BASE_KEYS) + OOD_BASE + MAHA
    scorer = MahalanobisScorer().fit(train.embeddings, train.labels)
    s_in, s_out = scorer.score(preds.embeddings)["rmaha"], scorer.score(ood.embeddings)["rmaha"]
    flags = np.r_[np.zeros(300), np.ones(200)]
    assert got["ood/rmaha/auroc"] == pytest.approx(roc_auc_score(flags, np.r_[s_in, s_out]), abs=1e-12)
    assert score(preds, ood=ood, fit=train) == got  # a Predictions with embeddings works too
    assert score(preds, ood=ood, fit=scorer) == got


def test_bootstrap_keys_and_stream():
    preds, ood = make(400, seed=5), make(150, seed=6, shift=1.0, labels=False)
    got = score(preds, ood=ood, bootstrap=60, seed=3)
    keys = list(BASE_KEYS) + OOD_BASE
    assert list(got) == [x for k in keys for x in (k, f"{k}/ci_low", f"{k}/ci_high")]
    for k in keys:
        assert got[f"{k}/ci_low"] <= got[f"{k}/ci_high"]
    # in-distribution resamples are those of bootstrap_ci with the same seed
    low, high = bootstrap_ci(accuracy, preds.labels, preds.probs, num_samples=60, seed=3)
    assert (got["accuracy/ci_low"], got["accuracy/ci_high"]) == pytest.approx((low, high), abs=1e-15)
    assert score(preds, ood=ood, bootstrap=60, seed=3) == got


def test_errors():
    preds = make(50)
    with pytest.raises(PlexbenchError, match="only used together"):
        score(preds, fit=(preds.embeddings, preds.labels))
    with pytest.raises(PlexbenchError, match="no labels"):
        score(make(50, labels=False))
    no_emb = Predictions.from_probs(preds.probs, labels=preds.labels)
    with pytest.raises(PlexbenchError, match="embeddings"):
        score(no_emb, ood=make(20, labels=False), fit=(preds.embeddings, preds.labels))
    with pytest.raises(PlexbenchError, match="bootstrap"):
        score(preds, bootstrap=-1)


def test_bootstrap_fast_resampling_matches_a_plain_loop():
    # No tied confidences or scores here, so every metric is independent of how a resample is
    # laid out; the sort-free resampling of `score` must then give the intervals of a plain loop
    # over the same draws (in: default_rng(seed), OOD: default_rng([seed, 1])).
    preds, ood = make(300, seed=7), make(120, seed=8, shift=1.0, labels=False)
    got = score(preds, ood=ood, bootstrap=40, seed=11)
    for key, fn in (("aurc", aurc), ("eaurc", eaurc), ("ece", ece), ("accuracy", accuracy)):
        low, high = bootstrap_ci(fn, preds.labels, preds.probs, num_samples=40, seed=11)
        assert (got[f"{key}/ci_low"], got[f"{key}/ci_high"]) == pytest.approx((low, high), abs=1e-12), key
    rng_in, rng_out = np.random.default_rng(11), np.random.default_rng([11, 1])
    ent = lambda p: -(p * np.log(p)).sum(1)  # noqa: E731
    s_in, s_out = ent(preds.probs), ent(ood.probs)
    values = []
    for _ in range(40):
        i, j = rng_in.integers(0, 300, 300), rng_out.integers(0, 120, 120)
        values.append(roc_auc_score(np.r_[np.zeros(300), np.ones(120)], np.r_[s_in[i], s_out[j]]))
    expected = np.quantile(values, [0.025, 0.975])
    interval = (got["ood/entropy/auroc/ci_low"], got["ood/entropy/auroc/ci_high"])
    assert interval == pytest.approx(tuple(expected), abs=1e-12)
