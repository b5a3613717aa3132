"""Fashion-MNIST from the Debian package's original IDX files, as a TFDS dataset.

Debian's `dataset-fashion-mnist` installs the four original files of Xiao et al. (2017) in
/usr/share/datasets/fashion-mnist (override with $PLEXBENCH_FASHION_MNIST_DIR). Their gzip
containers differ byte-wise from the ones TFDS's own `fashion_mnist` builder checksums, so this
builder parses the IDX content itself (`read_idx`) and validates it.

The prepared dataset matches TFDS's official `fashion_mnist` 3.0.1: same name, version, features
(`image` uint8 (28, 28, 1), `label` ClassLabel with the official 10 names), splits (`train` 60,000,
`test` 10,000), supervised keys and example keys (the index in the IDX file), hence the same
example order after TFDS's key-hash shuffle. `tfds.load('fashion_mnist', data_dir=...)` reads it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from plexbench.data.registry import FASHION_MNIST_CLASSES
from plexbench.errors import PlexbenchError

DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
IMAGE_SIDE = 28

# IDX type codes (third magic byte) -> numpy dtype of the payload (big-endian where it matters).
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def source_dir() -> Path:
    """Folder of the four IDX files: $PLEXBENCH_FASHION_MNIST_DIR, else the Debian location."""
    return Path(os.environ.get("PLEXBENCH_FASHION_MNIST_DIR") or DEFAULT_SOURCE_DIR)


def parse_idx(raw: bytes, what: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes (LeCun's format): magic 0x00 0x00 <type> <ndim>, ndim big-endian uint32 dims, payload.

    Returns the payload reshaped to the dims, in its native dtype (uint8 for Fashion-MNIST).
    Raises PlexbenchError if the magic is wrong, the type unknown, or the length is not exactly
    header + prod(dims) * itemsize.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise PlexbenchError(f"{what} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype = _IDX_DTYPES.get(raw[2])
    if dtype is None:
        raise PlexbenchError(f"{what} has unknown IDX type code 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PlexbenchError(f"{what} is truncated inside its IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise PlexbenchError(f"{what} holds {len(raw)} bytes, but its IDX header {dims} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """`parse_idx` of a gzip-compressed (or plain) IDX file; one-line errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise PlexbenchError(
            f"Fashion-MNIST file missing: {path}; install the Debian package dataset-fashion-mnist "
            f"(sudo apt-get install dataset-fashion-mnist) or set PLEXBENCH_FASHION_MNIST_DIR")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise PlexbenchError(f"{path} is a corrupt gzip file ({e})") from None
    return parse_idx(data, what=str(path))


def read_split(split: str, directory: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 28, 28) and labels uint8 (N,) of `split` ("train"/"test"), validated.

    Checks the counts (60,000 / 10,000), the image side (28) and labels in 0..9.
    """
    directory = Path(directory) if directory is not None else source_dir()
    image_file, label_file, count = FILES[split]
    images = read_idx(directory / image_file)
    labels = read_idx(directory / label_file)
    if images.dtype != np.uint8 or images.shape != (count, IMAGE_SIDE, IMAGE_SIDE):
        raise PlexbenchError(f"{directory / image_file}: expected uint8 images of shape "
                             f"({count}, 28, 28), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (count,):
        raise PlexbenchError(f"{directory / label_file}: expected {count} uint8 labels, got {labels.dtype} {labels.shape}")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise PlexbenchError(f"{directory / label_file}: label {int(labels.max())} out of range 0..9")
    return images, labels


class FashionMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Fashion-MNIST, prepared offline from the original IDX files (see the module docstring)."""

    name = "fashion_mnist"
    VERSION = tfds.core.Version("3.0.1")  # the official TFDS builder's version
    RELEASE_NOTES = {"3.0.1": "Same content and layout as TFDS fashion_mnist 3.0.1, built from the IDX files."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST: Zalando article images, 60,000 train and 10,000 test 28x28 "
                        "grey images in 10 classes, read from the original IDX files.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(IMAGE_SIDE, IMAGE_SIDE, 1)),
                "label": tfds.features.ClassLabel(names=list(FASHION_MNIST_CLASSES)),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            citation="@article{xiao2017fashion, title={Fashion-MNIST: a Novel Image Dataset for "
                     "Benchmarking Machine Learning Algorithms}, author={Xiao, Han and Rasul, Kashif "
                     "and Vollgraf, Roland}, journal={arXiv:1708.07747}, year={2017}}",
        )

    @staticmethod
    def check_sources() -> None:
        """Raise PlexbenchError (one line) unless all four source files exist; called before preparing."""
        for image_file, label_file, _ in FILES.values():
            for name in (image_file, label_file):
                if not (source_dir() / name).is_file():
                    read_idx(source_dir() / name)  # raises the one-line "missing" error

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in FILES}

    def _generate_examples(self, split: str):
        images, labels = read_split(split)
        for index in range(len(labels)):
            # Key = index in the IDX file, as in the official builder: same shuffle, same order.
            yield index, {"image": images[index][:, :, None], "label": int(labels[index])}
