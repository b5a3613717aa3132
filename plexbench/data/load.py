"""Reading prepared TFDS datasets: split ranges, arrays in memory, streaming, fingerprints.

Definitions used throughout plexbench:

- **split**: a role of the registry entry (`train`, `validation`, `test`; e.g. cifar10 `train` is
  `train[:98%]`), or any other TFDS split string read as is (`train[:1000]`; write `train[:100%]` for
  the whole TFDS train split of a dataset whose `train` role is a slice). One range of one TFDS
  split: `train+test` is refused.
- **dataset order**: the order TFDS's split slicing indexes, i.e. the shard files in order, each
  read front to back (`ReadConfig(interleave_cycle_length=1)`, no file shuffling). For datasets
  prepared by TFDS that is the order `tfds.load(..., shuffle_files=False)` gives for one-shard splits.
- **id**: the index of an example within the split (0-based, dataset order).

Datasets are opened with `tfds.builder_from_directory` on the prepared version folder (see
`registry.version_dir`), so no builder code is needed to read them. A missing dataset raises a
one-line PlexbenchError that names the dataset, the data dir and the `plexbench data prepare` command.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plexbench import fileio, paths
from plexbench.data.registry import DatasetInfo, get_dataset, not_prepared_message, version_dir
from plexbench.errors import PlexbenchError

# load_arrays refuses splits whose images would need more memory than this.
MAX_IN_MEMORY_BYTES = 4 << 30
_READ_BATCH = 2048


@dataclass(frozen=True)
class SplitRange:
    """A split as one contiguous range of a TFDS base split: examples [start, stop) of `base`."""

    base: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def tfds_spec(self, lo: int = 0, hi: int | None = None) -> str:
        """TFDS split string for ids [lo, hi) of this range (absolute indices of `base`)."""
        hi = self.size if hi is None else hi
        return f"{self.base}[{self.start + lo}:{self.start + hi}]"


# --------------------------------------------------------------------------- opening

def locate(name: str, data_dir=None) -> tuple[DatasetInfo, Path]:
    """(registry entry, prepared version folder) of `name`; PlexbenchError if not prepared."""
    info = get_dataset(name)
    data_dir = paths.data_dir(data_dir)
    folder = version_dir(info, data_dir)
    if folder is None:
        raise PlexbenchError(not_prepared_message(info, data_dir))
    return info, folder


@functools.lru_cache(maxsize=64)
def _builder_at(folder: str):
    import tensorflow_datasets as tfds

    if not (Path(folder) / "features.json").is_file():
        raise PlexbenchError(f"{folder} has no features.json (prepared by a TFDS older than 4.0?); "
                             "prepare it again with a current TFDS")
    return tfds.builder_from_directory(folder)


def resolve_split(info: DatasetInfo, split: str) -> str:
    """A role -> its TFDS split string (registry); anything else is returned unchanged."""
    if not isinstance(split, str) or not split.strip():
        raise PlexbenchError(f"dataset '{info.name}': split must be a non-empty string, got {split!r}")
    return info.splits.get(split, split)


def split_range(name: str, split: str, data_dir=None) -> SplitRange:
    """The absolute range of `split` in its TFDS base split (TFDS's own rounding for percent slices)."""
    import tensorflow_datasets as tfds

    info, folder = locate(name, data_dir)
    builder = _builder_at(str(folder))
    spec = resolve_split(info, split)
    try:
        parts = tfds.core.ReadInstruction.from_spec(spec).to_absolute(builder.info.splits)
    except (ValueError, KeyError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PlexbenchError(f"dataset '{name}': bad split '{split}' ({first}); roles: {', '.join(info.splits)}") from None
    if len(parts) != 1:
        raise PlexbenchError(f"dataset '{name}': split '{spec}' joins several splits; use one range of one split")
    part = parts[0]
    total = builder.info.splits[part.splitname].num_examples
    start = 0 if part.from_ is None else part.from_
    stop = total if part.to is None else part.to
    if not 0 <= start <= stop <= total:
        raise PlexbenchError(f"dataset '{name}': split '{spec}' selects [{start}, {stop}) of {total} examples")
    return SplitRange(part.splitname, int(start), int(stop))


def num_examples(name: str, split: str, data_dir=None) -> int:
    """Number of examples of `split` (a role or a TFDS split string) of the prepared dataset."""
    return split_range(name, split, data_dir).size


def class_names(name: str, data_dir=None) -> tuple[str, ...] | None:
    """Class names: the registry's, else those of the prepared dataset's label feature, else None.

    TFDS placeholder names ("0", "1", ...) of datasets whose names come with the download count as
    real names only when the registry says so.
    """
    info = get_dataset(name)
    if info.class_names is not None:
        return info.class_names
    folder = version_dir(info, paths.data_dir(data_dir))
    if folder is None:
        return None
    labels_file = folder / f"{info.label_key}.labels.txt"
    if labels_file.is_file():
        names = tuple(labels_file.read_text().splitlines())
        return names if len(names) == info.num_classes else None
    return None


# --------------------------------------------------------------------------- reading

def read_dataset(info: DatasetInfo, folder: Path, spec: str):
    """A tf.data.Dataset of dicts `image` uint8 (H, W, C), `label` int64 [, `soft_label` float32 (K,)]
    over the TFDS split string `spec`, in dataset order (deterministic). Unneeded image features
    are not decoded.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = _builder_at(str(folder))
    features = builder.info.features
    needed = {"image", info.label_key}
    if info.soft_label:
        needed.add(info.soft_label.split(":", 1)[1])
    missing = needed - set(features.keys())
    if missing:
        raise PlexbenchError(f"dataset '{info.name}' in {folder} lacks the feature(s) {sorted(missing)}")
    decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
                if k not in needed and isinstance(f, tfds.features.Image)}
    ds = builder.as_dataset(split=spec, shuffle_files=False, decoders=decoders or None,
                            read_config=tfds.ReadConfig(interleave_cycle_length=1, add_tfds_id=False))
    select = functools.partial(_select, info=info)
    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _select(example: dict, *, info: DatasetInfo) -> dict:
    """The features plexbench uses, in TF: image, label int64, and the soft label rule of the entry."""
    import tensorflow as tf

    out = {"image": example["image"], "label": tf.cast(example[info.label_key], tf.int64)}
    if info.soft_label:
        rule, key = info.soft_label.split(":", 1)
        value = example[key]
        if rule == "feature":
            out["soft_label"] = tf.cast(value, tf.float32)
        elif rule == "multi_hot":
            # sum then clip (not reduce_max, which gives -inf for an empty set): duplicates count once
            hot = tf.minimum(tf.reduce_sum(tf.one_hot(value, info.num_classes, dtype=tf.float32), axis=0), 1.0)
            hot = tf.reshape(hot, [info.num_classes])
            out["soft_label"] = hot / tf.maximum(tf.reduce_sum(hot), 1.0)
        else:
            raise ValueError(f"{info.name}: unknown soft label rule {info.soft_label!r}")
    return out


def iterate_numpy(info: DatasetInfo, folder: Path, spec: str, batch_size: int):
    """Numpy dicts of up to `batch_size` examples over `spec`, in dataset order.

    Requires a fixed image size (tf.data cannot batch images of different sizes); for datasets
    whose images vary, use `iterate_examples`.
    """
    import tensorflow_datasets as tfds

    ds = read_dataset(info, folder, spec).batch(batch_size).prefetch(2)
    yield from tfds.as_numpy(ds)


def iterate_examples(info: DatasetInfo, folder: Path, spec: str):
    """Numpy dicts of single examples (image (H, W, C) of its own size) over `spec`, in dataset order."""
    import tensorflow_datasets as tfds

    yield from tfds.as_numpy(read_dataset(info, folder, spec).prefetch(64))


def load_arrays(name: str, split: str, data_dir=None) -> dict[str, np.ndarray]:
    """The whole split in memory: `image` uint8 (N, H, W, C), `label` int64 (N,), `id` int64 (N,)
    (= 0..N-1, dataset order), and `soft_label` float32 (N, K) where the registry defines one.

    Arrays are read-only. When the split's whole TFDS base split holds at most 1 GiB of images
    (Fashion-MNIST, digits, CIFAR), the base split is decoded once, kept per process, and saved
    beside the TFDS files (`<version>/.plexbench-arrays/<base>.npz`, used only while the shard files
    are byte-identical to those it was decoded from), so any role of it, in any later process, is a
    slice read without decoding or importing TensorFlow. Larger base splits decode just the range. Splits with images of
    varying size, or over 4 GiB, raise PlexbenchError: stream those with `pipeline.batches`.
    """
    info, folder = locate(name, data_dir)
    rng = split_range(name, split, data_dir)
    _check_fits_in_memory(info, rng)
    whole = _kept_whole(info, folder, rng)
    read = SplitRange(rng.base, 0, _builder_at(str(folder)).info.splits[rng.base].num_examples) if whole else rng
    key = _array_cache_key(info, folder, read, with_content=whole)
    arrays = dict(_load_range(info.name, str(folder), read, whole, key))
    lo, hi = (rng.start, rng.stop) if whole else (0, rng.size)
    out = {k: v[lo:hi] for k, v in arrays.items() if k != "id"}
    out["id"] = np.arange(rng.size, dtype=np.int64)
    out["id"].setflags(write=False)
    return out


# Base splits up to this many image bytes are decoded whole and kept on disk as decoded arrays.
CACHED_BASE_BYTES = 1 << 30


def _check_fits_in_memory(info: DatasetInfo, rng: SplitRange) -> None:
    if any(d is None for d in info.image_shape):
        raise PlexbenchError(f"dataset '{info.name}' has images of varying size; "
                             "read it with plexbench.data.pipeline.batches (it streams and resizes)")
    nbytes = rng.size * int(np.prod(info.image_shape))
    if nbytes > MAX_IN_MEMORY_BYTES:
        raise PlexbenchError(f"dataset '{info.name}' split {rng.tfds_spec()} needs {nbytes / 2**30:.1f} GiB "
                             "in memory; read it with plexbench.data.pipeline.batches (it streams)")


@functools.lru_cache(maxsize=8)
def _load_range(name: str, folder: str, rng: SplitRange, on_disk: bool, key: str) -> tuple[tuple[str, np.ndarray], ...]:
    """Arrays of `rng`, read-only: from the decoded-array file when `on_disk` and its stored key is
    `key`, else decoded with TFDS (then saved when `on_disk`). Cached per process by `key` too, so
    rewritten files are read again."""
    info = get_dataset(name)
    out = None
    if on_disk:
        # one file per label key: registry entries that share TFDS files but read another label
        # (cifar10_n and cifar10_n/worst) must not overwrite each other's cache
        suffix = "" if info.label_key == "label" else "." + "".join(c if c.isalnum() else "_" for c in info.label_key)
        cache_file = Path(folder) / ARRAY_CACHE_DIR / f"{rng.base}{suffix}.npz"
        out = _read_array_cache(cache_file, key)
    if out is None:
        out = _decode_range(info, Path(folder), rng)
        if on_disk:
            _write_array_cache(cache_file, key, out)
    for value in out.values():
        value.setflags(write=False)
    return tuple(out.items())


def _decode_range(info: DatasetInfo, folder: Path, rng: SplitRange) -> dict[str, np.ndarray]:
    """Decode `rng` with TFDS/tf.data into numpy arrays (see `load_arrays`)."""
    from plexbench.progress import bar

    import tensorflow as tf

    chunks = []
    if rng.size:
        with bar(rng.size, f"reading {info.name} {rng.tfds_spec()}", unit="ex") as progress:
            try:
                for chunk in iterate_numpy(info, folder, rng.tfds_spec(), _READ_BATCH):
                    chunks.append(chunk)
                    progress.update(len(chunk["label"]))
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise PlexbenchError(f"dataset '{info.name}' in {folder} is damaged ({first}); "
                                     f"delete {folder} and prepare it again") from None
    out = {"image": _concat(chunks, "image", (0, *info.image_shape), np.uint8),
           "label": _concat(chunks, "label", (0,), np.int64),
           "id": np.arange(rng.size, dtype=np.int64)}
    if info.soft_label:
        out["soft_label"] = _concat(chunks, "soft_label", (0, info.num_classes), np.float32)
    if len(out["label"]) != rng.size:
        raise PlexbenchError(f"dataset '{info.name}' in {folder}: read {len(out['label'])} examples "
                             f"of {rng.tfds_spec()}, expected {rng.size}; the prepared files are damaged")
    return out


# Decoded arrays of small splits are kept beside the TFDS files, in `<version dir>/.plexbench-arrays/`,
# so later processes skip decoding (and importing TensorFlow). A file is used only if the key stored
# in it matches: the exact bytes of the split's shard files plus what shapes the arrays.
ARRAY_CACHE_DIR = ".plexbench-arrays"
_ARRAY_CACHE_FORMAT = 1


def _array_cache_key(info: DatasetInfo, folder: Path, rng: SplitRange, *, with_content: bool) -> str:
    """Identity of what decoding `rng` gives: the shard files (their bytes if `with_content`, else
    names, sizes and modification times) and the entry fields that shape the arrays."""
    shards = _shard_files(folder, rng.base, with_content=with_content)
    if not with_content:
        shards = [row + [(folder / row[0]).stat().st_mtime_ns] for row in shards]
    return fileio.sha256_json({
        "format": _ARRAY_CACHE_FORMAT,
        "tfds": _builder_at(str(folder)).info.full_name,
        "range": rng.tfds_spec(),
        "shards": shards,
        "label_key": info.label_key,
        "soft_label": info.soft_label,
        "num_classes": info.num_classes,
        "image_shape": list(info.image_shape),
    })


def _read_array_cache(path: Path, key: str) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        arrays = fileio.load_npz(path, what="decoded-array cache")
    except PlexbenchError:
        return None  # damaged: decode again and overwrite
    if str(arrays.pop("cache_key", "")) != key:
        return None
    return arrays


def _write_array_cache(path: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    try:
        fileio.save_npz(path, {**arrays, "cache_key": np.array(key)})
    except (OSError, PlexbenchError):
        pass  # read-only or full data dir: the cache is an optimisation only


def _concat(chunks, key, empty_shape, dtype) -> np.ndarray:
    if not chunks:
        return np.zeros(empty_shape, dtype=dtype)
    return np.concatenate([c[key] for c in chunks]).astype(dtype, copy=False)


# --------------------------------------------------------------------------- provenance

def dataset_fingerprint(name: str, split: str, data_dir=None) -> str:
    """sha256 identifying the examples of `split` as prepared on disk.

    Hashes (as canonical JSON) the dataset name, the TFDS full name (builder/config/version), the
    absolute range (e.g. `train[0:58800]`), the parsed `features.json`, and:
    - for splits `load_arrays` keeps whole (fixed image size, base split <= 1 GiB of images): the
      sha256 of the decoded arrays of the range (image bytes, labels, soft labels). Decoded, not
      file bytes: TFDS serialises each example's feature map in no fixed order, so preparing the
      same data twice can give different files but always the same arrays and fingerprint;
    - for larger splits (ImageNet): the base split's shard file names and sizes only.
    The data dir's path does not enter. Text datasets: plexbench.data.text.text_fingerprint (the
    sha256 of their texts and classes).
    """
    info, folder = locate(name, data_dir)
    rng = split_range(name, split, data_dir)
    # Kept per process under the identity of the files (the decoded-array cache's key: shard names,
    # sizes and mtimes): a run asks once per (dataset, split) but inference asks again per model,
    # and hashing a text split reads it through TensorFlow (~1 s).
    key = (str(folder), (folder / "features.json").stat().st_mtime_ns,
           _array_cache_key(info, folder, rng, with_content=False))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = _fingerprint(info, folder, rng, name, split, data_dir)
    return _FINGERPRINTS[key]


_FINGERPRINTS: dict[tuple, str] = {}


def _fingerprint(info: DatasetInfo, folder: Path, rng: "SplitRange", name: str, split: str, data_dir) -> str:
    if info.is_text:
        from plexbench.data.text import text_fingerprint

        return text_fingerprint(name, split, data_dir)
    record = {
        "dataset": info.name,
        "tfds": _builder_at(str(folder)).info.full_name,
        "range": rng.tfds_spec(),
        "features": json.loads((folder / "features.json").read_text()),
    }
    if _kept_whole(info, folder, rng):
        arrays = load_arrays(name, split, data_dir)
        record["content"] = {k: [str(v.dtype), list(v.shape), fileio.sha256_bytes(np.ascontiguousarray(v).tobytes())]
                             for k, v in sorted(arrays.items()) if k != "id"}
    else:
        record["shards"] = _shard_files(folder, rng.base, with_content=False)
    return fileio.sha256_json(record)


def _kept_whole(info: DatasetInfo, folder: Path, rng: SplitRange) -> bool:
    """True if `load_arrays` decodes the whole base split of `rng` and keeps it on disk."""
    if any(d is None for d in info.image_shape):
        return False
    base_size = _builder_at(str(folder)).info.splits[rng.base].num_examples
    return base_size * int(np.prod(info.image_shape)) <= CACHED_BASE_BYTES


def _shard_files(folder: Path, base: str, *, with_content: bool) -> list[list]:
    """[name, size, sha256 of the bytes or None] for each shard file of TFDS split `base`."""
    files = sorted(folder / Path(f).name for f in _builder_at(str(folder)).info.splits[base].filenames)
    out = []
    for f in files:
        st = f.stat()
        out.append([f.name, st.st_size, _file_sha256(str(f), st.st_size, st.st_mtime_ns) if with_content else None])
    return out


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the cache key: a rewritten file is hashed again
    return fileio.sha256_file(path)
