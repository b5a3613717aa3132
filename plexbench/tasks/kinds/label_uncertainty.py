"""label_uncertainty: predictions against soft labels (CIFAR-10H votes, ImageNet ReaL-H; spec §5)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.tasks.kinds.base import EvalContext, Split, TaskKind, TaskResult, measure, selected, split_stats
from plexbench.tasks.registry import register_kind
from plexbench.tasks.spec import POSITIVE, TaskSpec


@dataclass(frozen=True)
class LabelUncertaintyParams:
    """`soft_label_key`: the key of plexbench.data.load.load_arrays holding the soft labels
    float (N, K), rows summing to 1 (vote fractions); `num_bins`: ECE bins (15)."""

    soft_label_key: str = "soft_label"
    num_bins: int = field(default=15, metadata=POSITIVE)


def soft_labels_for(split: Split, ctx: EvalContext, key: str) -> np.ndarray:
    """The soft labels of the split's examples (rows `ids` of the dataset's array), float64 (N, K)."""
    soft = ctx.rows_of(split.ref.name, split.ref.split, key, split.ids)
    if soft is None:
        raise PlexbenchError(f"dataset {split.ref.name} ({split.ref.split}) has no '{key}' array; "
                             "label_uncertainty needs soft labels")
    return np.asarray(soft, dtype=np.float64)


@register_kind("label_uncertainty")
class LabelUncertainty(TaskKind):
    """Metrics: nll = mean cross-entropy against the soft label, -sum_k y_k log max(p_k, 1e-7)
    (Plex's clip, spec §5; plexbench.metrics.soft_cross_entropy); accuracy and ece against the
    argmax of the soft label (ties: the lowest class index, as np.argmax); ged (generalised energy
    distance, spec §5). All from per-example statistics against the soft labels, one bootstrap.
    Examples whose soft label is all zero (ImageNet ReaL's empty label sets) are left out;
    `info.dropped_without_soft_label` counts them."""

    Params = LabelUncertaintyParams
    reads_data = True
    metrics = ("nll", "accuracy", "ece", "ged")
    summary = "soft-label NLL, accuracy/ECE against the argmax soft label, GED"
    headline = ("nll", "ged", "accuracy", "ece")

    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        from plexbench import metrics as M

        split = inputs["eval"]
        soft = soft_labels_for(split, ctx, task.params.soft_label_key)
        # ImageNet ReaL has images with an empty label set (all-zero rows): they have no soft
        # label to score against, so they are dropped (their count goes into info).
        has_label = soft.sum(axis=1) > 0
        split, soft = split.take(has_label), soft[has_label]
        stats = split_stats(split, soft_labels=soft, want=("ged",))
        functions = {"nll": M.soft_cross_entropy, "accuracy": M.accuracy,
                     "ece": functools.partial(M.ece, num_bins=task.params.num_bins), "ged": M.ged}
        rows = measure(task, split.ref, {m: functions[m] for m in selected(task, self)}, stats)
        return TaskResult(rows=rows, info={"dropped_without_soft_label": int((~has_label).sum())})
