"""Checkpoint I/O in the released ViT-Plex .npz layout (spec §2).

Layout: one flat .npz; keys are the parameter tree flattened with '/', sorted, under the prefix
`opt/target/` (optimizer state under `opt/state/...` is ignored), or the bare tree without the
prefix. bfloat16 arrays appear as numpy void arrays of itemsize 2 and are viewed as bfloat16.
Every loaded parameter is returned as float32 (bfloat16 -> float32 is exact). Files are read
only through `plexbench.fileio.load_npz` (never unpickling) and written atomically.

No JAX at import time: loading and validation are numpy-only; `init_params` imports Flax.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Mapping

import ml_dtypes
import numpy as np

from plexbench import fileio
from plexbench.errors import PlexbenchError
from plexbench.models.config import ModelConfig, param_shapes

OPT_TARGET = "opt/target/"
OPT_STATE = "opt/state/"
POSEMB_KEY = "Transformer/posembed_input/pos_embedding"
SHOWN = 3  # differences named in an error message, per kind


# ---------------------------------------------------------------------------- tree <-> flat


def flatten_params(params: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested mapping -> {'a/b/c': array}, keys sorted."""
    out: dict[str, np.ndarray] = {}

    def walk(node, path):
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{path}{k}/")
        else:
            out[path[:-1]] = np.asarray(node)

    walk(params, prefix)
    return dict(sorted(out.items()))


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict:
    """{'a/b/c': array} -> {'a': {'b': {'c': array}}}."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


# ---------------------------------------------------------------------------- reading


def strip_training_state(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parameter arrays of a checkpoint, prefix removed.

    With any `opt/` key present: keys under `opt/target/` are the parameters (prefix stripped),
    keys under `opt/state/` are optimizer state and dropped, anything else is kept as-is (and
    then reported as unexpected by validation). Without `opt/` keys the file is the bare tree.
    """
    if not any(k.startswith("opt/") for k in arrays):
        return dict(arrays)
    out = {}
    for k, v in arrays.items():
        if k.startswith(OPT_TARGET):
            out[k[len(OPT_TARGET):]] = v
        elif not k.startswith(OPT_STATE):
            out[k] = v
    return out


def as_float32(key: str, a: np.ndarray, path) -> np.ndarray:
    """float32 copy of a parameter; void of itemsize 2 is bfloat16 stored by numpy (spec §2).

    The one integer leaf of a layout, an SNGP layer's update counter `<layer>_state/step`, is
    returned as int32 instead (plexbench.models.sngp).
    """
    if key.endswith("_state/step") and a.dtype.kind in "iuf":
        return np.asarray(a).astype(np.int32)
    if a.dtype.kind == "V" and a.dtype.itemsize == 2 and a.dtype.names is None:
        a = a.view(ml_dtypes.bfloat16)
    if a.dtype == ml_dtypes.bfloat16 or a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)  # no second copy of a float32 checkpoint
    raise PlexbenchError(f"checkpoint {path}: parameter '{key}' has dtype {a.dtype}, expected floating point")


