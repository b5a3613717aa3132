"""T5 models through the inference engine and prediction store: token batches of the embedded
fortunes, outputs equal a direct forward computed here, the SNGP variance stored beside the logits,
the tokenizer hash in the store key, resume, the "paper" readout, bfloat16, and T5X registry handles."""

from __future__ import annotations

import fcntl
import math

import jax.numpy as jnp
import numpy as np
import pytest

from plexbench.errors import PlexbenchError
from plexbench.inference import handle_from_registry, handle_from_t5_config, predict, text_source, token_source
from plexbench.inference.predict import key_fields
from plexbench.models.checkpoint import random_flat_params, unflatten_params
from plexbench.models.sngp import split_state
from plexbench.models.t5 import build_t5
from plexbench.models.t5_config import T5Config
from plexbench.models.t5x_checkpoint import write_t5x_checkpoint
from plexbench.models.tokenizer import get_tokenizer
from plexbench.models.zoo_t5 import TRUNK

SPEC = "text_input|tokenize(fortunes,24)"
CONFIG = T5Config(**{**TRUNK, "d_model": 16, "num_heads": 2, "head_dim": 8, "mlp_dim": 24, "num_encoder_layers": 1,
                     "num_decoder_layers": 2, "input_length": 24, "ensemble_size": 3, "head": "sngp",
                     "gp_hidden_features": 16, "gp_mean_field_factor": 0.5})


