"""The one exception type that reaches the user as a single line, and the helpers its messages use.

Anything the user can fix (a bad name, a bad file, missing data, an unwritable place) raises
`PlexbenchError`; the CLI prints `plexbench: error: <message>` and exits 2. Anything else is a bug
and keeps its traceback.

- `shown(value)`: how a message echoes a value the user typed or a file held: quoted, and cut
  to `SHOWN_CHARS` characters with the full length said (a 100,000-character name costs one line,
  not 100 KB of stderr).
- `os_error_message(e)`: an `OSError` (not a directory, is a directory, permission denied, name
  too long, disk full, read-only file system, ...) as one line naming the path.
"""

from __future__ import annotations

import errno

# Longest echoed value (characters) and longest message line; both far above any real name or path.
SHOWN_CHARS = 200
MESSAGE_CHARS = 2000


class PlexbenchError(Exception):
    """A problem with the user's input or environment; the message is one line."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line message would read like a traceback. The length cap is a
        # backstop behind `shown` for a value that was echoed without it.
        super().__init__(_cap(" ".join(str(message).split()), MESSAGE_CHARS))


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """`value` as a message shows it: `'text'`, cut after `limit` characters.

    Example: shown("abc") == "'abc'"; shown("x" * 100_000) == "'xxx...x...' (100,000 characters)"
    with `limit` x's kept. Non-strings are shown through str().
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return f"'{text}'"
    return f"'{text[:limit]}...' ({len(text):,} characters)"


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters in all)"


# errno -> what it means for the path, worded for a user (the path is added by os_error_message).
_OS_REASONS = {
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of this path is a file, not a directory",
    errno.EISDIR: "is a directory, a file was expected",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOSPC: "disk full; finished work is kept",
    errno.EDQUOT: "disk quota exceeded; finished work is kept",
    errno.EROFS: "read-only file system",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "directory not empty",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EMFILE: "too many open files",
    errno.EXDEV: "cannot move across file systems",
    errno.EIO: "input/output error",
}


def os_error_message(e: OSError) -> str:
    """One line for an OSError: `<reason>: <path>` (or `-> <path2>` for a rename).

    Example: IsADirectoryError(21, 'Is a directory', '/tmp/out') -> "is a directory, a file was
    expected: '/tmp/out'". Paths go through `shown`, so a 100,000-character name stays short.
    """
    reason = _OS_REASONS.get(e.errno) or e.strerror or str(e) or type(e).__name__
    reason = reason[:1].lower() + reason[1:]
    where = ""
    if e.filename is not None:
        where = f": {shown(_fspath(e.filename))}"
        if getattr(e, "filename2", None) is not None:
            where += f" -> {shown(_fspath(e.filename2))}"
    return f"{reason}{where}"


def _fspath(name) -> str:
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return str(name)
