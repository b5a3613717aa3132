"""A name -> object registry, one per kind of component (datasets, models, task kinds...).

Filled by decorators where each thing is defined; a duplicate name raises; an
unknown name raises `PlexbenchError` with close matches.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable, Generic, Iterator, TypeVar

from plexbench.errors import PlexbenchError, shown

T = TypeVar("T")


def close_names(name: str, available: list[str], n: int = 3) -> list[str]:
    """Names the user may have meant: those that start with `name` or contain it as a whole
    '_'/'/'-separated part (`svhn` -> `svhn_cropped`), then difflib's close matches.
    A name longer than any plausible one (100+ characters) gets none (difflib is quadratic)."""
    if not name or len(name) > 100:
        return []
    lowered = name.lower()
    parts = [a for a in available if a.lower().startswith(lowered) or lowered in re.split(r"[_/]", a.lower())]
    close = difflib.get_close_matches(name, available, n=n, cutoff=0.5)
    return list(dict.fromkeys(sorted(parts, key=len) + close))[:n]


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    close = close_names(name, available)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    listed = ", ".join(sorted(available)[:12]) + (" ..." if len(available) > 12 else "")
    return f"unknown {kind} {shown(name, 80)}{hint} (available: {listed})"


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise PlexbenchError(unknown_name_message(self.kind, name, list(self._items))) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
