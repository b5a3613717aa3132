"""The streaming path: TF twins inside tf.data on JPEGs of varying size, uint8 batches and the engine.

The data are real files: synthetic ImageNet-like JPEGs written as a TFDS dataset by
benchmarks/pipeline.py (the benchmark's own generator), read back through TFDS like ImageNet.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from plexbench.data import pipeline
from plexbench.data.preprocess import value_range_table
from plexbench.errors import PlexbenchError

REPO = Path(__file__).resolve().parent.parent
FINETUNED = "resize(384)|grey_to_rgb|value_range(-1,1)"
UPSTREAM = "resize_small(256)|central_crop(224)|grey_to_rgb|value_range(-1,1)"
N = 19  # not a multiple of the batch sizes used below


def _bench():
    spec = importlib.util.spec_from_file_location("bench_pipeline", REPO / "benchmarks" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def jpeg_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic-jpeg")
    stats = _bench().write_synthetic_imagenet(folder, N, seed=1)
    assert stats["images"] == N and 50 < stats["mean_kb"] < 200
    return folder


def _collect(jpeg_dir, spec, **kw) -> list[dict]:
    kw.setdefault("batch_size", 8)
    return list(pipeline.batches("imagenet2012", "test", preprocess=spec, data_dir=jpeg_dir, **kw))


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype, key
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_synthetic_sizes_vary_around_500x375(jpeg_dir):
    sizes = _bench().image_sizes(200)
    assert len(set(sizes)) > 150
    longer = [max(s) for s in sizes]
    assert 400 <= min(longer) and max(longer) <= 600 and abs(np.mean(longer) - 500) < 15
    corners = _collect(jpeg_dir, lambda x: x[:, :1, :1], batch_size=1)  # a callable: numpy, one image at a time
    assert len(corners) == N and corners[0]["image"].shape == (1, 1, 1, 3)  # read back through TFDS


@pytest.mark.parametrize("spec", [FINETUNED, UPSTREAM])
def test_tf_ops_equal_numpy_ops_bit_for_bit(jpeg_dir, spec):
    numpy_path = _collect(jpeg_dir, spec, tf_ops=False)
    tf_path = _collect(jpeg_dir, spec)  # the default for a streamed spec
    _assert_same(tf_path, numpy_path)
    size = 384 if spec == FINETUNED else 224
    assert tf_path[0]["image"].shape == (8, size, size, 3) and tf_path[0]["image"].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([b["id"][b["mask"]] for b in tf_path]), np.arange(N))


def test_process_shares_and_resuming_on_the_tf_path(jpeg_dir):
    whole = _collect(jpeg_dir, UPSTREAM, batch_size=4, start=3, stop=17, tf_ops=False)
    shares = [_collect(jpeg_dir, UPSTREAM, batch_size=4, start=3, stop=17, process_index=p, process_count=3)
              for p in range(3)]
    assert len({len(s) for s in shares}) == 1
    ids = np.concatenate([b["id"][b["mask"]] for s in shares for b in s])
    np.testing.assert_array_equal(ids, np.arange(3, 17))
    images = np.concatenate([b["image"][b["mask"]] for s in shares for b in s])
    np.testing.assert_array_equal(images, np.concatenate([b["image"][b["mask"]] for b in whole]))


@pytest.mark.parametrize("tf_ops", [True, False])
def test_uint8_images_and_table_give_the_float_images(jpeg_dir, tf_ops):
    floats = _collect(jpeg_dir, FINETUNED, tf_ops=tf_ops)
    uint8s = _collect(jpeg_dir, FINETUNED, tf_ops=tf_ops, uint8_images=True)
    assert len(floats) == len(uint8s) == 3
    for f, u in zip(floats, uint8s):
        assert u["image"].dtype == np.uint8 and u["image"].shape == f["image"].shape
        np.testing.assert_array_equal(u["image_table"], value_range_table(-1, 1))
        np.testing.assert_array_equal(u["image_table"][u["image"]][u["mask"]], f["image"][f["mask"]])
        assert np.all(u["image"][~u["mask"]] == 0)
        for key in ("id", "label", "mask"):
            np.testing.assert_array_equal(u[key], f[key])


def test_uint8_images_leave_other_specs_alone(jpeg_dir):
    spec = "resize(32)|value_range(-1,1)|grey_to_rgb"  # value_range not last: nothing to defer
    batch = _collect(jpeg_dir, spec, uint8_images=True, stop=8)[0]
    assert batch["image"].dtype == np.float32 and "image_table" not in batch


def test_in_memory_source_with_uint8_images(data_dir):
    kw = dict(batch_size=100, preprocess="grey_to_rgb|value_range(-1,1)", data_dir=data_dir, stop=250)
    floats = list(pipeline.batches("fashion_mnist", "test", **kw))
    uint8s = list(pipeline.batches("fashion_mnist", "test", uint8_images=True, **kw))
    for f, u in zip(floats, uint8s, strict=True):
        assert u["image"].dtype == np.uint8
        np.testing.assert_array_equal(u["image_table"][u["image"]][u["mask"]], f["image"][f["mask"]])


def test_a_spec_without_one_output_size_is_refused(jpeg_dir):
    with pytest.raises(PlexbenchError, match="one image size.*resize"):
        _collect(jpeg_dir, "value_range(-1,1)")


def test_a_crop_larger_than_an_image_is_one_line(jpeg_dir):
    with pytest.raises(PlexbenchError, match="central_crop\\(700,700\\) is larger") as e:
        _collect(jpeg_dir, "central_crop(700)|value_range(-1,1)")
    assert "\n" not in str(e.value)


def test_input_workers_follow_the_affinity(monkeypatch):
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert pipeline.input_workers() == 3


@pytest.mark.slow
def test_engine_gives_the_same_logits_from_uint8_batches(jpeg_dir):
    from plexbench.inference.engine import Engine
    from plexbench.inference.handle import handle_from_config
    from plexbench.models.checkpoint import init_params
    from plexbench.models.config import ModelConfig

    config = ModelConfig(image_size=32, patch_size=8, hidden_size=16, mlp_dim=32, num_heads=2, num_layers=2,
                         num_classes=10, ensemble_size=2, be_layers=(1,), head="heteroscedastic", num_factors=2,
                         temperature=1.25, num_mc_samples=4)
    engine = Engine(handle_from_config(config, init_params(config)), dtype="float32", seed=3)
    spec = "resize(32)|grey_to_rgb|value_range(-1,1)"
    floats = list(engine.run(_collect(jpeg_dir, spec, stop=12), 8))
    uint8s = list(engine.run(_collect(jpeg_dir, spec, stop=12, uint8_images=True), 8))
    assert len(floats) == len(uint8s) == 2
    for f, u in zip(floats, uint8s):
        np.testing.assert_array_equal(u["id"], f["id"])
        np.testing.assert_array_equal(u["logits"][:, u["mask"]], f["logits"][:, f["mask"]])
        np.testing.assert_array_equal(u["pre_logits"][:, u["mask"]], f["pre_logits"][:, f["mask"]])
    assert np.isfinite(floats[0]["logits"]).all()
