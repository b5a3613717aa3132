"""What a result was made with: package versions, platform, git commit."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

from plexbench import OUTPUT_FORMAT_VERSION, __version__
from plexbench.paths import repo_root

_PACKAGES = ("numpy", "jax", "jaxlib", "flax", "optax", "tensorflow-cpu", "tensorflow-datasets",
             "pandas", "scikit-learn", "matplotlib")


def package_versions() -> dict[str, str]:
    out = {"plexbench": __version__}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(repo_root()), "rev-parse", "HEAD"],
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    return {
        "versions": package_versions(),
        "output_format_version": OUTPUT_FORMAT_VERSION,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
    }
