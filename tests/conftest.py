"""Shared fixtures: the real embedded datasets, prepared once into a cache kept between runs."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("PLEXBENCH_QUIET", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _prepared_data_dir() -> Path:
    path = Path(os.environ.get("PLEXBENCH_TEST_DATA_DIR", REPO / ".cache" / "tfds-test"))
    path.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers share the directory: one prepares, the others wait.
    with open(path / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from plexbench.data.prepare import prepare

        for name in ("fashion_mnist", "digits"):
            prepare(name, path)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """TFDS data dir holding the prepared embedded datasets (fashion_mnist, digits)."""
    return _prepared_data_dir()


@pytest.fixture()
def store_dir(tmp_path) -> Path:
    return tmp_path / "store"
