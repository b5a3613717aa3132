"""Bad content, as classes (issue 11, items 2, 3, 6): files and sizes that would crash or mislead are
one-line errors before anything is allocated, computed or overwritten.

- npz loading (plexbench.fileio.load_npz): declared sizes checked against the file and the memory
  before allocating; broken deflate streams; any random corruption is a PlexbenchError or a clean read;
- batch sizes against the data and the memory (plexbench.inference.predict.check_batch_size);
- non-finite weights refused at checkpoint load; non-finite outputs never stored;
- a truncated or malformed metrics_long.csv refused by `leaderboard` and `plot`, which then leave the
  earlier files as they were.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from plexbench import fileio
from plexbench.errors import PlexbenchError

REPO = Path(__file__).resolve().parent.parent


def cli(capsys, *argv):
    from plexbench.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, err, *fragments):
    assert code == 2 and err.startswith("plexbench: error: ") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, (f, err)


# ------------------------------------------------------------------ item 2: npz headers, deflate, memory

def _npy_header(shape, dtype="<f8") -> bytes:
    """A version 1.0 .npy header (magic, length, dict padded to 64 bytes), written by hand."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (dtype, tuple(shape))
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _zip(path: Path, members: dict[str, bytes], compress=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compress) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_huge_declared_array_is_refused_before_allocating(tmp_path):
    # 10**12 float64 = 7.3 TiB declared, 16 bytes of data: numpy would allocate first, then read.
    path = _zip(tmp_path / "huge.npz", {"a.npy": _npy_header((10**12,)) + b"\0" * 16})
    with pytest.raises(PlexbenchError, match="declares 7,450.6 GiB but the file holds"):
        fileio.load_npz(path)
    # Compressed: the zip directory may claim any uncompressed size, deflate cannot reach it.
    path = _zip(tmp_path / "huge_z.npz", {"a.npy": _npy_header((10**12,)) + b"\0" * 16}, zipfile.ZIP_DEFLATED)
    with pytest.raises(PlexbenchError, match="declares"):
        fileio.load_npz(path)


def test_declared_size_is_checked_against_memory(tmp_path, monkeypatch):
    path = tmp_path / "ok.npz"
    fileio.save_npz(path, {"a": np.zeros(1000), "b": np.ones(1000)})  # 16,000 bytes declared
    monkeypatch.setattr(fileio, "available_memory", lambda: 15_999)
    with pytest.raises(PlexbenchError, match="more than the 15.6 KiB available"):
        fileio.load_npz(path)
    monkeypatch.setattr(fileio, "available_memory", lambda: 16_000)
    np.testing.assert_array_equal(fileio.load_npz(path)["b"], np.ones(1000))


def test_broken_deflate_stream_is_one_line(tmp_path):
    good = tmp_path / "good.npz"
    fileio.save_npz(good, {"a": np.arange(50_000, dtype=np.float64)}, compress=True)
    data = bytearray(good.read_bytes())
    info = zipfile.ZipFile(good).infolist()[0]
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # first byte of the deflate stream
    data[start:start + 2] = b"\xff\xff"  # a deflate block of the reserved type 3: "invalid block type"
    broken = tmp_path / "broken.npz"
    broken.write_bytes(bytes(data))
    with pytest.raises(zlib.error):  # what numpy alone raises on it
        with np.load(broken) as z:
            z["a"]
    with pytest.raises(PlexbenchError, match="broken compressed data"):
        fileio.load_npz(broken)


@settings(max_examples=60, deadline=None)
@given(seed=hst.integers(0, 2**32 - 1), compress=hst.booleans(), kind=hst.sampled_from(["flip", "cut", "zero"]))
def test_any_corruption_is_a_plexbench_error_or_a_clean_read(seed, compress, kind, tmp_path_factory):
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("fuzz") / "f.npz"
    fileio.save_npz(path, {"logits": rng.normal(size=(3, 40, 5)), "labels": np.arange(40)}, compress=compress)
    data = bytearray(path.read_bytes())
    if kind == "flip":
        for i in rng.integers(0, len(data), 8):
            data[i] ^= 0xFF
    elif kind == "cut":
        data = data[: int(rng.integers(1, len(data)))]
    else:
        i = int(rng.integers(0, len(data) - 64))
        data[i:i + 64] = bytes(64)
    path.write_bytes(bytes(data))
    try:
        arrays = fileio.load_npz(path)
    except PlexbenchError as e:
        assert "\n" not in str(e)
    else:
        assert set(arrays) <= {"logits", "labels"}


# ------------------------------------------------------------------ item 2: batch sizes

def test_batch_size_is_clamped_to_the_split_and_checked_against_memory():
    from plexbench.inference.predict import BATCHES_IN_MEMORY, array_source, check_batch_size

    source = array_source("s", "test", np.zeros((10, 28, 28, 3), np.float32), np.zeros(10))
    assert check_batch_size(100_000_000, source, available=10**12) == 10
    assert check_batch_size(4, source, available=10**12) == 4
    row = 28 * 28 * 3 * 4
    assert check_batch_size(8, source, available=BATCHES_IN_MEMORY * 8 * row) == 8
    with pytest.raises(PlexbenchError, match="use --batch-size 4 or less"):
        check_batch_size(8, source, available=BATCHES_IN_MEMORY * 8 * row - 1)


def test_preprocessed_shape_is_known_for_resizing_specs():
    from plexbench.inference.predict import _preprocessed_shape

    assert _preprocessed_shape((28, 28, 1), "grey_to_rgb|value_range(-1,1)") == (28, 28, 3)
    assert _preprocessed_shape((None, None, 3), "resize(384)|value_range(-1,1)") == (384, 384, 3)
    assert _preprocessed_shape((None, None, 3), "value_range(-1,1)") is None  # size varies


