"""ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) for images of any size, deterministic per example.

Public API (pure numpy; no TensorFlow):

- `corrupt(image, corruption, severity, *, seed, base_seed=0)`: one uint8 (H, W, C) image -> uint8 (H, W, C).
- `corrupt_batch(images, corruption, severity, *, ids, base_seed=0)`: uint8 (B, H, W, C) -> uint8 (B, H, W, C).
  Row i equals `corrupt(images[i], corruption, severity, seed=ids[i])` bit for bit, whatever the batch holds.
- `example_rng(corruption, severity, example_id, base_seed=0)`: the generator of one example.
- `scale_factor(height, width)`, `scaled_parameters(corruption, severity, height, width)`, `PARAMETERS`.

C is 1 (grey) or 3 (RGB); H, W >= 8. Names are the 15 ImageNet-C corruptions (`CORRUPTIONS`), severities 1..5.

Determinism. The random numbers of example `id` come from
`np.random.default_rng(SeedSequence([base_seed, crc32(corruption), severity, id]))`, drawn in a fixed order
inside the corruption. All arithmetic is per image (no reduction or matrix product mixes images), so the
output of an example does not depend on the batch it is in, its position, or the batch size.

Arithmetic. Images are converted to float64 in [0, 1], corrupted, clipped to [0, 1] and rounded to the
nearest uint8 (halves up, with a 1e-6 guard so float round-off cannot flip an exact half). The published
code truncates (`np.uint8`) and stores every image as a quality-85 JPEG; we do neither (rounding is unbiased,
and the extra JPEG pass is a storage artefact, not part of a corruption).

Image size. The parameter tables are the published ImageNet-C tables, defined for 224 x 224 images. For an
H x W image let s = max(H, W) / 224 (the longer side plays the role of 224). Every *spatial* parameter (a
length in pixels) is multiplied by s; parameters that are ratios of the image size (zoom factors, the
pixelate resize fraction), intensities, probabilities and JPEG qualities are kept. At 28 px (s = 1/8) many
scaled lengths are below one pixel, so each spatial step is written to respond continuously to sub-pixel
lengths instead of rounding them away:

- blur kernels (defocus disk, glass-blur Gaussian, motion-blur line) are the published kernel on the
  224-grid, its sample points scaled by s and spread onto the image grid by bilinear (tent) weights; this is
  exactly "upsample by 1/s with nearest neighbour, apply the published kernel, average back" and reduces
  to the published kernel at s = 1;
- displacements (glass-blur shuffle, elastic warp) are sampled with bilinear interpolation at
  displacement x s; white-noise fields that are smoothed into a displacement field are drawn with their
  amplitude multiplied by s (the mean of (1/s)^2 independent reference pixels has s times the spread);
- layers made at the reference resolution (snow flakes, fog plasma, frost texture) are generated on the
  224-grid (or a power-of-two grid as fine as the image) and area-averaged to the image size.

See docs/corruptions.md for the tables, the scaled values at 28 px and every substitute (frost texture,
motion-blur line kernel, glass-blur gather instead of swaps).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from plexbench.data.registry import CORRUPTIONS, SEVERITIES
from plexbench.errors import PlexbenchError
from plexbench.registry import Registry

REFERENCE_SIZE = 224
MIN_SIDE = 8


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Corruption:
    """One corruption: its name, its five severity parameters, the batch function, and whether it draws.

    `apply(x, param, rngs, s)` takes float64 (B, H, W, C) in [0, 1], the parameter of one severity, one
    generator per example (None for deterministic corruptions) and the scale s; returns float64 (B, H, W, C)
    (clipped and rounded by the caller).
    """

    name: str
    params: tuple
    apply: Callable[..., np.ndarray]
    random: bool
    spatial: tuple[str, ...]  # names of the parameter fields multiplied by s


CORRUPTION_REGISTRY: Registry[Corruption] = Registry("corruption")

# Field names of each parameter tuple (for `scaled_parameters` and the docs).
PARAMETER_FIELDS: dict[str, tuple[str, ...]] = {}


def _register(name: str, params: Sequence, *, fields: tuple[str, ...], spatial: tuple[str, ...] = (),
              random: bool = True):
    if len(params) != len(SEVERITIES):
        raise ValueError(f"{name}: {len(params)} parameter sets for {len(SEVERITIES)} severities")

    def decorator(fn):
        CORRUPTION_REGISTRY.add(name, Corruption(name, tuple(params), fn, random, spatial))
        PARAMETER_FIELDS[name] = fields
        return fn

    return decorator


# --------------------------------------------------------------------------- public entry points


def example_rng(corruption: str, severity: int, example_id: int, base_seed: int = 0) -> np.random.Generator:
    """The generator of one example: PCG64 seeded by SeedSequence([base_seed, crc32(name), severity, id]).

    crc32 of the UTF-8 name (not a position in a list) keeps seeds stable if corruptions are added.
    """
    entropy = [int(base_seed), zlib.crc32(corruption.encode("utf-8")), int(severity), int(example_id)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def scale_factor(height: int, width: int) -> float:
    """s = max(H, W) / 224: spatial parameters (pixels at 224) are multiplied by s."""
    return max(height, width) / REFERENCE_SIZE


def corrupt(image: np.ndarray, corruption: str, severity: int, *, seed: int, base_seed: int = 0) -> np.ndarray:
    """Corrupt one image: uint8 (H, W, C) -> uint8 (H, W, C), C in {1, 3}.

    `seed` is the example's key (its id in the dataset, an int >= 0); the same (corruption, severity, seed,
    base_seed) always gives the same output, equal to that row of `corrupt_batch`.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise PlexbenchError(f"corrupt expects one image of shape (H, W, C), got shape {image.shape}")
    return corrupt_batch(image[None], corruption, severity, ids=[seed], base_seed=base_seed)[0]


