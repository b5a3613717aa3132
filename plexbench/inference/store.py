"""The prediction store: per-example model outputs on disk, keyed by content, written in chunks.

Layout (documented for users in docs/prediction-store.md; readable with numpy and json alone):

    <store>/<key>/manifest.json
    <store>/<key>/chunk-000000.npz   examples [0, C)
    <store>/<key>/chunk-000001.npz   examples [C, 2C) ...
    <store>/<key>/.lock              fcntl lock held while a process writes the entry

`key` = sha256 of the canonical JSON of the key fields (`key_fields` in the manifest): the model
identity (config + checkpoint sha256, or callable spec + params sha256), dataset, split,
preprocessing spec, compute dtype, head sampling seed, plexbench.OUTPUT_FORMAT_VERSION and the
dataset fingerprint. Batch size, device count and process count are not part of the key: the
engine makes outputs independent of them (engine module docstring).

Chunk c holds the examples with ids [c*C, min(N, (c+1)*C)) in id order:
`logits` float32 (E, n, K), `pre_logits` float32 (E, n, D) (absent when not requested),
`labels` (n,) as the dataset gives them, `ids` int64 (n,), `soft_labels` float32 (n, K) for
datasets with soft labels, and the model's extra outputs float32 (E, n) when it returns any
(`gp_variance` of an SNGP head; listed in the manifest as `extras`).

Keys are 64 lower-case hex digits; a key (or prefix) given by a user is checked to be hex before
it names a directory, so no key reaches outside the store. A manifest's chunk records are checked
when it is read (file `chunk-NNNNNN.npz` of its own index, ranges, sizes, hashes), so no `file`
field names a path outside its entry. Outputs that are not finite (NaN, inf) are never stored:
`write_chunk` refuses them with a one-line error naming the model, data and first example.

Integrity. Every file is written to a temporary name and renamed (plexbench.fileio). The manifest
is rewritten after each chunk and records each chunk's byte size and sha256; a chunk is valid only
if its file exists with that size and hash. So an interrupted run leaves a manifest listing only
finished chunks (resume recomputes the rest), a damaged chunk fails its hash and is recomputed,
and a full disk loses at most the chunk being written. Two processes writing the same entry
serialise on the lock file: the second waits, then finds the chunks done and computes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from plexbench import OUTPUT_FORMAT_VERSION, fileio
from plexbench.errors import PlexbenchError, shown

STORE_FORMAT = "plexbench-prediction-store"
LAYOUT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
# Default chunk budget: ~64 MiB of float32 outputs per chunk (see default_chunk_size).
CHUNK_BYTES = 64 * 2**20
# Per-member, per-example outputs (E, B) a model may return besides logits and pre-logits; the
# engine and the store carry them along (the SNGP head's predictive variance).
EXTRA_OUTPUTS = ("gp_variance",)
KEY_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^[0-9a-f]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def entry_key(key_fields: dict) -> str:
    """sha256 hex of the canonical JSON (sorted keys) of `key_fields`."""
    return fileio.sha256_json(key_fields)


def entry_dir(store_dir: str | os.PathLike, key: str) -> Path:
    return Path(store_dir) / key


def chunk_name(index: int) -> str:
    return f"chunk-{index:06d}.npz"


def chunk_ranges(num_examples: int, chunk_size: int) -> list[tuple[int, int]]:
    """[(start, stop)] covering ids [0, N) in chunks of `chunk_size` (last one shorter)."""
    return [(s, min(num_examples, s + chunk_size)) for s in range(0, num_examples, chunk_size)]


def default_chunk_size(num_members: int | None, num_classes: int | None, embedding_dim: int = 1024) -> int:
    """Examples per chunk: as many as fit ~64 MiB of float32 logits + pre-logits, in [256, 8192].

    Rounded down to a multiple of 256. Unknown E or K count as 1 and 1000.
    E.g. E=3, K=21843, D=1024: 64 MiB / (3*(21843+1024)*4 B) = 244 -> 256 examples;
    E=1, K=10: 8192 (the cap).
    """
    per_example = 4 * (num_members or 1) * ((num_classes or 1000) + embedding_dim)
    size = CHUNK_BYTES // per_example
    return int(min(8192, max(256, size // 256 * 256)))


# ------------------------------------------------------------------------------------ manifest


def new_manifest(key: str, key_fields: dict, *, num_examples: int, chunk_size: int, meta: dict) -> dict:
    """A manifest with no chunk written yet. `meta`: display fields (model, dataset, split...)."""
    ranges = chunk_ranges(num_examples, chunk_size)
    return {
        "format": STORE_FORMAT,
        "layout_version": LAYOUT_VERSION,
        "output_format_version": OUTPUT_FORMAT_VERSION,
        "key": key,
        "key_fields": key_fields,
        **meta,
        "num_examples": int(num_examples),
        "chunk_size": int(chunk_size),
        "num_chunks": len(ranges),
        "num_members": None,
        "num_classes": None,
        "embedding_dim": None,
        "chunks": [None] * len(ranges),
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_manifest(path: str | os.PathLike, key: str | None = None) -> dict | None:
    """The manifest of the entry at `path`, or None if there is none.

    Raises PlexbenchError (one line) when it cannot be parsed, is not a store manifest, or belongs
    to another key; the entry's files are left untouched.
    """
    file = Path(path) / MANIFEST
    if not file.exists():
        return None
    try:
        manifest = json.loads(file.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlexbenchError(f"corrupt store entry: {file} is unreadable ({type(e).__name__}); delete {path} to recompute it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise PlexbenchError(f"corrupt store entry: {file} is not a plexbench store manifest; delete {path} to recompute it")
    if manifest.get("layout_version") != LAYOUT_VERSION:
        raise PlexbenchError(f"store entry {path} has layout version {manifest.get('layout_version')}, this plexbench reads {LAYOUT_VERSION}")
    if key is not None and manifest.get("key") != key:
        raise PlexbenchError(f"corrupt store entry: {file} names key {manifest.get('key')} but lives under {key}")
    chunks = manifest.get("chunks")
    if not isinstance(chunks, list) or len(chunks) != manifest.get("num_chunks"):
        raise PlexbenchError(f"corrupt store entry: {file} has a bad chunk list; delete {path} to recompute it")
    problem = _chunk_list_problem(manifest)
    if problem:
        raise PlexbenchError(f"corrupt store entry: {file}: {problem}; delete {path} to recompute it")
    return manifest


def _chunk_list_problem(manifest: dict) -> str:
    """'' when every chunk record is None or exactly what write_chunk writes for its index, else why not.

    A record's `file` must be `chunk_name(index)`: a plain name inside the entry, never a path."""
    n, size = manifest.get("num_examples"), manifest.get("chunk_size")
    if not (isinstance(n, int) and isinstance(size, int) and n >= 0 and size >= 1):
        return "bad num_examples or chunk_size"
    ranges = chunk_ranges(n, size)
    if len(ranges) != len(manifest["chunks"]):
        return f"{len(manifest['chunks'])} chunk records for {len(ranges)} chunks"
    for i, rec in enumerate(manifest["chunks"]):
        if rec is None:
            continue
        if not isinstance(rec, dict) or rec.get("file") != chunk_name(i):
            got = rec.get("file") if isinstance(rec, dict) else rec
            return f"chunk record {i} names file {shown(got, 80)}, expected {chunk_name(i)}"
        if (rec.get("start"), rec.get("stop")) != ranges[i]:
            return f"chunk record {i} covers ids [{rec.get('start')}, {rec.get('stop')}), expected {list(ranges[i])}"
        if not isinstance(rec.get("bytes"), int) or not isinstance(rec.get("sha256"), str) \
                or not _SHA256.match(rec["sha256"]):
            return f"chunk record {i} has a bad size or sha256"
    return ""


