"""Which way is better, declared where each metric is defined.

`direction(metric_name)` answers "higher" or "lower". The last '/'-component of the name
decides (`ood/digits/msp/auroc` -> `auroc`); a trailing `ci_low` / `ci_high` component is
skipped first, so an interval bound has its metric's direction. Names are matched exactly
first, then against the declared glob patterns (`oc_acc@*`, `ece*`, ...), in declaration
order. Metric modules declare their own names with the `declares` decorator; names with no
function of their own (prec@1, loss, mce, the subpopulation summary statistics) are
declared at the bottom of this file. An unknown name raises `PlexbenchError` with close
matches.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Literal, TypeVar

from plexbench.errors import PlexbenchError
from plexbench.registry import Registry

Direction = Literal["higher", "lower"]
F = TypeVar("F", bound=Callable)

DIRECTIONS: Registry[str] = Registry("metric")
_INTERVAL_SUFFIXES = ("ci_low", "ci_high")


def declare(name: str, which: Direction) -> None:
    """Record that metric `name` (a name or a glob pattern) is better when `which`."""
    if which not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {which!r}")
    DIRECTIONS.add(name, which)


def declares(*names: str, direction: Direction) -> Callable[[F], F]:
    """Decorator for a metric function: declares the direction of each of `names`."""

    def decorator(fn: F) -> F:
        for name in names:
            declare(name, direction)
        return fn

    return decorator


def base_name(metric_name: str) -> str:
    """The component of a metric name that decides its direction."""
    parts = [p for p in str(metric_name).strip().split("/") if p]
    while len(parts) > 1 and parts[-1] in _INTERVAL_SUFFIXES:
        parts.pop()
    if not parts:
        raise PlexbenchError(f"empty metric name {metric_name!r}")
    return parts[-1].lower()


def direction(metric_name: str) -> Direction:
    """'higher' or 'lower' for a metric name such as `accuracy` or `ood/svhn/maha/fpr95`.

    >>> direction("ood/svhn/maha/fpr95"), direction("subpop/p05"), direction("ece/ci_low")
    ('lower', 'higher', 'lower')
    """
    base = base_name(metric_name)
    if base in DIRECTIONS:
        return DIRECTIONS.get(base)
    for pattern, which in DIRECTIONS.items():
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(base, pattern):
            return which
    return DIRECTIONS.get(base)  # raises with "did you mean"


# Names that are not a function of this package (spec §5, §7; ARCHITECTURE.md).
for _name in ("prec@1", "auc", "oc_auc@*", "mean", "median", "p05", "p25", "p75", "p95"):
    declare(_name, "higher")
for _name in ("loss", "mce", "variance"):
    declare(_name, "lower")
