"""The input pipeline: coverage, padding, process shares, resuming, prefetch, streaming."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexbench.data import load
from plexbench.data.pipeline import _apply, batches, batches_per_process, shard_bounds
from plexbench.data.preprocess import parse
from plexbench.data.registry import get_dataset
from plexbench.errors import PlexbenchError

SPEC = "resize(16)|grey_to_rgb|value_range(-1,1)"


def _collect(**kw) -> list[dict]:
    kw.setdefault("preprocess", SPEC)
    return list(batches("digits", kw.pop("split", "test"), **kw))


def _valid(bs: list[dict], key: str) -> np.ndarray:
    return np.concatenate([b[key][b["mask"]] for b in bs]) if bs else np.zeros(0)


def test_every_example_once_with_padding(data_dir):
    bs = _collect(batch_size=64, data_dir=data_dir)
    assert len(bs) == 6  # ceil(355 / 64)
    for b in bs:
        assert b["image"].shape == (64, 16, 16, 3) and b["image"].dtype == np.float32
        assert b["label"].dtype == np.int64 and b["id"].dtype == np.int64 and b["mask"].dtype == bool
    np.testing.assert_array_equal(_valid(bs, "id"), np.arange(355))
    last = bs[-1]
    assert last["mask"].sum() == 355 - 5 * 64
    assert np.all(last["label"][~last["mask"]] == -1) and np.all(last["id"][~last["mask"]] == -1)
    assert np.all(last["image"][~last["mask"]] == 0)
    # content: the preprocessed arrays, in dataset order
    arrays = load.load_arrays("digits", "test", data_dir)
    np.testing.assert_array_equal(_valid(bs, "label"), arrays["label"])
    np.testing.assert_array_equal(np.concatenate([b["image"][b["mask"]] for b in bs]), parse(SPEC)(arrays["image"]))


def test_deterministic(data_dir):
    first, second = _collect(batch_size=50, data_dir=data_dir), _collect(batch_size=50, data_dir=data_dir)
    for a, b in zip(first, second, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_process_shares_reassemble_in_order(data_dir):
    shares = [_collect(batch_size=32, data_dir=data_dir, process_index=p, process_count=3, start=7, stop=300)
              for p in range(3)]
    assert len({len(s) for s in shares}) == 1  # lockstep: same number of batches everywhere
    ids = [_valid(s, "id") for s in shares]
    np.testing.assert_array_equal(np.concatenate(ids), np.arange(7, 300))
    sizes = [len(i) for i in ids]
    assert max(sizes) - min(sizes) <= 1
    for i in ids:  # contiguous
        np.testing.assert_array_equal(i, np.arange(i[0], i[0] + len(i)))


def test_more_processes_than_examples(data_dir):
    # 2 examples over 3 processes: shares [7,7), [7,8), [8,9); process 0 yields one all-padding batch
    shares = [_collect(batch_size=4, data_dir=data_dir, process_index=p, process_count=3, start=7, stop=9)
              for p in range(3)]
    assert [len(s) for s in shares] == [1, 1, 1]
    assert shares[0][0]["mask"].sum() == 0 and shares[0][0]["image"].shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(np.concatenate([_valid(s, "id") for s in shares]), [7, 8])


def test_start_stop_for_resuming(data_dir):
    full = _collect(batch_size=40, data_dir=data_dir)
    tail = _collect(batch_size=40, data_dir=data_dir, start=100)
    np.testing.assert_array_equal(_valid(tail, "id"), np.arange(100, 355))
    np.testing.assert_array_equal(_valid(tail, "image"), _valid(full, "image")[100:])
    assert _collect(batch_size=40, data_dir=data_dir, start=355) == []
    past_end = _collect(batch_size=40, data_dir=data_dir, start=350, stop=10_000)
    np.testing.assert_array_equal(_valid(past_end, "id"), np.arange(350, 355))


@pytest.mark.parametrize("kw, message", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 8, "process_index": 3, "process_count": 3}, "process_index"),
    ({"batch_size": 8, "start": -1}, "start"),
    ({"batch_size": 8, "start": 10, "stop": 5}, "stop"),
    ({"batch_size": 8, "prefetch": -1}, "prefetch"),
])
def test_bad_arguments(data_dir, kw, message):
    with pytest.raises(PlexbenchError, match=message):
        batches("digits", "test", preprocess=SPEC, data_dir=data_dir, **kw)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_errors_in_preprocessing_reach_the_consumer(data_dir, prefetch):
    calls = []

    def failing(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise ValueError("boom in batch 2")
        return images.astype(np.float32)

    it = batches("digits", "test", batch_size=64, preprocess=failing, data_dir=data_dir, prefetch=prefetch)
    first = next(it)
    assert first["mask"].all()
    with pytest.raises(ValueError, match="boom in batch 2"):
        next(it)


def test_abandoned_iterator_stops_its_thread(data_dir):
    it = batches("digits", "test", batch_size=8, preprocess=SPEC, data_dir=data_dir, prefetch=2)
    next(it)
    it.close()
    alive = [t for t in threading.enumerate() if t.name == "plexbench-prefetch" and t.is_alive()]
    assert alive == []


def test_streaming_equals_in_memory(data_dir):
    kw = dict(batch_size=100, preprocess="grey_to_rgb|value_range(-1,1)", data_dir=data_dir, stop=250)
    in_memory = list(batches("fashion_mnist", "test", stream=False, **kw))
    streamed = list(batches("fashion_mnist", "test", stream=True, process_index=0, process_count=1, **kw))
    assert len(in_memory) == len(streamed) == 3
    for a, b in zip(in_memory, streamed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_varying_image_sizes_are_preprocessed_one_by_one():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(5, 9), (12, 4), (7, 7)]]
    out = _apply(parse("resize(6)|value_range(0,1)"), images)
    assert out.shape == (3, 6, 6, 3)
    np.testing.assert_array_equal(out[1], parse("resize(6)|value_range(0,1)")(images[1][None])[0])
    with pytest.raises(PlexbenchError, match="different sizes"):
        _apply(parse("value_range(0,1)"), images)


def test_soft_label_rules():
    import tensorflow as tf

    from plexbench.data.load import _select

    real = get_dataset("imagenet2012_real")
    image = tf.zeros((2, 2, 3), tf.uint8)
    out = _select({"image": image, "original_label": tf.constant(3), "real_label": tf.constant([3, 5])}, info=real)
    expected = np.zeros(1000, np.float32)
    expected[[3, 5]] = 0.5
    np.testing.assert_array_equal(out["soft_label"].numpy(), expected)
    assert int(out["label"]) == 3
    empty = _select({"image": image, "original_label": tf.constant(1),
                     "real_label": tf.zeros((0,), tf.int64)}, info=real)
    assert float(tf.reduce_sum(empty["soft_label"])) == 0.0
    votes = np.array([0.1, 0.9] + [0.0] * 8, np.float32)
    h = _select({"image": image, "label": tf.constant(1), "soft_label": tf.constant(votes)},
                info=get_dataset("cifar10_h"))
    np.testing.assert_array_equal(h["soft_label"].numpy(), votes)


def test_load_arrays_cache(tmp_path, data_dir):
    import shutil

    shutil.copytree(data_dir / "digits", tmp_path / "digits", ignore=shutil.ignore_patterns(".plexbench-arrays"))
    first = load.load_arrays("digits", "test", tmp_path)
    assert not first["image"].flags.writeable
    cache = next((tmp_path / "digits" / "1.0.0" / ".plexbench-arrays").glob("*.npz"))
    cache.write_bytes(b"not an npz")  # a damaged cache file is ignored and rewritten
    load._load_range.cache_clear()
    again = load.load_arrays("digits", "test", tmp_path)
    np.testing.assert_array_equal(again["image"], first["image"])
    assert cache.read_bytes()[:2] == b"PK"


def test_load_arrays_refuses_varying_sizes():
    with pytest.raises(PlexbenchError, match="varying size"):
        load._check_fits_in_memory(get_dataset("imagenet2012"), load.SplitRange("validation", 0, 50_000))


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 50), m=st.integers(0, 500), count=st.integers(1, 9), batch=st.integers(1, 64))
def test_shares_partition_the_range(start, m, count, batch):
    stop = start + m
    bounds = [shard_bounds(start, stop, p, count) for p in range(count)]
    assert bounds[0][0] == start and bounds[-1][1] == stop
    assert all(bounds[p][1] == bounds[p + 1][0] for p in range(count - 1))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
    total = batches_per_process(start, stop, batch, count)
    assert all(total * batch >= s for s in sizes)
    assert total == 0 or (total - 1) * batch < max(sizes)