def write_manifest(path: str | os.PathLike, manifest: dict) -> None:
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    fileio.write_json(Path(path) / MANIFEST, manifest)


# ------------------------------------------------------------------------------------ chunks


def chunk_is_valid(path: str | os.PathLike, record: dict | None, need_pre_logits: bool = False) -> bool:
    """True if the chunk file exists with the recorded size and sha256 (and pre-logits if needed)."""
    if record is None or (need_pre_logits and not record.get("pre_logits")):
        return False
    file = Path(path) / record["file"]
    try:
        if file.stat().st_size != record["bytes"]:
            return False
        return fileio.sha256_file(file) == record["sha256"]
    except OSError:
        return False


def missing_chunks(path: str | os.PathLike, manifest: dict, need_pre_logits: bool = False) -> list[int]:
    """Indices of chunks that are absent, damaged, or lack requested pre-logits.

    A model known to return no pre-logits (manifest `model_has_pre_logits` false) never lacks them.
    """
    if manifest.get("model_has_pre_logits") is False:
        need_pre_logits = False
    return [i for i, rec in enumerate(manifest["chunks"]) if not chunk_is_valid(path, rec, need_pre_logits)]


def encode_chunk(arrays: dict[str, np.ndarray]) -> bytes:
    """The .npz bytes of a chunk (uncompressed; float logits barely compress)."""
    for name, value in arrays.items():
        if value.dtype == object:
            raise ValueError(f"refusing to store object array '{name}'")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_chunk(path: str | os.PathLike, manifest: dict, index: int, arrays: dict[str, np.ndarray],
                pre_logits_requested: bool = False) -> None:
    """Write chunk `index` atomically, then record it (size, sha256) in the manifest, atomically.

    `arrays`: logits (E,n,K), optional pre_logits (E,n,D), labels (n,), ids (n,). When pre-logits
    were requested but the model gave none, the manifest records `model_has_pre_logits: false`.
    A full disk raises PlexbenchError and leaves every earlier chunk and the previous manifest intact.
    """
    start, stop = chunk_ranges(manifest["num_examples"], manifest["chunk_size"])[index]
    ids = arrays["ids"]
    if len(ids) != stop - start or not np.array_equal(ids, np.arange(start, stop)):
        raise RuntimeError(f"chunk {index} must hold ids [{start}, {stop}) in order")
    check_finite_outputs(manifest, arrays)
    data = encode_chunk(arrays)
    name = chunk_name(index)
    with _disk_full_is_user_error(Path(path) / name):
        fileio.write_bytes(Path(path) / name, data)
    logits = arrays["logits"]
    pre = arrays.get("pre_logits")
    manifest["num_members"], manifest["num_classes"] = int(logits.shape[0]), int(logits.shape[2])
    if pre is not None:
        manifest["embedding_dim"] = int(pre.shape[2])
        manifest["model_has_pre_logits"] = True
    elif pre_logits_requested:
        manifest["model_has_pre_logits"] = False
    extras = [name for name in EXTRA_OUTPUTS if name in arrays]
    if extras:
        manifest["extras"] = extras
    manifest["chunks"][index] = {
        "file": name,
        "start": start,
        "stop": stop,
        "bytes": len(data),
        "sha256": fileio.sha256_bytes(data),
        "pre_logits": pre is not None,
    }
    with _disk_full_is_user_error(Path(path) / MANIFEST):
        write_manifest(path, manifest)


