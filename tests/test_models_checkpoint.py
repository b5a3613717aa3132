"""Checkpoint layout (spec §2) and I/O: key sets and shapes of the released configs, round trips,
bfloat16-as-void, validation errors, position-embedding resizing."""

from __future__ import annotations

import functools
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import scipy.ndimage
from flax.traverse_util import flatten_dict

from plexbench import fileio
from plexbench.errors import PlexbenchError
from plexbench.models import ModelConfig, build, param_shapes
from plexbench.models.checkpoint import (
    flatten_params,
    init_params,
    load_params,
    resize_pos_embedding,
    save_params,
    write_random_checkpoint,
    zoom_bilinear,
)
from plexbench.models.registry import get_model

# ---------------------------------------------------------------------------- layout from the spec text


def spec_layout(*, D, M, H, L, E, be_layers, K, N, P, head, R=0, representation=None):
    """Keys and shapes written out from spec §2, independently of plexbench.models.config."""
    Dh = D // H
    out = {"embedding/kernel": (P, P, 3, D), "embedding/bias": (D,), "cls": (1, 1, D),
           "Transformer/posembed_input/pos_embedding": (1, N, D),
           "Transformer/encoder_norm/scale": (D,), "Transformer/encoder_norm/bias": (D,)}

    def be_dense(name, n_in, n_out, ens):
        out.update({f"{name}/kernel": (n_in, n_out), f"{name}/fast_weight_alpha": (ens, n_in),
                    f"{name}/fast_weight_gamma": (ens, n_out), f"{name}/bias": (ens, n_out)})

    for layer in range(L):
        blk = f"Transformer/encoderblock_{layer}"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            out[f"{blk}/{ln}/scale"] = (D,)
            out[f"{blk}/{ln}/bias"] = (D,)
        att = f"{blk}/MultiHeadDotProductAttention_1"
        for name in ("query", "key", "value"):
            out[f"{att}/{name}/kernel"] = (D, H, Dh)
            out[f"{att}/{name}/bias"] = (H, Dh)
        out[f"{att}/out/kernel"] = (H, Dh, D)
        out[f"{att}/out/bias"] = (D,)
        for dense, (n_in, n_out) in (("Dense_0", (D, M)), ("Dense_1", (M, D))):
            name = f"{blk}/MlpBlock_3/{dense}"
            if layer in be_layers:
                be_dense(name, n_in, n_out, E)
            else:
                out[f"{name}/kernel"] = (n_in, n_out)
                out[f"{name}/bias"] = (n_out,)
    if head == "heteroscedastic":
        be_dense("head/loc_layer", D, K, 1)
        be_dense("head/diag_layer", D, K, 1)
        be_dense("head/scale_layer", D, K * R, 1)
    else:  # upstream
        be_dense("pre_logits", D, representation, E)
        be_dense("batchensemble_head", representation, K, E)
    return out


L32 = dict(D=1024, M=4096, H=16, L=24, E=3, be_layers=(21, 22, 23), P=32)
RELEASED = {
    "plex-vit-l32-imagenet": spec_layout(**L32, K=1000, N=145, head="heteroscedastic", R=15),
    "plex-vit-l32-i21k": spec_layout(**L32, K=21843, N=50, head="batchensemble", representation=1024),
}


def model_layout(config: ModelConfig) -> dict[str, tuple]:
    """The Flax model's own parameter shapes, via jax.eval_shape (nothing full-size allocated)."""
    module = build(config)
    images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, rng=jax.random.PRNGKey(1)), images)
    return {k: tuple(v.shape) for k, v in flatten_dict(shapes["params"], sep="/").items()}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_configs_have_the_official_layout(name):
    config = get_model(name).config
    expected = RELEASED[name]
    got = model_layout(config)
    assert set(got) == set(expected), (sorted(set(got) - set(expected))[:5], sorted(set(expected) - set(got))[:5])
    assert {k: got[k] for k in expected} == expected
    assert param_shapes(config) == expected  # the numpy layout used to validate files agrees
    assert sum(np.prod(s) for s in expected.values()) == sum(np.prod(s) for s in got.values())


def test_released_fine_tuned_config_fields():
    c = get_model("plex-vit-l32-imagenet").config
    assert (c.image_size, c.num_classes, c.num_factors, c.temperature, c.num_mc_samples) == (384, 1000, 15, 1.25, 1000)
    assert c.ensemble_size == 3 and c.be_layers == (21, 22, 23) and c.num_tokens == 145
    assert get_model("plex-vit-l32-i21k").config.num_tokens == 50


