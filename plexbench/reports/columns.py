"""Columns of a report: (metric, dataset) pairs, their names, directions and shot counts.

A column is the pair `(metric, dataset)` of `metrics_long.csv`. It is written
`metric@dataset` (for example `ece@fashion_mnist`, `ood/digits/msp/auroc@fashion_mnist`).
Metric names may themselves hold `@` (`prec@1`, `oc_acc@0.01`) but dataset names never
do, so `parse_column` splits at the LAST `@`: `prec@1@cifar10` -> (`prec@1`, `cifar10`).

Direction (higher- or lower-is-better) has one source of truth,
`plexbench.metrics.direction`; this module only forwards to it.
"""

from __future__ import annotations

import re
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


def base_name(metric: str) -> str:
    """The last '/'-component, lower-cased: `ood/digits/msp/auroc` -> `auroc`."""
    return metric.rsplit("/", 1)[-1].lower()


def direction(metric: str) -> str | None:
    """'higher' or 'lower' from `plexbench.metrics.direction`; None when the metric has none.

    A metric without a direction (e.g. an ensemble-diversity statistic) is shown in tables
    but never scored or ranked.
    """
    from plexbench.metrics import direction as metric_direction

    try:
        return metric_direction(metric)
    except PlexbenchError:
        return None


def header(column: Column) -> str:
    """Wide-table header: `ece@fashion_mnist (lower)`; `(n/a)` when the metric has no direction."""
    return f"{column} ({direction(column.metric) or 'n/a'})"


_COUNT_SHOT = re.compile(r"(\d+)[-_ ]?shots?(?![a-z])", re.IGNORECASE)  # 5shot, 5_shot, 5-shots
_SHOT_COUNT = re.compile(r"shots?[-_/= ]?(\d+)(?![\d.])", re.IGNORECASE)  # shot5, shots_5, shot=5


# 'shot' as in few-shot, not the ImageNet-C corruption `shot_noise` (a covariate-shift breakdown
# such as `shot_noise/accuracy` is a prediction metric, not adaptation).
_FEW_SHOT = re.compile(r"shot(?!_noise)", re.IGNORECASE)


def is_shot_metric(metric: str) -> bool:
    """True when the metric comes from a few-shot protocol: its name contains 'shot' (spec §7),
    other than in the corruption name `shot_noise`."""
    return _FEW_SHOT.search(metric) is not None


def shot_count(metric: str) -> int | None:
    """Number of shots named in a few-shot metric, or None.

    Accepted spellings, `<n>shot` first: `5shot`, `5_shot`, `5-shots`, then `shot5`, `shots_5`,
    `shot=5` (e.g. `fewshot/1shot/prec@1` -> 1, `10shot_ece` -> 10); 'fewshot' alone has no count.
    """
    m = _COUNT_SHOT.search(metric) or _SHOT_COUNT.search(metric)
    return int(m.group(1)) if m else None
