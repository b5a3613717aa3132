"""Where plexbench reads and writes by default.

- TFDS data dir: `--data-dir`, else $TFDS_DATA_DIR, else ~/.cache/plexbench/tensorflow_datasets.
- Prediction store: `--store`, else $PLEXBENCH_STORE, else ~/.cache/plexbench/predictions.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "plexbench"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("TFDS_DATA_DIR")
    return Path(env).expanduser() if env else cache_root() / "tensorflow_datasets"


def store_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("PLEXBENCH_STORE")
    return Path(env).expanduser() if env else cache_root() / "predictions"


def repo_root() -> Path:
    """The source checkout (for results/ and tasks/ when running from a clone)."""
    return Path(__file__).resolve().parent.parent
