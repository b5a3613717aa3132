"""T5X checkpoint directories (spec §9): directories written by plexbench's writer (bfloat16,
chunked and zarr arrays, optimizer state) and by hand with plain msgpack read back exactly;
truncated, missing-array, wrong-shape and malformed directories give one-line errors naming the key."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np
import pytest

from plexbench.errors import PlexbenchError
from plexbench.models.checkpoint import flatten_params, random_flat_params, unflatten_params
from plexbench.models.sngp import split_state
from plexbench.models.t5 import build_t5
from plexbench.models.t5_config import T5Config, t5_param_shapes
from plexbench.models.t5x_checkpoint import (
    directory_sha256,
    load_t5x_params,
    random_t5x_checkpoint,
    write_t5x_checkpoint,
    zarr_name,
)

CONFIG = T5Config(vocab_size=30, d_model=16, num_heads=2, head_dim=8, mlp_dim=24, num_encoder_layers=1,
                  num_decoder_layers=2, label_tokens=(5, 7), ensemble_size=2, gp_hidden_features=8)
QUERY = "encoder/layers_0/attention/query/kernel"
EMBEDDING = "token_embedder/embedding"


def zarr_keys(key, array):
    """Most kernels in zarr (as the partitioner does), the rest inline."""
    return key.endswith("/kernel") and "mlp" not in key


def assert_trees_equal(a, b):
    fa, fb = flatten_params(a), flatten_params(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def one_line_error(fn, *fragments):
    with pytest.raises(PlexbenchError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_round_trip_bfloat16_chunked_zarr_and_optimizer_state(tmp_path):
    path = tmp_path / "ckpt"
    stored = random_t5x_checkpoint(CONFIG, path, seed=1, dtype="bfloat16", zarr=zarr_keys,
                                   max_inline_bytes=256, with_optimizer_state=True, step=12345)
    loaded = load_t5x_params(CONFIG, path)
    assert_trees_equal(loaded, stored)
    assert loaded["decoder"]["gp_head_state"]["step"].dtype == np.int32
    assert (path / zarr_name(QUERY) / ".zarray").is_file()
    assert json.loads((path / zarr_name(QUERY) / ".zarray").read_text())["dtype"] == "bfloat16"
    assert not (path / zarr_name(EMBEDDING)).exists()  # inline (and chunked: 30*16*2 bytes > 256)
    # the forward pass runs on what was loaded
    out = build_t5(CONFIG).apply(split_state(loaded), jnp.array([[3, 4, 1, 0]]))
    assert out["logits"].shape == (2, 1, 1, 2) and np.isfinite(np.asarray(out["logits"])).all()
    # replacing an existing directory
    random_t5x_checkpoint(CONFIG, path, seed=2)
    assert not np.array_equal(load_t5x_params(CONFIG, path)[EMBEDDING.split("/")[0]]["embedding"],
                              loaded["token_embedder"]["embedding"])


def test_file_layout_read_with_plain_msgpack(tmp_path):
    path = tmp_path / "ckpt"
    tree = unflatten_params(random_flat_params(CONFIG, 3))
    write_t5x_checkpoint(path, tree, dtype="bfloat16", zarr={QUERY}, max_inline_bytes=200, step=7)
    state = msgpack.unpackb((path / "checkpoint").read_bytes(), raw=False, strict_map_key=False)
    assert state["version"] == 3 and set(state["optimizer"]) == {"target", "state"}
    target = state["optimizer"]["target"]
    # an inline array: ext type 1, payload (shape, dtype name, raw bytes)
    norm = target["encoder"]["encoder_norm"]["scale"]
    assert isinstance(norm, msgpack.ExtType) and norm.code == 1
    shape, name, raw = msgpack.unpackb(norm.data, raw=False)
    assert (shape, name) == ([16], "bfloat16")
    want = tree["encoder"]["encoder_norm"]["scale"].astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.frombuffer(raw, ml_dtypes.bfloat16), want)
    # a chunked one: C-order pieces of at most 200 bytes
    emb = target["token_embedder"]["embedding"]
    assert emb["__msgpack_chunked_array__"] is True and emb["shape"] == {"0": 30, "1": 16}
    assert len(emb["chunks"]) == -(-30 * 16 * 2 // 200)
    # a zarr one: a TensorStore spec whose path is the dotted key, relative to the directory
    spec = target["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert spec["driver"] == "zarr" and spec["kvstore"] == {"driver": "file", "path": zarr_name(QUERY)}
    assert spec["metadata"]["shape"] == [16, 16] and spec["metadata"]["compressor"]["id"] == "gzip"
    # the GP step is a numpy scalar (type 3)
    assert target["decoder"]["gp_head_state"]["step"].code == 3


def test_reads_a_directory_written_by_hand_with_list_shapes(tmp_path):
    """Flax may write chunked shapes as lists; leaves may be plain msgpack ints."""
    flat = {k: v for k, v in random_flat_params(CONFIG, 4).items()}

    def ext(a, code=1):
        return msgpack.ExtType(code, msgpack.packb([list(a.shape), a.dtype.name, a.tobytes()], use_bin_type=True))

    leaves = {}
    for key, value in flat.items():
        if key == EMBEDDING:
            pieces = np.array_split(value.reshape(-1), 3)
            leaves[key] = {"__msgpack_chunked_array__": True, "shape": list(value.shape), "chunks": [ext(p) for p in pieces]}
        elif key.endswith("_state/step"):
            leaves[key] = int(value)
        else:
            leaves[key] = ext(value)
    (tmp_path / "ckpt").mkdir()
    payload = {"version": 3, "optimizer": {"target": unflatten_params(leaves), "state": {"step": 1}}}
    (tmp_path / "ckpt" / "checkpoint").write_bytes(msgpack.packb(payload, use_bin_type=True))
    loaded = flatten_params(load_t5x_params(CONFIG, tmp_path / "ckpt"))
    for key, value in flat.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_gcs_kvstore_spec_is_looked_up_beside_the_checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    random_t5x_checkpoint(CONFIG, path, seed=5, zarr={QUERY})
    state = msgpack.unpackb((path / "checkpoint").read_bytes(), raw=False, strict_map_key=False)
    spec = state["optimizer"]["target"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    spec["kvstore"] = {"driver": "gcs", "bucket": "plex-paper", "path": f"plex_t5_small/checkpoint_1/{zarr_name(QUERY)}"}
    (path / "checkpoint").write_bytes(msgpack.packb(state, use_bin_type=True))
    assert load_t5x_params(CONFIG, path)["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (16, 16)


# ---------------------------------------------------------------------------- errors


def test_truncated_checkpoint_file(tmp_path):
    path = tmp_path / "ckpt"
    random_t5x_checkpoint(CONFIG, path, seed=6)
    data = (path / "checkpoint").read_bytes()
    (path / "checkpoint").write_bytes(data[: len(data) // 2])
    one_line_error(lambda: load_t5x_params(CONFIG, path), "truncated or not msgpack")


def test_missing_array_names_the_key(tmp_path):
    path = tmp_path / "ckpt"
    random_t5x_checkpoint(CONFIG, path, seed=7, zarr=zarr_keys)
    shutil.rmtree(path / zarr_name(QUERY))
    one_line_error(lambda: load_t5x_params(CONFIG, path), f"'{QUERY}'", "missing")


def test_wrong_shape_and_missing_key_name_the_first_bad_key(tmp_path):
    tree = unflatten_params(random_flat_params(CONFIG, 8))
    tree["encoder"]["layers_0"]["mlp"]["wo"]["kernel"] = np.zeros((24, 15), np.float32)
    write_t5x_checkpoint(tmp_path / "a", tree)
    one_line_error(lambda: load_t5x_params(CONFIG, tmp_path / "a"), "encoder/layers_0/mlp/wo/kernel (24, 15)",
                   "expected (24, 16)")
    # the same through a zarr spec: checked before any zarr array is read
    write_t5x_checkpoint(tmp_path / "b", tree, zarr=True)
    one_line_error(lambda: load_t5x_params(CONFIG, tmp_path / "b"), "encoder/layers_0/mlp/wo/kernel (24, 15)")
    del tree["decoder"]["gp_head_state"]
    write_t5x_checkpoint(tmp_path / "c", tree)
    one_line_error(lambda: load_t5x_params(CONFIG, tmp_path / "c"), "missing key(s): decoder/gp_head_state/")


def test_zarr_array_disagreeing_with_its_spec(tmp_path):
    path = tmp_path / "ckpt"
    random_t5x_checkpoint(CONFIG, path, seed=9, zarr={QUERY})
    other = tmp_path / "other"
    tree = unflatten_params(random_flat_params(CONFIG, 9))
    tree["encoder"]["layers_0"]["attention"]["query"]["kernel"] = np.zeros((16, 4), np.float32)
    write_t5x_checkpoint(other, tree, zarr={QUERY})
    shutil.rmtree(path / zarr_name(QUERY))
    shutil.copytree(other / zarr_name(QUERY), path / zarr_name(QUERY))
    one_line_error(lambda: load_t5x_params(CONFIG, path), f"'{QUERY}'", "(16, 4)")


@pytest.mark.parametrize("leaf,fragment", [
    (msgpack.ExtType(7, b"xx"), "unknown msgpack extension type 7"),
    (msgpack.ExtType(1, msgpack.packb([[16], "object", b"\x00" * 16])), "dtype 'object'"),
    (msgpack.ExtType(1, msgpack.packb([[16], "float32", b"\x00" * 10])), "needs 64 (truncated?)"),
    ("a string", "not an array"),
])
def test_malformed_leaves(tmp_path, leaf, fragment):
    path = tmp_path / "ckpt"
    random_t5x_checkpoint(CONFIG, path, seed=10)
    state = msgpack.unpackb((path / "checkpoint").read_bytes(), raw=False, strict_map_key=False)
    state["optimizer"]["target"]["encoder"]["encoder_norm"]["scale"] = leaf
    (path / "checkpoint").write_bytes(msgpack.packb(state, use_bin_type=True))
    one_line_error(lambda: load_t5x_params(CONFIG, path), "encoder/encoder_norm/scale", fragment)


def test_non_finite_values_are_refused(tmp_path):
    tree = unflatten_params(random_flat_params(CONFIG, 12))
    tree["encoder"]["layers_0"]["attention"]["query"]["kernel"][0, 0] = np.nan
    write_t5x_checkpoint(tmp_path / "ckpt", tree, zarr={QUERY})
    one_line_error(lambda: load_t5x_params(CONFIG, tmp_path / "ckpt"), "NaN or inf", QUERY)


def test_not_a_checkpoint_directory(tmp_path):
    one_line_error(lambda: load_t5x_params(CONFIG, tmp_path / "nothing"), "not a directory")
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: load_t5x_params(CONFIG, tmp_path / "empty"), "no file named 'checkpoint'")
    (tmp_path / "noparams").mkdir()
    (tmp_path / "noparams" / "checkpoint").write_bytes(msgpack.packb({"version": 3, "optimizer": {"state": {}}}))
    one_line_error(lambda: load_t5x_params(CONFIG, tmp_path / "noparams"), "no 'optimizer/target'")


def test_layout_keys_are_the_spec_names():
    keys = t5_param_shapes(CONFIG)
    for key in ("decoder/gp_head/output_layer/kernel", "decoder/gp_head_state/random_features/hidden_layer/kernel",
                "decoder/gp_head_state/laplace_covariance/covmat_layer/precision_matrix", "decoder/gp_head_state/step",
                "decoder/layers_1/mlp/wo/fast_weight_gamma", "encoder/relpos_bias/rel_embedding",
                "decoder/layers_0/encoder_decoder_attention/out/kernel"):
        assert key in keys, key
    assert zarr_name(QUERY) == "target.encoder.layers_0.attention.query.kernel"


def test_directory_hash_changes_with_any_file(tmp_path):
    path = tmp_path / "ckpt"
    random_t5x_checkpoint(CONFIG, path, seed=11, zarr={QUERY})
    before = directory_sha256(path)
    assert directory_sha256(path) == before
    chunk = next(p for p in (path / zarr_name(QUERY)).iterdir() if p.name != ".zarray")
    chunk.write_bytes(chunk.read_bytes() + b"\0")
    assert directory_sha256(path) != before