def test_predict_with_a_huge_batch_size_runs(data_dir, tmp_path, capsys):
    # 100,000,000 rows would be 876 GiB of padding; the batch is the split (10,000) instead.
    code, out, err = cli(capsys, "predict", "--model", "det-mini", "--dataset", "fashion_mnist", "--data-dir", data_dir,
                         "--store", tmp_path / "store", "--batch-size", 100_000_000, "--out", tmp_path / "p.npz")
    assert code == 0, err
    pred = fileio.load_npz(tmp_path / "p.npz")
    assert pred["member_logits"].shape == (1, 10_000, 10) and np.isfinite(pred["member_logits"]).all()


# ------------------------------------------------------------------ item 3: non-finite weights and outputs

@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    from plexbench.models import get_model
    from plexbench.models.checkpoint import read_flat, save_params, unflatten_params

    flat = read_flat(get_model("det-mini").checkpoint)
    key = sorted(flat)[3]
    flat[key] = flat[key].copy()
    flat[key].reshape(-1)[:2] = [np.nan, np.inf]
    path = tmp_path_factory.mktemp("nan") / "det-mini-nan.npz"
    save_params(path, unflatten_params(flat))
    return path, key


def test_model_info_refuses_nan_weights(nan_checkpoint, capsys):
    path, key = nan_checkpoint
    code, out, err = cli(capsys, "model", "info", "det-mini", "--checkpoint", path)
    one_line(code, err, "2 of", "NaN or inf", key)


def test_predict_refuses_nan_weights_and_stores_nothing(nan_checkpoint, data_dir, tmp_path, capsys):
    path, _ = nan_checkpoint
    store = tmp_path / "store"
    code, out, err = cli(capsys, "predict", "--model", "det-mini", "--checkpoint", path, "--dataset", "fashion_mnist",
                         "--data-dir", data_dir, "--store", store)
    one_line(code, err, "NaN or inf")
    assert not list(store.rglob("chunk-*.npz"))


def test_non_finite_outputs_are_never_stored(tmp_path):
    """A model that overflows on some inputs: the chunks before are stored, the bad one is not."""
    import jax.numpy as jnp

    from plexbench.inference import ModelHandle, array_source, predict
    from plexbench.inference import store as st
    from plexbench.inference import testing as T
    from plexbench.inference.handle import wrap_module_apply

    module = T.make_tiny_ensemble(2)
    apply = wrap_module_apply(module)

    def overflowing(params, images, rng):  # an input of 1e30 gives an inf logit
        out = apply(params, images, rng)
        big = jnp.abs(images).max(axis=(1, 2, 3)) > 1e29
        return {**out, "logits": jnp.where(big[None, :, None], jnp.inf, out["logits"])}

    images = T.random_images(30)
    images[20] = 1e30
    handle = ModelHandle("overflowing", overflowing, params=T.init(module), identity={"t": "inf"})
    source = array_source("s", "test", images, np.arange(30) % 3)
    with pytest.raises(PlexbenchError, match="non-finite logits values .* first at example id 20"):
        predict(handle, "s", "test", store_dir=tmp_path, source=source, chunk_size=10, verbose=False)
    entry = next(tmp_path.iterdir())
    manifest = st.read_manifest(entry)
    assert [c is not None for c in manifest["chunks"]] == [True, True, False] and not manifest["complete"]
    for rec in manifest["chunks"][:2]:
        assert np.isfinite(st.read_chunk(entry, rec)["logits"]).all()


# ------------------------------------------------------------------ item 6: truncated metrics_long.csv

@pytest.fixture()
def results(tmp_path):
    out = tmp_path / "results"
    shutil.copytree(REPO / "results" / "embedded", out, ignore=shutil.ignore_patterns("plots"))
    return out


def _cut(path: Path, how: str) -> None:
    text = path.read_text()
    if how == "mid_row":  # the last row cut in the middle of a field
        text = text[: len(text) - 30]
    elif how == "no_newline":  # the last row complete but its newline lost (last field maybe cut)
        text = text[:-1]
    elif how == "short_row":  # a row missing its last fields
        lines = text.splitlines(keepends=True)
        lines[5] = ",".join(lines[5].split(",")[:4]) + "\n"
        text = "".join(lines)
    elif how == "long_row":
        lines = text.splitlines(keepends=True)
        lines[5] = lines[5].rstrip("\n") + ",extra\n"
        text = "".join(lines)
    elif how == "empty":
        text = ""
    path.write_text(text)


@pytest.mark.parametrize("how", ["mid_row", "no_newline", "short_row", "long_row", "empty"])
def test_leaderboard_refuses_a_truncated_csv_and_keeps_the_old_board(how, results, capsys):
    board = results / "leaderboard_paper.csv"
    before = board.read_bytes()
    _cut(results / "metrics_long.csv", how)
    code, out, err = cli(capsys, "leaderboard", results)
    one_line(code, err, "metrics_long.csv")
    assert board.read_bytes() == before


@pytest.mark.parametrize("how", ["mid_row", "short_row"])
def test_plot_refuses_a_truncated_csv(how, results, capsys):
    _cut(results / "metrics_long.csv", how)
    code, out, err = cli(capsys, "plot", results, "--out", results / "figs")
    one_line(code, err, "looks")
    assert not (results / "figs").exists()


def test_check_csv_complete_accepts_what_the_runner_writes(tmp_path):
    from plexbench import results_schema as RS

    path = tmp_path / "m.csv"
    RS.write_long_csv(path, [{"model": "a,b", "task": 't"q', "value": 0.5, "n": 3}])  # quoting survives
    fileio.check_csv_complete(path)
    RS.write_long_csv(path, [])
    fileio.check_csv_complete(path)  # a header alone is complete