def corrupt_batch(images: np.ndarray, corruption: str, severity: int, *, ids: Sequence[int] | np.ndarray,
                  base_seed: int = 0) -> np.ndarray:
    """Corrupt a batch: uint8 (B, H, W, C) -> uint8 (B, H, W, C); `ids` (B,) are the examples' keys (ints >= 0).

    Example: `corrupt_batch(x, "gaussian_noise", 3, ids=np.arange(len(x)))` adds N(0, 0.18^2) noise
    (in [0, 1] units) to every pixel, example i seeded by `example_rng("gaussian_noise", 3, i)`.
    """
    images, ids = _check_batch(images, ids)
    spec = _get(corruption, severity)
    if isinstance(base_seed, bool) or not isinstance(base_seed, (int, np.integer)) or base_seed < 0:
        raise PlexbenchError(f"base_seed must be an integer >= 0, got {base_seed!r}")
    if len(images) == 0:
        return images.copy()
    s = scale_factor(images.shape[1], images.shape[2])
    rngs = [example_rng(corruption, severity, i, base_seed) for i in ids] if spec.random else None
    x = images.astype(np.float64) / 255.0
    with _single_threaded_blas():
        y = spec.apply(x, spec.params[severity - 1], rngs, s)
    return _to_uint8(y)


