"""Columns of a report: (metric, dataset) pairs, their names and directions.

A column is the pair `(metric, dataset)` of `metrics_long.csv`. It is written
`metric@dataset` (for example `ece@fashion_mnist`, `ood/digits/msp/auroc@fashion_mnist`).
Metric names may themselves hold `@` (`prec@1`, `oc_acc@0.01`) but dataset names never
do, so `parse_column` splits at the LAST `@`: `prec@1@cifar10` -> (`prec@1`, `cifar10`).

Direction (higher- or lower-is-better) has one source of truth, the metric's declaration in
`plexbench.metrics.vocabulary`; this module only forwards to it.
"""

from __future__ import annotations

from typing import NamedTuple

from plexbench.errors import PlexbenchError


class Column(NamedTuple):
    metric: str
    dataset: str

    def __str__(self) -> str:  # `metric@dataset`
        return f"{self.metric}@{self.dataset}"


def parse_column(text: str) -> Column:
    """`'prec@1@cifar10'` -> Column('prec@1', 'cifar10'); the dataset follows the last '@'."""
    metric, sep, dataset = text.strip().rpartition("@")
    if not sep or not metric or not dataset:
        raise PlexbenchError(f"bad column '{text}': expected METRIC@DATASET, e.g. ece@fashion_mnist")
    return Column(metric, dataset)


def direction(metric: str) -> str | None:
    """'higher' or 'lower' from the metric's declaration; None when it has none.

    A metric without a direction (declared without one, or not declared) is shown in tables
    but never scored or ranked.
    """
    from plexbench.metrics.vocabulary import find_metric

    info = find_metric(metric)
    return None if info is None else info.direction


def header(column: Column) -> str:
    """Wide-table header: `ece@fashion_mnist (lower)`; `(n/a)` when the metric has no direction."""
    return f"{column} ({direction(column.metric) or 'n/a'})"
