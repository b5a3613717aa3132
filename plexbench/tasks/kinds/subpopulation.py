"""subpopulation: accuracy per group and its percentile summary (spec §5, subpopulation shift)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.tasks.kinds.base import (EvalContext, Split, TaskKind, TaskResult, check_dataset_ref,
                                        dataset_num_classes, jsonable, measure, selected, split_stats,
                                        summary_row)
from plexbench.tasks.registry import register_kind
from plexbench.tasks.spec import POSITIVE, FieldError, NON_NEGATIVE, SplitRole, TaskSpec

SUMMARY_KEYS = ("mean", "median", "variance", "p05", "p25", "p75", "p95")


@dataclass(frozen=True)
class GroupingParams:
    """How examples are grouped (plexbench.tasks.groups):

    - `method: metadata` with `key`: an integer array of the dataset (load_arrays key);
    - `method: kmeans_per_class`: `clusters_per_class` k-means clusters per class, on a
      `pca_dims`-dimensional PCA of the raw pixels of the first `fit_limit` examples (all when
      left out) of `fit_split`; `seed`, `n_init` restarts.
    """

    method: Literal["metadata", "kmeans_per_class"]
    key: str | None = None
    clusters_per_class: int = field(default=3, metadata=POSITIVE)
    pca_dims: int = field(default=32, metadata=POSITIVE)
    fit_split: SplitRole = "train"
    fit_limit: int | None = field(default=None, metadata=POSITIVE)
    seed: int = field(default=0, metadata=NON_NEGATIVE)
    n_init: int = field(default=10, metadata=POSITIVE)

    def validate(self) -> None:
        if self.method == "metadata" and self.key is None:
            raise FieldError("key", "the dataset array holding group ids (method: metadata)")
        if self.method != "metadata" and self.key is not None:
            raise FieldError("key", "no key unless method is metadata", self.key)


@dataclass(frozen=True)
class SubpopulationParams:
    grouping: GroupingParams


@register_kind("subpopulation")
class Subpopulation(TaskKind):
    """Rows: `accuracy` over all examples (with n and interval) and `subpop/<key>` for key in
    mean, median, variance (population variance, ddof 0), p05, p25, p75, p95 (linear
    interpolation) of the per-group accuracies (plexbench.metrics.subpopulation_summary), with
    n = number of examples. Groups without any evaluated example are left out of the summary
    (their count is in `info.empty_groups`). Curve: `subpopulation` {group_accuracy, group_size,
    group} over the non-empty groups, in group-id order."""

    Params = SubpopulationParams

    def validate(self, task: TaskSpec) -> None:
        g = task.params.grouping
        if g.method == "kmeans_per_class":
            fit = dataclasses.replace(task.dataset, split=g.fit_split)
            check_dataset_ref(fit, "dataset", split_path="params.grouping.fit_split")
    reads_data = True
    metrics = ("accuracy",) + tuple(f"subpop/{k}" for k in SUMMARY_KEYS)
    summary = "accuracy per subpopulation (declared grouping or metadata) and its percentiles"
    category = "prediction"
    headline = ("accuracy", "subpop/mean", "subpop/p05", "subpop/median", "subpop/variance")
    figures = ("subpopulation",)

    def datasets(self, task: TaskSpec) -> list[tuple[str, str]]:
        g = task.params.grouping
        extra = [(task.dataset.name, g.fit_split)] if g.method != "metadata" else []
        return list(dict.fromkeys(super().datasets(task) + extra))

    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        from plexbench import metrics as M

        split = inputs["eval"]
        groups = assign_groups(task, split, ctx)
        stats = split_stats(split)
        present, sizes = np.unique(groups, return_counts=True)
        accuracy = M.group_accuracies(stats, groups=groups)  # in np.unique order, like `present`
        summary = M.subpopulation_summary(accuracy)
        wanted = selected(task, self)
        rows = []
        if "accuracy" in wanted:
            rows += measure(task, split.ref, {"accuracy": M.accuracy}, stats)
        for key in SUMMARY_KEYS:
            if f"subpop/{key}" in wanted:
                rows.append(summary_row(split.ref.label, split.ref.split, f"subpop/{key}", summary[key], split.n))
        curves = {"subpopulation": jsonable({"group": present, "group_accuracy": accuracy, "group_size": sizes})}
        info = {"num_groups": int(len(present)), "empty_groups": _empty_groups(task, present)}
        return TaskResult(rows=rows, curves=curves, info=info)


def _empty_groups(task: TaskSpec, present: np.ndarray) -> int | None:
    g = task.params.grouping
    if g.method != "kmeans_per_class":
        return None
    classes = task.dataset.classes
    n_classes = len(classes) if classes is not None else dataset_num_classes(task.dataset.name)
    return None if n_classes is None else int(n_classes * g.clusters_per_class - len(present))


def assign_groups(task: TaskSpec, split: Split, ctx: EvalContext) -> np.ndarray:
    """Group id (N,) int64 of each example of `split` (see GroupingParams)."""
    g = task.params.grouping
    ref = split.ref
    if g.method == "metadata":
        groups = ctx.rows_of(ref.name, ref.split, g.key, split.ids)
        if groups is None:
            raise PlexbenchError(f"dataset {ref.name} ({ref.split}) has no '{g.key}' array for grouping")
        return np.asarray(groups, dtype=np.int64)
    from plexbench.tasks import groups as G

    limits = [x for x in (g.fit_limit, ctx.limit) if x is not None]
    fit = ctx.load_arrays(ref.name, g.fit_split, min(limits) if limits else None)
    num_classes = dataset_num_classes(ref.name) or int(fit["label"].max()) + 1
    centroids = G.fit_kmeans_per_class(fit["image"], fit["label"], num_classes=num_classes,
                                       clusters_per_class=g.clusters_per_class, pca_dims=g.pca_dims, seed=g.seed,
                                       n_init=g.n_init, classes=ref.classes)
    return centroids.assign(ctx.rows_of(ref.name, ref.split, "image", split.ids), split.labels)
