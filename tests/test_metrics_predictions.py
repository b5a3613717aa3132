"""Prediction file format v1: writing, loading, constructors, and every kind of bad file."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from plexbench.errors import PlexbenchError
from plexbench.metrics import Predictions, load_prediction_file, save_prediction_file
from plexbench.metrics.predictions import load_fit_file


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture()
def arrays():
    rng = np.random.default_rng(0)
    return {
        "labels": rng.integers(0, 4, 12),
        "member_logits": rng.standard_normal((3, 12, 4)).astype(np.float32),
        "embeddings": rng.standard_normal((3, 12, 5)).astype(np.float32),
        "ids": np.arange(12),
    }


def test_member_logits_round_trip(tmp_path, arrays):
    path = save_prediction_file(tmp_path / "p.npz", **arrays)
    preds = load_prediction_file(path)
    expected = np.log(softmax(arrays["member_logits"].astype(np.float64)).mean(0))
    np.testing.assert_allclose(preds.log_probs, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(preds.probs, np.exp(expected), rtol=1e-12)
    assert preds.num_members == 3 and preds.num_classes == 4 and preds.num_examples == 12
    np.testing.assert_array_equal(preds.labels, arrays["labels"])
    np.testing.assert_array_equal(preds.logits, arrays["member_logits"])
    assert preds.embeddings.shape == (3, 12, 5)
    np.testing.assert_array_equal(preds.ids, np.arange(12))
    # written with the version key; a file written from to_file_arrays loads to the same numbers
    with np.load(path) as z:
        assert int(z["format_version"]) == 1
    again = load_prediction_file(save_prediction_file(tmp_path / "q.npz", **preds.to_file_arrays()))
    np.testing.assert_allclose(again.log_probs, preds.log_probs, rtol=1e-12)


def test_probs_are_kept_exactly(tmp_path):
    # 0.4 must stay 0.4 (ECE bin 6), not exp(log(0.4)) which may differ in the last bit.
    probs = np.array([[0.4, 0.6], [0.6, 0.4], [1.0, 0.0]])
    preds = load_prediction_file(save_prediction_file(tmp_path / "p.npz", labels=[0, 1, 0], probs=probs))
    np.testing.assert_array_equal(preds.probs, probs)
    assert preds.log_probs[2, 1] == -np.inf
    # exactly-normalised float64 rows (p, 1 - p with p a multiple of 2^-20) are kept bit for bit,
    # while exp(log(p)) differs from p in the last bit for many of them
    p = np.random.default_rng(0).integers(1, 2**20, 500) / 2**20
    rows = np.stack([p, 1 - p], axis=1)
    assert not np.array_equal(np.exp(np.log(rows)), rows)
    np.testing.assert_array_equal(Predictions.from_probs(rows, labels=np.zeros(500, int)).probs, rows)
    assert preds.logits is None


def test_single_logits_member_probs_and_soft_labels(tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 3))
    soft = rng.dirichlet(np.ones(3), 6)
    preds = load_prediction_file(save_prediction_file(tmp_path / "a.npz", soft_labels=soft, logits=logits))
    np.testing.assert_allclose(preds.probs, softmax(logits), rtol=1e-12)
    assert preds.logits.shape == (1, 6, 3)
    np.testing.assert_array_equal(preds.labels, soft.argmax(1))  # hard label = argmax of the soft label
    np.testing.assert_allclose(preds.soft_labels, soft)
    member_probs = softmax(rng.standard_normal((2, 6, 3)))
    preds = Predictions.from_member_probs(member_probs, labels=np.zeros(6, int))
    np.testing.assert_allclose(preds.probs, member_probs.mean(0), rtol=1e-12)
    np.testing.assert_array_equal(preds.member_probs, member_probs)


def test_ood_file_may_lack_labels(tmp_path):
    path = save_prediction_file(tmp_path / "ood.npz", probs=[[0.5, 0.5]])
    assert load_prediction_file(path, require_labels=False).labels is None
    with pytest.raises(PlexbenchError, match="no labels"):
        load_prediction_file(path)


def test_renormalises_within_tolerance(tmp_path):
    path = save_prediction_file(tmp_path / "p.npz", labels=[0], probs=np.array([[0.7002, 0.3]], np.float32))
    preds = load_prediction_file(path)
    assert preds.probs.sum() == pytest.approx(1.0, abs=1e-15)
    a, b = float(np.float32(0.7002)), float(np.float32(0.3))  # divided by the float64 row sum
    assert preds.probs[0, 0] == pytest.approx(a / (a + b), rel=1e-12)


def _write_raw(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"labels": [0], "probs": [[np.nan, 1.0]]}, "NaN or inf"),
        ({"labels": [0], "logits": [[np.inf, 1.0]]}, "NaN or inf"),
        ({"labels": [0], "probs": [[0.5, 0.6]]}, "sum to 1"),
        ({"labels": [5], "probs": [[0.5, 0.5]]}, "out of range"),
        ({"labels": [0, 1], "probs": [[0.5, 0.5]]}, "examples"),
        ({"labels": np.zeros(0, int), "probs": np.zeros((0, 2))}, "empty"),
        ({"labels": [0], "probs": [[0.5, 0.5]], "logits": [[0.0, 0.0]]}, "exactly one"),
        ({"labels": [0]}, "exactly one"),
        ({"labels": [0], "probs": [[0.5, 0.5]], "extra": [1]}, "unknown key"),
        ({"labels": [0], "soft_labels": [[1.0, 0.0]], "probs": [[0.5, 0.5]]}, "not both"),
        ({"labels": [0], "probs": [[0.5, 0.5]], "format_version": 2}, "format_version"),
        ({"labels": [0], "probs": [[0.5, 0.5]], "embeddings": np.zeros((2, 3))}, "embeddings"),
        ({"labels": [0], "member_probs": [[0.5, 0.5]]}, r"\(E, N, K\)"),
        ({"labels": [0.0], "probs": [[0.5, 0.5]]}, "integers"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, arrays, match):
    path = _write_raw(tmp_path / "bad.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(PlexbenchError, match=match) as info:
        load_prediction_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(PlexbenchError, match="not found"):
        load_prediction_file(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(PlexbenchError, match="not an .npz"):
        load_prediction_file(tmp_path / "text.npz")
    np.savez(tmp_path / "obj.npz", labels=np.array([0, 1], dtype=object), probs=np.eye(2))
    with pytest.raises(PlexbenchError, match="object"):
        load_prediction_file(tmp_path / "obj.npz")
    good = save_prediction_file(tmp_path / "good.npz", labels=[0], probs=[[0.5, 0.5]])
    data = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(PlexbenchError):
        load_prediction_file(tmp_path / "cut.npz")
    assert zipfile.is_zipfile(good)


def test_writer_refuses_invalid_predictions_and_writes_nothing(tmp_path):
    with pytest.raises(PlexbenchError, match="sum to 1"):
        save_prediction_file(tmp_path / "p.npz", labels=[0], probs=[[0.2, 0.2]])
    assert list(tmp_path.iterdir()) == []


def test_fit_file(tmp_path):
    path = save_prediction_file(tmp_path / "train.npz", labels=[0, 1], probs=np.eye(2), embeddings=np.ones((2, 3)))
    emb, labels = load_fit_file(path)
    assert emb.shape == (1, 2, 3) and labels.tolist() == [0, 1]
    np.savez(tmp_path / "nolab.npz", embeddings=np.ones((2, 3)))
    with pytest.raises(PlexbenchError, match="lacks labels"):
        load_fit_file(tmp_path / "nolab.npz")


def test_direct_construction_validates():
    with pytest.raises(PlexbenchError, match="logsumexp"):
        Predictions(log_probs=np.log([[0.2, 0.2]]))
    with pytest.raises(PlexbenchError, match="argmax"):
        Predictions(log_probs=np.log([[0.5, 0.5]]), labels=[1], soft_labels=[[0.9, 0.1]])
