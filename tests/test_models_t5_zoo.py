"""The language zoo: shipped T5X directories and model cards (hashes, the test metrics recomputed
here from the loaded weights and the raw texts, the bag-of-words baseline recomputed with
scikit-learn), `plexbench predict` on fortunes, and a short training run through the CLI."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from plexbench import fileio
from plexbench.models.registry import ZOO_DIR, get_model
from plexbench.models.sngp import split_state
from plexbench.models.t5 import build_t5
from plexbench.models.t5x_checkpoint import directory_sha256, load_t5x_params
from plexbench.models.tokenizer import get_tokenizer

ZOO = ("t5-det-mini", "t5-plex-mini")


@pytest.fixture(scope="module")
def text_dir(data_dir):
    from plexbench.data.prepare import prepare

    with open(data_dir / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prepare("fortunes", data_dir)
    return data_dir


def card(name):
    return json.loads((ZOO_DIR / f"{name}.json").read_text())


def test_shipped_directories_cards_and_sizes():
    total = 0
    for name in ZOO:
        entry = get_model(name)
        c = card(name)
        assert entry.checkpoint == ZOO_DIR / name and (entry.checkpoint / "checkpoint").is_file()
        assert c["checkpoint"]["sha256"] == directory_sha256(entry.checkpoint)
        assert c["vocab"]["sha256"] == fileio.sha256_file(ZOO_DIR / "fortunes.spm")
        assert c["vocab"]["tokenizer_sha256"] == get_tokenizer("fortunes").sha256
        assert c["config"] == entry.config.to_dict() and c["preprocess"] == entry.preprocess
        assert c["training"]["max_steps"] is None and c["training"]["wall_time_s"] > 0
        assert {"accuracy", "nll", "ece"} <= set(c["test"]) and "accuracy" in c["baseline_bag_of_words"]
        assert c["accuracy_minus_baseline"] == pytest.approx(c["test"]["accuracy"] - c["baseline_bag_of_words"]["accuracy"])
        total += c["checkpoint"]["bytes"]
    assert total < 6e6  # a few MB


@pytest.mark.parametrize("name", ZOO)
def test_card_metrics_recomputed_from_the_loaded_weights(text_dir, name):
    from plexbench.data.text import load_texts

    entry = get_model(name)
    tree = load_t5x_params(entry.config, entry.checkpoint)
    data = load_texts("fortunes", "test", text_dir)
    tokens = get_tokenizer("fortunes").encode_batch(data["texts"]["text"], entry.config.input_length)
    out = build_t5(entry.config).apply(split_state(tree), jnp.asarray(tokens))
    member = log_softmax(np.asarray(out["logits"][:, :, 0], np.float64), axis=-1)  # (E, N, C)
    probs = np.exp(member).mean(axis=0)
    labels = data["label"]
    c = card(name)["test"]
    assert c["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels), abs=1e-9)
    nll = -np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-7)))
    assert c["nll"] == pytest.approx(nll, rel=1e-4)
    if name == "t5-plex-mini":
        assert np.asarray(out["gp_variance"]).min() > 0
        assert int(tree["decoder"]["gp_head_state"]["step"]) > 0  # the precision pass ran


def test_bag_of_words_baseline_recomputed(text_dir):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from plexbench.data.text import load_texts

    base = card("t5-det-mini")["baseline_bag_of_words"]
    train, test = (load_texts("fortunes", s, text_dir) for s in ("train", "test"))
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    clf = LogisticRegression(C=base["C"], max_iter=2000).fit(vec.fit_transform(train["texts"]["text"]), train["label"])
    acc = np.mean(clf.predict(vec.transform(test["texts"]["text"])) == test["label"])
    assert base["accuracy"] == pytest.approx(acc, abs=1e-9)
    assert card("t5-plex-mini")["baseline_bag_of_words"]["accuracy"] == base["accuracy"]


def test_predict_cli_on_fortunes(text_dir, tmp_path):
    env = {**os.environ, "PLEXBENCH_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = tmp_path / "preds.npz"
    result = subprocess.run([sys.executable, "-m", "plexbench", "predict", "--model", "t5-plex-mini", "--dataset",
                             "fortunes", "--split", "validation", "--data-dir", str(text_dir), "--store",
                             str(tmp_path / "store"), "--out", str(out)], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    arrays = fileio.load_npz(out)
    assert arrays["member_logits"].shape[:2] == (4, 300) and arrays["embeddings"].shape == (4, 300, 64)
    paper = subprocess.run([sys.executable, "-m", "plexbench", "predict", "--model", "det-mini", "--dataset",
                            "fortunes", "--readout", "paper"], capture_output=True, text=True, env=env, timeout=120)
    assert paper.returncode == 2 and "apply to T5 models" in paper.stderr


@pytest.mark.slow  # compiles the training step and fits the bag-of-words baseline (~1-3 minutes)
def test_short_training_run_through_the_cli(text_dir, tmp_path):
    env = {**os.environ, "PLEXBENCH_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    (tmp_path / "fortunes.spm").write_bytes((ZOO_DIR / "fortunes.spm").read_bytes())  # skip vocabulary training
    result = subprocess.run([sys.executable, "-m", "plexbench", "zoo", "train", "t5-plex-mini", "--max-steps", "2",
                             "--data-dir", str(text_dir), "--out", str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "bag-of-words baseline" in result.stdout
    c = json.loads((tmp_path / "t5-plex-mini.json").read_text())
    assert c["training"]["steps"] == 2 and c["training"]["max_steps"] == 2
    tree = load_t5x_params(get_model("t5-plex-mini").config, tmp_path / "t5-plex-mini")
    assert (tmp_path / "t5-plex-mini" / "target.token_embedder.embedding" / ".zarray").is_file()
    assert int(tree["decoder"]["gp_head_state"]["step"]) == -(-2105 // 32)  # one update per training batch
