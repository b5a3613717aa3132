"""What every task kind shares: its declaration, its inputs and its result.

A kind declares its protocol parameters (`Params`, a frozen dataclass parsed from the task's
`params:`), the metric names it can report (`metrics`), the predictions it needs (`needs`) and a
thin `evaluate` that hands already-computed predictions to plexbench.metrics and returns rows.
Kinds never run a model and never read files except through `EvalContext`.

What reports need to know about a kind's rows is declared here, once, by the kind (reports never
guess from metric names):

- `category`: the reliability category of every row (spec §7.5: prediction / uncertainty /
  adaptation; new names are allowed); None means each metric's declared category
  (plexbench.metrics.vocabulary). `row_category` may refine it per task and metric;
- `score_exclusion`: why a row is reported but not part of the reliability score (1-shot probes,
  per-severity breakdowns of a shift average); a kind may also set `MetricRow.score_exclusion`;
- `headline`: the kind's own metric names (fnmatch patterns) shown in report tables, in order;
  `headline_columns` resolves them against a result's rows;
- `figures`: the figure kinds (plexbench.reports.plots registry) drawn from its curves.

The runner writes all of these into the results (plexbench.results_schema), so reports read
them from files.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from plexbench.tasks.spec import DatasetRef, FieldError, NoParams, TaskSpec


@dataclass(frozen=True)
class Need:
    """Predictions a task needs: `role` names them in `evaluate`'s inputs.

    `pre_logits` asks for the (E, N, D) embeddings too (Mahalanobis scorers). An `optional` need
    that the model cannot serve (prediction files without that split) is left out of the inputs
    instead of skipping the task; the kind then does without it.
    """

    role: str
    ref: DatasetRef
    pre_logits: bool = False
    optional: bool = False


@dataclass(frozen=True)
class Split:
    """One model's predictions on one dataset reference, after `limit` and the class filter.

    Shapes: `labels` int64 (N,); `log_probs` float (N, K) ensemble log-probabilities (spec §3:
    log-mean-exp over members); `logits` float (E, N, K) or None when unknown (prediction files
    may omit them); `embeddings` float (E, N, D) or None; `ids` int64 (N,), the example index in
    the split (dataset order).
    """

    ref: DatasetRef
    labels: np.ndarray
    log_probs: np.ndarray
    ids: np.ndarray
    logits: np.ndarray | None = None
    embeddings: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def probs(self) -> np.ndarray:
        """exp(log_probs), float64 (N, K)."""
        return np.exp(np.asarray(self.log_probs, dtype=np.float64))

    def take(self, index: np.ndarray) -> "Split":
        """Rows `index` (a boolean mask or integer indices over N)."""
        def rows(a, axis):
            return None if a is None else np.take(a, np.flatnonzero(index) if index.dtype == bool else index, axis)
        return Split(self.ref, rows(self.labels, 0), rows(self.log_probs, 0), rows(self.ids, 0),
                     rows(self.logits, 1), rows(self.embeddings, 1))


@dataclass(frozen=True)
class MetricRow:
    """One number of a result: `dataset` is the evaluated dataset's label (OOD rows: the in-distribution one)."""

    dataset: str
    split: str
    metric: str
    value: float
    n: int
    ci_low: float = math.nan
    ci_high: float = math.nan
    num_classes: int | None = None  # K behind the row when it is not the model's (a few-shot probe's classes)
    score_exclusion: str = ""  # non-empty: reported, but not part of a reliability score (and why)


@dataclass
class TaskResult:
    """What `evaluate` returns: rows, curves for plots (plain JSON data) and extra JSON facts.

    `dataset` / `split` head the result JSON (default: the task dataset's label and split)."""

    rows: list[MetricRow] = field(default_factory=list)
    curves: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    dataset: str | None = None
    split: str | None = None


@dataclass
class EvalContext:
    """What a kind may read besides predictions: dataset arrays (soft labels, metadata, images
    for groupings), memoized per (dataset, split, prefix) within a run."""

    data_dir: Path | None = None
    limit: int | None = None  # smoke mode (--limit): caps data a kind reads itself (e.g. a grouping's fit set)
    _arrays: dict = field(default_factory=dict)

    def load_arrays(self, name: str, split: str, n: int | None = None) -> dict[str, np.ndarray]:
        """plexbench.data.load.load_arrays of split role `split`, only its first `n` examples when
        given (ids 0..n-1 are the same examples as in the whole split)."""
        key = (name, split, n)
        if key not in self._arrays:
            from plexbench.data.load import load_arrays, split_range

            spec = split
            if n is not None:
                rng = split_range(name, split, self.data_dir)
                spec = split if n >= rng.size else rng.tfds_spec(0, n)
            self._arrays[key] = load_arrays(name, spec, self.data_dir)
        return self._arrays[key]

    def rows_of(self, name: str, split: str, key: str, ids: np.ndarray) -> np.ndarray | None:
        """Array `key` of the dataset at rows `ids` (reading only up to the largest id), or None
        when the dataset has no such array."""
        arrays = self.load_arrays(name, split, int(ids.max()) + 1 if len(ids) else 0)
        return None if key not in arrays else np.asarray(arrays[key])[ids]


