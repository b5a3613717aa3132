"""`plexbench data ...` and `plexbench list datasets`, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from plexbench.cli import main


def _plexbench() -> list[str]:
    script = Path(sys.executable).parent / "plexbench"
    return [str(script)] if script.exists() else [sys.executable, "-m", "plexbench"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PLEXBENCH_QUIET": "1"}
    return subprocess.run(_plexbench() + list(args), capture_output=True, text=True, env=env, timeout=300)


def test_unknown_dataset_exit_2_one_line_with_close_matches():
    r = _run("data", "info", "nosuch")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("plexbench: error: unknown dataset 'nosuch'")
    r = _run("data", "info", "fashion_mnst")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "did you mean fashion_mnist" in r.stderr


def test_info_shows_counts_when_prepared(data_dir):
    r = _run("data", "info", "fashion_mnist", "--data-dir", str(data_dir))
    assert r.returncode == 0, r.stderr
    assert "58,800 examples" in r.stdout and "1,200 examples" in r.stdout and "10,000 examples" in r.stdout
    assert "T-shirt/top" in r.stdout and "3.0.1" in r.stdout


def test_info_of_a_missing_dataset_says_how_to_prepare(tmp_path, capsys):
    assert main(["data", "info", "cifar10", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"plexbench data prepare cifar10 --data-dir {tmp_path}" in out
    assert "train[:98%]" in out and "examples" not in out


def test_prepare_says_when_nothing_needed_doing(data_dir, capsys):
    assert main(["data", "prepare", "digits", "fashion_mnist", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "digits: already prepared" in out and "nothing to do: 2 dataset(s)" in out


def test_prepare_unknown_name_exit_2(tmp_path, capsys):
    assert main(["data", "prepare", "nosuch", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown dataset 'nosuch'" in err
    assert not any(tmp_path.iterdir())


def test_family_info_and_listing(data_dir, capsys):
    assert main(["data", "info", "cifar10_corrupted", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "75 datasets" in out and "glass_blur" in out
    assert main(["list", "datasets", "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    fm = next(line for line in lines if line.startswith("fashion_mnist "))
    assert fm.rstrip().endswith("yes")
    assert sum("(75)" in line for line in lines) == 3
