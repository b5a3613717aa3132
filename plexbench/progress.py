"""Progress bars (rate and ETA), one overall display for a long stage, and summary lines.

- `bar(total, desc)`: a tqdm bar on stderr. Inside an `overall(...)` display it is a nested bar
  that disappears when it finishes, so a stage shows one overall bar (with the stage's ETA) and
  at most the one piece of work in progress under it.
- `overall(total, desc, unit)`: the one display of a long stage (`plexbench run`, the run stage of
  `plexbench demo`): `advance()` a finished item, `drop()` one that turned out to cost nothing
  (a reused or skipped result: the ETA is then estimated from real work only), `doing(text)` to
  say what is being worked on.
- `warn(line)`: a line that is always printed (above the bars when a display is active).
- `note(line)`: a per-item line for the user on stderr (e.g. `predict`'s summary line); inside an
  overall display it is left out (the display replaces per-item lines).
- `doing(text)`: what the overall display shows as the work in progress (nothing without one).

PLEXBENCH_QUIET=1 turns every bar off (logs, CI, notebooks); notes and summary lines are still
printed, they are the record of what was done.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_ACTIVE: list["Overall"] = []  # the overall display in progress, if any (one at a time)


def quiet() -> bool:
    return os.environ.get("PLEXBENCH_QUIET") == "1"


def bar(total: int | None, desc: str, unit: str = "ex"):
    """A tqdm bar on stderr with rate and ETA; silent when PLEXBENCH_QUIET=1.

    Under an active `overall` display the bar sits below it and is removed when done."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=0.5,
        leave=not _ACTIVE,
        disable=quiet(),
    )


def track(items: Iterable[T], total: int | None, desc: str, unit: str = "it") -> Iterator[T]:
    with bar(total, desc, unit) as b:
        for item in items:
            yield item
            b.update(1)


class Overall:
    """The single display of a stage; see the module docstring. Use through `overall(...)`."""

    def __init__(self, total: int, desc: str, unit: str):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                         mininterval=0.5, disable=quiet(), smoothing=0.1)

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)

    def drop(self, n: int = 1) -> None:
        """`n` items need no work after all: out of the total, so the ETA counts real work only."""
        self._bar.total = max(self._bar.n, (self._bar.total or 0) - n)
        self._bar.refresh()

    def doing(self, text: str) -> None:
        self._bar.set_postfix_str(text[:80], refresh=False)

    def close(self) -> None:
        self._bar.close()


@contextlib.contextmanager
def overall(total: int, desc: str, unit: str = "it") -> Iterator[Overall]:
    """One overall display for a stage (module docstring); nested bars and notes go under it."""
    display = Overall(total, desc, unit)
    _ACTIVE.append(display)
    try:
        yield display
    finally:
        _ACTIVE.remove(display)
        display.close()


def note(line: str) -> None:
    """Say `line` on stderr, unless an overall display is active (it replaces per-item lines)."""
    if not _ACTIVE:
        print(line, file=sys.stderr)


def doing(text: str) -> None:
    """Show `text` as the active overall display's work in progress (no-op without one)."""
    if _ACTIVE:
        _ACTIVE[-1].doing(text)


def warn(line: str) -> None:
    """A line that must be seen even under an overall display (written above the bars)."""
    if _ACTIVE:
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def summary_line(what: str, n: int, seconds: float, unit: str = "examples") -> str:
    rate = n / seconds if seconds > 0 else float("inf")
    return f"{what}: {n:,} {unit} in {seconds:.1f} s ({rate:,.1f} {unit}/s)"
