"""TensorFlow twins of the preprocessing ops and the deferred value_range: bit-identity with the numpy ops.

The numpy ops are themselves checked against tf.image.resize run eagerly (test_data_preprocess.py);
here each twin runs where the pipeline runs it, traced inside tf.data's map, and must give the
numpy op's bits for every image.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexbench.data import preprocess as pp
from plexbench.errors import PlexbenchError


def _tf():
    import tensorflow as tf

    return tf


def _in_tf_data(fn, images: list[np.ndarray]) -> list[np.ndarray]:
    """`fn` applied to each image inside a tf.data map (traced, as the pipeline runs it)."""
    tf = _tf()
    channels = images[0].shape[-1]
    ds = tf.data.Dataset.from_generator(lambda: iter(images), output_signature=tf.TensorSpec(
        (None, None, channels), tf.dtypes.as_dtype(images[0].dtype)))
    return [x for x in ds.map(fn, num_parallel_calls=2, deterministic=True).as_numpy_iterator()]


def _assert_twin(spec: str, images: list[np.ndarray]) -> None:
    pre = pp.parse(spec)
    got = _in_tf_data(pp.tf_image_fn(pre), images)
    for image, out in zip(images, got, strict=True):
        want = pre(image[None])[0]
        assert out.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(out, want, err_msg=f"{spec} on {image.shape}")


def _photo(rng, h: int, w: int, c: int = 3) -> np.ndarray:
    """Smooth content plus noise (bilinear weights meet every fraction), and saturated corners."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(yy / 7.0 + rng.uniform(0, 6))[..., None] * np.cos(xx / 11.0)[..., None]
    x = np.clip(base + rng.normal(0, 20, (h, w, c)), 0, 255).astype(np.uint8)
    x[:3, :3] = 255
    x[-3:, -3:] = 0
    return x


# --------------------------------------------------------------------------- each op


def test_value_range_twin_exhaustive_over_uint8():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    for low, high in [(-1, 1), (0, 1), (-0.5, 2.25), (0, 255), (-3.7, 11.1)]:
        _assert_twin(f"value_range({low},{high})", [values])


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), out_h=st.integers(1, 90), out_w=st.integers(1, 90),
       channels=st.sampled_from([1, 3]), seed=st.integers(0, 2**16))
