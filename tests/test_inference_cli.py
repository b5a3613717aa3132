"""`plexbench predict` and `plexbench store` on the real embedded `digits` dataset.

Oracle: the tiny model's float64 numpy forward (testing.numpy_tiny_ensemble) on the split read
with plexbench.data.load.load_arrays and preprocessed with plexbench.data.preprocess.parse,
i.e. without the pipeline, the engine or the store.
"""

from __future__ import annotations

import numpy as np
import pytest

from plexbench.cli import main
from plexbench.inference import testing as T

MODEL = "plexbench.inference.testing:digits_classifier"


@pytest.fixture(scope="module")
def oracle(data_dir):
    from plexbench.data.load import load_arrays
    from plexbench.data.preprocess import parse

    arrays = load_arrays("digits", "test", data_dir)
    _, params, info = T.digits_classifier()
    images = parse(info["preprocess"])(arrays["image"])
    return {"labels": arrays["label"], **T.numpy_tiny_ensemble(params, images)}


def predict_args(data_dir, store, *extra):
    return ["predict", "--model", MODEL, "--dataset", "digits", "--split", "test", "--data-dir", str(data_dir),
            "--store", str(store), "--batch-size", "64", *extra]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("plexbench: error:")
    return lines[0]


def test_predict_writes_store_and_prediction_file(data_dir, tmp_path, oracle, capsys):
    from plexbench.metrics.predictions import load_prediction_file

    out = tmp_path / "preds.npz"
    assert main(predict_args(data_dir, tmp_path / "store", "--out", str(out))) == 0
    captured = capsys.readouterr()
    assert "355 examples" in captured.err and "examples/s" in captured.err
    preds = load_prediction_file(out)
    np.testing.assert_allclose(preds.logits, oracle["logits"], atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(preds.embeddings, oracle["pre_logits"], atol=2e-6, rtol=1e-5)
    np.testing.assert_array_equal(preds.labels, oracle["labels"])
    np.testing.assert_array_equal(preds.ids, np.arange(355))
    # Ensemble log-probs, spec §3: logsumexp_m log_softmax(logits_m) - log E, computed here in numpy.
    z = oracle["logits"] - oracle["logits"].max(-1, keepdims=True)
    member = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want = np.log(np.exp(member).mean(0))
    np.testing.assert_allclose(preds.log_probs, want, atol=1e-5)

    # The rerun comes from the store; `store ls/export/verify` see the entry.
    assert main(predict_args(data_dir, tmp_path / "store")) == 0
    assert "from the store" in capsys.readouterr().err
    assert main(["store", "ls", "--store", str(tmp_path / "store")]) == 0
    listing = capsys.readouterr().out
    assert "digits" in listing and "complete" in listing
    key = listing.splitlines()[-1].split()[0]
    again = tmp_path / "again.npz"
    assert main(["store", "export", key[:8], "--out", str(again), "--store", str(tmp_path / "store")]) == 0
    np.testing.assert_array_equal(load_prediction_file(again).logits, preds.logits)
    assert main(["store", "verify", "--store", str(tmp_path / "store")]) == 0
    capsys.readouterr()
    chunk = next((tmp_path / "store").glob("*/chunk-000000.npz"))
    chunk.write_bytes(chunk.read_bytes()[:-10])
    assert main(["store", "verify", "--store", str(tmp_path / "store")]) == 2
    assert "damaged" in capsys.readouterr().out


def test_no_pre_logits(data_dir, tmp_path, capsys):
    from plexbench.metrics.predictions import load_prediction_file

    out = tmp_path / "p.npz"
    assert main(predict_args(data_dir, tmp_path / "s", "--no-pre-logits", "--out", str(out))) == 0
    assert load_prediction_file(out).embeddings is None


@pytest.mark.parametrize("args, words", [
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "no_such_pkg.mod:fn"], "cannot import"),
    (["--model", "plexbench.inference.testing:nope"], "no callable"),
    (["--dataset", "no_such_dataset"], "unknown dataset"),
    (["--split", "train[:5]+test"], "split"),
    (["--batch-size", "0"], "batch size"),
])
def test_bad_input_is_one_line_exit_2(data_dir, tmp_path, capsys, args, words):
    base = dict(zip(["--model", "--dataset", "--split"], [MODEL, "digits", "test"]))
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["predict", "--data-dir", str(data_dir), "--store", str(tmp_path / "s")]
    for k, v in base.items():
        argv += [k, v]
    assert main(argv) == 2
    assert words in one_error_line(capsys.readouterr().err)


def test_corrupt_manifest_and_full_disk_are_one_line(data_dir, tmp_path, capsys, monkeypatch):
    import errno
    import os

    store = tmp_path / "store"
    real_fsync = os.fsync
    calls = []

    def fsync(fd):  # the first chunk is written, its manifest update finds the disk full
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(predict_args(data_dir, store)) == 2
    assert "disk full" in one_error_line(capsys.readouterr().err)
    monkeypatch.setattr(os, "fsync", real_fsync)
    (entry,) = store.iterdir()
    assert not [p for p in entry.iterdir() if p.name.endswith(".tmp")]
    assert main(predict_args(data_dir, store)) == 0  # resumes
    capsys.readouterr()
    chunks = {p.name: p.read_bytes() for p in entry.glob("chunk-*.npz")}
    (entry / "manifest.json").write_text("{not json")
    assert main(predict_args(data_dir, store)) == 2
    assert "corrupt store entry" in one_error_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in entry.glob("chunk-*.npz")} == chunks


def test_checkpoint_errors_are_one_line(data_dir, tmp_path, capsys):
    from plexbench.models.checkpoint import write_random_checkpoint
    from plexbench.models.config import ModelConfig

    other = ModelConfig(image_size=8, patch_size=4, hidden_size=8, mlp_dim=16, num_heads=2, num_layers=1, num_classes=10)
    bad = tmp_path / "bad.npz"
    write_random_checkpoint(other, bad)
    base = ["predict", "--model", "plex-mini", "--dataset", "digits", "--data-dir", str(data_dir),
            "--store", str(tmp_path / "s")]
    assert main(base + ["--checkpoint", str(bad)]) == 2
    assert str(bad) in one_error_line(capsys.readouterr().err)
    assert not list((tmp_path / "s").glob("*/chunk-*"))
    assert main(base + ["--checkpoint", str(tmp_path / "missing.npz")]) == 2
    assert "checkpoint not found" in one_error_line(capsys.readouterr().err)
    assert main(["predict", "--model", MODEL, "--checkpoint", str(bad), "--dataset", "digits"]) == 2
    assert "registry models only" in one_error_line(capsys.readouterr().err)
