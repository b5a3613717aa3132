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
