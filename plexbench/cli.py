"""The `plexbench` command line.

Each area of the library owns a module in `plexbench.commands` with a
`register(subparsers)` function; this file only assembles them and turns a
`PlexbenchError` into one line on stderr and exit code 2. Command modules import
JAX/TensorFlow inside their handlers, so `plexbench --help` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import re
import sys

from plexbench import __version__
from plexbench.errors import PlexbenchError

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
            close = difflib.get_close_matches(m.group(1), choices, n=3, cutoff=0.5)
            if close:
                message += f"; did you mean {', '.join(close)}?"
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


def main(argv: list[str] | None = None) -> int:
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
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"plexbench: error: disk full ({e.filename or 'write'}); finished work is kept", file=sys.stderr)
            return 2
        raise
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