def test_resize_twin_bit_identical(h, w, out_h, out_w, channels, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    _assert_twin(f"resize({out_h},{out_w})", [image])
    pre = pp.parse(f"resize({out_h},{out_w})")  # float input stays float, as in numpy
    got = _in_tf_data(pp.tf_image_fn(pre), [image.astype(np.float32)])[0]
    np.testing.assert_array_equal(got, pre(image[None].astype(np.float32))[0])


_SIZES = None


def _traced_sizes():
    global _SIZES
    if _SIZES is None:
        tf = _tf()
        _SIZES = tf.function(pp.tf_resize_small_size, input_signature=[tf.TensorSpec((), tf.int32)] * 3)
    return _SIZES


@settings(max_examples=300, deadline=None)
@given(h=st.integers(1, 6000), w=st.integers(1, 6000), side=st.integers(1, 1024))
def test_resize_small_sizes_traced_equal_numpy(h, w, side):
    got = _traced_sizes()(h, w, side)
    assert (int(got[0]), int(got[1])) == pp.resize_small_size(h, w, side)


def test_resize_small_sizes_at_rounding_ties():
    # factor 2/4 = 0.5: 5 * 0.5 = 2.5 and 7 * 0.5 = 3.5 round half to even -> 2 and 4
    assert pp.resize_small_size(4, 3, 2) == (3, 2)  # 4 * (2/3) = 2.67 -> 3
    assert pp.resize_small_size(4, 5, 2) == (2, 2)
    assert pp.resize_small_size(4, 7, 2) == (2, 4)
    for h, w in [(4, 5), (4, 7), (5, 4), (7, 4), (4, 3)]:
        got = _traced_sizes()(h, w, 2)
        assert (int(got[0]), int(got[1])) == pp.resize_small_size(h, w, 2)


def test_crop_and_grey_twins():
    rng = np.random.default_rng(1)
    grey = [rng.integers(0, 256, (h, w, 1), dtype=np.uint8) for h, w in [(5, 5), (6, 9), (9, 6)]]
    _assert_twin("central_crop(2,3)|grey_to_rgb", grey)
    _assert_twin("grey_to_rgb", grey)
    with pytest.raises(_tf().errors.InvalidArgumentError, match="central_crop"):
        _in_tf_data(pp.tf_image_fn(pp.parse("central_crop(6)")), grey)


# --------------------------------------------------------------------------- the evaluation chains


@pytest.mark.parametrize("spec", [
    "resize(384)|grey_to_rgb|value_range(-1,1)",
    "resize_small(256)|central_crop(224)|grey_to_rgb|value_range(-1,1)",
])
def test_evaluation_chains_on_imagenet_sizes(spec):
    rng = np.random.default_rng(7)
    sizes = [(375, 500), (500, 375), (333, 500), (500, 500), (257, 263), (224, 1000), (600, 401)]
    _assert_twin(spec, [_photo(rng, h, w) for h, w in sizes])


def test_twin_output_shapes_are_static_when_the_chain_fixes_them():
    tf = _tf()
    spec = tf.TensorSpec((None, None, 3), tf.uint8)
    for chain, shape in [("resize(384)|value_range(-1,1)", (384, 384, 3)),
                         ("resize_small(256)|central_crop(224)|value_range(-1,1)", (224, 224, 3)),
                         ("value_range(-1,1)", (None, None, 3))]:
        fn = tf.function(pp.tf_image_fn(pp.parse(chain)), input_signature=[spec])
        assert tuple(fn.get_concrete_function().structured_outputs.shape) == shape


def test_ops_without_a_twin_give_none():
    pre = pp.Preprocess(spec="custom", ops=(lambda x: x,), steps=(("custom", ()),))
    assert pp.tf_image_fn(pre) is None
    assert pp.tf_image_fn(pp.Preprocess(spec="custom", ops=(lambda x: x,))) is None  # no steps recorded


# --------------------------------------------------------------------------- deferred value_range


def test_value_range_table_by_hand():
    table = pp.value_range_table(-1, 1)
    assert table.dtype == np.float32 and table.shape == (256,)
    np.testing.assert_allclose(table[[0, 51, 255]], [-1.0, -0.6, 1.0], rtol=0, atol=1e-7)


@pytest.mark.parametrize("spec", [
    "resize(384)|grey_to_rgb|value_range(-1,1)",
    "resize_small(256)|central_crop(224)|value_range(-1,1)",
    "grey_to_rgb|value_range(0,1)",
])
def test_split_value_range_is_exact(spec):
    pre = pp.parse(spec)
    head, table = pp.split_value_range(pre)
    rng = np.random.default_rng(2)
    x = np.stack([_photo(rng, 300, 420)] * 2)
    x[1] = rng.integers(0, 256, x[1].shape, dtype=np.uint8)
    cut = head(x)
    assert cut.dtype == np.uint8
    np.testing.assert_array_equal(table[cut], pre(x))
    (tf_cut,) = _in_tf_data(pp.tf_image_fn(head), [x[0]])
    assert tf_cut.dtype == np.uint8
    np.testing.assert_array_equal(tf_cut, cut[0])


@pytest.mark.parametrize("spec", ["resize(8)", "value_range(-1,1)|resize(8)",
                                  "value_range(0,1)|value_range(-1,1)", ""])
def test_split_value_range_refuses_other_chains(spec):
    assert pp.split_value_range(pp.parse(spec)) is None


def test_grey_twin_refuses_other_channel_counts():
    with pytest.raises(PlexbenchError, match="1 or 3 channels"):
        _in_tf_data(pp.tf_image_fn(pp.parse("grey_to_rgb")), [np.zeros((2, 2, 2), np.uint8)])
