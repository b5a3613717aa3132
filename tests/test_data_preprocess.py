"""Preprocessing ops: hand-computed cases, bit-exactness against tf.image.resize, the spec parser."""

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


# --------------------------------------------------------------------------- bilinear by hand

# 2x2 -> 4x4, half-pixel centres: scale 0.5, source positions (i + 0.5) * 0.5 - 0.5 =
# -0.25, 0.25, 0.75, 1.25 -> (lower, upper, lerp) = (0,0,.75), (0,1,.25), (0,1,.75), (1,1,.25).
# Input rows [0, 100] and [200, 40]:
#   row 0 (both rows 0):  0, 0+100*.25=25, 0+100*.75=75, 100
#   row 3 (both rows 1):  200, 200-160*.25=160, 200-160*.75=80, 40
#   row 1 (lerp .25):     0+200*.25=50, 25+135*.25=58.75, 75+5*.25=76.25, 100-60*.25=85
#   row 2 (lerp .75):     150, 25+135*.75=126.25, 75+5*.75=78.75, 100-60*.75=55
BILINEAR_2_TO_4 = np.array([[0, 25, 75, 100],
                            [50, 58.75, 76.25, 85],
                            [150, 126.25, 78.75, 55],
                            [200, 160, 80, 40]], dtype=np.float32)


def test_bilinear_2x2_to_4x4_by_hand():
    x = np.array([[0, 100], [200, 40]], dtype=np.uint8)[None, :, :, None]
    out_float = pp.bilinear_resize(x.astype(np.float32), size=(4, 4))
    np.testing.assert_array_equal(out_float[0, :, :, 0], BILINEAR_2_TO_4)
    out_uint8 = pp.bilinear_resize(x, size=(4, 4))
    assert out_uint8.dtype == np.uint8
    # truncation, not rounding: 58.75 -> 58, 76.25 -> 76, 126.25 -> 126, 78.75 -> 78
    np.testing.assert_array_equal(out_uint8[0, :, :, 0], np.floor(BILINEAR_2_TO_4).astype(np.uint8))


def test_bilinear_axis_weights_by_hand():
    lower, upper, lerp = pp.bilinear_axis(2, 4)
    np.testing.assert_array_equal(lower, [0, 0, 0, 1])
    np.testing.assert_array_equal(upper, [0, 1, 1, 1])
    np.testing.assert_array_equal(lerp, [0.75, 0.25, 0.75, 0.25])


def test_resize_same_size_is_identity():
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pp.bilinear_resize(x, size=(5, 7)), x)
    np.testing.assert_array_equal(pp.area_resize(x, (5, 7)), x)


# --------------------------------------------------------------------------- area by hand

