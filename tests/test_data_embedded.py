"""The embedded datasets, checked against their raw sources (IDX bytes, scikit-learn's arrays)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from plexbench.data import load
from plexbench.data.builders import fashion_mnist as fm
from plexbench.data.prepare import prepare
from plexbench.errors import PlexbenchError

IDX_DIR = Path("/usr/share/datasets/fashion-mnist")


def _raw_idx(name: str, header: int) -> np.ndarray:
    """The payload of an IDX file read independently: gunzip, skip the header, bytes as uint8."""
    return np.frombuffer(gzip.decompress((IDX_DIR / name).read_bytes()), dtype=np.uint8, offset=header)


# --------------------------------------------------------------------------- fashion_mnist

def test_fashion_mnist_counts(data_dir):
    assert load.num_examples("fashion_mnist", "train", data_dir) == 58_800  # train[:98%]
    assert load.num_examples("fashion_mnist", "validation", data_dir) == 1_200
    assert load.num_examples("fashion_mnist", "train[:100%]", data_dir) == 60_000
    assert load.num_examples("fashion_mnist", "test", data_dir) == 10_000
    train = load.load_arrays("fashion_mnist", "train[:100%]", data_dir)
    test = load.load_arrays("fashion_mnist", "test", data_dir)
    np.testing.assert_array_equal(np.bincount(train["label"], minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test["label"], minlength=10), [1000] * 10)
    assert train["image"].shape == (60_000, 28, 28, 1) and train["image"].dtype == np.uint8
    np.testing.assert_array_equal(test["id"], np.arange(10_000))


@pytest.mark.parametrize("split, prefix", [("train[:100%]", "train"), ("test", "t10k")])
def test_fashion_mnist_matches_idx_bytes(data_dir, split, prefix):
    """Same (image, label) pairs as the IDX files; TFDS orders examples by key hash, so match by content."""
    images = _raw_idx(f"{prefix}-images-idx3-ubyte.gz", header=16).reshape(-1, 28, 28)
    labels = _raw_idx(f"{prefix}-labels-idx1-ubyte.gz", header=8)
    arrays = load.load_arrays("fashion_mnist", split, data_dir)
    loaded = {}
    for position, (image, label) in enumerate(zip(arrays["image"][..., 0], arrays["label"])):
        loaded.setdefault(image.tobytes(), []).append((position, int(label)))
    # sampled IDX indices: the exact pixels are present, with the IDX label
    for i in np.random.default_rng(0).choice(len(labels), 25, replace=False):
        matches = loaded.get(images[i].tobytes(), [])
        assert any(label == labels[i] for _, label in matches), i
        position = next(p for p, label in matches if label == labels[i])
        np.testing.assert_array_equal(arrays["image"][position, :, :, 0], images[i])
    # the whole split: equal multisets of (pixels, label)
    ours = sorted(image.tobytes() + bytes([label]) for image, label in zip(arrays["image"][..., 0], arrays["label"]))
    raw = sorted(image.tobytes() + bytes([label]) for image, label in zip(images, labels))
    assert ours == raw


def test_official_tfds_builder_reads_the_prepared_data(data_dir):
    import tensorflow_datasets as tfds

    ds = tfds.load("fashion_mnist", split="test[:500]", data_dir=str(data_dir), batch_size=-1, shuffle_files=False)
    official = tfds.as_numpy(ds)
    ours = load.load_arrays("fashion_mnist", "test", data_dir)
    np.testing.assert_array_equal(official["image"], ours["image"][:500])
    np.testing.assert_array_equal(official["label"], ours["label"][:500])


def test_second_prepare_does_nothing(data_dir):
    folder = data_dir / "fashion_mnist" / "3.0.1"
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}
    assert prepare("fashion_mnist", data_dir) is False
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()} == before


def test_idx_parser_rejects_bad_files(tmp_path):
    good = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    np.testing.assert_array_equal(fm.parse_idx(good), [1, 2, 3])
    for raw, message in [(b"\x01\x00\x08\x01", "bad magic"), (bytes([0, 0, 7, 1]), "type code"),
                         (bytes([0, 0, 8, 2, 0, 0]), "truncated"), (good[:-1], "needs 11"), (good + b"x", "needs 11")]:
        with pytest.raises(PlexbenchError, match=message):
            fm.parse_idx(raw)
    with pytest.raises(PlexbenchError, match="dataset-fashion-mnist"):
        fm.read_idx(tmp_path / "missing.gz")
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(PlexbenchError, match="corrupt gzip"):
        fm.read_idx(broken)


def test_prepare_without_sources_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PLEXBENCH_FASHION_MNIST_DIR", str(tmp_path / "empty"))
    with pytest.raises(PlexbenchError, match="Fashion-MNIST file missing") as e:
        prepare("fashion_mnist", tmp_path / "data")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "data" / "fashion_mnist").exists()


# --------------------------------------------------------------------------- digits

def _expected_digits():
    """scikit-learn's arrays, the documented pixel map and split rule, computed here independently."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.floor(bunch.images * 255 / 16 + 0.5).astype(np.uint8)  # round, halves up
    labels = bunch.target
    # k-th example of its class (k from 0, row order) -> test when k % 5 == 4
    onehot = labels[:, None] == np.arange(10)[None, :]
    rank = (np.cumsum(onehot, axis=0) - 1)[np.arange(len(labels)), labels]
    test_rows = np.flatnonzero(rank % 5 == 4)
    train_rows = np.setdiff1d(np.arange(len(labels)), test_rows)
    return images, labels, {"train": train_rows, "test": test_rows}