SMALL = dict(image_size=8, patch_size=4, hidden_size=8, mlp_dim=16, num_heads=2, num_layers=2, num_classes=3)
SMALL_CONFIGS = [
    ModelConfig(**SMALL, ensemble_size=2, be_layers=(1,), head="heteroscedastic", num_factors=2, num_mc_samples=3),
    ModelConfig(**SMALL, ensemble_size=2, be_layers=(0, 1), ensemble_attention=True, representation_size=4,
                head="batchensemble"),
    ModelConfig(**SMALL, representation_size=5),
    ModelConfig(**SMALL, ensemble_size=3, be_layers=(1,), head="heteroscedastic", num_factors=0, num_mc_samples=2),
    ModelConfig(**SMALL, head="heteroscedastic", num_factors=3, parameter_efficient=True, num_mc_samples=2),
]


@pytest.mark.parametrize("config", SMALL_CONFIGS, ids=lambda c: f"{c.head}-E{c.ensemble_size}-R{c.num_factors}")
def test_small_config_layouts_agree(config):
    assert model_layout(config) == param_shapes(config)


# ---------------------------------------------------------------------------- round trips


@functools.lru_cache(maxsize=None)
def _jitted(module):
    return jax.jit(lambda p, x: module.apply({"params": p}, x, rng=jax.random.PRNGKey(3)))


def _forward(config, params):
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    return {k: np.asarray(v) for k, v in _jitted(build(config))(params, x).items()}


@pytest.mark.parametrize("prefix,opt_state", [("opt/target/", True), ("", False)])
def test_save_load_forward_is_exact(tmp_path, prefix, opt_state):
    config = SMALL_CONFIGS[0]
    path = tmp_path / "ckpt.npz"
    in_memory = write_random_checkpoint(config, path, seed=4, prefix=prefix, with_optimizer_state=opt_state)
    stored = fileio.load_npz(path)
    assert list(stored) == sorted(stored)  # keys sorted, flattened with '/'
    assert all(k.startswith(prefix) or k.startswith("opt/state/") for k in stored)
    assert any(k.startswith("opt/state/") for k in stored) == opt_state
    loaded = load_params(config, path)
    a, b = _forward(config, in_memory), _forward(config, loaded)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_init_save_load_round_trip(tmp_path):
    config = SMALL_CONFIGS[2]
    params = init_params(config, seed=1)
    save_params(tmp_path / "p.npz", params)
    loaded = load_params(config, tmp_path / "p.npz")
    flat_a, flat_b = flatten_params(params), flatten_params(loaded)
    assert list(flat_a) == list(flat_b)
    for k in flat_a:
        np.testing.assert_array_equal(flat_a[k], flat_b[k])
        assert flat_b[k].dtype == np.float32


def test_bfloat16_stored_as_void_round_trip(tmp_path):
    config = SMALL_CONFIGS[2]
    path = tmp_path / "bf16.npz"
    returned = write_random_checkpoint(config, path, seed=2, dtype="bfloat16")
    with zipfile.ZipFile(path) as z, z.open("opt/target/cls.npy") as f:
        header = f.read(128)
    assert b"'descr': '|V2'" in header  # numpy wrote a void of itemsize 2, like the released files
    raw = fileio.load_npz(path)
    loaded = flatten_params(load_params(config, path))
    for key, value in loaded.items():
        void = raw["opt/target/" + key]
        assert void.dtype.kind == "V" and void.dtype.itemsize == 2
        # Independent decoding: bfloat16 is the high half of a float32.
        bits = void.view(np.uint16).astype(np.uint32) << 16
        np.testing.assert_array_equal(value, bits.view(np.float32))
    # The rounding to bfloat16 kept ~3 significant digits of the float32 values.
    original = flatten_params(write_random_checkpoint(config, tmp_path / "f32.npz", seed=2))
    for key in original:
        np.testing.assert_allclose(loaded[key], original[key], rtol=2**-8)
    np.testing.assert_array_equal(flatten_params(returned)["cls"], loaded["cls"])


