"""T5X checkpoint directories, read and written without t5x (spec §9).

Layout of a directory (what `gs://plex-paper/plex_t5_*` holds):

    <dir>/checkpoint                                   msgpack of {"version": 3, "optimizer":
                                                       {"target": params, "state": {...}}}
    <dir>/target.encoder.layers_0.attention.query.kernel/   zarr v2 arrays (TensorStore), one
        .zarray, 0.0, ...                              directory per array not stored inline

Leaves of `target` are one of:
- msgpack extension type 1 (ndarray): payload = msgpack of (shape, dtype name, raw C-order
  bytes); "bfloat16" by name (ml_dtypes). Type 3 (numpy scalar): the same payload with shape ().
- a chunked array {"__msgpack_chunked_array__": True, "shape": ..., "chunks": {"0": ..., ...}}
  (flax splits arrays over 2^30 bytes): the chunks are 1-D pieces of the C-order flattening;
  shape and chunks may be lists or {"0": ...} dicts.
- a TensorStore spec dict (driver "zarr", kvstore driver "file" or "gcs", metadata with shape):
  the array is the zarr directory beside `checkpoint` named by the kvstore path's last
  component (the key path joined with dots); a GCS path is looked up locally by that name.
- a plain msgpack int or float (a 0-d array).
`optimizer/state` (step, optimizer moments) is ignored. A tree with `target` at the top level
(no `optimizer`) is accepted too.

Reading (`load_t5x_params`) checks every key and shape against `t5_param_shapes(config)`
BEFORE reading any zarr array, and raises PlexbenchError with one line naming the first bad key
for: a missing or truncated `checkpoint`, an unknown extension type or dtype, a payload of the
wrong size, a missing zarr directory, a zarr array whose shape differs from its spec, or a
layout mismatch, or a NaN / inf value. msgpack is decoded with plain data types only (nothing
is ever unpickled).
Float arrays are returned as float32 (bfloat16 -> float32 is exact); SNGP `step`s as int32.

Writing (`write_t5x_checkpoint`) produces the same layout: inline, chunked-inline and zarr
arrays, optional optimizer state, in a temporary directory renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Collection, Mapping

import ml_dtypes
import numpy as np

from plexbench.errors import PlexbenchError

CHECKPOINT_FILE = "checkpoint"
EXT_NDARRAY = 1
EXT_NPSCALAR = 3
CHUNKED = "__msgpack_chunked_array__"
MAX_INLINE_BYTES = 2**30  # flax chunks arrays larger than this
ALLOWED_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                  "float16", "bfloat16", "float32", "float64")


@dataclasses.dataclass(frozen=True)
class _Ext:
    """An undecoded msgpack extension (decoded later, when its key path is known)."""

    code: int
    data: bytes


@dataclasses.dataclass
class _Leaf:
    """One parameter of the target tree: `kind` "inline" (array ready), "zarr" (TensorStore spec)."""

    kind: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    spec: dict | None = None


# ---------------------------------------------------------------------------- reading


def read_tree(path: str | os.PathLike) -> dict:
    """The raw msgpack state of `<path>/checkpoint` (extension leaves left undecoded)."""
    import msgpack

    directory = Path(path)
    file = directory / CHECKPOINT_FILE
    if not directory.is_dir():
        raise PlexbenchError(f"T5X checkpoint not found: {directory} is not a directory")
    if not file.is_file():
        raise PlexbenchError(f"T5X checkpoint {directory} has no file named '{CHECKPOINT_FILE}'")
    data = file.read_bytes()
    try:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_Ext, use_list=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise PlexbenchError(f"T5X checkpoint {file} is truncated or not msgpack ({first})") from None
    if not isinstance(state, dict):
        raise PlexbenchError(f"T5X checkpoint {file} does not hold a state dict")
    return state


def target_tree(state: dict, path) -> dict:
    """`optimizer/target` of a T5X state (or a top-level `target`); optimizer state is ignored."""
    optimizer = state.get("optimizer")
    target = optimizer.get("target") if isinstance(optimizer, dict) else state.get("target")
    if not isinstance(target, dict):
        raise PlexbenchError(f"T5X checkpoint {path} has no 'optimizer/target' parameter tree "
                             f"(top-level keys: {', '.join(map(str, state)) or 'none'})")
    return target


def describe_leaves(target: Mapping, path) -> dict[str, _Leaf]:
    """Flat '/'-joined key -> _Leaf, inline arrays decoded, zarr arrays described by their spec."""
    out: dict[str, _Leaf] = {}

    def walk(node, prefix):
        if isinstance(node, dict) and not _is_chunked(node) and not _is_ts_spec(node):
            for k, v in node.items():
                walk(v, f"{prefix}{k}/")
            return
        key = prefix[:-1]
        out[key] = _leaf(key, node, path)

    walk(target, "")
    return dict(sorted(out.items()))


def _is_chunked(node) -> bool:
    return isinstance(node, dict) and node.get(CHUNKED) is True


def _is_ts_spec(node) -> bool:
    return isinstance(node, dict) and "driver" in node and ("kvstore" in node or "path" in node)


def _leaf(key: str, node, path) -> _Leaf:
    if isinstance(node, _Ext):
        array = decode_ext(node, key, path)
        return _Leaf("inline", array.shape, array=array)
    if _is_chunked(node):
        array = _join_chunks(node, key, path)
        return _Leaf("inline", array.shape, array=array)
    if _is_ts_spec(node):
        return _Leaf("zarr", _spec_shape(node, key, path), spec=node)
    if isinstance(node, (bool, int, float)):
        array = np.asarray(node)
        return _Leaf("inline", (), array=array)
    raise PlexbenchError(f"T5X checkpoint {path}: parameter '{key}' is a {type(node).__name__}, not an array")


def decode_ext(ext: _Ext, key: str, path) -> np.ndarray:
    """An ndarray (type 1) or numpy scalar (type 3) extension -> numpy array (copy, writable)."""
    import msgpack

    if ext.code not in (EXT_NDARRAY, EXT_NPSCALAR):
        raise PlexbenchError(f"T5X checkpoint {path}: parameter '{key}' has unknown msgpack extension type {ext.code}")
    try:
        shape, dtype_name, raw = msgpack.unpackb(ext.data, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData) as e:
        raise PlexbenchError(f"T5X checkpoint {path}: parameter '{key}' has an unreadable array payload ({e})") from None
    dtype = _dtype(dtype_name, key, path)
    shape = tuple(int(s) for s in shape)
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != need:
        got = len(raw) if isinstance(raw, (bytes, bytearray)) else type(raw).__name__
        raise PlexbenchError(f"T5X checkpoint {path}: parameter '{key}' holds {got} bytes but shape {shape} "
                             f"{dtype_name} needs {need} (truncated?)")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _dtype(name, key, path) -> np.dtype:
    if name not in ALLOWED_DTYPES:
        raise PlexbenchError(f"T5X checkpoint {path}: parameter '{key}' has dtype {name!r} "
                             f"(expected one of {', '.join(ALLOWED_DTYPES)})")
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _as_list(node) -> list:
    """A msgpack list, or a flax {"0": ..., "1": ...} dict, as a list in index order."""
    if isinstance(node, dict):
        return [node[k] for k in sorted(node, key=int)]
    return list(node)


def _join_chunks(node: dict, key: str, path) -> np.ndarray:
    try:
        shape = tuple(int(s) for s in _as_list(node["shape"]))
        chunks = [decode_ext(c, key, path).reshape(-1) for c in _as_list(node["chunks"])]
    except (KeyError, ValueError, AttributeError) as e:
        raise PlexbenchError(f"T5X checkpoint {path}: parameter '{key}' is a malformed chunked array ({e})") from None
    if not chunks or len({c.dtype for c in chunks}) != 1:
        raise PlexbenchError(f"T5X checkpoint {path}: parameter '{key}' has no chunks or chunks of mixed dtypes")
    flat = np.concatenate(chunks)
    if flat.size != int(np.prod(shape, dtype=np.int64)):
        raise PlexbenchError(f"T5X checkpoint {path}: parameter '{key}' chunks hold {flat.size} values, "
                             f"shape {shape} needs {int(np.prod(shape))}")
    return flat.reshape(shape)


def _spec_shape(spec: dict, key: str, path) -> tuple[int, ...]:
    metadata = spec.get("metadata") or {}
    if "shape" in metadata:
        return tuple(int(s) for s in metadata["shape"])
    zarray = zarr_dir(spec, key, path) / ".zarray"
    import json

    try:
        return tuple(int(s) for s in json.loads(zarray.read_text())["shape"])
    except (OSError, ValueError, KeyError) as e:
        raise PlexbenchError(f"T5X checkpoint {path}: parameter '{key}' has no readable zarr metadata {zarray} ({e})") from None


def zarr_dir(spec: dict, key: str, path) -> Path:
    """The zarr directory of a TensorStore spec: beside `checkpoint`, named by the last path
    component of kvstore path (+ spec path); checked to exist."""
    kvstore = spec.get("kvstore") or {}
    parts = [str(p) for p in (kvstore.get("path") if isinstance(kvstore, dict) else kvstore, spec.get("path")) if p]
    name = "/".join(parts).rstrip("/").split("/")[-1] if parts else ""
    if not name or name in (".", ".."):
        raise PlexbenchError(f"T5X checkpoint {path}: parameter '{key}' has a TensorStore spec without a path")
    directory = Path(path) / name
    if not (directory / ".zarray").is_file():
        raise PlexbenchError(f"T5X checkpoint {path}: the array of parameter '{key}' is missing "
                             f"(no zarr directory {directory})")
    return directory


def read_zarr(spec: dict, key: str, path, expected: tuple[int, ...]) -> np.ndarray:
    """Read one zarr array with TensorStore from its local directory; its shape must be `expected`."""
    import tensorstore as ts

    directory = zarr_dir(spec, key, path)
    try:
        store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(directory)}},
                        open=True, read=True).result()
        array = np.asarray(store.read().result())
    except Exception as e:  # noqa: BLE001 - TensorStore raises ValueError/RuntimeError variants
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PlexbenchError(f"T5X checkpoint {path}: cannot read the zarr array of parameter '{key}' ({first})") from None
    if tuple(array.shape) != tuple(expected):
        raise PlexbenchError(f"T5X checkpoint {path}: the zarr array of parameter '{key}' has shape "
                             f"{tuple(array.shape)}, its spec says {tuple(expected)}")
    return array


def _host_value(key: str, array: np.ndarray, path) -> np.ndarray:
    if key.endswith("_state/step"):
        return np.asarray(array).astype(np.int32)
    if array.dtype == ml_dtypes.bfloat16 or array.dtype.kind == "f":
        return np.asarray(array, np.float32)
    raise PlexbenchError(f"T5X checkpoint {path}: parameter '{key}' has dtype {array.dtype}, expected floating point")


def load_t5x_params(config, path: str | os.PathLike) -> dict:
    """Read, validate and return the parameter tree of a T5X checkpoint directory for `config`
    (a T5Config): nested dict of float32 numpy arrays (SNGP steps int32), GP state as
    `decoder/gp_head_state`. One-line PlexbenchError on any problem (module docstring)."""
    from plexbench.models.checkpoint import check_finite, layout_differences, unflatten_params
    from plexbench.models.config import param_shapes

    path = Path(path)
    leaves = describe_leaves(target_tree(read_tree(path), path), path)
    diff = layout_differences({k: v.shape for k, v in leaves.items()}, param_shapes(config))
    if diff:
        raise PlexbenchError(f"T5X checkpoint {path} does not match the model config: {diff}")
    flat = {}
    for key, leaf in leaves.items():
        array = leaf.array if leaf.kind == "inline" else read_zarr(leaf.spec, key, path, leaf.shape)
        flat[key] = _host_value(key, array, path)
    check_finite(flat, path)  # NaN / inf weights would make every prediction NaN
    return unflatten_params(flat)


# ---------------------------------------------------------------------------- writing


def _pack_array(array: np.ndarray, code: int = EXT_NDARRAY):
    import msgpack

    array = np.asarray(array, order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
    name = "bfloat16" if array.dtype == ml_dtypes.bfloat16 else array.dtype.name
    if name not in ALLOWED_DTYPES:
        raise ValueError(f"cannot store dtype {array.dtype}")
    payload = msgpack.packb([list(array.shape), name, array.tobytes("C")], use_bin_type=True)
    return msgpack.ExtType(code, payload)


def _chunked(array: np.ndarray, max_bytes: int) -> dict:
    flat = np.ascontiguousarray(array).reshape(-1)
    per = max(1, max_bytes // max(1, flat.dtype.itemsize))
    pieces = [flat[i:i + per] for i in range(0, flat.size, per)]
    return {CHUNKED: True, "shape": {str(i): int(s) for i, s in enumerate(array.shape)},
            "chunks": {str(i): _pack_array(p) for i, p in enumerate(pieces)}}


def zarr_name(key: str) -> str:
    """Directory name of a parameter's zarr array: 'target.' + key with '/' -> '.'."""
    return "target." + key.replace("/", ".")


