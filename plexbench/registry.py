"""A name -> object registry, one per kind of component (datasets, models, task kinds...).

Filled by decorators where each thing is defined; a duplicate name raises; an
unknown name raises `PlexbenchError` with close matches.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from plexbench.errors import PlexbenchError

T = TypeVar("T")


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    shown = ", ".join(sorted(available)[:12]) + (" ..." if len(available) > 12 else "")
    return f"unknown {kind} '{name}'{hint} (available: {shown})"


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