def _single_threaded_blas():
    """One BLAS thread while corrupting: the matrices are tiny (image-sized), and multi-threaded OpenBLAS on
    them is an order of magnitude slower (thread start-up and spinning), worse on a busy machine.
    threadpoolctl comes with scikit-learn; without it this does nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn (a dependency) installs it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def scaled_parameters(corruption: str, severity: int, height: int = REFERENCE_SIZE,
                      width: int | None = None) -> dict[str, Any]:
    """The parameters used at this image size: field -> value, spatial fields multiplied by s.

    Example: `scaled_parameters("defocus_blur", 1, 28)` -> `{"radius": 0.375, "alias_blur": 0.0125}`.
    """
    spec = _get(corruption, severity)
    s = scale_factor(height, height if width is None else width)
    fields = PARAMETER_FIELDS[corruption]
    values = spec.params[severity - 1]
    values = values if len(fields) > 1 else (values,)  # one field may itself be a tuple (zoom factors)
    return {f: (v * s if f in spec.spatial else v) for f, v in zip(fields, values)}


def _get(corruption: str, severity: int) -> Corruption:
    spec = CORRUPTION_REGISTRY.get(corruption)
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise PlexbenchError(f"severity must be one of 1..5, got {severity!r}")
    return spec


def _check_batch(images, ids) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise PlexbenchError(f"images must be uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise PlexbenchError(f"images must have shape (B, H, W, C) with C 1 or 3, got {images.shape}")
    if min(images.shape[1:3]) < MIN_SIDE:
        raise PlexbenchError(f"images must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {images.shape[1:3]}")
    ids = np.asarray(ids)
    if ids.shape != (len(images),) or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise PlexbenchError(f"ids must be {len(images)} integers (one per image), got shape {ids.shape} "
                             f"dtype {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise PlexbenchError(f"ids must be >= 0, got {int(ids.min())}")
    return images, ids


def _to_uint8(y: np.ndarray) -> np.ndarray:
    """Clip to [0, 1], scale to 0..255, round to nearest (halves up; the 1e-6 guard absorbs float round-off)."""
    return np.floor(np.clip(y, 0.0, 1.0) * 255.0 + (0.5 + 1e-6)).astype(np.uint8)


# --------------------------------------------------------------------------- shared helpers


def _draw(rngs, fn) -> np.ndarray:
    """Stack one draw per example: `fn(rng)` for each generator, in batch order."""
    return np.stack([fn(rng) for rng in rngs])


def _grey(x: np.ndarray) -> np.ndarray:
    """Luma (B, H, W, 1): ITU-R 601 weights for RGB (as OpenCV's RGB2GRAY), the image itself for grey."""
    if x.shape[-1] == 1:
        return x
    return x @ np.array([0.299, 0.587, 0.114])[:, None]


_PAD_MODES = {"mirror": "reflect", "reflect": "symmetric", "nearest": "edge"}


def _map_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map integer indices (any range) into [0, n) by a boundary rule.

    `mirror`: reflect about the edge pixels (OpenCV BORDER_REFLECT_101: -1 -> 1); `reflect`: about the edges
    (scipy/skimage `reflect`: -1 -> 0); `nearest`: clamp.
    """
    if mode == "nearest" or n == 1:
        return np.clip(i, 0, n - 1)
    if mode == "mirror":
        period = 2 * (n - 1)
        i = np.mod(i, period)
        return np.where(i >= n, period - i, i)
    if mode == "reflect":
        period = 2 * n
        i = np.mod(i, period)
        return np.where(i >= n, period - 1 - i, i)
    raise ValueError(mode)


def _sample_bilinear(x: np.ndarray, yy: np.ndarray, xx: np.ndarray, mode: str) -> np.ndarray:
    """x (B, H, W, C) sampled at row/column coordinates yy, xx (B, H, W), bilinear, boundary `mode`."""
    b, h, w, _ = x.shape
    y0 = np.floor(yy)
    x0 = np.floor(xx)
    fy = (yy - y0)[..., None]
    fx = (xx - x0)[..., None]
    y0 = y0.astype(np.int64)
    x0 = x0.astype(np.int64)
    bi = np.arange(b)[:, None, None]
    r0, r1 = _map_index(y0, h, mode), _map_index(y0 + 1, h, mode)
    c0, c1 = _map_index(x0, w, mode), _map_index(x0 + 1, w, mode)
    top = x[bi, r0, c0] * (1 - fx) + x[bi, r0, c1] * fx
    bottom = x[bi, r1, c0] * (1 - fx) + x[bi, r1, c1] * fx
    return top * (1 - fy) + bottom * fy


def _splat_kernel(points: np.ndarray, weights: np.ndarray, s: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Discretise a kernel given by sample points on the 224-grid onto the grid of an image of scale s.

    points (..., N, 2) are (dy, dx) offsets in reference pixels with weights (..., N) summing to 1. Each
    point is moved to s * offset and spread onto its 4 neighbouring integer offsets with bilinear (tent)
    weights; for s > 1 each point is first split into ceil(s)^2 points over its reference pixel so the
    scaled kernel has no holes. At s = 1 with integer points this returns the kernel unchanged.
    Returns the kernel (..., Kh, Kw) (sums to 1) and the offset (oy, ox) of its element [0, 0].
    Correlation semantics: out(p) = sum_k K[k] * x(p + origin + k).
    """
    m = max(1, math.ceil(s))
    if m > 1:
        sub = (np.arange(m) + 0.5) / m - 0.5
        grid = np.stack(np.meshgrid(sub, sub, indexing="ij"), -1).reshape(-1, 2)
        points = (points[..., :, None, :] + grid).reshape(*points.shape[:-2], -1, 2)
        weights = np.repeat(weights / (m * m), m * m, axis=-1)
    a = points * s
    base = np.floor(a)
    frac = a - base
    base = base.astype(np.int64)
    oy, ox = int(base[..., 0].min()), int(base[..., 1].min())
    kh, kw = int(base[..., 0].max()) - oy + 2, int(base[..., 1].max()) - ox + 2
    lead = points.shape[:-2]
    kernel = np.zeros((int(np.prod(lead, dtype=np.int64)), kh * kw))
    rows = np.arange(kernel.shape[0])[:, None]
    flat_base = (base[..., 0] - oy) * kw + (base[..., 1] - ox)
    flat_base = flat_base.reshape(kernel.shape[0], -1)
    w = weights.reshape(kernel.shape[0], -1)
    fy = frac[..., 0].reshape(kernel.shape[0], -1)
    fx = frac[..., 1].reshape(kernel.shape[0], -1)
    for dy, dx, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(kernel, (np.broadcast_to(rows, flat_base.shape), flat_base + dy * kw + dx), w * wt)
    return kernel.reshape(*lead, kh, kw), (oy, ox)


def _correlate(x: np.ndarray, kernel: np.ndarray, origin: tuple[int, int], mode: str) -> np.ndarray:
    """out(p) = sum_k kernel[k] * x(p + origin + k) over (H, W), per channel, boundary `mode`.

    x (B, H, W, C); kernel (Kh, Kw) shared or (B, Kh, Kw) per image. Taps are added in raster order, the
    same for every image, so results do not depend on the batch.
    """
    b, h, w, _ = x.shape
    kh, kw = kernel.shape[-2:]
    oy, ox = origin
    pads = ((0, 0), (max(0, -oy), max(0, oy + kh - 1)), (max(0, -ox), max(0, ox + kw - 1)), (0, 0))
    xp = np.pad(x, pads, mode=_PAD_MODES[mode])
    top, left = oy + pads[1][0], ox + pads[2][0]
    per_image = kernel.ndim == 3
    used = np.any(kernel != 0, axis=0) if per_image else kernel != 0
    out = np.zeros_like(x)
    for ky, kx in zip(*np.nonzero(used)):
        tap = kernel[:, ky, kx, None, None, None] if per_image else kernel[ky, kx]
        out += tap * xp[:, top + ky:top + ky + h, left + kx:left + kx + w]
    return out


def _points_grid(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A centred odd-sized kernel (K, K) on the reference grid as (points (K*K, 2), weights (K*K,))."""
    r = kernel.shape[0] // 2
    offsets = np.arange(-r, r + 1, dtype=np.float64)
    pts = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(-1, 2)
    return pts, kernel.reshape(-1)


def _gaussian_1d(sigma: float, radius: int) -> np.ndarray:
    """Sampled Gaussian exp(-i^2 / (2 sigma^2)), i in [-radius, radius], normalised to sum 1."""
    i = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(i * i) / (2.0 * sigma * sigma))
    return g / g.sum()


@functools.lru_cache(maxsize=64)
def _scaled_kernel(kind: str, params: tuple, s: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Shared (not per-image) kernels on the image grid, cached: `disk` (defocus) and `gauss` (glass blur)."""
    reference = _reference_disk(*params) if kind == "disk" else _reference_gaussian(*params)
    pts, w = _points_grid(reference)
    kernel, origin = _splat_kernel(pts, w, s)
    kernel.setflags(write=False)
    return kernel, origin


def _area_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) area-averaging resampler: output i averages input over [i, i+1) * n_in / n_out.

    Partially covered input pixels count by the covered fraction (PIL's BOX filter); rows sum to 1.
    """
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _interp_matrix(src: np.ndarray, n_in: int) -> np.ndarray:
    """(len(src), n_in) linear-interpolation rows for source coordinates `src` (clamped to the edges)."""
    src = np.clip(src, 0.0, n_in - 1.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    f = src - i0
    mat = np.zeros((len(src), n_in))
    rows = np.arange(len(src))
    np.add.at(mat, (rows, i0), 1.0 - f)
    np.add.at(mat, (rows, i1), f)
    return mat


def _zoom_matrix(n_out: int, n_in: int, zoom: float) -> np.ndarray:
    """(n_out, n_in) rows that magnify by `zoom` about the centre (pixel centres, linear interpolation).

    Output pixel i (centre i + 0.5) reads the input at (i + 0.5 - n_out / 2) / zoom + n_in / 2 - 0.5.
    """
    src = (np.arange(n_out) + 0.5 - n_out / 2.0) / zoom + n_in / 2.0 - 0.5
    return _interp_matrix(src, n_in)


def _resample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Apply separable resamplers to (B, H, W, C): rows (H', H), cols (W', W) -> (B, H', W', C)."""
    t = np.moveaxis(x, -1, 1)  # (B, C, H, W): one matrix product per image and channel
    t = rows @ t @ cols.T
    return np.ascontiguousarray(np.moveaxis(t, 1, -1))


# --------------------------------------------------------------------------- noise


@_register("gaussian_noise", (0.08, 0.12, 0.18, 0.26, 0.38), fields=("sigma",))
def _gaussian_noise(x, sigma, rngs, s):
    """x + N(0, sigma^2) per pixel and channel ([0, 1] units); independent of the image size."""
    return x + sigma * _draw(rngs, lambda r: r.standard_normal(x.shape[1:]))


@_register("shot_noise", (60, 25, 12, 5, 3), fields=("photons",))
def _shot_noise(x, photons, rngs, s):
    """Poisson(x * photons) / photons per pixel and channel (photons = counts at full intensity)."""
    return np.stack([r.poisson(xi * photons) for r, xi in zip(rngs, x)]) / photons


@_register("impulse_noise", (0.03, 0.06, 0.09, 0.17, 0.27), fields=("amount",))
def _impulse_noise(x, amount, rngs, s):
    """Salt and pepper: each pixel and channel is replaced with probability `amount`, by 1 or 0 equally often.

    As skimage.util.random_noise(mode='s&p'): channels are hit independently.
    """
    def draw(r):
        hit = r.random(x.shape[1:]) < amount
        salt = r.random(x.shape[1:]) < 0.5
        return np.stack([hit, salt])

    hit, salt = np.moveaxis(_draw(rngs, draw), 1, 0)
    return np.where(hit, salt.astype(np.float64), x)


# --------------------------------------------------------------------------- blur


def _reference_disk(radius: float, alias_blur: float) -> np.ndarray:
    """The published defocus kernel on the 224-grid: an aliased disk, normalised, then a small Gaussian.

    Support [-8, 8]^2 (radius <= 8, Gaussian 3x3) or [-radius, radius]^2 (Gaussian 5x5), as published;
    the Gaussian uses OpenCV's default border (reflect-101); renormalised to sum 1.
    """
    half, ksize = (8, 3) if radius <= 8 else (int(radius), 5)
    offsets = np.arange(-half, half + 1)
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    disk = (yy ** 2 + xx ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    g = _gaussian_1d(alias_blur, ksize // 2)
    padded = np.pad(disk, ksize // 2, mode="reflect")
    blurred = sum(g[i] * padded[i:i + disk.shape[0], :] for i in range(ksize))
    blurred = sum(g[j] * blurred[:, j:j + disk.shape[1]] for j in range(ksize))
    return blurred / blurred.sum()


def _reference_gaussian(sigma: float) -> np.ndarray:
    """skimage.filters.gaussian's kernel: sampled Gaussian, radius int(4 sigma + 0.5), normalised."""
    g = _gaussian_1d(sigma, int(4.0 * sigma + 0.5))
    return np.outer(g, g)


@_register("defocus_blur", ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
           fields=("radius", "alias_blur"), spatial=("radius", "alias_blur"), random=False)
def _defocus_blur(x, param, rngs, s):
    """Correlate with the published disk kernel, scaled by s (reflect-101 border, as cv2.filter2D)."""
    kernel, origin = _scaled_kernel("disk", tuple(float(p) for p in param), s)
    return _correlate(x, kernel, origin, "mirror")


def _glass_shuffle(x: np.ndarray, delta: int, iterations: int, rngs, s: float) -> np.ndarray:
    """Local pixel shuffling: `iterations` times, every pixel takes the (bilinear) value at p + s * u.

    u is an integer offset per pixel and axis, uniform on [-delta, delta - 1] (np.random.randint(-delta,
    delta) in the published code, whose upper bound is exclusive). The published code swaps pixel pairs
    one by one in reverse raster order; a parallel gather is its vectorisable counterpart (see docs).
    """
    b, h, w, _ = x.shape
    offsets = _draw(rngs, lambda r: r.integers(-delta, delta, size=(iterations, 2, h, w)))
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    for it in range(iterations):
        x = _sample_bilinear(x, rows + s * offsets[:, it, 0], cols + s * offsets[:, it, 1], "nearest")
    return x


@_register("glass_blur", ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
           fields=("sigma", "max_delta", "iterations"), spatial=("sigma", "max_delta"))
def _glass_blur(x, param, rngs, s):
    """Gaussian blur (sigma * s) -> local shuffle (offsets * s) -> Gaussian blur (sigma * s); border 'nearest'."""
    sigma, delta, iterations = param
    kernel, origin = _scaled_kernel("gauss", (float(sigma),), s)
    x = _correlate(x, kernel, origin, "nearest")
    x = _glass_shuffle(x, int(delta), int(iterations), rngs, s)
    return _correlate(x, kernel, origin, "nearest")


def _motion_kernels(radius: float, sigma: float, angles_deg: np.ndarray, s: float):
    """Per-image ImageMagick motion-blur kernels, scaled: (B, Kh, Kw) and their origin.

    ImageMagick's MotionBlurImage: width = 2 * ceil(radius) + 1 taps at distances i = 0..width-1 along the
    direction (cos a, sin a) (x right, y down), weights exp(-i^2 / (2 sigma^2)) normalised (a one-sided
    half-Gaussian). ImageMagick rounds each tap to a pixel; we keep exact positions (tent-splatted).
    """
    width = 2 * math.ceil(radius) + 1
    i = np.arange(width, dtype=np.float64)
    weights = np.exp(-(i * i) / (2.0 * sigma * sigma))
    weights /= weights.sum()
    a = np.deg2rad(angles_deg)[:, None]
    points = np.stack([i * np.sin(a), i * np.cos(a)], axis=-1)  # (B, width, 2) as (dy, dx)
    return _splat_kernel(points, np.broadcast_to(weights, points.shape[:-1]), s)


def _motion_blur_layer(x: np.ndarray, radius: float, sigma: float, angles: np.ndarray, s: float) -> np.ndarray:
    kernels, origin = _motion_kernels(radius, sigma, angles, s)
    return _correlate(x, kernels, origin, "nearest")


@_register("motion_blur", ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
           fields=("radius", "sigma"), spatial=("radius", "sigma"))
def _motion_blur(x, param, rngs, s):
    """Line blur at an angle uniform in [-45, 45] degrees per image (ImageMagick motion_blur, edge border).

    The radius and sigma are lengths at 224 px; scaling the tap positions by s scales both.
    """
    radius, sigma = param
    angles = _draw(rngs, lambda r: r.uniform(-45.0, 45.0))
    return _motion_blur_layer(x, radius, sigma, angles, s)


# The zoom factors exactly as the published np.arange calls produce them (the first has 12 values: the
# float end point 1.11 is included).
_ZOOMS = tuple(tuple(float(v) for v in np.round(np.arange(1, stop, step), 4))
               for stop, step in ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)))


@_register("zoom_blur", _ZOOMS, fields=("zoom_factors",), random=False)
def _zoom_blur(x, zooms, rngs, s):
    """Mean of the image and its magnifications about the centre by each factor (1.0 included, as published).

    Zoom factors are ratios of the image size, hence not scaled. Linear interpolation, as scipy's order=1.
    """
    h, w = x.shape[1:3]
    total = x.copy()
    for z in zooms:
        total += _resample(x, _zoom_matrix(h, h, z), _zoom_matrix(w, w, z))
    return total / (len(zooms) + 1)


# --------------------------------------------------------------------------- weather


def _reference_grid(h: int, w: int, s: float) -> tuple[int, int]:
    """The image's extent on the 224-grid: (round(H / s), round(W / s)); (224, 224) for square images."""
    return max(1, round(h / s)), max(1, round(w / s))


@_register("snow", ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                    (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
           fields=("loc", "scale", "flake_zoom", "threshold", "blur_radius", "blur_sigma", "image_weight"),
           spatial=("flake_zoom", "blur_radius", "blur_sigma"))
def _snow(x, param, rngs, s):
    """Snow: a thresholded, zoomed noise layer, motion-blurred, added twice (and rotated 180 degrees).

    Published steps at 224: N(loc, scale) per pixel -> central zoom by flake_zoom (flakes about flake_zoom
    pixels wide) -> values below `threshold` set to 0, clip [0, 1] -> motion blur (radius, sigma) at an angle
    uniform in [-135, -45] degrees. Then x <- w x + (1 - w) max(x, 1.5 grey(x) + 0.5) and the result is
    x + layer + rot180(layer). Here the layer is made on the 224-grid (the noise drawn on its
    ceil(224 / flake_zoom) central cells) and area-averaged to the image before the scaled motion blur.
    """
    loc, scale, zoom, threshold, radius, sigma, weight = param
    layer = _snow_layer(x.shape[1:3], loc, scale, zoom, threshold, rngs, s)
    angles = _draw(rngs, lambda r: r.uniform(-135.0, -45.0))
    layer = _motion_blur_layer(layer, radius, sigma, angles, s)
    x = weight * x + (1.0 - weight) * np.maximum(x, 1.5 * _grey(x) + 0.5)
    return x + layer + layer[:, ::-1, ::-1]


def _snow_layer(shape, loc, scale, zoom, threshold, rngs, s) -> np.ndarray:
    """The thresholded flake layer (B, H, W, 1), built on the 224-grid and area-averaged to (H, W)."""
    h, w = shape
    fh, fw = _reference_grid(h, w, s)
    ch, cw = math.ceil(fh / zoom), math.ceil(fw / zoom)
    noise = _draw(rngs, lambda r: r.normal(loc, scale, size=(ch, cw)))
    up_r, up_c = _zoom_matrix(fh, ch, zoom), _zoom_matrix(fw, cw, zoom).T.copy()
    down_r, down_c = _area_matrix(h, fh), _area_matrix(w, fw).T.copy()
    out = np.empty((len(noise), h, w))
    for i, cells in enumerate(noise):  # one image at a time: the 224-grid layer is big
        fine = up_r @ cells @ up_c
        fine = np.where(fine < threshold, 0.0, np.minimum(fine, 1.0))
        out[i] = down_r @ fine @ down_c
    return out[..., None]


# The published code picks randint(5) of its frost photos; we generate 5 textures (see `_frost_texture`).
FROST_TEXTURES = 5
FROST_TEXTURE_SIZE = 320  # reference pixels; the published photos are larger than 224 and randomly cropped


@_register("frost", ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
           fields=("image_weight", "frost_weight"))
def _frost(x, param, rngs, s):
    """a * x + b * frost, the frost a random crop of one of 5 procedural textures (substitute for photos)."""
    a, b = param
    h, w, c = x.shape[1:]
    textures = _frost_textures_at(s, c)
    th, tw = textures.shape[1:3]
    if th < h or tw < w:
        textures = np.stack([_frost_tile(t, h, w) for t in textures])
        th, tw = textures.shape[1:3]

    def pick(r):
        return np.array([r.integers(FROST_TEXTURES), r.integers(0, th - h + 1), r.integers(0, tw - w + 1)])

    choice = _draw(rngs, pick)
    crops = np.stack([textures[k, i:i + h, j:j + w] for k, i, j in choice])
    return a * x + b * crops


def _frost_tile(texture: np.ndarray, h: int, w: int) -> np.ndarray:
    """Mirror-tile a texture until it covers (h, w) (only for images far from square)."""
    reps = (math.ceil(h / texture.shape[0]) + 1, math.ceil(w / texture.shape[1]) + 1, 1)
    return np.tile(texture, reps)


@functools.lru_cache(maxsize=8)
def _frost_textures_at(s: float, channels: int) -> np.ndarray:
    """The 5 textures at the image scale: (5, T', T', C) with T' = round(320 s), area-averaged (or bilinear up)."""
    size = max(1, round(FROST_TEXTURE_SIZE * s))
    out = []
    for k in range(FROST_TEXTURES):
        t = _frost_texture(k)[None]
        if size <= FROST_TEXTURE_SIZE:
            mat = _area_matrix(size, FROST_TEXTURE_SIZE)
        else:
            mat = _zoom_matrix(size, FROST_TEXTURE_SIZE, size / FROST_TEXTURE_SIZE)
        t = _resample(t, mat, mat)[0]
        out.append(_grey(t[None])[0] if channels == 1 else t)
    arr = np.stack(out)
    arr.setflags(write=False)
    return arr


# Pale blue-white of ice (RGB, max 1), applied to the texture's intensity.
_FROST_TINT = np.array([0.84, 0.92, 1.0])


@functools.lru_cache(maxsize=FROST_TEXTURES)
def _frost_texture(k: int) -> np.ndarray:
    """Procedural frost texture k (320, 320, 3) float in [0, 1] on the 224-grid; fixed seed per k.

    Substitute for the published frost photographs (not redistributable with plexbench). Three layers:
    ice crystals (six-armed needle stars with side branches, in three size classes, drawn as anti-aliased
    lines), frost veins (thin bright contours of a plasma fractal) and a soft haze (a smooth plasma);
    summed, softly saturated, and tinted pale blue. Intensity mean about 0.45 (see docs/corruptions.md).
    """
    rng = np.random.default_rng(np.random.SeedSequence([zlib.crc32(b"frost-texture"), k]))
    n = FROST_TEXTURE_SIZE
    haze = _plasma(rng.uniform(-1, 1, size=(1, 512, 512)), 2.2)[0, :n, :n]
    veins_field = _plasma(rng.uniform(-1, 1, size=(1, 512, 512)), 1.6)[0, :n, :n]
    veins = sum(np.exp(-(((veins_field - lv) / 0.012) ** 2)) for lv in (0.35, 0.5, 0.65))
    crystals = _frost_crystals(rng, n)
    v = 0.5 * haze + 0.15 * veins + crystals
    v = 1.0 - np.exp(-1.6 * v)  # soft saturation: overlapping crystals whiten instead of overflowing
    return np.clip(v[..., None] * _FROST_TINT, 0.0, 1.0)


def _frost_crystals(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, n) intensity of needle-star crystals: 6 arms 60 degrees apart, side branches at +-60 degrees."""
    segments = []  # rows: y0, x0, y1, x1, intensity
    for count, (lo, hi) in ((10, (40, 90)), (70, (14, 40)), (500, (3, 14))):
        for _ in range(count):
            cy, cx = rng.uniform(0, n, size=2)
            turn = rng.uniform(0, np.pi / 3)
            length = rng.uniform(lo, hi)
            strength = rng.uniform(0.5, 1.0)
            for arm in range(6):
                a = turn + arm * np.pi / 3
                arm_len = length * rng.uniform(0.4, 1.0)  # uneven arms: frost grows irregularly
                segments.append((cy, cx, cy + arm_len * np.sin(a), cx + arm_len * np.cos(a), strength))
                for t in np.linspace(0.25, 0.85, 4):  # branches shorten toward the tip
                    by, bx = cy + t * arm_len * np.sin(a), cx + t * arm_len * np.cos(a)
                    b_len = 0.35 * arm_len * (1.0 - t)
                    for side in (-1, 1):
                        b = a + side * np.pi / 3
                        segments.append((by, bx, by + b_len * np.sin(b), bx + b_len * np.cos(b), 0.7 * strength))
    return _draw_segments(np.array(segments), n)


def _draw_segments(segments: np.ndarray, n: int) -> np.ndarray:
    """Anti-aliased lines: points every 0.5 px along each segment, bilinear-splatted, wrapped at the edges."""
    y0, x0, y1, x1, value = segments.T
    steps = np.maximum(2, (np.hypot(y1 - y0, x1 - x0) * 2).astype(np.int64) + 1)
    seg = np.repeat(np.arange(len(segments)), steps)
    first = np.repeat(np.cumsum(steps) - steps, steps)
    t = (np.arange(len(seg)) - first) / (steps[seg] - 1)
    yy, xx = y0[seg] + t * (y1 - y0)[seg], x0[seg] + t * (x1 - x0)[seg]
    iy, ix = np.floor(yy).astype(np.int64), np.floor(xx).astype(np.int64)
    fy, fx = yy - iy, xx - ix
    canvas = np.zeros(n * n)
    for dy, dx, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(canvas, ((iy + dy) % n) * n + (ix + dx) % n, 0.5 * value[seg] * wt)
    return canvas.reshape(n, n)


def _plasma(u: np.ndarray, decay: float) -> np.ndarray:
    """Diamond-square plasma fractals (B, M, M) in [0, 1] from uniform(-1, 1) draws u (B, M, M), M a power of 2.

    As the published `plasma_fractal`: toroidal neighbours, wibble 100 divided by `decay` per level, each
    new point = mean of its 4 neighbours + wibble^2 * u at that point; then min-max normalised per map.
    Every point is set once, so u[p] is the noise of point p (u[:, 0, 0] is unused; that corner is 0).
    """
    b, m, _ = u.shape
    grid = np.zeros_like(u)
    step, wibble = m, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[:, ::step, ::step]
        acc = corners + np.roll(corners, -1, axis=1)
        acc = acc + np.roll(acc, -1, axis=2)
        grid[:, half::step, half::step] = acc / 4 + wibble ** 2 * u[:, half::step, half::step]
        centres, corners = grid[:, half::step, half::step], grid[:, ::step, ::step]
        acc = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        grid[:, ::step, half::step] = acc / 4 + wibble ** 2 * u[:, ::step, half::step]
        acc = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        grid[:, half::step, ::step] = acc / 4 + wibble ** 2 * u[:, half::step, ::step]
        step, wibble = half, wibble / decay
    grid = grid - grid.min(axis=(1, 2), keepdims=True)
    return grid / grid.max(axis=(1, 2), keepdims=True)


@_register("fog", ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
           fields=("fog_weight", "wibble_decay"))
def _fog(x, param, rngs, s):
    """x <- (x + a * plasma) * m / (m + a), m = max of the clean image; plasma in [0, 1] per image.

    The published map is 256 x 256 at 224 px, cropped to its top-left 224 x 224. Here it is
    M = 2^ceil(log2(256 s)) pixels over the same 256 reference pixels (M = 32 at 28 px; its coarse levels are
    the published map's), cropped to the image's reference extent and area-averaged to (H, W) (the identity
    at 28 px). Its scale (and so the fog's blob size) thus follows the image.
    """
    a, decay = param
    h, w = x.shape[1:3]
    size = 2 ** max(1, math.ceil(math.log2(256 * s)))
    u = _draw(rngs, lambda r: r.uniform(-1.0, 1.0, size=(size, size)))
    plasma = _plasma(u, decay)
    per_ref = size / 256.0  # map pixels per reference pixel
    fh, fw = _reference_grid(h, w, s)
    ph, pw = max(1, round(fh * per_ref)), max(1, round(fw * per_ref))
    layer = _area_matrix(h, ph) @ plasma[:, :ph, :pw] @ _area_matrix(w, pw).T
    m = x.max(axis=(1, 2, 3), keepdims=True)
    return (x + a * layer[..., None]) * m / (m + a)


# --------------------------------------------------------------------------- digital


@_register("brightness", (0.1, 0.2, 0.3, 0.4, 0.5), fields=("value_shift",), random=False)
def _brightness(x, shift, rngs, s):
    """Add `shift` to V of HSV (clipped at 1), H and S kept.

    Closed form: with v = max over channels, v' = min(v + shift, 1), every channel is scaled by v' / v (hue
    and saturation are ratios of the channels to v); black pixels (v = 0, saturation 0) become grey v'.
    For grey images this is min(x + shift, 1).
    """
    v = x.max(axis=-1, keepdims=True)
    v_new = np.minimum(v + shift, 1.0)
    safe = np.where(v > 0, v, 1.0)
    return np.where(v > 0, x * (v_new / safe), v_new)


@_register("contrast", (0.4, 0.3, 0.2, 0.1, 0.05), fields=("factor",), random=False)
def _contrast(x, factor, rngs, s):
    """(x - mean) * factor + mean, the mean taken over the pixels of each image and channel."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * factor + mean


_ELASTIC_UNIT = 244.0  # the published table is written as multiples of 244 ("should have been 224")


@_register("elastic_transform",
           ((_ELASTIC_UNIT * 2, _ELASTIC_UNIT * 0.7, _ELASTIC_UNIT * 0.1),
            (_ELASTIC_UNIT * 2, _ELASTIC_UNIT * 0.08, _ELASTIC_UNIT * 0.2),
            (_ELASTIC_UNIT * 0.05, _ELASTIC_UNIT * 0.01, _ELASTIC_UNIT * 0.02),
            (_ELASTIC_UNIT * 0.07, _ELASTIC_UNIT * 0.01, _ELASTIC_UNIT * 0.02),
            (_ELASTIC_UNIT * 0.12, _ELASTIC_UNIT * 0.01, _ELASTIC_UNIT * 0.02)),
           fields=("alpha", "sigma", "affine"), spatial=("alpha", "sigma", "affine"))
def _elastic_transform(x, param, rngs, s):
    """A random affine warp, then a smooth random displacement field (Simard et al. 2003), bilinear.

    Affine: three control points (centre +- min(H, W) // 3) move by uniform(-affine, affine) per coordinate;
    the image is resampled so they land there (reflect-101 border, as cv2.warpAffine). Field: dx, dy =
    alpha * gaussian_sigma(uniform(-1, 1) noise) (reflect border, truncate 3, as skimage); the image is
    read at (y + dy, x + dx) (half-sample reflect border, as scipy.map_coordinates). Scaled: affine, sigma
    and alpha by s, and the noise by s (see module docstring), so displacements are s times the published.
    """
    alpha, sigma, affine = param
    h, w = x.shape[1:3]

    def draw(r):
        jitter = r.uniform(-affine * s, affine * s, size=(3, 2))
        field = r.uniform(-1.0, 1.0, size=(2, h, w))
        return np.concatenate([jitter.reshape(-1), field.reshape(-1)])

    drawn = _draw(rngs, draw)
    jitter = drawn[:, :6].reshape(-1, 3, 2)
    fields = drawn[:, 6:].reshape(-1, 2, h, w) * s
    x = _affine_warp(x, jitter)
    smooth_r, smooth_c = _gaussian_matrix(h, sigma * s), _gaussian_matrix(w, sigma * s).T.copy()
    smooth = np.stack([[smooth_r @ f @ smooth_c for f in pair] for pair in fields]) * (alpha * s)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    return _sample_bilinear(x, rows + smooth[:, 1], cols + smooth[:, 0], "reflect")


@functools.lru_cache(maxsize=32)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix of scipy's gaussian_filter1d(mode='reflect', truncate=3) (applied to the identity)."""
    from scipy.ndimage import gaussian_filter1d

    mat = gaussian_filter1d(np.eye(n), sigma, axis=0, mode="reflect", truncate=3.0)
    mat.setflags(write=False)
    return mat


def _affine_warp(x: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Resample x so the control points p_k (x, y) move to p_k + jitter_k (B, 3, 2); reflect-101 border."""
    b, h, w, _ = x.shape
    cx, cy, q = w // 2, h // 2, min(h, w) // 3
    src = np.array([[cx + q, cy + q], [cx + q, cy - q], [cx - q, cy - q]], dtype=np.float64)
    dst = src + jitter  # (B, 3, 2)
    # Output pixel p reads the input at A^-1 p, where A maps src -> dst; solve src = [dst 1] @ C for C.
    design = np.concatenate([dst, np.ones((b, 3, 1))], axis=-1)  # (B, 3, 3)
    coef = np.linalg.solve(design, np.broadcast_to(src, (b, 3, 2)))  # (B, 3, 2)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    src_x = cols * coef[:, 0, 0, None, None] + rows * coef[:, 1, 0, None, None] + coef[:, 2, 0, None, None]
    src_y = cols * coef[:, 0, 1, None, None] + rows * coef[:, 1, 1, None, None] + coef[:, 2, 1, None, None]
    return _sample_bilinear(x, src_y, src_x, "mirror")


@_register("pixelate", (0.6, 0.5, 0.4, 0.3, 0.25), fields=("resize_fraction",), random=False)
def _pixelate(x, fraction, rngs, s):
    """PIL BOX resize to (int(W f), int(H f)) and back: the published code, uint8 round trip included.

    f is a ratio of the image size: blocks are 1 / f pixels wide at every size (not scaled).
    """
    from PIL import Image

    h, w = x.shape[1:3]
    small = (max(1, int(w * fraction)), max(1, int(h * fraction)))
    out = np.empty_like(x)
    for i, img in enumerate(_to_uint8(x)):
        pil = _pil_image(img).resize(small, Image.BOX).resize((w, h), Image.BOX)
        out[i] = np.asarray(pil, dtype=np.float64).reshape(h, w, -1) / 255.0
    return out


@_register("jpeg_compression", (25, 18, 15, 10, 7), fields=("quality",), random=False)
def _jpeg_compression(x, quality, rngs, s):
    """Encode with PIL's JPEG at `quality` (default 4:2:0 chroma subsampling for RGB) and decode."""
    from PIL import Image

    out = np.empty_like(x)
    for i, img in enumerate(_to_uint8(x)):
        buffer = io.BytesIO()
        _pil_image(img).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded, dtype=np.float64).reshape(img.shape) / 255.0
    return out


def _pil_image(img: np.ndarray):
    """uint8 (H, W, 1) -> PIL 'L', (H, W, 3) -> 'RGB' (the mode follows from the array's shape)."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(img[..., 0] if img.shape[-1] == 1 else img))


# Every ImageNet-C corruption has an implementation, in the registry's (paper) order.
assert tuple(sorted(CORRUPTIONS)) == tuple(CORRUPTION_REGISTRY.names()), "corruption list out of sync"
PARAMETERS: dict[str, tuple] = {name: CORRUPTION_REGISTRY.get(name).params for name in CORRUPTIONS}
