"""Files written atomically, npz read without unpickling, content hashes, output checks.

Every file plexbench writes goes to a temporary name in the same directory and is renamed into
place, so a reader never sees half a file and an interrupted or failed write (a full disk
included) leaves what was there before untouched. Written files get the permissions the umask
gives a new file (0644 under the usual umask 022), like any file the user creates.

Temporary names are `.<name>.p<pid>.<random>.tmp`. A process killed while writing leaves one
behind; `remove_stale_temp_files` (called at the start of `plexbench run`, `demo` and when
`predict` takes an entry's lock) deletes those whose process is gone or that are older than
`STALE_TEMP_SECONDS`.

`check_output_file` / `check_output_dir` say before any work is done whether a path can be
written (a directory where a file is expected, a path under a file, no permission, a name too
long, a read-only file system), so a long computation never ends in a failed write.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import re
import tempfile
import threading
import time
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import IO, Iterator, Mapping

import numpy as np

from plexbench.errors import PlexbenchError, os_error_message, shown

# A temporary file older than this is stale whatever its process (a day: no single write takes that long).
STALE_TEMP_SECONDS = 24 * 3600
_TEMP_NAME = re.compile(r"^\..*\.p(\d+)\.[^./]+\.tmp$")
_TEMP_PREFIX_CHARS = 100  # of the target's name kept in a temporary name (NAME_MAX is 255)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; rename it to `path` only on success.

    The file gets mode 0666 minus the umask (mkstemp alone would give 0600). Raises
    PlexbenchError when `path` is a directory, and for a full disk (nothing is replaced).
    """
    path = Path(path)
    if path.is_dir():
        raise PlexbenchError(f"cannot write the file {shown(str(path))}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:_TEMP_PREFIX_CHARS]}.p{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PlexbenchError(f"disk full while writing {path}; nothing was replaced") from None
        if e.filename == tmp:  # name the file the user asked for, not our temporary one
            raise PlexbenchError(f"cannot write {shown(str(path))}: {os_error_message(OSError(e.errno, e.strerror))}") from None
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise


_UMASK: list[int] = []
_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process umask (read once: os.umask can only be read by setting it, so under a lock)."""
    if not _UMASK:
        with _UMASK_LOCK:
            if not _UMASK:
                current = os.umask(0o022)
                os.umask(current)
                _UMASK.append(current)
    return _UMASK[0]


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def remove_stale_temp_files(directory: str | os.PathLike, *, recursive: bool = True,
                            max_age_s: float = STALE_TEMP_SECONDS) -> int:
    """Delete the temporary files (`.<name>.p<pid>.<random>.tmp`) that interrupted writes left.

    One is stale when its process no longer runs on this machine, or when it is older than
    `max_age_s` (its process id may have been reused, or it came from another machine). A file
    whose writer still runs is never touched. Returns how many were removed; errors are ignored
    (cleaning is a courtesy, never a reason to fail).
    """
    root = Path(directory)
    if not root.is_dir():
        return 0
    removed = 0
    now = time.time()
    with contextlib.suppress(OSError):
        candidates = root.rglob(".*.tmp") if recursive else root.glob(".*.tmp")
        for path in candidates:
            m = _TEMP_NAME.match(path.name)
            if m is None or not path.is_file():
                continue
            try:
                old = now - path.stat().st_mtime > max_age_s
            except OSError:
                continue
            if old or not _process_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists (another user's), or an id we cannot judge: leave it
    return True


# --------------------------------------------------------------------------- output checks

def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Raise PlexbenchError unless `path` can be written as a file; returns it as a Path.

    Checked without writing anything: `path` is not a directory; its nearest existing ancestor
    is a directory (not a file) that this user may write into; every name on the way fits the
    file system's NAME_MAX; the file system is not read-only.
    """
    path = Path(path).expanduser()
    _check_name_lengths(path, what, path)
    if path.is_dir():
        raise PlexbenchError(f"{what} {shown(str(path))} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise PlexbenchError(f"{what} {shown(str(path))} exists and is not writable (permission denied)")
    _check_creatable(path.parent, what, path)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Raise PlexbenchError unless `path` is, or can be created as, a writable directory."""
    path = Path(path).expanduser()
    _check_name_lengths(path, what, path)
    if path.exists() and not path.is_dir():
        raise PlexbenchError(f"{what} {shown(str(path))} is a file, not a directory")
    _check_creatable(path, what, path)
    return path


def check_input_dir(path: str | os.PathLike, what: str) -> Path:
    """A directory read (and maybe filled) later: when it exists it must be a directory."""
    path = Path(path).expanduser()
    _check_name_lengths(path, what, path)
    if path.exists() and not path.is_dir():
        raise PlexbenchError(f"{what} {shown(str(path))} is a file, not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise PlexbenchError(f"{what} {shown(str(path))} is under {shown(str(parent))}, which is a file")
            break
    return path


def _check_creatable(directory: Path, what: str, target: Path) -> None:
    """`directory` exists as a writable directory, or its nearest existing ancestor does."""
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise PlexbenchError(f"{what} {shown(str(target))} is under {shown(str(existing))}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PlexbenchError(f"{what} {shown(str(target))}: cannot write in {shown(str(existing))} "
                             f"({_why_not_writable(existing)})")


def _why_not_writable(directory: Path) -> str:
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except (OSError, AttributeError):
        pass
    return "permission denied"


def _check_name_lengths(path: Path, what: str, target: Path) -> None:
    """Every component within NAME_MAX bytes and the whole within PATH_MAX (checked first: the
    operating system answers even `exists()` with ENAMETOOLONG for such a path)."""
    try:
        name_max = os.pathconf(_nearest_existing(path), "PC_NAME_MAX")
        path_max = os.pathconf(_nearest_existing(path), "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    if len(os.fsencode(str(path))) >= path_max:
        raise PlexbenchError(f"{what} {shown(str(target))}: the path is longer than the {path_max} bytes "
                             "this file system allows")
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise PlexbenchError(f"{what} {shown(str(target))}: the name {shown(part, 40)} is longer than "
                                 f"the {name_max} bytes this file system allows")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError, ValueError):
            if len(candidate.name) <= 255 and candidate.exists():
                return candidate
    return Path(".")


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

    Raises PlexbenchError (one line) for a missing file, a file that is not an npz, a truncated
    or corrupt one (a broken deflate stream included), one holding object arrays, and one whose
    array headers declare more bytes than the file holds or than the memory available (checked
    from the headers, before anything is allocated: `check_npz_sizes`).
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
        check_npz_sizes(path, what)
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                out[key] = z[key]
    except PlexbenchError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise PlexbenchError(f"{what} holds object arrays, which plexbench never unpickles: {path}") from None
        raise PlexbenchError(f"{what} is corrupt ({_first_line(e)}): {path}") from None
    except zlib.error as e:
        raise PlexbenchError(f"{what} is corrupt (broken compressed data: {_first_line(e)}): {path}") from None
    except MemoryError:
        raise PlexbenchError(f"{what} is too large to read into the memory available: {path}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, NotImplementedError, RuntimeError,
            OverflowError, TypeError, SyntaxError, tokenize.TokenError) as e:  # last two: a damaged .npy header
        raise PlexbenchError(f"{what} is truncated or corrupt ({type(e).__name__}: {_first_line(e)}): {path}") from None
    return out


# Deflate cannot expand data by more than 1032:1 (RFC 1951: a 258-byte match costs at least 2 bits).
_MAX_DEFLATE_RATIO = 1032


def check_npz_sizes(path: str | os.PathLike, what: str = "file") -> None:
    """Raise PlexbenchError when an array header of the .npz declares more data than can be there.

    For every `<name>.npy` member: read its header (shape, dtype) and compute the declared bytes
    prod(shape) * itemsize; they must fit in the member's uncompressed size as the zip directory
    records it; that size must be reachable from the compressed size (stored: equal; deflate: at
    most 1032 times it); and all declared bytes together must fit in `available_memory()`.
    Example: a header declaring shape (10**12,) float64 in a 1 KB file -> "declares 7,450.6 GiB
    ... the file holds 1 KB". Nothing beyond the headers is read or decompressed.
    """
    total = 0
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            declared = _declared_npy_bytes(z, info)
            if declared is None:
                continue
            name = info.filename[:-4]
            reachable = info.compress_size * (_MAX_DEFLATE_RATIO if info.compress_type != zipfile.ZIP_STORED else 1)
            if declared > info.file_size or info.file_size > reachable + 1024:
                raise PlexbenchError(f"{what} is corrupt: array {shown(name, 60)} declares {human_bytes(declared)} "
                                     f"but the file holds {human_bytes(info.compress_size)} for it: {path}")
            total += declared
    available = available_memory()
    if available is not None and total > available:
        raise PlexbenchError(f"{what} needs {human_bytes(total)} of memory, more than the {human_bytes(available)} "
                             f"available: {path}")


def _declared_npy_bytes(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> int | None:
    """prod(shape) * itemsize from a member's .npy header (None for object dtypes: load_npz refuses them)."""
    from numpy.lib import format as npy

    with z.open(info) as f:
        version = npy.read_magic(f)
        reader = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = reader(f)
    if dtype.hasobject:
        return None
    return math.prod(shape) * dtype.itemsize


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate without swapping: MemAvailable of
    /proc/meminfo (Linux), capped by a cgroup v2 memory.max; else physical memory; None if unknown."""
    found = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    if found is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            found = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            left = max(0, int(limit) - used)
            found = left if found is None else min(found, left)
    return found


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def check_csv_complete(path: str | os.PathLike, what: str = "CSV file") -> None:
    """Raise PlexbenchError unless every row of the CSV has as many fields as its header and the
    file ends with a newline (plexbench writes one after every row: a file without it was cut).

    Example: a header of 11 columns and a last row "plex-mini,fmnist_in_distribution,1,fash" ->
    "row 42 has 4 fields, the header 11: the file looks truncated".
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                raise PlexbenchError(f"{what} {path} is empty")
            f.seek(size - 1)
            if f.read(1) != b"\n":
                raise PlexbenchError(f"{what} {path} does not end with a newline: its last row looks cut "
                                     "(rerun the command that wrote it)")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            for number, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    raise PlexbenchError(f"{what} {path} row {number} has {len(row)} fields, the header "
                                         f"{len(header)}: the file looks truncated or edited "
                                         "(rerun the command that wrote it)")
    except UnicodeDecodeError:
        raise PlexbenchError(f"{what} {path} is not UTF-8 text") from None
    except csv.Error as e:
        raise PlexbenchError(f"{what} {path} is not a valid CSV file ({_first_line(e)})") from None


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