def test_area_by_hand():
    # 4x4 -> 2x2: scale 2, each output is the mean of one 2x2 block.
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    expected = np.array([[(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4],
                         [(8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4]])
    np.testing.assert_allclose(pp.area_resize(x, (2, 2))[0, :, :, 0], expected, rtol=0, atol=1e-6)
    # 1x3 -> 1x2: scale 1.5; out 0 covers [0, 1.5): cell 0 (weight 1) + half of cell 1;
    # out 1 covers [1.5, 3): half of cell 1 + cell 2; both divided by 1.5.
    row = np.array([30, 60, 90], dtype=np.float32).reshape(1, 1, 3, 1)
    expected = [(30 + 0.5 * 60) / 1.5, (0.5 * 60 + 90) / 1.5]  # 40, 80
    np.testing.assert_allclose(pp.area_resize(row, (1, 2))[0, 0, :, 0], expected, rtol=1e-6)


def test_resize_small_size_by_hand():
    # 375x500 to 256: factor 256/375 = 0.68267; 500 * 0.68267 = 341.33 -> 341
    assert pp.resize_small_size(375, 500, 256) == (256, 341)
    assert pp.resize_small_size(500, 375, 256) == (341, 256)
    assert pp.resize_small_size(224, 224, 256) == (256, 256)
    # 3x5 to 2: 5 * 2/3 = 3.33 -> 3
    assert pp.resize_small_size(3, 5, 2) == (2, 3)


# --------------------------------------------------------------------------- against TensorFlow

@pytest.mark.parametrize("channels", [1, 3])
def test_bilinear_and_area_bit_exact_with_tf(channels):
    tf = _tf()
    rng = np.random.default_rng(channels)
    cases = [(28, 28, 384, 384), (32, 32, 384, 384), (375, 500, 384, 384), (8, 8, 28, 28), (61, 47, 20, 33)]
    cases += [tuple(int(v) for v in rng.integers(1, 60, 4)) for _ in range(12)]
    for H, W, h, w in cases:
        x = rng.integers(0, 256, (2, H, W, channels), dtype=np.uint8)
        x[1] = rng.integers(0, 256)  # a flat image: any float error would show after truncation
        ref_b = tf.image.resize(x, (h, w), method="bilinear", antialias=False).numpy()
        np.testing.assert_array_equal(pp.bilinear_resize(x.astype(np.float32), size=(h, w)), ref_b)
        np.testing.assert_array_equal(pp.bilinear_resize(x, size=(h, w)), tf.cast(ref_b, tf.uint8).numpy())
        ref_a = tf.image.resize(x, (h, w), method="area").numpy()
        np.testing.assert_array_equal(pp.area_resize(x.astype(np.float32), (h, w)), ref_a)
        np.testing.assert_array_equal(pp.area_resize(x, (h, w)), tf.cast(ref_a, tf.uint8).numpy())


def _tf_upstream(tf, image, small, crop):
    """Upstream evaluation written directly in TF: resize shorter side (area), cast, central crop, [-1, 1]."""
    h, w = image.shape[0], image.shape[1]
    ratio = tf.cast(small, tf.float32) / tf.cast(min(h, w), tf.float32)
    nh = tf.cast(tf.round(tf.cast(h, tf.float32) * ratio), tf.int32)
    nw = tf.cast(tf.round(tf.cast(w, tf.float32) * ratio), tf.int32)
    resized = tf.cast(tf.image.resize(image, (nh, nw), method="area"), tf.uint8)
    top, left = (int(nh) - crop) // 2, (int(nw) - crop) // 2
    cropped = tf.image.crop_to_bounding_box(resized, top, left, crop, crop)
    return (tf.cast(cropped, tf.float32) / 255.0 * 2.0 - 1.0).numpy()


def test_upstream_chain_matches_tf():
    tf = _tf()
    rng = np.random.default_rng(3)
    fn = pp.parse("resize_small(40)|central_crop(32)|value_range(-1,1)")
    for H, W in [(53, 71), (90, 45), (40, 40), (33, 64)]:
        x = rng.integers(0, 256, (1, H, W, 3), dtype=np.uint8)
        np.testing.assert_array_equal(fn(x)[0], _tf_upstream(tf, x[0], 40, 32))


def test_finetuned_chain_matches_tf():
    tf = _tf()
    x = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    ref = tf.cast(tf.image.resize(x, (384, 384), method="bilinear", antialias=False), tf.uint8)
    ref = (tf.cast(ref, tf.float32) / 255.0 * 2.0 - 1.0).numpy()
    out = pp.parse("resize(384)|value_range(-1,1)")(x)
    assert out.dtype == np.float32 and out.shape == (3, 384, 384, 3)
    np.testing.assert_array_equal(out, ref)


# --------------------------------------------------------------------------- simple ops

def test_value_range_values():
    x = np.array([0, 51, 255], dtype=np.uint8).reshape(1, 1, 3, 1)
    out = pp.parse("value_range(-1,1)")(x).ravel()
    np.testing.assert_allclose(out, [-1.0, -0.6, 1.0], rtol=0, atol=1e-7)  # 51/255 = 0.2 -> 0.4 - 1
    np.testing.assert_array_equal(pp.parse("value_range(0,1)")(x).ravel(), np.float32([0, 51, 255]) / np.float32(255))


@settings(max_examples=50, deadline=None)
@given(low=st.floats(-10, 10), width=st.floats(0.01, 10),
       values=st.lists(st.integers(0, 255), min_size=2, max_size=20))
def test_value_range_is_monotone_and_bounded(low, width, values):
    high = low + width
    x = np.array(sorted(values), dtype=np.uint8).reshape(1, 1, -1, 1)
    out = pp.value_range(x, low=low, high=high).ravel().astype(np.float64)
    assert np.all(np.diff(out) >= 0)
    tol = 1e-5 * max(1.0, abs(low), abs(high))
    assert out.min() >= low - tol and out.max() <= high + tol


def test_grey_to_rgb_and_central_crop():
    x = np.arange(25, dtype=np.uint8).reshape(1, 5, 5, 1)
    rgb = pp.parse("grey_to_rgb")(x)
    assert rgb.shape == (1, 5, 5, 3) and rgb.dtype == np.float32
    assert np.all(rgb[..., 0] == rgb[..., 2]) and np.all(rgb[..., 0] == x[..., 0])
    three = np.zeros((1, 2, 2, 3), np.uint8)
    assert pp.grey_to_rgb(three) is three
    # 5x5 -> 2x2: offset (5 - 2) // 2 = 1, rows/cols 1..2: values 6, 7, 11, 12
    np.testing.assert_array_equal(pp.parse("central_crop(2)")(x)[0, :, :, 0], [[6, 7], [11, 12]])
    # 5x5 -> 2x3: rows 1..2, cols 1..3
    np.testing.assert_array_equal(pp.parse("central_crop(2,3)")(x)[0, :, :, 0], [[6, 7, 8], [11, 12, 13]])
    with pytest.raises(PlexbenchError, match="larger"):
        pp.parse("central_crop(6)")(x)
    with pytest.raises(PlexbenchError, match="1 or 3 channels"):
        pp.parse("grey_to_rgb")(np.zeros((1, 2, 2, 2), np.uint8))


def test_empty_spec_casts_to_float32():
    x = np.full((1, 2, 2, 1), 7, np.uint8)
    out = pp.parse("")(x)
    assert out.dtype == np.float32 and np.all(out == 7)


# --------------------------------------------------------------------------- parser errors

@pytest.mark.parametrize("spec, message", [
    ("rezise(3)", "did you mean resize"),
    ("value_rang(-1,1)", "did you mean value_range"),
    ("resize(0)", "positive integer"),
    ("resize(a)", "not a number"),
    ("resize(2.5)", "positive integer"),
    ("resize(1,2,3)", "positive integer"),
    ("resize_small(2,3)", "positive integer"),
    ("value_range(1)", "two numbers"),
    ("value_range(1,-1)", "a < b"),
    ("grey_to_rgb(3)", "no arguments"),
    ("resize(2)||grey_to_rgb", "empty op"),
    ("resize(2", "cannot parse"),
])
def test_parser_errors_are_one_line(spec, message):
    with pytest.raises(PlexbenchError, match=message) as e:
        pp.parse(spec)
    assert "\n" not in str(e.value)


def test_bad_batches_are_refused():
    fn = pp.parse("value_range(-1,1)")
    with pytest.raises(PlexbenchError, match="batch"):
        fn(np.zeros((2, 2, 1), np.uint8))
    with pytest.raises(PlexbenchError, match="uint8 or float32"):
        fn(np.zeros((1, 2, 2, 1), np.int32))
