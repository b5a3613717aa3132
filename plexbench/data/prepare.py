"""Prepare datasets into a TFDS data dir, once.

- A dataset whose `DatasetInfo.builder` names a plexbench builder ("module:Class") is built by
  that class: `Class(config=<part of tfds_name after '/'>, data_dir=...)`, then
  `download_and_prepare`. Its `requires` are prepared first.
- Any other dataset goes through TFDS's own builder (`tfds.builder(tfds_name)`), which downloads
  it, or reads the manual files from `manual_dir` (ImageNet and its variants).

A dataset already prepared (see `registry.version_dir`) is left alone: `prepare` returns False and
opens no file in the data dir. Concurrent calls are serialised by a lock file per dataset, taken
only when there is work to do (lock files live in `<data_dir>/.plexbench-locks/`).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from plexbench import paths
from plexbench.data.registry import DatasetInfo, get_dataset, not_prepared_message, version_dir
from plexbench.errors import PlexbenchError


def prepare(name: str, data_dir=None, *, manual_dir=None) -> bool:
    """Prepare dataset `name` (and what it requires) into `data_dir`; True if any work was done.

    `data_dir` defaults to `plexbench.paths.data_dir()`. `manual_dir` is handed to TFDS for
    datasets with manual downloads. Failures the user can fix (missing source files, no network,
    missing manual files) raise PlexbenchError with one line.
    """
    info = get_dataset(name)
    data_dir = paths.data_dir(data_dir)
    did_work = False
    for required in info.requires:
        did_work |= prepare(required, data_dir, manual_dir=manual_dir)
    if version_dir(info, data_dir) is not None:
        return did_work
    data_dir.mkdir(parents=True, exist_ok=True)
    with _lock(data_dir, info):
        if version_dir(info, data_dir) is not None:  # another process finished it meanwhile
            return did_work
        if info.builder is not None:
            _prepare_with_plexbench_builder(info, data_dir)
        else:
            _prepare_with_tfds(info, data_dir, manual_dir)
    if version_dir(info, data_dir) is None:
        raise PlexbenchError(f"preparing '{name}' finished but left nothing readable; {not_prepared_message(info, data_dir)}")
    return True


def builder_class(info: DatasetInfo):
    """Import the plexbench builder class named by `info.builder` ("module:Class")."""
    module_name, _, class_name = info.builder.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise PlexbenchError(f"dataset '{info.name}': cannot import its builder {info.builder} ({e})") from None


def _importlib_resources_fallback() -> None:
    """TFDS 4.9 builders import `importlib_resources` on Python >= 3.9 without declaring the package
    (tensorflow/datasets#11212). If it is absent, alias the standard library's `importlib.resources`
    (which has the `abc.Traversable` TFDS checks against)."""
    try:
        import importlib_resources  # noqa: F401
    except ModuleNotFoundError:
        import importlib.resources
        import importlib.resources.abc  # noqa: F401

        sys.modules["importlib_resources"] = importlib.resources


def _prepare_with_plexbench_builder(info: DatasetInfo, data_dir: Path) -> None:
    import tensorflow_datasets as tfds

    _importlib_resources_fallback()
    cls = builder_class(info)
    check = getattr(cls, "check_sources", None)
    if callable(check):
        check()  # a missing source file is a one-line error, before TFDS starts writing
    kwargs = {"data_dir": str(data_dir)}
    if info.config is not None:
        kwargs["config"] = info.config
    builder = cls(**kwargs)
    if info.version is not None and str(builder.version) != info.version:
        raise PlexbenchError(f"dataset '{info.name}': registry pins version {info.version} "
                             f"but {info.builder} builds {builder.version}")
    # Embedded builders download nothing: keep TFDS's download folder out of the data dir.
    scratch = tempfile.mkdtemp(prefix="plexbench-prepare-")
    try:
        with _quiet_tfds():
            builder.download_and_prepare(
                download_dir=scratch,
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _prepare_with_tfds(info: DatasetInfo, data_dir: Path, manual_dir) -> None:
    import tensorflow_datasets as tfds

    _importlib_resources_fallback()
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
    try:
        builder = tfds.builder(info.tfds_name, data_dir=str(data_dir))
        with _quiet_tfds():
            builder.download_and_prepare(download_config=config)
    except PlexbenchError:
        raise
    except Exception as e:  # network, manual files, missing optional packages: all user-fixable
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise PlexbenchError(f"could not prepare '{info.name}' with TFDS ({type(e).__name__}: {first}); "
                             f"{info.prepare_hint}") from None


@contextlib.contextmanager
def _lock(data_dir: Path, info: DatasetInfo):
    """An exclusive lock per dataset: `<data_dir>/.plexbench-locks/<name>.lock`.

    The lock files stay (an unlinked lock file would let a third process lock a fresh inode while
    a second still waits on the old one).
    """
    folder = data_dir / ".plexbench-locks"
    folder.mkdir(exist_ok=True)
    with open(folder / f"{info.name.replace('/', '__')}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_tfds():
    """Keep stdout for plexbench's own summary: TFDS's chatter goes to stderr (nowhere if PLEXBENCH_QUIET=1)."""
    import tensorflow_datasets as tfds

    quiet = os.environ.get("PLEXBENCH_QUIET") == "1"
    if quiet:
        tfds.disable_progress_bar()
    target = open(os.devnull, "w") if quiet else sys.stderr
    try:
        with contextlib.redirect_stdout(target):
            yield
    finally:
        if quiet:
            target.close()