def check_finite_outputs(manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """Raise PlexbenchError when `logits` or `pre_logits` of a chunk hold NaN or inf.

    A model with NaN/inf weights, or one that overflows, would otherwise put numbers in the store
    that every later metric reads as if they were predictions. The message names the model, the
    data, how many values and the first example id affected; nothing of the chunk is stored.
    """
    for name in ("logits", "pre_logits"):
        value = arrays.get(name)
        if value is None:
            continue
        bad = ~np.isfinite(value)
        if bad.any():
            # (E, n, K|D): example rows along axis 1
            rows = np.flatnonzero(bad.any(axis=(0, 2)) if bad.ndim == 3 else bad.reshape(len(bad), -1).any(axis=1))
            first = int(arrays["ids"][rows[0]])
            raise PlexbenchError(
                f"model {shown(manifest.get('model', '?'), 80)} gave {int(bad.sum()):,} non-finite {name} values "
                f"(NaN or inf) on {manifest.get('dataset', '?')}/{manifest.get('split', '?')}, first at example id "
                f"{first}; nothing is stored for them (check the weights: `plexbench model info NAME --checkpoint PATH`)")


@contextlib.contextmanager
def _disk_full_is_user_error(target: Path) -> Iterator[None]:
    """fileio already turns ENOSPC into PlexbenchError; this also covers raw OSErrors raised elsewhere."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PlexbenchError(f"disk full while writing {target}; chunks stored earlier are intact, rerun to resume") from None
        raise


def read_chunk(path: str | os.PathLike, record: dict) -> dict[str, np.ndarray]:
    """Load one chunk, checking its sha256 first; PlexbenchError (one line) if it does not match.

    The bytes are hashed, then parsed by fileio.load_npz (the one np.load of the code base; the
    second read comes from the page cache).
    """
    file = Path(path) / record["file"]
    try:
        data = file.read_bytes()
    except OSError as e:
        raise PlexbenchError(f"corrupt store entry: cannot read {file} ({e.strerror})") from None
    if fileio.sha256_bytes(data) != record["sha256"]:
        raise PlexbenchError(f"corrupt store entry: {file} does not match its checksum; rerun predict to recompute it")
    del data
    return fileio.load_npz(file, what="store chunk")


@contextlib.contextmanager
def entry_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive fcntl lock on `<entry>/.lock`; waits (saying so on stderr) while another process holds it.

    Holding it, the temporary files an interrupted writer left in the entry are removed (only
    the lock holder writes there)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    with open(Path(path) / LOCK, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"plexbench: waiting for another process writing {path}", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        fileio.remove_stale_temp_files(path, recursive=False)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------ entries


class StoreEntry:
    """A store entry's outputs, loaded on first access and checked against their checksums.

    Attributes (numpy, loaded lazily): `logits` float32 (E, N, K), `pre_logits` float32 (E, N, D) or
    None, `labels` (N,), `ids` int64 (N,) = 0..N-1. `manifest` is the parsed manifest.
    """

    def __init__(self, path: str | os.PathLike, manifest: dict | None = None):
        self.path = Path(path)
        self.manifest = manifest if manifest is not None else read_manifest(self.path)
        if self.manifest is None:
            raise PlexbenchError(f"no store entry at {self.path}")
        self._arrays: dict[str, np.ndarray | None] | None = None

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def num_examples(self) -> int:
        return int(self.manifest["num_examples"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def _load(self) -> dict:
        if self._arrays is None:
            if not self.complete:
                raise PlexbenchError(f"store entry {self.path} is incomplete; rerun predict to finish it")
            parts = [read_chunk(self.path, rec) for rec in self.manifest["chunks"]]
            has_pre = all("pre_logits" in p for p in parts)
            has_soft = all("soft_labels" in p for p in parts)
            self._arrays = {
                "logits": np.concatenate([p["logits"] for p in parts], axis=1),
                "pre_logits": np.concatenate([p["pre_logits"] for p in parts], axis=1) if has_pre else None,
                "soft_labels": np.concatenate([p["soft_labels"] for p in parts], axis=0) if has_soft else None,
                "labels": np.concatenate([p["labels"] for p in parts], axis=0),
                "ids": np.concatenate([p["ids"] for p in parts], axis=0),
                "extras": {name: np.concatenate([p[name] for p in parts], axis=1)
                           for name in EXTRA_OUTPUTS if all(name in p for p in parts)},
            }
        return self._arrays

    @property
    def logits(self) -> np.ndarray:
        return self._load()["logits"]

    @property
    def pre_logits(self) -> np.ndarray | None:
        return self._load()["pre_logits"]

    @property
    def labels(self) -> np.ndarray:
        return self._load()["labels"]

    @property
    def ids(self) -> np.ndarray:
        return self._load()["ids"]

    @property
    def extras(self) -> dict[str, np.ndarray]:
        """Extra per-member outputs {name: float32 (E, N)} the model returned (e.g. `gp_variance`)."""
        return self._load()["extras"]

    @property
    def soft_labels(self) -> np.ndarray | None:
        """float32 (N, K) when the dataset has soft labels (e.g. cifar10_h), else None."""
        return self._load()["soft_labels"]

    def to_predictions(self, soft_labels: bool | None = None):
        """The entry as `plexbench.metrics.predictions.Predictions` (see convert.to_predictions)."""
        from plexbench.inference.convert import to_predictions

        return to_predictions(self, soft_labels=soft_labels)

    def export(self, path: str | os.PathLike) -> Path:
        """Write the prediction file (format v1, `plexbench score`) to `path`; returns the path."""
        from plexbench.inference.convert import write_prediction_file

        return write_prediction_file(self, path)

    def __repr__(self) -> str:
        m = self.manifest
        return f"StoreEntry({m.get('model')!r}, {m.get('dataset')}/{m.get('split')}, N={m.get('num_examples')}, key={self.key[:12]})"


def entry_paths(store_dir: str | os.PathLike) -> list[Path]:
    """The entry directories of a store: its sub-directories named by a key (64 hex digits)."""
    root = Path(store_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if KEY_PATTERN.match(p.name) and p.is_dir())


def all_entries(store_dir: str | os.PathLike) -> list["StoreEntry"]:
    """Every entry of the store that has a manifest."""
    return [StoreEntry(p) for p in entry_paths(store_dir) if (p / MANIFEST).is_file()]


def list_entries(store_dir: str | os.PathLike) -> list[dict]:
    """One row per entry under `store_dir` (unreadable manifests reported, not raised)."""
    rows = []
    for path in entry_paths(store_dir):
        try:
            m = read_manifest(path)
        except PlexbenchError as e:
            rows.append({"key": path.name[:16], "model": "?", "dataset": "?", "split": "?", "examples": "?", "status": f"corrupt: {e}"[:60]})
            continue
        if m is None:
            continue
        done = sum(rec is not None for rec in m["chunks"])
        size = sum(rec["bytes"] for rec in m["chunks"] if rec)
        rows.append({
            "key": m["key"][:16],
            "model": m.get("model", "?"),
            "dataset": m.get("dataset", "?"),
            "split": m.get("split", "?"),
            "examples": m["num_examples"],
            "status": "complete" if m.get("complete") else f"partial {done}/{m['num_chunks']} chunks",
            "size": _human_bytes(size),
        })
    return rows


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def find_entry(store_dir: str | os.PathLike, key_prefix: str) -> StoreEntry:
    """The entry whose key starts with `key_prefix` (4 to 64 hex digits, unambiguous).

    The prefix is checked to be hex before it is compared with anything, and only directory
    names that are whole keys are compared: no key reaches outside the store (`../x`), and glob
    characters (`*`, `?`, `[`) are plain errors.
    """
    root = Path(store_dir)
    prefix = key_prefix.strip().lower()
    if not (4 <= len(prefix) <= 64 and _HEX.match(prefix)):
        raise PlexbenchError(f"bad store key {shown(key_prefix, 80)}: give 4 to 64 hex digits (0-9, a-f) of a "
                             "key from 'plexbench store ls'")
    matches = [p for p in entry_paths(root) if p.name.startswith(prefix)]
    if len(matches) != 1:
        what = "no" if not matches else f"{len(matches)}"
        raise PlexbenchError(f"{what} store entries under {root} match key '{prefix}' "
                             f"({'give more hex digits of' if matches else 'see'} the keys of 'plexbench store ls')")
    return StoreEntry(matches[0])
