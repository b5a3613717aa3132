"""Files written atomically, npz read without unpickling, content hashes.

Every file plexbench writes goes to a temporary name in the same directory and is
renamed into place, so a reader never sees half a file and an interrupted or
failed write (a full disk included) leaves what was there before untouched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Iterator, Mapping

import numpy as np

from plexbench.errors import PlexbenchError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; rename it to `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PlexbenchError(f"disk full while writing {path}; nothing was replaced") from None
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], compress: bool = False) -> None:
    """Write an .npz atomically. Object arrays are refused (they would need pickle)."""
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise ValueError(f"refusing to save object array '{k}'")
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike, what: str = "file") -> dict[str, np.ndarray]:
    """Read every array of an .npz into memory, never unpickling.

    Raises PlexbenchError (one line) for a missing file, a file that is not an npz,
    a truncated or corrupt one, or one holding object arrays.
    """
    path = Path(path)
    if not path.exists():
        raise PlexbenchError(f"{what} not found: {path}")
    if path.is_dir():
        raise PlexbenchError(f"{what} is a directory, expected an .npz file: {path}")
    if not zipfile.is_zipfile(path):
        raise PlexbenchError(f"{what} is not an .npz (zip) file: {path}")
    out: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                out[key] = z[key]
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise PlexbenchError(f"{what} holds object arrays, which plexbench never unpickles: {path}") from None
        raise PlexbenchError(f"{what} is corrupt ({e}): {path}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise PlexbenchError(f"{what} is truncated or corrupt ({type(e).__name__}: {e}): {path}") from None
    return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hash of a JSON-able object, independent of dict order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=_json_default).encode("utf-8"))