def test_digits_pixel_map_by_hand():
    from plexbench.data.builders.digits import to_uint8

    # 0 -> 0, 1 -> 15.94 -> 16, 8 -> 127.5 -> 128 (half up), 15 -> 239.06 -> 239, 16 -> 255
    np.testing.assert_array_equal(to_uint8(np.array([0, 1, 8, 15, 16.0])), [0, 16, 128, 239, 255])
    with pytest.raises(ValueError):
        to_uint8(np.array([17]))


def test_digits_match_sklearn(data_dir):
    images, labels, rows = _expected_digits()
    assert len(rows["train"]) == 1442 and len(rows["test"]) == 355
    for split in ("train", "test"):
        arrays = load.load_arrays("digits", f"{split}[:100%]", data_dir)
        np.testing.assert_array_equal(arrays["image"][..., 0], images[rows[split]])
        np.testing.assert_array_equal(arrays["label"], labels[rows[split]])
    test_labels = load.load_arrays("digits", "test", data_dir)["label"]
    np.testing.assert_array_equal(np.bincount(test_labels), np.bincount(labels) // 5)
    assert load.num_examples("digits", "train", data_dir) == round(1442 * 0.8)  # train[:80%]
    assert load.num_examples("digits", "validation", data_dir) == 1442 - round(1442 * 0.8)


def test_digits_prepared_twice_is_identical(tmp_path, data_dir):
    fresh = tmp_path / "fresh"
    assert prepare("digits", fresh) is True
    snapshot = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(fresh.rglob("*"))}
    assert prepare("digits", fresh) is False
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(fresh.rglob("*"))} == snapshot
    for split in ("train", "validation", "test"):
        assert load.dataset_fingerprint("digits", split, fresh) == load.dataset_fingerprint("digits", split, data_dir)
    assert not (fresh / "downloads").exists()


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _reverse_feature_order(record: bytes) -> bytes:
    """The same tf.train.Example with its feature map entries serialised in reverse order.

    Wire format: Example = field 1 (Features), Features = repeated field 1 (map entries); both tag 0x0A.
    """
    assert record[0] == 0x0A
    length, i = _varint(record, 1)
    features, entries, j = record[i:i + length], [], 0
    while j < len(features):
        assert features[j] == 0x0A
        n, k = _varint(features, j + 1)
        entries.append(features[j:k + n])
        j = k + n
    body = b"".join(reversed(entries))
    return b"\x0a" + _encode_varint(len(body)) + body


def _rewrite(shard: Path, transform) -> None:
    import tensorflow as tf

    records = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    mtime = shard.stat().st_mtime_ns
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for index, record in enumerate(records):
            writer.write(transform(index, record))
    os.utime(shard, ns=(mtime + 10**9, mtime + 10**9))  # a new mtime even on coarse clocks


def test_fingerprint_follows_content_not_bytes(tmp_path, data_dir):
    import shutil

    import tensorflow as tf

    copy = tmp_path / "copy"
    shutil.copytree(data_dir / "digits", copy / "digits", ignore=shutil.ignore_patterns(".plexbench-arrays"))
    before = load.dataset_fingerprint("digits", "test", copy)
    assert before == load.dataset_fingerprint("digits", "test", data_dir)
    assert before != load.dataset_fingerprint("digits", "train", copy)
    shard = next((copy / "digits" / "1.0.0").glob("digits-test.tfrecord-*"))
    original = shard.read_bytes()
    # Same examples, feature maps serialised in another order (as TFDS may do): same fingerprint.
    _rewrite(shard, lambda i, r: _reverse_feature_order(r))
    assert shard.read_bytes() != original
    assert load.dataset_fingerprint("digits", "test", copy) == before

    def relabel_first(index: int, record: bytes) -> bytes:
        if index:
            return record
        example = tf.train.Example.FromString(record)
        label = example.features.feature["label"].int64_list.value
        label[0] = (label[0] + 1) % 10
        return example.SerializeToString()

    _rewrite(shard, relabel_first)  # one label changed: another fingerprint
    assert load.dataset_fingerprint("digits", "test", copy) != before
