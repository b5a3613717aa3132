"""Model handles: user callables, identities, plain-logit models, lazy parameter loading."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from plexbench.errors import PlexbenchError
from plexbench.inference import array_source, handle_from_callable, model_identity, predict
from plexbench.inference import store as st
from plexbench.inference import testing as T
from plexbench.inference.handle import ModelHandle, normalise_outputs, params_sha256


def test_callable_handle_identity_and_outputs(tmp_path):
    handle = handle_from_callable("plexbench.inference.testing:tiny_classifier")
    module, params, info = T.tiny_classifier()
    assert handle.preprocess == info["preprocess"] == "identity"
    assert handle.identity == {"kind": "callable", "spec": "plexbench.inference.testing:tiny_classifier",
                               "params_sha256": params_sha256(params)}
    images = T.random_images(9, seed=3)
    entry = predict(handle, "synthetic", "test", store_dir=tmp_path, verbose=False,
                    source=array_source("synthetic", "test", images, np.zeros(9, np.int64)))
    np.testing.assert_allclose(entry.logits, T.numpy_tiny_ensemble(params, images)["logits"], atol=2e-6, rtol=1e-5)
    ident = model_identity(handle)
    # TinyEnsemble(E=2, hidden=5, K=3) on 4*4*3 = 48 inputs: 48*5 + 5 (Dense) + 2*5 (alpha) + 5*3 (head)
    # + 2*3 (bias) = 240 + 5 + 10 + 15 + 6 = 276 parameters.
    assert ident["num_params"] == 276 and ident["name"] == handle.name


def test_plain_logits_become_one_member_without_pre_logits(tmp_path):
    handle = handle_from_callable("plexbench.inference.testing:tiny_plain_classifier")
    _, params = T.tiny_plain_classifier()
    images = T.random_images(6, seed=4)
    source = array_source("synthetic", "test", images, np.zeros(6, np.int64))
    entry = predict(handle, "synthetic", "test", store_dir=tmp_path, source=source, verbose=False)
    want = images.reshape(6, -1).astype(np.float64) @ np.asarray(params["w"]["kernel"], np.float64)
    assert entry.logits.shape == (1, 6, 3) and entry.pre_logits is None
    np.testing.assert_allclose(entry.logits[0], want, atol=2e-6, rtol=1e-5)
    assert entry.manifest["model_has_pre_logits"] is False
    # Pre-logits asked for again: the model has none, so the entry is complete as it is.
    assert st.missing_chunks(entry.path, entry.manifest, need_pre_logits=True) == []


@pytest.mark.parametrize("spec, words", [
    ("no_colon_here", "not a registered model nor"),
    ("plexbench.inference.testing:broken_classifier", "must return"),
    ("plexbench.inference.testing:failing_classifier", "weights went missing"),
    ("plexbench.inference.testing:IMAGE_SHAPE", "no callable"),
])
def test_bad_callables(spec, words):
    with pytest.raises(PlexbenchError, match=words) as e:
        handle_from_callable(spec)
    assert "\n" not in str(e.value)


def test_params_sha256_is_content_hash():
    a = {"x": np.arange(3, dtype=np.float32), "y": {"z": np.ones((2, 2), np.float32)}}
    b = {"y": {"z": np.ones((2, 2), np.float32)}, "x": np.arange(3, dtype=np.float32)}  # other dict order
    assert params_sha256(a) == params_sha256(b)
    c = {"x": np.arange(3, dtype=np.float32), "y": {"z": np.full((2, 2), 1.0 + 2**-20, np.float32)}}
    assert params_sha256(c) != params_sha256(a)
    d = {"x": np.arange(3, dtype=np.float64), "y": {"z": np.ones((2, 2), np.float32)}}  # same values, other dtype
    assert params_sha256(d) != params_sha256(a)
    assert len(params_sha256(a)) == len(hashlib.sha256().hexdigest())


def test_params_are_loaded_on_first_use_only():
    calls = []
    handle = ModelHandle("lazy", lambda p, x, k: None, load_params=lambda: calls.append(1) or {"w": 1})
    assert not handle.params_loaded and model_identity(handle) == {"name": "lazy"} and calls == []
    assert handle.params == {"w": 1} and handle.params == {"w": 1} and calls == [1]


def test_normalise_outputs_shapes():
    logits = np.zeros((4, 3))
    assert normalise_outputs(logits)["logits"].shape == (1, 4, 3)
    out = normalise_outputs({"logits": np.zeros((2, 4, 3)), "pre_logits": np.zeros((2, 4, 5))})
    assert out["pre_logits"].shape == (2, 4, 5)
    with pytest.raises(PlexbenchError, match="logits"):
        normalise_outputs({"probs": logits})
    with pytest.raises(PlexbenchError, match="shape"):
        normalise_outputs({"logits": np.zeros((1, 2, 3, 4))})


def test_model_that_cannot_take_the_images_is_one_line(tmp_path):
    handle = handle_from_callable("plexbench.inference.testing:tiny_classifier")  # built for 4x4x3
    images = T.random_images(5, seed=0, image_shape=(6, 6, 3))
    source = array_source("synthetic", "test", images, np.zeros(5, np.int64))
    with pytest.raises(PlexbenchError, match=r"cannot run on images of shape \(6, 6, 3\)") as e:
        predict(handle, "synthetic", "test", store_dir=tmp_path, source=source, verbose=False)
    assert "\n" not in str(e.value)