def read_flat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The parameters of a checkpoint file as {key: float32 array}, unvalidated."""
    _check_not_truncated(Path(path))
    arrays = fileio.load_npz(path, what="checkpoint")
    if not arrays:
        raise PlexbenchError(f"checkpoint {path} holds no arrays")
    return {k: as_float32(k, v, path) for k, v in strip_training_state(arrays).items()}


def _check_not_truncated(path: Path) -> None:
    """A zip whose local header is there but whose central directory (at the end) is not was cut
    short; say so rather than 'not an npz'."""
    if not path.is_file():
        return  # load_npz names the problem
    with open(path, "rb") as f:
        starts_like_zip = f.read(4) == b"PK\x03\x04"
    if starts_like_zip and not zipfile.is_zipfile(path):
        raise PlexbenchError(f"checkpoint is truncated (a zip file without its central directory): {path}")


def layout_differences(flat_shapes: Mapping[str, tuple], expected: Mapping[str, tuple]) -> str:
    """'' when the layouts agree, else one line naming the first differences of each kind."""
    missing = sorted(set(expected) - set(flat_shapes))
    unexpected = sorted(set(flat_shapes) - set(expected))
    wrong = [k for k in sorted(set(expected) & set(flat_shapes)) if tuple(flat_shapes[k]) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if wrong:
        shown = ", ".join(f"{k} {tuple(flat_shapes[k])} vs expected {tuple(expected[k])}" for k in wrong[:SHOWN])
        parts.append(f"{len(wrong)} shape mismatch(es): {shown}{' ...' if len(wrong) > SHOWN else ''}")
    return "; ".join(parts)


def _first(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (" ..." if len(keys) > SHOWN else "")


def validate_flat(config: ModelConfig, flat: Mapping[str, np.ndarray], path="<memory>") -> None:
    """Raise PlexbenchError (one line) unless keys and shapes equal `param_shapes(config)`."""
    diff = layout_differences({k: v.shape for k, v in flat.items()}, param_shapes(config))
    if diff:
        raise PlexbenchError(f"checkpoint {path} does not match the model config: {diff}")


def check_finite(flat: Mapping[str, np.ndarray], path="<memory>") -> None:
    """Raise PlexbenchError (one line) when a parameter holds NaN or inf, naming the first ones.

    Such weights load and run, but every prediction they make is NaN: refusing them at load is
    the one place that catches them for `model info --checkpoint`, `predict` and `run`.
    Example: {'head/bias': [0.1, nan]} -> "1 of 2 values of 1 parameter(s) are NaN or inf: head/bias (1)".
    """
    bad = {}
    for key, value in flat.items():
        count = value.size - int(np.count_nonzero(np.isfinite(value)))
        if count:
            bad[key] = count
    if bad:
        total = sum(v.size for v in flat.values())
        named = ", ".join(f"{k} ({n:,})" for k, n in list(bad.items())[:SHOWN])
        raise PlexbenchError(f"checkpoint {path}: {sum(bad.values()):,} of {total:,} values of {len(bad)} parameter(s) "
                             f"are NaN or inf: {named}{' ...' if len(bad) > SHOWN else ''}")


def load_params(config: ModelConfig, path: str | os.PathLike, *, resize_posemb: bool = True) -> dict:
    """Read, validate and return the parameter tree (nested dict of float32 numpy arrays).

    resize_posemb: when the checkpoint's position embeddings have another square grid than the
    config's, resize them (`resize_pos_embedding`) before validating, as when evaluating a model
    at another resolution. Raises PlexbenchError (one line) for an unreadable file (missing,
    not an npz, truncated, object arrays), a non-float parameter, a layout mismatch, or
    non-finite values (`check_finite`).
    """
    flat = read_flat(path)
    if resize_posemb and POSEMB_KEY in flat:
        flat[POSEMB_KEY] = _maybe_resize(flat[POSEMB_KEY], config.num_tokens)
    validate_flat(config, flat, path)
    check_finite(flat, path)
    return unflatten_params(flat)


def _maybe_resize(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
    if posemb.ndim != 3 or posemb.shape[1] == num_tokens:
        return posemb
    if not (_is_square(posemb.shape[1] - 1) and _is_square(num_tokens - 1)):
        return posemb  # not a class token + square grid: let validation report the shape
    return resize_pos_embedding(posemb, num_tokens)


def _is_square(n: int) -> bool:
    return n >= 1 and math.isqrt(n) ** 2 == n


# ---------------------------------------------------------------------------- position embeddings


def zoom_bilinear(grid: np.ndarray, new_size: int) -> np.ndarray:
    """Resize a (g, g, D) grid to (g', g', D) by order-1 (bilinear) spline interpolation.

    Same sample points as scipy.ndimage.zoom(grid, (g'/g, g'/g, 1), order=1): output index i
    reads input coordinate x = i * (g - 1) / (g' - 1) (corners aligned; x = 0 when g' = 1) and
    interpolates linearly between floor(x) and floor(x) + 1, separably per axis.
    Example: g = 2, g' = 3, 1-D values [0, 1] -> coordinates [0, 0.5, 1] -> [0, 0.5, 1].
    """
    g = grid.shape[0]
    lo, hi, w = _linear_taps(g, new_size)
    rows = grid[lo] * (1 - w)[:, None, None] + grid[hi] * w[:, None, None]
    return rows[:, lo] * (1 - w)[None, :, None] + rows[:, hi] * w[None, :, None]


def _linear_taps(old: int, new: int):
    scale = (old - 1) / (new - 1) if new > 1 else 0.0
    x = np.arange(new, dtype=np.float64) * scale
    lo = np.clip(np.floor(x).astype(np.int64), 0, old - 1)
    hi = np.minimum(lo + 1, old - 1)
    return lo, hi, x - lo


def resize_pos_embedding(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
    """(1, 1 + g^2, D) -> (1, num_tokens, D): keep the class-token row, zoom the g x g grid.

    num_tokens - 1 must be a square g'^2 (spec §3, "Position embeddings at another resolution").
    """
    n_old, d = posemb.shape[1], posemb.shape[2]
    g, g_new = math.isqrt(n_old - 1), math.isqrt(num_tokens - 1)
    if g * g != n_old - 1 or g_new * g_new != num_tokens - 1:
        raise PlexbenchError(f"cannot resize position embeddings from {n_old} to {num_tokens} tokens "
                             "(class token + square grid expected)")
    grid = posemb[0, 1:].reshape(g, g, d).astype(np.float64)
    resized = zoom_bilinear(grid, g_new).reshape(1, g_new * g_new, d).astype(posemb.dtype)
    return np.concatenate([posemb[:, :1], resized], axis=1)


# ---------------------------------------------------------------------------- writing


def save_params(path: str | os.PathLike, params: Mapping, prefix: str = OPT_TARGET,
                extra: Mapping[str, np.ndarray] | None = None) -> None:
    """Write `params` (nested mapping) atomically as an official-layout .npz.

    Keys are the flattened tree joined with '/', sorted, each prefixed with `prefix` (use ""
    for the bare tree). bfloat16 arrays are stored as void arrays of itemsize 2, like the
    released files. `extra` adds arrays under their own full keys (e.g. optimizer state).
    """
    flat = {prefix + k: _storable(v) for k, v in flatten_params(params).items()}
    if extra:
        flat.update({k: _storable(v) for k, v in extra.items()})
    fileio.save_npz(path, dict(sorted(flat.items())))


def _storable(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view(np.dtype("V2")) if a.dtype == ml_dtypes.bfloat16 else a


def random_flat_params(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 values for every key of `param_shapes(config)` (numpy only, any size).

    Kernels ~ N(0, 1/fan_in); BatchEnsemble fast weights = random sign * (1 + 0.1 N(0, 1));
    LayerNorm scales = 1 + 0.1 N(0, 1); biases, cls, position embeddings ~ 0.1 N(0, 1);
    SNGP precision matrices I + A A^T / R (A standard normal), SNGP steps a random int32.
    Non-trivial everywhere (no zeros), so a forward pass exercises every parameter.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in param_shapes(config).items():
        leaf = key.rsplit("/", 1)[-1]
        if leaf == "step":  # an SNGP layer's update counter
            out[key] = np.asarray(rng.integers(1, 1000), np.int32)
            continue
        if leaf == "precision_matrix":  # symmetric positive definite: I + A A^T / R
            a = rng.standard_normal(shape)
            v = np.eye(shape[0]) + a @ a.T / shape[0]
        elif leaf == "kernel":
            v = rng.standard_normal(shape) / math.sqrt(_fan_in(key, shape))
        elif leaf.startswith("fast_weight"):
            v = rng.choice([-1.0, 1.0], size=shape) * (1 + 0.1 * rng.standard_normal(shape))
        elif leaf == "scale":
            v = 1 + 0.1 * rng.standard_normal(shape)
        else:
            v = 0.1 * rng.standard_normal(shape)
        out[key] = v.astype(np.float32)
    return out


def _fan_in(key: str, shape: tuple[int, ...]) -> int:
    if len(shape) == 3 and key.endswith("/out/kernel"):
        return shape[0] * shape[1]  # (H, Dh, D)
    if len(shape) == 3:
        return shape[0]  # (D, H, Dh)
    return math.prod(shape[:-1])


def write_random_checkpoint(config: ModelConfig, path: str | os.PathLike, seed: int = 0, *,
                            dtype: str = "float32", prefix: str = OPT_TARGET,
                            with_optimizer_state: bool = False) -> dict:
    """Write an official-layout checkpoint with `random_flat_params(config, seed)`.

    dtype "bfloat16" stores every parameter as bfloat16 (void, itemsize 2) like the released
    files; with_optimizer_state adds Adam-like moments under `opt/state/param_states/...` and
    `opt/state/step` (which loaders must ignore). Returns the parameter tree as stored, in
    float32 (after the bfloat16 rounding when dtype is bfloat16).
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    flat = random_flat_params(config, seed)
    if dtype == "bfloat16":
        flat = {k: (v if v.dtype.kind in "iu" else v.astype(ml_dtypes.bfloat16)) for k, v in flat.items()}
    extra = None
    if with_optimizer_state:
        extra = {f"{OPT_STATE}param_states/{k}/{m}": np.full(v.shape, 0.5, np.float32)
                 for k, v in flat.items() for m in ("grad_ema", "grad_sq_ema")}
        extra[f"{OPT_STATE}step"] = np.asarray(1000, np.int64)
    save_params(path, unflatten_params(flat), prefix=prefix, extra=extra)
    return unflatten_params({k: np.asarray(v, v.dtype if v.dtype.kind in "iu" else np.float32) for k, v in flat.items()})


def init_params(config: ModelConfig, seed: int = 0) -> dict:
    """Freshly initialised parameters of the Flax model (nested dict of float32 numpy arrays)."""
    import jax
    import jax.numpy as jnp

    from plexbench.models.sngp import merge_state
    from plexbench.models.vit import build

    module = build(config, num_mc_samples=1)  # the head's shapes do not depend on S
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    init = jax.jit(lambda k: merge_state(module.init(k, images, rng=jax.random.PRNGKey(0))))
    params = init(jax.random.PRNGKey(seed))
    return unflatten_params({k: _host_array(v) for k, v in flatten_params(params).items()})


def _host_array(v) -> np.ndarray:
    """float32 numpy copy of a float leaf; integer leaves (an SNGP step) keep their int32."""
    v = np.asarray(v)
    return v.astype(np.int32) if v.dtype.kind in "iu" else v.astype(np.float32)

