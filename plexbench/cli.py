"""The `plexbench` command line.

Each area of the library owns a module in `plexbench.commands` with a
`register(subparsers)` function; this file only assembles them and turns a
`PlexbenchError` into one line on stderr and exit code 2. Command modules import
JAX/TensorFlow inside their handlers, so `plexbench --help` stays fast.

This is also the one place where an `OSError` from anywhere below (a path under a file, a
directory where a file is expected, permission denied, a name too long, a full disk, a read-only
file system, ...) becomes one line and exit code 2 (`plexbench.errors.os_error_message`): every
write is atomic (plexbench.fileio), so finished work is kept. Set PLEXBENCH_DEBUG=1 to see the
traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys

from plexbench import __version__
from plexbench.errors import PlexbenchError, os_error_message, shown

# Order = order in `plexbench --help`.
COMMAND_MODULES = (
    "plexbench.commands.listing",
    "plexbench.commands.data",
    "plexbench.commands.models",
    "plexbench.commands.score",
    "plexbench.commands.predict",
    "plexbench.commands.run",
    "plexbench.commands.reports",
    "plexbench.commands.demo",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'?([\w.-]+)'?", m.group(2))
            close = difflib.get_close_matches(m.group(1), choices, n=3, cutoff=0.5) if len(m.group(1)) < 100 else []
            message = f"invalid choice: {shown(m.group(1))} (choose from {m.group(2)})"
            if close:
                message += f"; did you mean {', '.join(close)}?"
        # argparse echoes arguments whole (an unrecognised 100,000-character one too): cap the line.
        message = " ".join(PlexbenchError(message).args[0].split())
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="plexbench",
        description="Reliability benchmark suite around Plex (Tran et al. 2022).",
    )
    parser.add_argument("--version", action="version", version=f"plexbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # an area not built yet
                continue
            raise
        module.register(sub)
    return parser


def quiet_libraries() -> None:
    """Before TensorFlow, JAX or absl are imported: their INFO and WARNING chatter off, unless the
    user chose a level (TF_CPP_MIN_LOG_LEVEL) themselves."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except PlexbenchError as e:
        print(f"plexbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # Output piped into `head` and friends: not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("plexbench: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130
    except OSError as e:
        # Files, directories, permissions, disks: the user's environment, not a bug of ours.
        if os.environ.get("PLEXBENCH_DEBUG") == "1":
            raise
        print(f"plexbench: error: {PlexbenchError(os_error_message(e))}", file=sys.stderr)
        return PlexbenchError.exit_code
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