def _write_zarr(directory: Path, name: str, array: np.ndarray) -> dict:
    """Write `array` as a gzip zarr v2 array `directory/name`; return the spec stored as the leaf."""
    import tensorstore as ts

    dtype = "bfloat16" if array.dtype == ml_dtypes.bfloat16 else array.dtype.str
    metadata = {"compressor": {"id": "gzip", "level": 1}, "shape": list(array.shape),
                "chunks": [max(1, s) for s in array.shape], "dtype": dtype}
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(directory / name)},
                     "metadata": metadata}, create=True, delete_existing=True).result()
    store.write(array).result()
    return {"driver": "zarr", "kvstore": {"driver": "file", "path": name}, "metadata": metadata}


def write_t5x_checkpoint(path: str | os.PathLike, tree: Mapping, *, dtype: str | None = None,
                         zarr: bool | Collection[str] | Callable[[str, np.ndarray], bool] = False,
                         max_inline_bytes: int = MAX_INLINE_BYTES, step: int = 0,
                         with_optimizer_state: bool = False) -> Path:
    """Write `tree` (nested mapping of arrays, GP state as `<layer>_state`) as a T5X directory.

    dtype: None keeps each leaf's dtype; "float32" / "bfloat16" casts the floating leaves.
    zarr: which leaves go to zarr arrays beside `checkpoint`: False (none), True (all), a set of
    '/'-joined keys, or a predicate (key, array) -> bool. Inline arrays larger than
    max_inline_bytes are written chunked. step: the optimizer step recorded in the state.
    with_optimizer_state: also store Adafactor-like moments (which readers must ignore).
    The directory is built in a temporary sibling and renamed into place (an existing
    directory at `path` is replaced). Returns the path.
    """
    import msgpack

    from plexbench.models.checkpoint import flatten_params, unflatten_params

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: _cast(np.asarray(v), dtype) for k, v in flatten_params(tree).items()}
    to_zarr = _zarr_rule(zarr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        leaves = {}
        for key, array in flat.items():
            if to_zarr(key, array):
                leaves[key] = _write_zarr(tmp, zarr_name(key), array)
            elif array.nbytes > max_inline_bytes:
                leaves[key] = _chunked(array, max_inline_bytes)
            elif array.ndim == 0 and array.dtype.kind in "iu":
                leaves[key] = _pack_array(array, EXT_NPSCALAR)
            else:
                leaves[key] = _pack_array(array)
        state = {"step": _pack_array(np.asarray(step, np.int64), EXT_NPSCALAR)}
        if with_optimizer_state:
            state["param_states"] = unflatten_params({
                f"{k}/v": _pack_array(np.full(np.shape(a)[-1:] or (1,), 0.25, np.float32))
                for k, a in flat.items()})
        payload = {"version": 3, "optimizer": {"target": unflatten_params(leaves), "state": state}}
        (tmp / CHECKPOINT_FILE).write_bytes(msgpack.packb(payload, use_bin_type=True))
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _cast(array: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype is None or array.dtype.kind in "iub":
        return array
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be None, float32 or bfloat16, got {dtype}")
    return array.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)


def _zarr_rule(zarr) -> Callable[[str, np.ndarray], bool]:
    if callable(zarr):
        return zarr
    if isinstance(zarr, bool):
        return lambda key, array: zarr
    keys = set(zarr)
    return lambda key, array: key in keys


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished `tmp` to `path`; an older `path` is moved aside first, then deleted."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- identity


def directory_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint directory: over (relative path, sha256) of every file, sorted by path."""
    from plexbench import fileio

    root = Path(path)
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(root).as_posix()}\0{fileio.sha256_file(file)}\n".encode())
    return h.hexdigest()


def directory_bytes(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def is_t5x_directory(path: str | os.PathLike) -> bool:
    return (Path(path) / CHECKPOINT_FILE).is_file()


def random_t5x_checkpoint(config, path, seed: int = 0, **write_options) -> dict:
    """Write a T5X directory with `random_flat_params(config, seed)`; return the tree as stored
    (float32 after any bfloat16 rounding, steps int32)."""
    from plexbench.models.checkpoint import random_flat_params, unflatten_params

    tree = unflatten_params(random_flat_params(config, seed))
    write_t5x_checkpoint(path, tree, **write_options)
    cast = write_options.get("dtype")
    flat = random_flat_params(config, seed)

    def stored(key, v):
        if v.dtype.kind in "iu":
            return v
        return v.astype(ml_dtypes.bfloat16).astype(np.float32) if cast == "bfloat16" else v.astype(np.float32)

    return unflatten_params({k: stored(k, v) for k, v in flat.items()})

