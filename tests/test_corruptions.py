"""ImageNet-C corruptions: shapes, severity ordering, determinism, closed forms, the TFDS dataset."""

from __future__ import annotations

import colorsys
import zlib

import numpy as np
import pytest
from scipy import ndimage

from plexbench.data import corruptions as C
from plexbench.data.registry import CORRUPTIONS, FASHION_MNIST_CLASSES, SEVERITIES
from plexbench.errors import PlexbenchError

# Real Fashion-MNIST test images used for the severity ordering (enough that the ordering of the mean
# is not an accident of a few draws: the smallest margin among the checked pairs is ~3 standard errors).
N_ORDERING = 256


@pytest.fixture(scope="module")
def fmnist(data_dir):
    from plexbench.data.load import load_arrays

    arrays = load_arrays("fashion_mnist", "test", data_dir)
    return np.asarray(arrays["image"][:N_ORDERING]), np.asarray(arrays["id"][:N_ORDERING])


def _rgb_from(grey: np.ndarray) -> np.ndarray:
    """RGB test images: three different grey images as the channels (B, 28, 28, 3)."""
    return np.concatenate([grey[0:4], grey[4:8], grey[8:12]], axis=-1)


def _mad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference per image, in 0..255 units."""
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(axis=(1, 2, 3))


# --------------------------------------------------------------------------- shape, dtype, change


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_severity_changes_the_image_and_keeps_shape(fmnist, corruption):
    grey = fmnist[0][:12]
    rgb = _rgb_from(grey)
    wide = np.ascontiguousarray(np.tile(rgb[:2], (1, 1, 2, 1))[:, 4:24])  # (2, 20, 56, 3): not square
    for images in (grey, rgb, wide):
        ids = np.arange(len(images))
        for severity in SEVERITIES:
            out = C.corrupt_batch(images, corruption, severity, ids=ids)
            assert out.shape == images.shape and out.dtype == np.uint8
            assert np.all(_mad(out, images) > 0), (corruption, severity, images.shape)


# --------------------------------------------------------------------------- severity ordering

# Consecutive severities (s, s + 1) whose published parameters do not make the mean absolute difference
# grow; for each, the ordering (lo, hi) that is asserted instead: mad[hi] > mad[lo] (see docs/corruptions.md).
MAD_NOT_INCREASING = {
    # 2 -> 3 switches regime (published table): 1-2 are a large affine + smooth warp, 3-5 a small affine
    # + fine jitter, so severity 3 is *weaker* than 2. The jitter is ~0.1 px at 28 px: 3 -> 4 barely
    # moves, 3 -> 5 does.
    ("elastic_transform", 2): (3, 2),
    ("elastic_transform", 3): (3, 5),
    # 3 -> 4 lowers only the image weight (0.7 -> 0.65, frost weight 0.7): on dark images with bright
    # frost the difference shrinks a little; the frost-to-image ratio grows, and 2 -> 4 grows.
    ("frost", 3): (2, 4),
    # 3 -> 4 changes only the plasma's roughness (wibble decay 1.7 -> 1.5), not the fog weight.
    ("fog", 3): (2, 4),
    # At 28 px the intermediate sizes are 16, 14, 11, 8, 7: 14 and 7 divide 28 (aligned 2x2 and 4x4
    # blocks), 16 and 8 blend neighbours, so 1 ~ 2 and 4 ~ 5 in mean absolute difference.
    ("pixelate", 1): (1, 3),
    ("pixelate", 4): (3, 5),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_mean_absolute_difference_grows_with_severity(fmnist, corruption):
    images, ids = fmnist
    mad = {s: _mad(C.corrupt_batch(images, corruption, s, ids=ids), images).mean() for s in SEVERITIES}
    for s in SEVERITIES[:-1]:
        lo, hi = MAD_NOT_INCREASING.get((corruption, s), (s, s + 1))
        assert mad[hi] > mad[lo], (corruption, s, lo, hi, mad)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_output_depends_on_the_example_id_not_on_the_batch(fmnist, corruption):
    images = fmnist[0][:6]
    ids = np.array([7, 3, 1000, 42, 5, 9999])
    batch = C.corrupt_batch(images, corruption, 3, ids=ids)
    perm = np.array([4, 0, 5, 2, 1, 3])
    shuffled = C.corrupt_batch(images[perm], corruption, 3, ids=ids[perm])
    np.testing.assert_array_equal(shuffled, batch[perm])
    for i in (0, 3):
        np.testing.assert_array_equal(C.corrupt(images[i], corruption, 3, seed=int(ids[i])), batch[i])
    padded = C.corrupt_batch(np.concatenate([images, images[:3]]), corruption, 3,
                             ids=np.concatenate([ids, [1, 2, 3]]))
    np.testing.assert_array_equal(padded[:6], batch)
    if C.CORRUPTION_REGISTRY.get(corruption).random:
        other_id = C.corrupt(images[0], corruption, 3, seed=8)
        other_base = C.corrupt(images[0], corruption, 3, seed=7, base_seed=1)
        assert not np.array_equal(other_id, batch[0]) and not np.array_equal(other_base, batch[0])


def test_gaussian_noise_uses_the_documented_seed():
    # Oracle written from the docstring: rng = SeedSequence([0, crc32(name), severity, id]),
    # y = round(clip(x / 255 + sigma * N(0, 1), 0, 1) * 255) with sigma = 0.18 at severity 3.
    x = np.full((16, 16, 1), 100, np.uint8)
    rng = np.random.default_rng(np.random.SeedSequence([0, zlib.crc32(b"gaussian_noise"), 3, 12]))
    expected = np.floor(np.clip(100 / 255 + 0.18 * rng.standard_normal((16, 16, 1)), 0, 1) * 255 + 0.5)
    np.testing.assert_array_equal(C.corrupt(x, "gaussian_noise", 3, seed=12), expected.astype(np.uint8))


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_noise_has_the_published_sigma(severity):
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]  # ImageNet-C table
    x = np.full((64, 64, 64, 1), 128, np.uint8)
    y = C.corrupt_batch(x, "gaussian_noise", severity, ids=np.arange(64)).astype(np.float64)
    # Clipping at 0 and 255 shrinks the spread: compare with the std of a clipped normal around 128/255,
    # computed by numerical integration (independent of the code under test).
    mu = 128 / 255
    z = np.linspace(-8, 8, 200001)
    pdf = np.exp(-z * z / 2) / np.sqrt(2 * np.pi)
    clipped = np.clip(mu + sigma * z, 0, 1)
    mean = np.trapezoid(clipped * pdf, z)
    std = np.sqrt(np.trapezoid((clipped - mean) ** 2 * pdf, z))
    residual = y / 255
    # n = 262,144 pixels: the standard error of the std is ~std / 724, plus rounding (1/255 uniform).
    assert abs(residual.std() - np.sqrt(std ** 2 + 1 / (12 * 255 ** 2))) < 0.01 * std
    assert abs(residual.mean() - mean) < 0.002


def test_shot_noise_is_poisson_with_the_published_photon_counts():
    # x = 0.5, photons c = 60 (severity 1): y = Poisson(30) / 60, mean 0.5, std sqrt(30) / 60 = 0.0913.
    x = np.full((64, 32, 32, 1), 255 // 2 + 1, np.uint8)  # 128 -> 0.50196
    y = C.corrupt_batch(x, "shot_noise", 1, ids=np.arange(64)).astype(np.float64) / 255
    lam = 60 * 128 / 255
    assert abs(y.mean() - lam / 60) < 0.002
    assert abs(y.std() - np.sqrt(lam) / 60) < 0.02 * np.sqrt(lam) / 60


def test_impulse_noise_hits_the_published_fraction():
    # Severity 4: amount 0.17, half salt (255), half pepper (0); the grey value 128 marks untouched pixels.
    x = np.full((32, 32, 32, 3), 128, np.uint8)
    y = C.corrupt_batch(x, "impulse_noise", 4, ids=np.arange(32))
    # 98,304 channel values, channels hit independently: the standard error of each fraction is ~0.0009.
    assert abs(np.mean(y == 255) - 0.085) < 0.005 and abs(np.mean(y == 0) - 0.085) < 0.005
    assert np.all((y == 0) | (y == 255) | (y == 128))


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_adds_to_hsv_value(severity):
    shift = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    x = np.random.default_rng(severity).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
    x[0, 0, 0] = 0  # a black pixel: hue/saturation undefined, becomes grey
    y = C.corrupt_batch(x, "brightness", severity, ids=[0, 1])
    expected = np.empty(x.shape)
    for idx in np.ndindex(x.shape[:3]):
        h, s, v = colorsys.rgb_to_hsv(*(x[idx] / 255))
        expected[idx] = colorsys.hsv_to_rgb(h, s, min(v + shift, 1.0))
    # The max channel lands exactly on a half (v + 25.5 levels at severity 1): round halves up, as documented.
    expected = np.floor(expected * 255 + 0.5 + 1e-6)
    np.testing.assert_array_equal(y, expected)


def test_brightness_and_contrast_on_grey_by_hand():
    x = np.zeros((8, 8, 1), np.uint8)
    x[:, 4:] = 200
    # brightness 1 (shift 0.1 = 25.5 levels): 0 -> 25.5 -> 26 (halves up), 200 -> 225.5 -> 226.
    y = C.corrupt(x, "brightness", 1, seed=0)
    assert set(np.unique(y[:, :4])) == {26} and set(np.unique(y[:, 4:])) == {226}
    # contrast 1 (factor 0.4), mean 100: 0 -> 100 - 0.4 * 100 = 60, 200 -> 100 + 0.4 * 100 = 140.
    y = C.corrupt(x, "contrast", 1, seed=0)
    assert set(np.unique(y[:, :4])) == {60} and set(np.unique(y[:, 4:])) == {140}


@pytest.mark.parametrize("severity, factor", [(2, 2), (5, 4)])  # 28 * 0.5 = 14, 28 * 0.25 = 7
def test_pixelate_is_block_averaging_for_integer_factors(severity, factor):
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    y = C.corrupt_batch(x, "pixelate", severity, ids=[0, 1, 2])
    n = 28 // factor
    blocks = x[..., 0].astype(np.float64).reshape(3, n, factor, n, factor)
    exact = np.repeat(np.repeat(blocks.mean(axis=(2, 4)), factor, 1), factor, 2)
    # PIL's BOX resize works in two 1-D passes (rows, then columns), rounding to uint8 after each.
    rows = np.floor(blocks.mean(axis=4) + 0.5)
    two_pass = np.repeat(np.repeat(np.floor(rows.mean(axis=2) + 0.5), factor, 1), factor, 2)
    np.testing.assert_array_equal(y[..., 0], two_pass)
    assert np.abs(y[..., 0] - exact).max() <= 1


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_matches_an_independent_codec(fmnist, channels):
    import tensorflow as tf

    grey = fmnist[0][:12]
    images = grey if channels == 1 else _rgb_from(grey)
    for severity, quality in zip(SEVERITIES, (25, 18, 15, 10, 7)):
        y = C.corrupt_batch(images, "jpeg_compression", severity, ids=np.arange(len(images)))
        fmt = "grayscale" if channels == 1 else "rgb"
        ref = np.stack([tf.io.decode_jpeg(tf.io.encode_jpeg(im, format=fmt, quality=quality),
                                          dct_method="INTEGER_ACCURATE").numpy() for im in images])
        np.testing.assert_array_equal(y, ref)


def test_defocus_at_224_is_the_published_disk():
    # Severity 1: disk radius 3 (29 lattice points with x^2 + y^2 <= 9), alias blur 0.1 (negligible):
    # an impulse of 255 spreads to 29 pixels of 255 / 29 = 8.79 -> 9.
    x = np.zeros((224, 224, 1), np.uint8)
    x[100, 120] = 255
    y = C.corrupt(x, "defocus_blur", 1, seed=0)
    yy, xx = np.nonzero(y[..., 0])
    assert len(yy) == 29 and set(np.unique(y[y > 0])) == {9}
    assert np.all((yy - 100) ** 2 + (xx - 120) ** 2 <= 9)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_defocus_at_28_is_the_224_blur_seen_at_28(severity):
    # The scaling rule for blur kernels: blur a 28 px image = upsample x8 (nearest), correlate with the
    # published 224 px kernel, average 8x8 blocks. Oracle: scipy on the upsampled image.
    rng = np.random.default_rng(severity)
    x = np.zeros((28, 28, 1), np.uint8)
    x[8:20, 8:20] = rng.integers(0, 256, (12, 12, 1))  # away from the borders
    radius, alias = C.PARAMETERS["defocus_blur"][severity - 1]
    big = np.repeat(np.repeat(x[..., 0].astype(np.float64), 8, 0), 8, 1)
    kernel = C._reference_disk(radius, alias)
    blurred = ndimage.correlate(big, kernel, mode="constant")
    expected = np.floor(blurred.reshape(28, 8, 28, 8).mean(axis=(1, 3)) + 0.5)
    y = C.corrupt(x, "defocus_blur", severity, seed=0)[..., 0]
    assert np.abs(y - expected).max() <= 1


def test_reference_disk_is_normalised_and_round():
    for radius, alias in C.PARAMETERS["defocus_blur"]:
        k = C._reference_disk(radius, alias)
        assert abs(k.sum() - 1) < 1e-12 and np.allclose(k, k.T) and np.allclose(k, k[::-1])


@pytest.mark.parametrize("corruption", ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
                                        "elastic_transform", "pixelate", "contrast"])
def test_constant_images_stay_constant(corruption):
    # Kernels sum to 1, resamplers' rows sum to 1, warps only move pixels: a flat image cannot change.
    x = np.full((3, 28, 28, 3), 77, np.uint8)
    for severity in SEVERITIES:
        np.testing.assert_array_equal(C.corrupt_batch(x, corruption, severity, ids=[0, 1, 2]), x)


def test_parameters_scale_with_the_image_size():
    assert C.scaled_parameters("defocus_blur", 1, 28) == {"radius": 0.375, "alias_blur": 0.0125}  # 3 * 28 / 224
    assert C.scaled_parameters("defocus_blur", 1, 224) == {"radius": 3, "alias_blur": 0.1}
    assert C.scaled_parameters("pixelate", 2, 28) == {"resize_fraction": 0.5}  # a ratio: not scaled
    assert C.scaled_parameters("elastic_transform", 3, 28)["sigma"] == pytest.approx(244 * 0.01 / 8)
    assert C.scale_factor(20, 56) == 0.25  # the longer side
    assert C.PARAMETERS["jpeg_compression"] == (25, 18, 15, 10, 7)
    assert len(C.PARAMETERS["zoom_blur"][0]) == 12 and C.PARAMETERS["zoom_blur"][0][-1] == 1.11


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, message", [
    (lambda x: C.corrupt(x, "gaussian_nosie", 1, seed=0), "did you mean gaussian_noise"),
    (lambda x: C.corrupt(x, "snow", 6, seed=0), "severity must be one of 1..5"),
    (lambda x: C.corrupt(x, "snow", 0, seed=0), "severity must be one of 1..5"),
    (lambda x: C.corrupt(x.astype(np.float32), "snow", 1, seed=0), "must be uint8"),
    (lambda x: C.corrupt(np.repeat(x, 2, -1), "snow", 1, seed=0), "C 1 or 3"),
    (lambda x: C.corrupt(x[:4], "snow", 1, seed=0), "at least 8x8"),
    (lambda x: C.corrupt(x, "snow", 1, seed=-1), "ids must be >= 0"),
    (lambda x: C.corrupt_batch(x[None], "snow", 1, ids=[1, 2]), "ids must be 1 integers"),
    (lambda x: C.corrupt(x[..., 0], "snow", 1, seed=0), "shape (H, W, C)"),
    (lambda x: C.corrupt(x, "snow", 1, seed=0, base_seed=-3), "base_seed must be an integer >= 0"),
])
def test_bad_input_is_a_one_line_error(call, message):
    x = np.zeros((16, 16, 1), np.uint8)
    with pytest.raises(PlexbenchError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        call(x)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- the TFDS dataset


def test_prepared_fashion_mnist_corrupted_config(data_dir, tmp_path):
    import tensorflow_datasets as tfds

    from plexbench.data.builders.corrupted import FashionMnistCorrupted
    from plexbench.data.load import load_arrays
    from plexbench.data.prepare import prepare
    from plexbench.data.registry import get_dataset

    # A fresh data dir that shares the prepared clean dataset, so this config is really built here.
    (tmp_path / "fashion_mnist").symlink_to(data_dir / "fashion_mnist")
    name = "fashion_mnist_corrupted/contrast_3"
    assert get_dataset(name).builder == "plexbench.data.builders.corrupted:FashionMnistCorrupted"
    assert prepare(name, tmp_path) is True
    assert prepare(name, tmp_path) is False

    configs = [c.name for c in FashionMnistCorrupted.BUILDER_CONFIGS]
    assert len(configs) == 75 and configs == [f"{c}_{s}" for c in CORRUPTIONS for s in SEVERITIES]
    builder = tfds.builder_from_directory(str(tmp_path / name / "1.0.0"))
    assert builder.name == "fashion_mnist_corrupted" and builder.builder_config.name == "contrast_3"
    features = builder.info.features
    assert features["image"].shape == (28, 28, 1) and features["image"].np_dtype == np.uint8
    assert tuple(features["label"].names) == FASHION_MNIST_CLASSES
    assert list(builder.info.splits) == ["test"] and builder.info.splits["test"].num_examples == 2000

    clean = load_arrays("fashion_mnist", "test", data_dir)
    got = load_arrays(name, "test", tmp_path)
    np.testing.assert_array_equal(got["id"], np.arange(2000))
    np.testing.assert_array_equal(got["label"], clean["label"][:2000])
    # contrast 3 (factor 0.2) by its formula, per image: (x - mean) * 0.2 + mean, rounded.
    x = clean["image"][:2000].astype(np.float64) / 255
    mean = x.mean(axis=(1, 2), keepdims=True)
    expected = np.floor(np.clip((x - mean) * 0.2 + mean, 0, 1) * 255 + 0.5 + 1e-6)  # halves up
    np.testing.assert_array_equal(got["image"], expected.astype(np.uint8))