class TaskKind(abc.ABC):
    """Base of every kind; subclasses are registered with plexbench.tasks.registry.register_kind."""

    name: str = ""
    Params: type = NoParams
    metrics: tuple[str, ...] = ()
    default_metrics: tuple[str, ...] | None = None  # reported when `metrics:` is left out (None: all)
    summary: str = ""
    reads_data: bool = False  # evaluate reads dataset arrays itself (soft labels, images), not only predictions
    category: str | None = None  # reliability category of every row; None: each metric's declared one
    headline: tuple[str, ...] = ()  # metric names / fnmatch patterns shown in report tables, in order
    figures: tuple[str, ...] = ()  # figure kinds (plexbench.reports.plots) drawn from this kind's curves

    def row_category(self, task: TaskSpec | None, metric: str) -> str:
        """The reliability category of a row (`task` is None when converting format-1 results).

        Default: the kind's `category`, else the metric's declared category; an undeclared metric
        is an error (declare it in plexbench.metrics.vocabulary)."""
        if self.category is not None:
            return self.category
        from plexbench.metrics.vocabulary import metric_info

        return metric_info(metric).category

    def score_exclusion(self, task: TaskSpec | None, metric: str, dataset: str) -> str:
        """Why a row of this kind stays out of the reliability score ('' = it is scored). Default: ''."""
        return ""

    def headline_columns(self, task: TaskSpec | None, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (metric, dataset) pairs a report table shows for one result, from its rows' `pairs`.

        Default: for each `headline` pattern in order, the matching pairs on the task's own
        datasets (not on members of a dataset family such as `x_corrupted/snow_3`); when nothing
        matches, the first pairs. At most `plexbench.results_schema.MAX_HEADLINE`."""
        import fnmatch

        from plexbench.results_schema import MAX_HEADLINE

        main = [p for p in dict.fromkeys(pairs) if "/" not in p[1]]
        chosen: list[tuple[str, str]] = []
        for pattern in self.headline:
            chosen += [p for p in main if fnmatch.fnmatchcase(p[0], pattern) and p not in chosen]
        return (chosen or main or list(dict.fromkeys(pairs)))[:MAX_HEADLINE]

    def validate(self, task: TaskSpec) -> None:
        """Checks across fields, raising spec.FieldError; the default has none."""

    def needs(self, task: TaskSpec) -> list[Need]:
        """Default: the model's predictions on the task's dataset."""
        return [Need("eval", task.dataset)]

    @abc.abstractmethod
    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        """The task's metrics and curves from the model's predictions on its needs."""

    def datasets(self, task: TaskSpec) -> list[tuple[str, str]]:
        """(dataset, split role) pairs the task reads: its needs, plus what `evaluate` loads itself."""
        return list(dict.fromkeys((n.ref.name, n.ref.split) for n in self.needs(task)))

    def num_classes(self, task: TaskSpec) -> int | None:
        """Classes a model needs for this task: len(classes) under a class filter, else the
        dataset's class count (None when plexbench.data does not know the dataset)."""
        if task.dataset.classes is not None:
            return len(task.dataset.classes)
        return dataset_num_classes(task.dataset.name)


def check_dataset_ref(ref: DatasetRef, path: str, split_path: str | None = None) -> None:
    """FieldError when `ref` names a dataset or split role that plexbench.data does not know."""
    from plexbench.data.registry import DATASETS

    if ref.name not in DATASETS:
        import difflib

        close = difflib.get_close_matches(ref.name, DATASETS.names(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `plexbench list datasets`)"
        raise FieldError(f"{path}.name", "a dataset known to plexbench.data" + hint, ref.name)
    roles = DATASETS.get(ref.name).splits
    if ref.split not in roles:
        raise FieldError(split_path or f"{path}.split", f"a split role of {ref.name}: " + ", ".join(roles), ref.split)


def dataset_num_classes(name: str) -> int | None:
    try:
        from plexbench.data.registry import get_dataset

        return int(get_dataset(name).num_classes)
    except Exception:  # noqa: BLE001 - an unknown dataset is reported elsewhere (dry run, loading)
        return None


def selected(task: TaskSpec, kind: TaskKind) -> tuple[str, ...]:
    """The metric names the task asks for (the kind's defaults when `metrics:` is left out)."""
    if task.metrics is not None:
        return task.metrics
    return kind.default_metrics if kind.default_metrics is not None else kind.metrics


def measure(task: TaskSpec, ref: DatasetRef, metric: str, fn: Callable[..., float],
            arrays: Sequence[np.ndarray], *, dataset: str | None = None) -> MetricRow:
    """fn(*arrays) as a row, with n = len(arrays[0]) and, when the task asks for bootstrap
    resamples, a 95% percentile interval from plexbench.metrics.bootstrap_ci (rows of all arrays
    resampled together, seed = task.seed)."""
    value = float(fn(*arrays))
    low = high = math.nan
    if task.bootstrap > 0:
        from plexbench.metrics import bootstrap_ci

        low, high = bootstrap_ci(fn, *arrays, num_samples=task.bootstrap, seed=task.seed)
    return MetricRow(dataset or ref.label, ref.split, metric, value, int(len(arrays[0])), float(low), float(high))


def summary_row(ref_label: str, split: str, metric: str, value: float, n: int,
                num_classes: int | None = None) -> MetricRow:
    """A row without interval (averages over datasets, group summaries)."""
    return MetricRow(ref_label, split, metric, float(value), int(n), num_classes=num_classes)


def jsonable(obj: Any) -> Any:
    """numpy arrays/scalars inside curves as lists/floats (NaN kept as float nan)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def even_subsample(values: np.ndarray, max_points: int) -> np.ndarray:
    """At most `max_points` entries of a 1-D array at evenly spaced indices, first and last kept.

    Curves in result JSON are for plotting; they need shape, not every point.
    """
    values = np.asarray(values)
    if values.shape[0] <= max_points:
        return values
    index = np.unique(np.linspace(0, values.shape[0] - 1, max_points).round().astype(np.int64))
    return values[index]