def test_bfloat16_in_memory_arrays_saved_as_void(tmp_path):
    params = {"a": np.array([1.5, -2.25], ml_dtypes.bfloat16)}
    save_params(tmp_path / "x.npz", params, prefix="")
    raw = fileio.load_npz(tmp_path / "x.npz")
    assert raw["a"].dtype == np.dtype("V2")


# ---------------------------------------------------------------------------- validation


def _error(config, path) -> str:
    with pytest.raises(PlexbenchError) as e:
        load_params(config, path)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    config = SMALL_CONFIGS[2]
    flat = {"opt/target/" + k: np.zeros(s, np.float32) for k, s in param_shapes(config).items()}
    del flat["opt/target/head/bias"]
    flat["opt/target/head/extra"] = np.zeros(3, np.float32)
    flat["opt/target/cls"] = np.zeros((1, 1, 9), np.float32)
    fileio.save_npz(tmp_path / "bad.npz", flat)
    message = _error(config, tmp_path / "bad.npz")
    assert "1 missing key(s): head/bias" in message
    assert "1 unexpected key(s): head/extra" in message
    assert "cls (1, 1, 9) vs expected (1, 1, 8)" in message


def test_other_config_and_non_float_rejected(tmp_path):
    write_random_checkpoint(SMALL_CONFIGS[0], tmp_path / "other.npz")
    assert "does not match the model config" in _error(SMALL_CONFIGS[2], tmp_path / "other.npz")
    flat = {k: np.zeros(s, np.int32) for k, s in param_shapes(SMALL_CONFIGS[2]).items()}
    fileio.save_npz(tmp_path / "int.npz", flat)
    assert "expected floating point" in _error(SMALL_CONFIGS[2], tmp_path / "int.npz")


def test_unreadable_files_rejected(tmp_path):
    config = SMALL_CONFIGS[2]
    (tmp_path / "text.npz").write_text("not a checkpoint")
    assert "not an .npz" in _error(config, tmp_path / "text.npz")
    assert "not found" in _error(config, tmp_path / "missing.npz")
    write_random_checkpoint(config, tmp_path / "good.npz")
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert "cut.npz" in _error(config, tmp_path / "cut.npz")
    np.savez(tmp_path / "obj.npz", cls=np.array([{"a": 1}], dtype=object))  # needs pickle to read
    assert "object arrays" in _error(config, tmp_path / "obj.npz")


# ---------------------------------------------------------------------------- position embeddings


def test_zoom_hand_computed_2_to_3():
    # 2x2 grid [[0, 1], [2, 3]] -> 3x3 with corners aligned: sample points 0, 0.5, 1 per axis.
    grid = np.array([[0.0, 1.0], [2.0, 3.0]])[..., None]
    want = np.array([[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]])
    np.testing.assert_allclose(zoom_bilinear(grid, 3)[..., 0], want)


@pytest.mark.parametrize("old,new", [(7, 12), (12, 7), (4, 4), (3, 1), (1, 3)])
def test_zoom_matches_scipy_order_1(old, new):
    grid = np.random.default_rng(old * 100 + new).normal(size=(old, old, 3))
    want = scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)
    assert want.shape == (new, new, 3)
    np.testing.assert_allclose(zoom_bilinear(grid, new), want, rtol=1e-12, atol=1e-12)


def test_resize_keeps_class_token_and_load_resizes(tmp_path):
    posemb = np.random.default_rng(0).normal(size=(1, 1 + 7 * 7, 4)).astype(np.float32)
    out = resize_pos_embedding(posemb, 1 + 12 * 12)
    assert out.shape == (1, 145, 4)
    np.testing.assert_array_equal(out[0, 0], posemb[0, 0])
    np.testing.assert_allclose(out[0, 1:].reshape(12, 12, 4),
                               scipy.ndimage.zoom(posemb[0, 1:].reshape(7, 7, 4), (12 / 7, 12 / 7, 1), order=1),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(PlexbenchError, match="square grid"):
        resize_pos_embedding(posemb, 1 + 12 * 11)
    # A checkpoint written for 8 px (2x2 grid) loads into a 12 px config (3x3 grid).
    small = SMALL_CONFIGS[2]
    write_random_checkpoint(small, tmp_path / "8px.npz")
    big = small.replace(image_size=12)
    params = load_params(big, tmp_path / "8px.npz")
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 10, 8)
    with pytest.raises(PlexbenchError, match="pos_embedding"):
        load_params(big, tmp_path / "8px.npz", resize_posemb=False)
