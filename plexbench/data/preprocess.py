"""Preprocessing ops on numpy image batches, matching Plex's TensorFlow preprocessing exactly (spec §4).

A spec string joins ops with `|`, e.g. `resize(384)|value_range(-1,1)` (fine-tuned evaluation) or
`resize_small(256)|central_crop(224)|value_range(-1,1)` (upstream evaluation). `parse(spec)` returns
a callable taking a batch (B, H, W, C) of uint8 (or float32) and returning float32.

Ops (B, H, W, C batches; every image of a batch has the same size):

- `resize(S)` / `resize(H,W)`: bilinear, half-pixel centres, no antialias, aspect ratio not kept;
  bit-exact with `tf.image.resize(method="bilinear", antialias=False)` (TF's float32 arithmetic,
  reproduced step by step). A uint8 input is cast back to uint8 by truncation, as Plex does
  (`tf.cast` after resizing); a float input stays float32.
- `resize_small(S)`: scale so the shorter side becomes S, keeping the aspect ratio; the new sides
  are round-half-to-even(float32(side) * float32(S) / float32(min(H, W))); `area` resampling,
  bit-exact with `tf.image.resize(method="area")`; uint8 truncated back to uint8 as for `resize`.
- `central_crop(S)` / `central_crop(H,W)`: the window starting at ((H - h) // 2, (W - w) // 2).
- `value_range(a,b)`: float32 x / 255 * (b - a) + a (so 0 -> a, 255 -> b), for [0, 255] inputs;
  bit-exact with TF run eagerly (inside a tf.function, TF's graph optimiser may fold the constants
  and differ by 1 ulp).
- `grey_to_rgb`: repeat a single channel 3 times; 3-channel images pass unchanged.

The result of the whole chain is float32 (a chain that ends in uint8 is cast without scaling).
Unknown ops and bad arguments raise a one-line PlexbenchError.

TensorFlow twins (for tf.data's parallel map; the input pipeline streams ImageNet-sized data through
them, see plexbench.data.pipeline): `tf_image_fn(preprocess)` is the same chain on ONE image
(H, W, C) as TensorFlow ops, giving the same bits as the numpy ops: `resize` and `resize_small` are
`tf.image.resize` itself (bilinear without antialias / area, which the numpy ops reproduce), the
new `resize_small` sides are computed with TF's float32 ops and banker's rounding as above, and
`value_range` is the same three float32 steps. tests/test_data_preprocess_tf.py checks the bits.

Deferred `value_range` (the uint8 transfer of plexbench.inference.engine): `value_range` maps the
256 values of a uint8 image one by one, so for a chain that ends in it, `split_value_range` gives
the chain without it (uint8 out) and the 256-entry float32 table of it; table[image] is the float32
image bit for bit, wherever the lookup runs.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.registry import Registry

Op = Callable[[np.ndarray], np.ndarray]
OPS: Registry[Callable[..., Op]] = Registry("preprocessing op")

_F32 = np.float32
_CHUNK = 4  # images resized at a time: keeps the float32 temporaries in cache (measured best)


# --------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class Preprocess:
    """A parsed spec: call it on a batch (B, H, W, C) uint8/float32 -> float32 (B, H', W', C').

    `steps` holds each op's (name, args) as parsed (for the TensorFlow twins and
    `split_value_range`); `keep_dtype` True returns the chain's own dtype (uint8 for a chain of
    resizes and crops on uint8 input) instead of casting to float32.
    """

    spec: str
    ops: tuple[Op, ...]
    steps: tuple[tuple[str, tuple], ...] = ()
    keep_dtype: bool = False

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = _check_batch(images)
        for op in self.ops:
            x = op(x)
        return x if self.keep_dtype else x.astype(np.float32, copy=False)


_TOKEN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse(spec: str) -> Preprocess:
    """Parse `op|op(args)|...` into a `Preprocess`. An empty spec only casts to float32.

    Example: `parse("resize(2)|value_range(-1,1)")(np.full((1, 4, 4, 1), 255, np.uint8))` is a
    (1, 2, 2, 1) float32 array of ones.
    """
    if not isinstance(spec, str):
        raise PlexbenchError(f"preprocessing spec must be a string, got {type(spec).__name__}")
    ops, steps = [], []
    for token in (t.strip() for t in spec.split("|")):
        if not token:
            if spec.strip():
                raise PlexbenchError(f"empty op in preprocessing spec '{spec}'")
            continue
        m = _TOKEN.match(token)
        if m is None:
            raise PlexbenchError(f"cannot parse preprocessing op '{token}' in '{spec}' (expected name or name(args))")
        name, arg_text = m.group(1), m.group(2)
        factory = OPS.get(name)  # unknown names: one line with close matches
        args = tuple(_parse_args(name, arg_text))
        ops.append(factory(*args))
        steps.append((name, args))
    return Preprocess(spec=spec, ops=tuple(ops), steps=tuple(steps))


def _parse_args(name: str, text: str | None) -> list[float | int]:
    if text is None or not text.strip():
        return []
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not _NUMBER.match(part):
            raise PlexbenchError(f"{name}: argument '{part}' is not a number")
        value = float(part)
        out.append(int(value) if re.fullmatch(r"[+-]?\d+", part) else value)
    return out


def _sizes(name: str, args, *, count=(1, 2)) -> tuple[int, int]:
    """One size S (-> (S, S)) or two (H, W), each a positive integer."""
    if len(args) not in count or not all(isinstance(a, int) and a > 0 for a in args):
        want = "S or H,W" if count == (1, 2) else "S"
        raise PlexbenchError(f"{name} expects positive integer sizes ({name}({want})), got {list(args)}")
    return (args[0], args[-1])


def _check_batch(images) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4:
        raise PlexbenchError(f"preprocessing expects a batch (B, H, W, C), got shape {x.shape}")
    if x.dtype != np.uint8 and x.dtype != np.float32:
        raise PlexbenchError(f"preprocessing expects uint8 or float32 images, got {x.dtype}")
    return x


# --------------------------------------------------------------------------- ops

@OPS.register("resize")
def make_resize(*args) -> Op:
    """`resize(S)` or `resize(H,W)`: bilinear like tf.image.resize (see `bilinear_resize`)."""
    size = _sizes("resize", args)
    return functools.partial(bilinear_resize, size=size)


@OPS.register("resize_small")
def make_resize_small(*args) -> Op:
    """`resize_small(S)`: shorter side to S with area resampling (see `resize_small_size`, `area_resize`)."""
    side = _sizes("resize_small", args, count=(1,))[0]

    def op(x: np.ndarray) -> np.ndarray:
        return area_resize(x, resize_small_size(x.shape[1], x.shape[2], side))

    return op


@OPS.register("central_crop")
def make_central_crop(*args) -> Op:
    """`central_crop(S)` or `central_crop(H,W)`."""
    size = _sizes("central_crop", args)
    return functools.partial(central_crop, size=size)


@OPS.register("value_range")
def make_value_range(*args) -> Op:
    """`value_range(a,b)`: [0, 255] -> [a, b] (see `value_range`)."""
    if len(args) != 2:
        raise PlexbenchError(f"value_range expects two numbers (value_range(a,b)), got {list(args)}")
    low, high = float(args[0]), float(args[1])
    if not low < high:
        raise PlexbenchError(f"value_range expects a < b, got ({low:g}, {high:g})")
    return functools.partial(value_range, low=low, high=high)


@OPS.register("grey_to_rgb")
def make_grey_to_rgb(*args) -> Op:
    """`grey_to_rgb`: 1 channel -> 3 identical channels."""
    if args:
        raise PlexbenchError(f"grey_to_rgb takes no arguments, got {list(args)}")
    return grey_to_rgb


def value_range(x: np.ndarray, *, low: float, high: float) -> np.ndarray:
    """float32 (x / 255) * (high - low) + low, each step rounded to float32 as TF computes it.

    Example: x = 0, 51, 255 with (-1, 1) -> -1.0, -0.6, 1.0.
    """
    out = x.astype(_F32)  # a new array: the three steps below run in place
    out /= _F32(255.0)
    out *= _F32(high - low)
    out += _F32(low)
    return out


def grey_to_rgb(x: np.ndarray) -> np.ndarray:
    """(B, H, W, 1) -> (B, H, W, 3) by repeating the channel; (B, H, W, 3) is returned unchanged."""
    if x.shape[-1] == 3:
        return x
    if x.shape[-1] != 1:
        raise PlexbenchError(f"grey_to_rgb expects 1 or 3 channels, got {x.shape[-1]}")
    return np.repeat(x, 3, axis=-1)


def central_crop(x: np.ndarray, *, size: tuple[int, int]) -> np.ndarray:
    """The (h, w) window at offsets ((H - h) // 2, (W - w) // 2); images smaller than (h, w) raise."""
    h, w = size
    H, W = x.shape[1:3]
    if h > H or w > W:
        raise PlexbenchError(f"central_crop({h},{w}) is larger than the {H}x{W} image")
    top, left = (H - h) // 2, (W - w) // 2
    return x[:, top:top + h, left:left + w]


def _back_to_input_dtype(out: np.ndarray, dtype) -> np.ndarray:
    """uint8 inputs: clip to [0, 255] and truncate (tf.cast of float to uint8); else float32."""
    if dtype == np.uint8:
        np.clip(out, 0, 255, out=out)
        return out.astype(np.uint8)
    return out


# --------------------------------------------------------------------------- bilinear

def bilinear_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel bilinear sampling along one axis, in TF's float32 arithmetic.

    scale = float32(in) / float32(out); for output index i: pos = (i + 0.5) * scale - 0.5;
    lower = max(floor(pos), 0); upper = min(ceil(pos), in - 1); lerp = pos - floor(pos).
    Returns (lower int64, upper int64, lerp float32), each of length `out_size`.
    """
    scale = _F32(in_size) / _F32(out_size)
    pos = (np.arange(out_size, dtype=_F32) + _F32(0.5)) * scale - _F32(0.5)
    floor = np.floor(pos)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(pos), in_size - 1).astype(np.int64)
    return lower, upper, (pos - floor).astype(_F32)


def bilinear_resize(x: np.ndarray, *, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (B, H, W, C) to (B, h, w, C); no antialias, half-pixel centres.

    Per output pixel, with the 4 neighbours tl, tr, bl, br and the weights of `bilinear_axis`:
    top = tl + (tr - tl) * x_lerp; bottom = bl + (br - bl) * x_lerp; out = top + (bottom - top) * y_lerp
    (float32, in this order, as TF's kernel). `top` and `bottom` depend only on the source row, so
    they are computed once per source row used (a horizontal pass), then combined row by row;
    the arithmetic, hence every rounding, is TF's. uint8 in -> uint8 out (truncation), float32 in
    -> float32 out.

    Worked example (2x2 -> 4x4, one row [0, 100]): scale 0.5, pos = -0.25, 0.25, 0.75, 1.25, so
    (lower, upper, lerp) = (0,0,.75), (0,1,.25), (0,1,.75), (1,1,.25) -> 0, 25, 75, 100.
    """
    h, w = size
    ylo, yhi, ylerp = bilinear_axis(x.shape[1], h)
    xlo, xhi, xlerp = bilinear_axis(x.shape[2], w)
    rows, inverse = np.unique(np.concatenate([ylo, yhi]), return_inverse=True)
    top_index, bottom_index = inverse[:h], inverse[h:]
    xl = xlerp[None, None, :, None]
    yl = ylerp[None, :, None, None]
    out = np.empty((x.shape[0], h, w, x.shape[3]), dtype=_F32)
    for s in range(0, x.shape[0], _CHUNK):
        used = x[s:s + _CHUNK, rows]  # only the source rows some output row reads
        horizontal = used[:, :, xlo].astype(_F32)  # left + (right - left) * x_lerp, in place
        right = used[:, :, xhi].astype(_F32)
        right -= horizontal
        right *= xl
        horizontal += right
        top = horizontal[:, top_index]
        bottom = horizontal[:, bottom_index]  # top + (bottom - top) * y_lerp, in place
        bottom -= top
        bottom *= yl
        np.add(top, bottom, out=out[s:s + _CHUNK])
    return _back_to_input_dtype(out, x.dtype)


# --------------------------------------------------------------------------- area

def resize_small_size(height: int, width: int, side: int) -> tuple[int, int]:
    """New (h, w) so the shorter side is `side`: round_half_even(float32(dim) * float32(side) / float32(min)).

    Example: 375x500 to 256 -> factor 0.6826667 -> (256, 341).
    """
    factor = _F32(side) / _F32(min(height, width))
    return int(np.round(_F32(height) * factor)), int(np.round(_F32(width) * factor))


def area_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Area weights along one axis as TF's ResizeArea computes them (float32).

    scale = float32(in) / float32(out); output i covers [a, b) = [i * scale, (i + 1) * scale).
    Input cells k = floor(a) .. ceil(b) - 1 contribute with weight
      k < a:  (scale if k + 1 > b else k + 1 - a)
      k >= a: (b - k if k + 1 > b else 1)
    (cells past the edge read the edge pixel). Returns (index int64 (out, T), weight float32 (out, T)),
    T the most cells any output touches, padded with weight 0 (adding 0 changes no float sum).
    """
    scale = _F32(in_size) / _F32(out_size)
    starts = np.arange(out_size, dtype=_F32) * scale
    ends = np.arange(1, out_size + 1, dtype=_F32) * scale
    first = np.floor(starts).astype(np.int64)
    last = np.ceil(ends).astype(np.int64)  # exclusive
    taps = int((last - first).max())
    k = first[:, None] + np.arange(taps)[None, :]
    kf = k.astype(_F32)
    a, b = starts[:, None], ends[:, None]
    beyond = kf + _F32(1) > b
    weight = np.where(kf < a, np.where(beyond, scale, kf + _F32(1) - a), np.where(beyond, b - kf, _F32(1)))
    weight = np.where(k < last[:, None], weight, _F32(0)).astype(_F32)
    return np.clip(k, 0, in_size - 1), weight


def area_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area resize of (B, H, W, C) to (B, h, w, C), bit-exact with TF's ResizeArea kernel.

    TF sums, per output pixel and input row r, the row's cells left to right in float32
    (sum_r = sum_k v[r, k] * wx_k), then sum = sum_r sum_r * wy_r over rows top to bottom, then
    out = sum * float32(1 / (float32(scale_y) * float32(scale_x))). This follows the same order.
    uint8 in -> uint8 out (truncation), float32 in -> float32 out.

    Worked example (4 -> 2 along one axis, row [10, 20, 30, 41]): scale 2, each output covers two
    cells of weight 1: (10 + 20) / 2 = 15, (30 + 41) / 2 = 35.5 (35 after truncation to uint8).
    """
    h, w = size
    H, W = x.shape[1:3]
    yk, yw = area_axis(H, h)
    xk, xw = area_axis(W, w)
    inv = _F32(1.0 / float(_F32(_F32(H) / _F32(h)) * _F32(_F32(W) / _F32(w))))
    out = np.empty((x.shape[0], h, w, x.shape[3]), dtype=_F32)
    for s in range(0, x.shape[0], _CHUNK):
        chunk = x[s:s + _CHUNK]
        rows = chunk[:, :, xk[:, 0]].astype(_F32) * xw[None, None, :, 0, None]  # (b, H, w, C)
        for t in range(1, xk.shape[1]):
            rows = rows + chunk[:, :, xk[:, t]].astype(_F32) * xw[None, None, :, t, None]
        total = np.zeros((chunk.shape[0], h, w, chunk.shape[3]), dtype=_F32)
        for t in range(yk.shape[1]):
            total = total + rows[:, yk[:, t]] * yw[None, :, t, None, None]
        out[s:s + _CHUNK] = total * inv
    return _back_to_input_dtype(out, x.dtype)


# --------------------------------------------------------------------------- deferred value_range

# Ops that map uint8 images to uint8 images (resizes truncate back to uint8), so a chain of them
# followed by one value_range can hand uint8 images and a 256-entry table to whoever finishes it.
_UINT8_PRESERVING = frozenset({"resize", "resize_small", "central_crop", "grey_to_rgb"})


def value_range_table(low: float, high: float) -> np.ndarray:
    """float32 (256,): `value_range` of the uint8 values 0..255, so table[x] == value_range(x) bit for bit.

    Example: value_range_table(-1, 1)[[0, 51, 255]] -> [-1.0, -0.6, 1.0].
    """
    return value_range(np.arange(256, dtype=np.uint8), low=float(low), high=float(high))


def split_value_range(pre: Preprocess) -> tuple[Preprocess, np.ndarray] | None:
    """(the chain without its final value_range, returning uint8 on uint8 input; that op's table).

    None unless the chain is uint8-preserving ops (resize, resize_small, central_crop,
    grey_to_rgb) followed by exactly one value_range(a,b). For uint8 images x,
    table[head(x)] == pre(x) bit for bit (see `value_range_table`).
    Example: parse("resize(384)|grey_to_rgb|value_range(-1,1)") -> (resize(384)|grey_to_rgb, table(-1, 1)).
    """
    if not pre.steps or pre.steps[-1][0] != "value_range":
        return None
    if not all(name in _UINT8_PRESERVING for name, _ in pre.steps[:-1]):
        return None
    low, high = pre.steps[-1][1]
    head = Preprocess(spec="|".join(f"{n}({','.join(map(str, a))})" if a else n for n, a in pre.steps[:-1]),
                      ops=pre.ops[:-1], steps=pre.steps[:-1], keep_dtype=True)
    return head, value_range_table(low, high)


# --------------------------------------------------------------------------- TensorFlow twins
# Each factory takes the op's parsed args and returns a function on ONE image tensor (H, W, C),
# uint8 or float32, giving what the numpy op gives for that image as a batch of one. TensorFlow
# is imported only when a twin is built.

_TF_TWINS: dict[str, Callable] = {}


def _tf_twin(name: str):
    def register(factory):
        _TF_TWINS[name] = factory
        return factory

    return register


def tf_image_fn(pre: Preprocess) -> Callable | None:
    """`pre` as TensorFlow ops on one image (H, W, C) -> float32 (H', W', C') (the chain's own dtype
    when `pre.keep_dtype`), for tf.data's map; None if some op has no TensorFlow twin.

    Bit-identical to `pre(image[None])[0]` (tests/test_data_preprocess_tf.py). Ops run eagerly or
    traced (tf.data traces them), with the same result.
    """
    if any(name not in _TF_TWINS for name, _ in pre.steps) or len(pre.steps) != len(pre.ops):
        return None
    import tensorflow as tf

    twins = [_TF_TWINS[name](*args) for name, args in pre.steps]

    @tf.autograph.experimental.do_not_convert  # plain Python control flow at trace time; errors as raised
    def fn(image):
        x = image
        for twin in twins:
            x = twin(x)
        return x if pre.keep_dtype else tf.cast(x, tf.float32)

    return fn


def _tf_back_to_input_dtype(out, dtype):
    """As `_back_to_input_dtype`: uint8 inputs clip to [0, 255] and truncate; else float32."""
    import tensorflow as tf

    if dtype == tf.uint8:
        return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)
    return out


