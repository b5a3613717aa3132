"""covariate_shift: a model over a corrupted-dataset family, corruption x severity (spec §5).

The family is expanded here, in Python, from the parameter lists: corruption `c` at severity `s`
is the dataset `<family>/<c>_<s>` of plexbench.data (e.g. `fashion_mnist_corrupted/gaussian_noise_3`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from plexbench.tasks.kinds.base import (EvalContext, Need, Split, TaskKind, TaskResult, measure, selected,
                                        split_stats, summary_row)
from plexbench.tasks.registry import register_kind
from plexbench.tasks.spec import POSITIVE, DatasetRef, FieldError, SplitRole, TaskSpec, check


def _severity(v: int) -> bool:
    return 1 <= v <= 5


def _error_rate(v: float) -> bool:
    return 0.0 < v <= 1.0


@dataclass(frozen=True)
class CovariateShiftParams:
    """- `family`: the corrupted dataset family, e.g. `fashion_mnist_corrupted`, `cifar10_corrupted`,
      `imagenet2012_corrupted`.
    - `corruptions`, `severities`: the grid (severities 1-5).
    - `split`: the split role of every corrupted dataset.
    - `reference_errors`: corruption -> reference error in (0, 1] (e.g. AlexNet's on ImageNet-C);
      when given, its keys must be exactly `corruptions` and the task reports `mce`.
    - `num_bins`: ECE bins (spec §5: 15).
    """

    family: str
    corruptions: tuple[str, ...]
    severities: tuple[int, ...] = field(default=(1, 2, 3, 4, 5), metadata=check("severities 1-5", _severity))
    split: SplitRole = "test"
    reference_errors: dict[str, float] | None = None
    num_bins: int = field(default=15, metadata=POSITIVE)


def shifted_name(family: str, corruption: str, severity: int) -> str:
    """The plexbench.data name of a family member, e.g. `cifar10_corrupted/elastic_2` for the
    canonical corruption `elastic_transform` (the data registry knows each family's spelling)."""
    from plexbench.data.registry import FAMILIES, get_dataset

    for name in FAMILIES.get(family, ()):
        info = get_dataset(name)
        if info.corruption == corruption and info.severity == severity:
            return name
    return f"{family}/{corruption}_{severity}"


@register_kind("covariate_shift")
class CovariateShift(TaskKind):
    """Rows, for each metric m of accuracy, ece, nll, brier:
    - dataset `<family>/<c>_<s>`, metric m: on that corrupted split (with n and interval);
    - dataset `<family>`, metric m: mean over all (c, s) cells (unweighted; n = examples summed);
    - dataset `<family>`, metric `severity_<s>/m`: mean over corruptions at severity s;
    - dataset `<family>`, metric `<c>/m`: mean over severities of corruption c;
    - dataset `<family>`, metric `mce` (with `reference_errors`): mean over corruptions of
      (1 - mean accuracy over severities) / reference_error[c] (spec §5), a ratio (1.0 = the
      reference model); also `<c>/ce` per corruption in the result's curves, not as rows.
    Curve: `shift` {corruption: {severity: {metric: value}}}. The task's `dataset` is the clean
    reference (it decides which models apply, by class count)."""

    Params = CovariateShiftParams
    metrics = ("accuracy", "ece", "nll", "brier", "mce")
    summary = "accuracy, ECE, NLL, Brier per corruption x severity and averaged; mCE vs reference errors"
    headline = ("accuracy", "nll", "ece", "brier", "mce", "severity_5/accuracy")
    figures = ("shift",)

    def score_exclusion(self, task: TaskSpec | None, metric: str, dataset: str) -> str:
        """The family average stands for the family in a reliability score (spec §5: ImageNet-C is
        scored by its average over corruptions and severities): single cells `<family>/<c>_<s>` and
        the breakdowns `severity_<s>/m`, `<c>/m` of the average are reported but not scored (75
        cells would otherwise outweigh every other task)."""
        if "/" in dataset:
            return "one corruption at one severity; the family average is scored instead"
        if "/" in metric:
            return "a breakdown of the family average (per severity or corruption); the average is scored instead"
        return ""

    def validate(self, task: TaskSpec) -> None:
        p = task.params
        for name, values in (("corruptions", p.corruptions), ("severities", p.severities)):
            if not values or len(set(values)) != len(values):
                raise FieldError(f"params.{name}", "a non-empty list of distinct values", list(values))
        _check_family(p)
        ref = p.reference_errors
        if ref is not None:
            if set(ref) != set(p.corruptions):
                raise FieldError("params.reference_errors", "exactly one error per corruption in params.corruptions",
                                 sorted(set(ref) ^ set(p.corruptions)))
            for c, e in ref.items():
                if not _error_rate(e):
                    raise FieldError(f"params.reference_errors.{c}", "an error rate in (0, 1]", e)
        if task.metrics is not None and "mce" in task.metrics and ref is None:
            raise FieldError("metrics", "mce only with params.reference_errors", list(task.metrics))

    def cells(self, task: TaskSpec) -> list[tuple[str, int, DatasetRef]]:
        p = task.params
        return [(c, s, DatasetRef(shifted_name(p.family, c, s), p.split, task.dataset.classes,
                                  task.dataset.preprocess, task.dataset.limit))
                for c in p.corruptions for s in p.severities]

    def needs(self, task: TaskSpec) -> list[Need]:
        return [Need(f"shift:{ref.name}", ref) for _, _, ref in self.cells(task)]

    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        from plexbench import metrics as M

        p = task.params
        wanted = [m for m in selected(task, self) if m != "mce"]
        fns = {"accuracy": M.accuracy, "ece": functools.partial(M.ece, num_bins=p.num_bins), "nll": M.nll,
               "brier": M.brier}
        with_mce = p.reference_errors is not None and "mce" in selected(task, self)
        rows, grid, sizes, draws = [], {}, {}, {}
        for c, s, ref in self.cells(task):
            split = inputs[f"shift:{ref.name}"]
            sizes[(c, s)] = split.n
            cell = grid.setdefault(c, {}).setdefault(s, {})
            stats = split_stats(split)
            for row in measure(task, ref, {m: fns[m] for m in wanted}, stats):
                rows.append(row)
                cell[row.metric] = row.value
                draws[(c, s, row.metric)] = row.replicates
            if with_mce and "accuracy" not in wanted:
                cell["accuracy"] = float(M.accuracy(stats))
        rows += _averages(task.params, wanted, grid, sizes, draws)
        curves = {"shift": {c: {str(s): v for s, v in by_s.items()} for c, by_s in grid.items()}}
        info = {}
        if with_mce:
            ce = corruption_errors(grid, p.reference_errors)
            info["ce"] = ce
            total = int(sum(sizes.values()))
            rows.append(summary_row(p.family, p.split, "mce", float(np.mean(list(ce.values()))), total))
        return TaskResult(rows=rows, curves=curves, info=info, dataset=p.family, split=p.split)


def _check_family(p: CovariateShiftParams) -> None:
    from plexbench.data.registry import DATASETS, FAMILIES

    if p.family not in FAMILIES:
        raise FieldError("params.family", "a corrupted dataset family: " + ", ".join(sorted(FAMILIES)), p.family)
    members = [DATASETS.get(n) for n in FAMILIES[p.family]]
    known = sorted({m.corruption for m in members}, key=[m.corruption for m in members].index)
    for i, c in enumerate(p.corruptions):
        if c not in known:
            raise FieldError(f"params.corruptions[{i}]", f"a corruption of {p.family}: " + ", ".join(known), c)
    if p.split not in members[0].splits:
        raise FieldError("params.split", f"a split role of {p.family}: " + ", ".join(members[0].splits), p.split)


def _averages(p: CovariateShiftParams, wanted, grid, sizes, draws=None) -> list:
    """Unweighted means over the grid: overall, per severity, per corruption (see the kind's docstring).

    With bootstrap resamples of every cell (`draws[(c, s, metric)]`, (B,)), a mean gets the mean of
    its cells' resamples and their percentile interval: the cells of a family are the same test
    images corrupted, and the same seed and size give every cell the same resample draws, so this is
    the bootstrap of the average itself."""
    draws = draws or {}

    def mean_row(metric: str, name: str, keys: list[tuple[str, int]]) -> object:
        values = [grid[c][s][metric] for c, s in keys]
        parts = [draws.get((c, s, metric)) for c, s in keys]
        replicates = np.mean(parts, axis=0) if parts and all(d is not None for d in parts) \
            and len({d.shape for d in parts}) == 1 else None
        return summary_row(p.family, p.split, name, np.mean(values), sum(sizes[k] for k in keys),
                           replicates=replicates)

    rows = []
    every = [(c, s) for c in p.corruptions for s in p.severities]
    for m in wanted:
        rows.append(mean_row(m, m, every))
        for s in p.severities:
            rows.append(mean_row(m, f"severity_{s}/{m}", [(c, s) for c in p.corruptions]))
        for c in p.corruptions:
            rows.append(mean_row(m, f"{c}/{m}", [(c, s) for s in p.severities]))
    return rows


def corruption_errors(grid: dict, reference_errors: Mapping[str, float]) -> dict[str, float]:
    """Corruption error CE_c = (1 - mean_s accuracy[c][s]) / reference_error[c] (spec §5).

    mCE is the mean of CE_c over corruptions. Example: accuracies 0.9 and 0.7 at two severities
    and a reference error 0.8 give CE = (1 - 0.8) / 0.8 = 0.25.
    """
    out = {}
    for c, ref_err in reference_errors.items():
        accuracies = [v["accuracy"] for v in grid[c].values()]
        out[c] = (1.0 - float(np.mean(accuracies))) / ref_err if accuracies else math.nan
    return out