@pytest.fixture(scope="module")
def text_dir(data_dir):
    from plexbench.data.prepare import prepare

    with open(data_dir / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prepare("fortunes", data_dir)
    return data_dir


@pytest.fixture(scope="module")
def tree():
    return unflatten_params(random_flat_params(CONFIG, 0))


def direct(tree, tokens, config=CONFIG, dtype="float32"):
    out = build_t5(config, dtype=dtype).apply(split_state(tree), jnp.asarray(tokens))
    return {k: np.asarray(v) for k, v in out.items()}


def test_predict_on_fortunes_equals_a_direct_forward(text_dir, store_dir, tree):
    from plexbench.data.text import load_texts

    handle = handle_from_t5_config(CONFIG, tree, name="tiny-t5", preprocess=SPEC)
    entry = predict(handle, "fortunes", "validation", data_dir=text_dir, store_dir=store_dir, batch_size=64,
                    chunk_size=128, verbose=False)
    data = load_texts("fortunes", "validation", text_dir)
    tokens = get_tokenizer("fortunes").encode_batch(data["texts"]["text"], 24)
    want = direct(tree, tokens)
    n = len(tokens)
    assert entry.logits.shape == (3, n, 6) and entry.pre_logits.shape == (3, n, 16)
    np.testing.assert_allclose(entry.logits, want["logits"][:, :, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entry.pre_logits, want["hidden"][:, :, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entry.extras["gp_variance"], want["gp_variance"][:, :, 0], rtol=1e-5)
    np.testing.assert_array_equal(entry.labels, data["label"])
    assert entry.manifest["extras"] == ["gp_variance"]
    # the metrics' ensemble log-probs are the model's proper averaging
    np.testing.assert_allclose(entry.to_predictions().log_probs, want["log_probs"][:, 0], rtol=1e-5, atol=1e-5)
    # a second call is a store hit: no params needed
    again = handle_from_t5_config(CONFIG, name="tiny-t5", preprocess=SPEC, identity=handle.identity,
                                  load_params=lambda: pytest.fail("the store hit must not load params"))
    hit = predict(again, "fortunes", "validation", data_dir=text_dir, store_dir=store_dir, verbose=False)
    assert hit.key == entry.key


def test_tokenizer_hash_is_in_the_store_key(text_dir, tree):
    handle = handle_from_t5_config(CONFIG, tree, name="tiny-t5", preprocess=SPEC)
    source = text_source("fortunes", "test", preprocess=SPEC, data_dir=text_dir)
    fields = key_fields(handle, source, dtype="float32", seed=0)
    assert fields["tokenizer_sha256"] == get_tokenizer("fortunes").sha256
    other = token_source("x", "test", np.ones((2, 4), np.int32), np.zeros(2), tokenizer_sha256="0" * 64)
    assert key_fields(handle, other, dtype="float32", seed=0)["tokenizer_sha256"] == "0" * 64
    image = key_fields(handle, token_source("x", "test", np.ones((2, 4), np.int32), np.zeros(2)), dtype="float32", seed=0)
    assert "tokenizer_sha256" not in image  # sources without a tokenizer keep their old keys


def test_resume_after_an_interruption(store_dir, tree):
    tokens = np.random.default_rng(0).integers(3, 1000, (40, 12)).astype(np.int32)
    tokens[:, 8:] = 0  # padding
    source = token_source("synthetic", "test", tokens, np.zeros(40, np.int64))
    handle = handle_from_t5_config(CONFIG, tree, name="tiny-t5")
    full = predict(handle, "synthetic", "test", store_dir=store_dir, batch_size=8, chunk_size=10, source=source, verbose=False)
    want = full.logits.copy()
    (full.path / "chunk-000002.npz").unlink()  # lose a chunk: the next call recomputes only it
    again = predict(handle, "synthetic", "test", store_dir=store_dir, batch_size=8, source=source, verbose=False)
    np.testing.assert_array_equal(again.logits, want)
    np.testing.assert_allclose(want, direct(tree, tokens)["logits"][:, :, 0], rtol=1e-5, atol=1e-5)


def test_paper_readout_is_one_row_of_logsumexp_logits(store_dir, tree):
    tokens = np.random.default_rng(1).integers(3, 1000, (10, 12)).astype(np.int32)
    source = token_source("synthetic", "test", tokens, np.zeros(10, np.int64))
    avg = handle_from_t5_config(CONFIG, tree, name="tiny-t5")
    paper = handle_from_t5_config(CONFIG, tree, name="tiny-t5", readout="paper")
    assert paper.identity["readout"] == "paper" and "readout" not in avg.identity and paper.num_members == 1
    a = predict(avg, "synthetic", "test", store_dir=store_dir, source=source, verbose=False)
    p = predict(paper, "synthetic", "test", store_dir=store_dir, source=source, verbose=False)
    assert a.key != p.key and p.logits.shape == (1, 10, 6) and p.pre_logits.shape == (3, 10, 16)
    want = np.log(np.mean(np.exp(a.logits.astype(np.float64)), axis=0))
    np.testing.assert_allclose(p.logits[0], want, rtol=1e-5, atol=1e-5)
    probs = p.to_predictions().probs
    np.testing.assert_allclose(probs, np.exp(want) / np.exp(want).sum(1, keepdims=True), rtol=1e-5)


def test_bfloat16_through_the_engine(store_dir, tree):
    tokens = np.random.default_rng(2).integers(3, 1000, (8, 12)).astype(np.int32)
    source = token_source("synthetic", "test", tokens, np.zeros(8, np.int64))
    handle = handle_from_t5_config(CONFIG, tree, name="tiny-t5")
    entry = predict(handle, "synthetic", "test", store_dir=store_dir, dtype="bfloat16", source=source, verbose=False)
    want = direct(tree, tokens, dtype="bfloat16")["logits"][:, :, 0]
    np.testing.assert_allclose(entry.logits, want, rtol=0, atol=0.05)  # bfloat16 rounding, batch-size dependent
    assert entry.logits.dtype == np.float32


def test_registry_handle_reads_a_t5x_directory(tmp_path, store_dir, monkeypatch):
    from plexbench.models import registry as reg

    entry = reg.get_model("t5-plex-mini")
    ckpt = tmp_path / "ckpt"
    tree = unflatten_params(random_flat_params(entry.config, 3))
    write_t5x_checkpoint(ckpt, tree, dtype="bfloat16", zarr=lambda key, a: "attention" in key)
    handle = handle_from_registry("t5-plex-mini", ckpt)
    assert handle.num_members == 4 and handle.num_classes == 6 and handle.preprocess == "text_input|tokenize(fortunes,64)"
    tokens = np.random.default_rng(3).integers(3, 1000, (4, 64)).astype(np.int32)
    source = token_source("synthetic", "test", tokens, np.zeros(4, np.int64))
    out = predict(handle, "synthetic", "test", store_dir=store_dir, source=source, verbose=False)
    assert out.logits.shape == (4, 4, 6) and np.isfinite(out.logits).all()
    with pytest.raises(PlexbenchError, match="not a T5X checkpoint directory"):
        handle_from_registry("t5-plex-mini", tmp_path)
    with pytest.raises(PlexbenchError, match="reads 3 target positions"):
        handle_from_registry("plex-t5-small-nalue", ckpt)
    with pytest.raises(PlexbenchError, match="unknown readout"):
        handle_from_registry("t5-plex-mini", ckpt, readout="median")


def test_image_models_keep_their_batches(store_dir):
    """A ViT handle still runs on image batches (the engine picks the input key per batch)."""
    from plexbench.inference import array_source
    from plexbench.inference.testing import make_tiny_ensemble, init, random_images
    from plexbench.inference import ModelHandle
    from plexbench.inference.handle import wrap_module_apply

    module = make_tiny_ensemble()
    params = init(module)
    handle = ModelHandle("tiny", wrap_module_apply(module), params, identity={"kind": "test"})
    images = random_images(6)
    entry = predict(handle, "img", "test", store_dir=store_dir, source=array_source("img", "test", images, np.zeros(6)),
                    verbose=False)
    assert entry.logits.shape == (2, 6, 3) and entry.extras == {}
    assert math.isfinite(float(entry.logits.sum()))


SHARDED = """
import json, sys
import numpy as np
import jax
from plexbench.inference import handle_from_t5_config, predict, token_source
from plexbench.models.checkpoint import random_flat_params, unflatten_params
from plexbench.models.t5_config import T5Config
cfg = json.loads(sys.argv[1])
config = T5Config.from_dict(cfg["config"])
tokens = np.random.default_rng(4).integers(3, 1000, (37, 12)).astype(np.int32)
tokens[::3, 6:] = 0
source = token_source("synthetic", "test", tokens, np.zeros(37, np.int64))
handle = handle_from_t5_config(config, unflatten_params(random_flat_params(config, 0)), name="tiny-t5")
entry = predict(handle, "synthetic", "test", store_dir=cfg["store"], source=source, batch_size=cfg["batch"],
                chunk_size=16, verbose=False)
json.dump({"devices": len(jax.devices()), "logits": entry.logits.tolist(),
           "variance": entry.extras["gp_variance"].tolist()}, open(cfg["out"], "w"))
"""


def test_four_devices_match_one_device(tmp_path, tree):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PLEXBENCH_QUIET": "1",
           "JAX_PLATFORMS": "cpu"}
    cfg = {"config": CONFIG.to_dict(), "store": str(tmp_path / "store"), "out": str(tmp_path / "out.json"), "batch": 32}
    subprocess.run([sys.executable, "-c", SHARDED, json.dumps(cfg)], env=env, check=True, timeout=300)
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["devices"] == 4
    tokens = np.random.default_rng(4).integers(3, 1000, (37, 12)).astype(np.int32)
    tokens[::3, 6:] = 0
    ref = predict(handle_from_t5_config(CONFIG, tree, name="tiny-t5"), "synthetic", "test", store_dir=tmp_path / "ref",
                  source=token_source("synthetic", "test", tokens, np.zeros(37, np.int64)), batch_size=8, verbose=False)
    np.testing.assert_allclose(np.asarray(got["logits"], np.float32), ref.logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(got["variance"], np.float32), ref.extras["gp_variance"], rtol=1e-5)
