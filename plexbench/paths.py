"""Where plexbench reads and writes by default.

- TFDS data dir: `--data-dir`, else $TFDS_DATA_DIR, else ~/.cache/plexbench/tensorflow_datasets.
- Prediction store: `--store`, else $PLEXBENCH_STORE, else ~/.cache/plexbench/predictions.

Both may not exist yet (they are created when first written), but a path that exists as a file,
lies under a file, or has a name longer than the file system allows is a one-line error here,
before any work (plexbench.fileio.check_input_dir).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "plexbench"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return _checked(Path(explicit).expanduser(), "data dir (--data-dir)")
    env = os.environ.get("TFDS_DATA_DIR")
    if env:
        return _checked(Path(env).expanduser(), "data dir ($TFDS_DATA_DIR)")
    return _checked(cache_root() / "tensorflow_datasets", "data dir")


def store_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return _checked(Path(explicit).expanduser(), "prediction store (--store)")
    env = os.environ.get("PLEXBENCH_STORE")
    if env:
        return _checked(Path(env).expanduser(), "prediction store ($PLEXBENCH_STORE)")
    return _checked(cache_root() / "predictions", "prediction store")


def _checked(path: Path, what: str) -> Path:
    from plexbench.fileio import check_input_dir

    return check_input_dir(path, what)


def repo_root() -> Path:
    """The source checkout (for results/ and tasks/ when running from a clone)."""
    return Path(__file__).resolve().parent.parent
