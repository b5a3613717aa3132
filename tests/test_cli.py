"""The CLI skeleton: help for every subcommand, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from plexbench.cli import build_parser


def _plexbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plexbench", *args], capture_output=True, text=True, timeout=300)


def _subcommand_paths(parser, prefix=()):
    """Every (sub)command path reachable from the parser, e.g. ('data', 'prepare')."""
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            for name, sub in choices.items():
                yield prefix + (name,)
                yield from _subcommand_paths(sub, prefix + (name,))


def test_top_level_help_lists_commands():
    r = _plexbench("--help")
    assert r.returncode == 0
    for name in ("list", "data"):
        assert name in r.stdout


def test_every_subcommand_has_help():
    paths = list(_subcommand_paths(build_parser()))
    assert ("list",) in paths
    for path in paths:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*path, "--help"])
        assert e.value.code == 0, path


def test_unknown_subcommand_is_one_line_exit_2():
    r = _plexbench("lst")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "lst" in lines[0]


def test_list_unknown_target_is_one_line_exit_2():
    r = _plexbench("list", "datsets")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "datasets" in r.stderr