@_tf_twin("resize")
def _tf_resize(*args):
    size = _sizes("resize", args)

    def op(x):
        import tensorflow as tf

        return _tf_back_to_input_dtype(tf.image.resize(x, size, method="bilinear", antialias=False), x.dtype)

    return op


def tf_resize_small_size(height, width, side):
    """`resize_small_size` in TF ops on scalar int32 tensors (or ints): (h, w) int32, the same numbers."""
    import tensorflow as tf

    factor = tf.cast(side, tf.float32) / tf.cast(tf.minimum(height, width), tf.float32)
    h = tf.cast(tf.round(tf.cast(height, tf.float32) * factor), tf.int32)  # tf.round: half to even
    w = tf.cast(tf.round(tf.cast(width, tf.float32) * factor), tf.int32)
    return h, w


@_tf_twin("resize_small")
def _tf_resize_small(*args):
    side = _sizes("resize_small", args, count=(1,))[0]

    def op(x):
        import tensorflow as tf

        shape = tf.shape(x)
        h, w = tf_resize_small_size(shape[0], shape[1], side)
        return _tf_back_to_input_dtype(tf.image.resize(x, tf.stack([h, w]), method="area"), x.dtype)

    return op


@_tf_twin("central_crop")
def _tf_central_crop(*args):
    h, w = _sizes("central_crop", args)

    def op(x):
        import tensorflow as tf

        shape = tf.shape(x)
        fits = tf.debugging.assert_equal(
            tf.logical_and(shape[0] >= h, shape[1] >= w), True,
            message=f"central_crop({h},{w}) is larger than the image (height, width):")
        with tf.control_dependencies([fits]):
            top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
        out = tf.slice(x, tf.stack([top, left, 0]), [h, w, -1])
        out.set_shape([h, w, x.shape[-1]])
        return out

    return op


@_tf_twin("value_range")
def _tf_value_range(*args):
    make_value_range(*args)  # the same argument checks
    low, high = float(args[0]), float(args[1])

    def op(x):
        import tensorflow as tf

        out = tf.cast(x, tf.float32) / tf.constant(_F32(255.0))
        out = out * tf.constant(_F32(high - low))
        return out + tf.constant(_F32(low))

    return op


@_tf_twin("grey_to_rgb")
def _tf_grey_to_rgb(*args):
    make_grey_to_rgb(*args)

    def op(x):
        import tensorflow as tf

        channels = x.shape[-1]
        if channels == 3:
            return x
        if channels != 1:
            raise PlexbenchError(f"grey_to_rgb expects 1 or 3 channels, got {channels}")
        return tf.tile(x, [1, 1, 3])

    return op
