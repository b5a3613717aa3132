"""`plexbench score` end to end: real files in tmp_path, a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from plexbench.metrics import save_prediction_file

BASE = ["accuracy", "nll", "ece", "brier", "calib_auc", "oc_acc@0.5%", "oc_acc@1%", "oc_acc@2%", "oc_acc@5%",
        "aurc", "eaurc"]
OOD = [f"ood/{s}/{m}" for s in ("msp", "entropy", "mlogit") for m in ("auroc", "auprc", "fpr95")]
MAHA = [f"ood/{s}/{m}" for s in ("maha", "rmaha") for m in ("auroc", "auprc", "fpr95")]


def plexbench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "plexbench", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("score")
    rng = np.random.default_rng(0)
    n, k = 600, 4
    y = rng.integers(0, k, n)
    logits = rng.standard_normal((n, k)).astype(np.float32)
    logits[np.arange(n), y] += 1.0
    emb = (rng.standard_normal((n, 5)) + y[:, None]).astype(np.float32)
    save_prediction_file(d / "pred.npz", labels=y, logits=logits, embeddings=emb)
    save_prediction_file(d / "ood.npz", logits=rng.standard_normal((200, k)), embeddings=rng.standard_normal((200, 5)))
    save_prediction_file(d / "train.npz", labels=y, logits=logits, embeddings=emb + 0.1)
    return d, y, logits


def test_json_keys_and_values(files):
    d, y, logits = files
    out = plexbench("score", d / "pred.npz", "--json", cwd=d)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert list(got) == BASE
    p = np.exp(logits - logits.max(1, keepdims=True).astype(np.float64))
    p /= p.sum(1, keepdims=True)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)))
    assert got["nll"] == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-9)
    assert got["calib_auc"] == pytest.approx(roc_auc_score(p.argmax(1) != y, 1 - p.max(1)), abs=1e-12)


def test_ood_fit_bootstrap_keys(files):
    d, _, _ = files
    out = plexbench("score", d / "pred.npz", "--ood", d / "ood.npz", "--fit", d / "train.npz", "--bootstrap", "20",
                    "--seed", "4", "--json", cwd=d)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert list(got) == [x for key in BASE + OOD + MAHA for x in (key, f"{key}/ci_low", f"{key}/ci_high")]


def test_table_output(files):
    d, _, _ = files
    out = plexbench("score", d / "pred.npz", "--ood", d / "ood.npz", cwd=d)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["metric", "value", "better"]
    assert [line.split()[0] for line in lines[2:]] == BASE + OOD


def _bad(d, name, **arrays):
    path = d / name
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})  # raw writer: no validation
    return path


BAD_FILES = {
    "nan": dict(labels=[0, 1], probs=[[np.nan, 1.0], [0.5, 0.5]]),
    "inf": dict(labels=[0, 1], logits=[[np.inf, 1.0], [0.5, 0.5]]),
    "rowsum": dict(labels=[0, 1], probs=[[0.5, 0.6], [0.5, 0.5]]),
    "label_range": dict(labels=[0, 7], probs=[[0.5, 0.5], [0.5, 0.5]]),
    "shape": dict(labels=[0, 1, 1], probs=[[0.5, 0.5], [0.5, 0.5]]),
    "empty": dict(labels=np.zeros(0, int), probs=np.zeros((0, 3))),
    "object": dict(labels=np.array([0, 1], dtype=object), probs=[[0.5, 0.5], [0.5, 0.5]]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES) + ["missing", "fit_without_ood", "fit_without_embeddings"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, files, case):
    d, _, _ = files
    if case in BAD_FILES:
        args = ["score", _bad(tmp_path, f"{case}.npz", **BAD_FILES[case])]
    elif case == "missing":
        args = ["score", tmp_path / "nope.npz"]
    elif case == "fit_without_ood":
        args = ["score", d / "pred.npz", "--fit", d / "train.npz"]
    else:
        no_emb = tmp_path / "noemb.npz"
        save_prediction_file(no_emb, labels=[0, 1], probs=[[0.6, 0.4], [0.3, 0.7]])
        args = ["score", d / "pred.npz", "--ood", d / "ood.npz", "--fit", no_emb]
    before = sorted(tmp_path.iterdir())
    out = plexbench(*args, "--json", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.startswith("plexbench: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(tmp_path.iterdir()) == before


# --------------------------------------------------------------------------- the metric set (library)
from sklearn.metrics import average_precision_score  # noqa: E402

from plexbench.commands.score import score  # noqa: E402
from plexbench.errors import PlexbenchError  # noqa: E402
from plexbench.metrics import accuracy as plex_accuracy  # noqa: E402
from plexbench.metrics import (  # noqa: E402
    MahalanobisScorer,
    Predictions,
    aurc,
    bootstrap_ci,
    ece,
    eaurc,
    oracle_collaborative_accuracy,
)
from plexbench.metrics.predictions import prediction_stats  # noqa: E402


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
    assert list(got) == BASE
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


def test_lean_file_path_gives_the_same_numbers():
    preds = make(500, seed=4, members=3)
    arrays = {"labels": preds.labels, "member_logits": preds.logits}
    assert score(prediction_stats(arrays)) == score(preds)


def test_undefined_values_are_left_out_and_nothing_is_null():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    got = score(Predictions.from_probs(probs, labels=[0, 1]), bootstrap=20)  # all correct: calib_auc undefined
    assert "calib_auc" not in got and got["accuracy"] == 1.0
    assert [k for k in got if "/" not in k] == [k for k in BASE if k != "calib_auc"]
    assert all(np.isfinite(v) for v in got.values())


def test_nll_is_plex_clipped_and_finite():
    # the true class has probability 0: exact NLL is inf; reported NLL clips p_y at 1e-7 (spec §5)
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    got = score(Predictions.from_probs(probs, labels=[1, 0]))
    assert got["nll"] == pytest.approx((-np.log(1e-7) - np.log(0.5)) / 2, rel=1e-15)


def test_soft_label_rules():
    # Row 0: soft (0.6, 0.4) -> hard label 0, p = (0.7, 0.3) correct.
    # Row 1: soft (0.3, 0.7) -> hard label 1, p = (0.8, 0.2) wrong.
    soft = np.array([[0.6, 0.4], [0.3, 0.7]])
    probs = np.array([[0.7, 0.3], [0.8, 0.2]])
    got = score(Predictions.from_probs(probs, soft_labels=soft))
    assert got["accuracy"] == 0.5
    expected_nll = np.mean([-(0.6 * np.log(0.7) + 0.4 * np.log(0.3)), -(0.3 * np.log(0.8) + 0.7 * np.log(0.2))])
    assert got["nll"] == pytest.approx(expected_nll, rel=1e-12)
    assert got["brier"] == pytest.approx(0.26, rel=1e-12)  # mean(0.1^2 + 0.1^2, 0.5^2 + 0.5^2)
    assert got["ece"] == pytest.approx(0.55, abs=1e-12)  # conf 0.7 right, 0.8 wrong: (0.3 + 0.8) / 2


def test_ood_keys_and_sklearn_agreement():
    preds, ood = make(800, seed=1), make(300, seed=2, shift=1.5, labels=False)
    got = score(preds, ood=ood)
    assert list(got) == BASE + OOD
    flags = np.r_[np.zeros(800), np.ones(300)]
    msp = np.r_[1 - preds.probs.max(1), 1 - ood.probs.max(1)]
    assert got["ood/msp/auroc"] == pytest.approx(roc_auc_score(flags, msp), abs=1e-12)
    ent = lambda p: -(p * np.log(p)).sum(1)  # noqa: E731
    assert got["ood/entropy/auprc"] == pytest.approx(average_precision_score(flags, np.r_[ent(preds.probs),
                                                                                         ent(ood.probs)]), abs=1e-12)
    mlogit = np.r_[-preds.logits[0].max(1), -ood.logits[0].max(1)]
    assert got["ood/mlogit/auroc"] == pytest.approx(roc_auc_score(flags, mlogit), abs=1e-12)


def test_mlogit_left_out_without_logits():
    preds = make(200)
    probs_only = Predictions.from_probs(preds.probs, labels=preds.labels)
    got = score(probs_only, ood=make(100, seed=3, labels=False))
    assert not any(k.startswith("ood/mlogit") for k in got) and "ood/msp/auroc" in got


def test_mahalanobis_keys():
    preds, ood = make(300, seed=1, members=2), make(200, seed=2, shift=2.0, members=2, labels=False)
    train = make(600, seed=4, members=2)
    got = score(preds, ood=ood, fit=(train.embeddings, train.labels))
    assert list(got) == BASE + OOD + MAHA
    scorer = MahalanobisScorer().fit(train.embeddings, train.labels)
    s_in, s_out = scorer.score(preds.embeddings)["maha"], scorer.score(ood.embeddings)["maha"]
    flags = np.r_[np.zeros(300), np.ones(200)]
    assert got["ood/maha/auroc"] == pytest.approx(roc_auc_score(flags, np.r_[s_in, s_out]), abs=1e-12)


def test_bootstrap_one_policy():
    # in-distribution keys: the naive bootstrap of the (N, K) arrays with the same seed; OOD keys:
    # in-distribution rows from default_rng(seed), OOD rows from default_rng([seed, 1]).
    preds, ood = make(300, seed=7), make(120, seed=8, shift=1.0, labels=False)
    got = score(preds, ood=ood, bootstrap=40, seed=11)
    keys = BASE + OOD
    assert list(got) == [x for k in keys for x in (k, f"{k}/ci_low", f"{k}/ci_high")]
    for key, fn in (("aurc", aurc), ("eaurc", eaurc), ("ece", ece), ("accuracy", plex_accuracy)):
        assert (got[f"{key}/ci_low"], got[f"{key}/ci_high"]) == pytest.approx(
            bootstrap_ci(fn, preds.labels, preds.probs, num_samples=40, seed=11), rel=1e-12), key
    rng_in, rng_out = np.random.default_rng(11), np.random.default_rng([11, 1])
    ent = lambda p: -(p * np.log(p)).sum(1)  # noqa: E731
    s_in, s_out = ent(preds.probs), ent(ood.probs)
    values = []
    for _ in range(40):
        i, j = rng_in.integers(0, 300, 300), rng_out.integers(0, 120, 120)
        values.append(roc_auc_score(np.r_[np.zeros(300), np.ones(120)], np.r_[s_in[i], s_out[j]]))
    assert (got["ood/entropy/auroc/ci_low"], got["ood/entropy/auroc/ci_high"]) == pytest.approx(
        tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12)
    assert score(preds, ood=ood, bootstrap=40, seed=11) == got


def test_library_errors():
    preds = make(50)
    with pytest.raises(PlexbenchError, match="only used together"):
        score(preds, fit=(preds.embeddings, preds.labels))
    with pytest.raises(PlexbenchError, match="no labels"):
        score(make(50, labels=False))
    with pytest.raises(PlexbenchError, match="classes"):
        score(preds, ood=make(30, k=4, labels=False))
    no_emb = Predictions.from_probs(preds.probs, labels=preds.labels)
    with pytest.raises(PlexbenchError, match="embeddings"):
        score(no_emb, ood=make(20, labels=False), fit=(preds.embeddings, preds.labels))
    with pytest.raises(PlexbenchError, match="bootstrap"):
        score(preds, bootstrap=-1)


def test_cli_ood_with_another_class_count_is_refused(tmp_path, files):
    d, _, _ = files
    save_prediction_file(tmp_path / "ood3.npz", logits=np.zeros((10, 3)))
    out = plexbench("score", d / "pred.npz", "--ood", tmp_path / "ood3.npz", "--json", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert "3 classes" in out.stderr and "4" in out.stderr and out.stderr.count("\n") == 1


def test_cli_json_holds_no_null(tmp_path):
    # p_y = 0 (exact NLL inf) and every prediction right except that one
    save_prediction_file(tmp_path / "p.npz", labels=[1, 0, 0], probs=[[1.0, 0.0], [0.9, 0.1], [0.8, 0.2]])
    out = plexbench("score", tmp_path / "p.npz", "--json", "--bootstrap", "30", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "null" not in out.stdout and "NaN" not in out.stdout and "Infinity" not in out.stdout
    got = json.loads(out.stdout)
    assert got["nll"] == pytest.approx((-np.log(1e-7) - np.log(0.9) - np.log(0.8)) / 3)
