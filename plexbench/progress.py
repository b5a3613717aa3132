"""Progress bars (rate and ETA) and the summary line printed at the end of long work."""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def bar(total: int | None, desc: str, unit: str = "ex"):
    """A tqdm bar on stderr with rate and ETA; silent when PLEXBENCH_QUIET=1."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=0.5,
        disable=os.environ.get("PLEXBENCH_QUIET") == "1",
    )


def track(items: Iterable[T], total: int | None, desc: str, unit: str = "it") -> Iterator[T]:
    with bar(total, desc, unit) as b:
        for item in items:
            yield item
            b.update(1)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def summary_line(what: str, n: int, seconds: float, unit: str = "examples") -> str:
    rate = n / seconds if seconds > 0 else float("inf")
    return f"{what}: {n:,} {unit} in {seconds:.1f} s ({rate:,.1f} {unit}/s)"
