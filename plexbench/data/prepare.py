"""Prepare datasets into a TFDS data dir, once.

- A dataset whose `DatasetInfo.builder` names a plexbench builder ("module:Class") is built by
  that class: `Class(config=<part of tfds_name after '/'>, data_dir=...)`, then
  `download_and_prepare`. Its `requires` are prepared first.
- Any other dataset goes through TFDS's own builder (`tfds.builder(tfds_name)`), which downloads
  it, or reads the manual files from `manual_dir` (ImageNet and its variants).

Downloads need the network: before TFDS starts (and would retry for minutes, printing urllib3
warnings), the hosts it would download from (its GCS mirror and the builder's registered URLs, or
through the $HTTPS_PROXY / $HTTP_PROXY proxy when one is set) are asked for an HTTP answer with a
few seconds' timeout; when none answers, a one-line error says so. Builders with manual downloads (ImageNet) are not probed.

Output: TFDS's own messages ("Downloading and preparing dataset Unknown size ...", its progress
bars, absl INFO logs) never appear for plexbench's embedded builders, which download nothing;
for TFDS downloads they go to stderr (nowhere with PLEXBENCH_QUIET=1), urllib3's retry warnings
nowhere.

A dataset already prepared (see `registry.version_dir`) is left alone: `prepare` returns False and
opens no file in the data dir. Concurrent calls are serialised by a lock file per dataset, taken
only when there is work to do (lock files live in `<data_dir>/.plexbench-locks/`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import importlib
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

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
    from plexbench.fileio import check_output_dir

    check_output_dir(data_dir, "data dir")
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
        with _quiet_tfds(silent=True):
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
        if not getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
            check_network(info, _download_hosts(builder))
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


# TFDS's mirror of every dataset it knows (tried before a dataset's own URLs).
TFDS_MIRROR_HOST = "storage.googleapis.com"
PROBE_TIMEOUT_S = 4.0


def _download_hosts(builder) -> list[str]:
    """Hosts TFDS would download `builder`'s files from: its mirror and the registered URLs."""
    urls = getattr(builder, "url_infos", None) or {}
    hosts = [TFDS_MIRROR_HOST] + [urlparse(u).hostname for u in urls]
    return list(dict.fromkeys(h for h in hosts if h))


def check_network(info: DatasetInfo, hosts: list[str], timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise PlexbenchError (one line) when none of `hosts` answers an HTTP request within
    `timeout` seconds (through the proxy of $HTTPS_PROXY / $HTTP_PROXY when one is set).

    The probe is a `HEAD /` over plain HTTP (port 80) whose answer must start with `HTTP/`: a name
    that does not resolve, a refused or silently accepted connection (some firewalls accept every
    connection and send nothing) all count as no network. Hosts are probed in parallel, so offline
    this takes at most `timeout` seconds.
    """
    proxy = next((os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
                  if os.environ.get(v)), None)
    hosts = [h for h in hosts if h]
    if not hosts:
        return
    via = (urlparse(proxy).hostname, urlparse(proxy).port or 80) if proxy else None
    pool = concurrent.futures.ThreadPoolExecutor(len(hosts))
    futures = [pool.submit(_http_answer, host, via, timeout) for host in hosts]
    done, _ = concurrent.futures.wait(futures, timeout=timeout + 1)
    pool.shutdown(wait=False, cancel_futures=True)  # a lookup stuck in the resolver is not waited for
    errors = [f.result() for f in done]
    if any(e is None for e in errors):
        return
    why = next((e for e in errors if e), "no answer")
    where = ", ".join(hosts[:3]) + (f" through the proxy {via[0]}:{via[1]}" if via else "")
    folder = info.tfds_name.split("/")[0]
    raise PlexbenchError(f"no network: cannot reach {where} ({why}); preparing '{info.name}' downloads it "
                         f"through TFDS: prepare it where there is internet, then copy its folder "
                         f"<data dir>/{folder} into this data dir")


def _http_answer(host: str, via: tuple[str, int] | None, timeout: float) -> str | None:
    """None if `HEAD http://host/` gets an HTTP answer within `timeout` s (directly, or through the
    proxy `via`), else the reason."""
    target = via or (host, 80)
    request = (f"HEAD http://{host}/ HTTP/1.0\r\n" if via else "HEAD / HTTP/1.0\r\n") + f"Host: {host}\r\n\r\n"
    try:
        with socket.create_connection(target, timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(request.encode("ascii"))
            answer = conn.recv(5)
    except socket.gaierror:
        return f"cannot resolve {target[0]}"
    except TimeoutError:
        return f"{target[0]} did not answer"
    except OSError as e:
        return f"{target[0]}: {e.strerror or type(e).__name__}"
    return None if answer.startswith(b"HTTP/") else f"{target[0]} did not answer"


@contextlib.contextmanager
def _quiet_tfds(silent: bool = False):
    """Keep stdout for plexbench's own summary. TFDS's chatter goes to stderr, or nowhere when
    `silent` (plexbench's own builders: "Downloading and preparing dataset Unknown size" would be
    wrong) or PLEXBENCH_QUIET=1. absl INFO logs and urllib3 retry warnings are off either way."""
    import tensorflow_datasets as tfds

    env_quiet = os.environ.get("PLEXBENCH_QUIET") == "1"
    silent = silent or env_quiet
    if silent:
        tfds.disable_progress_bar()
    loggers = {name: logging.getLogger(name) for name in ("absl", "urllib3", "tensorflow")}
    levels = {name: log.level for name, log in loggers.items()}
    for name, log in loggers.items():
        log.setLevel(logging.ERROR if name == "urllib3" or silent else logging.WARNING)
    target = open(os.devnull, "w") if silent else sys.stderr
    try:
        with contextlib.redirect_stdout(target):
            yield
    finally:
        for name, log in loggers.items():
            log.setLevel(levels[name])
        if silent:
            if not env_quiet:
                tfds.enable_progress_bar()
            target.close()
