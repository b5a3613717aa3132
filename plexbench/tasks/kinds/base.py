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

Kinds that ADAPT a model (the adapt-a-model contract). A kind whose `adapts(task)` returns True
(default False) trains the model itself: active learning fine-tunes it, a label-noise kind
trains on noisy labels. For such a (task, model) pair, and only for it, the runner sets
`ctx.model` to a `plexbench.training.TrainableModel`: the model's Flax module built from its
config (`apply_fn(num_classes)`), the pretrained parameters (`pretrained`, loaded once and shared
with inference), `with_zero_head(num_classes)` (the pretrained trunk with a fresh head whose
kernel and bias are zero), the preprocessing spec and the identity. The kind trains with
`plexbench.training` (`finetune`, `fit_probe`), never with its own loop. A model that cannot be
trained (prediction files; user callables without a plexbench config) is skipped with the reason
before anything is computed. Every kind also gets `ctx.state_path`, a scratch file beside its
result for resumable state, and `ctx.state_key` (the result's inputs fingerprint) to tell whose
state a file holds; the runner deletes the file once the result is written. Kinds that only
score ignore all three and stay as thin as before.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import dataclasses
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
    the split (dataset order). `stats`: the per-example statistics (plexbench.metrics.ExampleStats)
    when the caller already has them (`plexbench score` keeps only those: `log_probs` is None then,
    and `ids` too unless its file has them; the kinds it runs read neither); otherwise `split_stats`
    computes them from `log_probs` once per Split.
    `extras`: further per-member outputs of the model, {name: float (E, N)}, when it returned any
    (plexbench.inference.store.EXTRA_OUTPUTS: `gp_variance`, an SNGP head's predictive variance);
    empty for prediction files, whose format has none.
    """

    ref: DatasetRef
    labels: np.ndarray
    log_probs: np.ndarray | None
    ids: np.ndarray | None
    logits: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    stats: Any = field(default=None, compare=False, repr=False)
    extras: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

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
        stats = None if self.stats is None else self.stats.take(index)
        return Split(self.ref, rows(self.labels, 0), rows(self.log_probs, 0), rows(self.ids, 0),
                     rows(self.logits, 1), rows(self.embeddings, 1), stats,
                     {name: rows(value, 1) for name, value in self.extras.items()})


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
    # the metric on each bootstrap resample, float64 (B,), when the row has an interval: the runner
    # keeps them (results_schema) so the reliability score's interval can be computed from them
    replicates: np.ndarray | None = field(default=None, compare=False, repr=False)


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
    # The adapt-a-model contract (module docstring); set per (task, model) by the runner.
    model: Any = None  # plexbench.training.TrainableModel, only for kinds whose adapts(task) is True
    state_path: Path | None = None  # scratch file for resumable state (written atomically by the kind)
    state_key: str | None = None  # the result's inputs fingerprint: a state file holding another key is stale

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

    def declared_metric(self, selector: str) -> str:
        """A full metric name of the rows that `metrics:` selector `selector` produces, for looking up
        its declaration (plexbench.metrics.vocabulary). Default: the selector itself."""
        return selector

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

    def adapts(self, task: TaskSpec) -> bool:
        """Whether the task trains the model (module docstring: it then gets `ctx.model`)."""
        return False

    def cost(self, task: TaskSpec) -> dict | None:
        """Work beyond inference, for `plexbench run --dry-run` (None: inference only). Keys:
        `curves` (independent runs), `rounds` (trainings per run), and for gradient training
        `max_steps` and `batch_size` (per training); the dry run multiplies them by each model's
        FLOPs per example (x 3 for forward and backward)."""
        return None

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


def split_stats(split: Split, *, labels: bool = True, soft_labels: np.ndarray | None = None,
                want: Sequence[str] = ()):
    """The split's per-example statistics (plexbench.metrics.ExampleStats), computed once per Split:
    `split.stats` when given, else one pass over `split.log_probs` (cached on the Split).

    `labels=False`: without labels (OOD data, whose labels may lie outside the model's classes).
    `soft_labels` (N, K): statistics against soft labels (not cached). `want`: extra statistics
    (entropy, margin, ged, ...) to compute in the same pass; others are computed on first use.
    """
    from plexbench.metrics import ExampleStats
    from plexbench.metrics.stats import CORE

    names = tuple(CORE) + tuple(want)
    if split.stats is not None:
        return split.stats
    if soft_labels is not None:
        return ExampleStats.from_log_probs(split.log_probs, soft_labels=soft_labels, want=names)
    cache = split.__dict__.setdefault("_stats_cache", {})  # frozen dataclass: a plain attribute dict
    if labels not in cache:
        cache[labels] = ExampleStats.from_log_probs(split.log_probs, split.labels if labels else None, want=names)
    return cache[labels]


def measure(task: TaskSpec, ref: DatasetRef, functions, data, arrays: Sequence[np.ndarray] | None = None, *,
            dataset: str | None = None, n: int | None = None):
    """One row per (metric name, fn): value fn(data), and with `task.bootstrap` > 0 a 95% percentile
    interval from `task.bootstrap` resamples of `data` drawn with seed `task.seed`
    (plexbench.metrics.bootstrap_intervals: every metric of the call sees the same resamples; a
    resample gathers per-example statistics, O(N), and OOD data resamples in- and out-of-distribution
    rows separately). Inside `shared_bootstrap()` the intervals are computed later, once for all the
    calls on the same data (see there).

    `functions`: {metric name: fn}; `data`: an ExampleStats (the split's per-example statistics,
    `split_stats`) or a DetectionSet (OOD scores); `n`: the row count reported (default: the data's
    rows, in- plus out-of-distribution for OOD data). Returns the rows, in `functions` order.

    One metric on raw arrays: `measure(task, ref, "name", fn, arrays)` -> one row of fn(*arrays),
    the rows of all arrays resampled together (the same draws as above; O(size of the arrays) per
    resample), for a kind's own metric that the per-example statistics do not cover.
    """
    if isinstance(functions, str):
        fn = data
        rows = measure(task, ref, {functions: lambda rows: fn(*rows.arrays)}, ArrayRows(arrays), dataset=dataset,
                       n=n)
        return rows[0]
    values = {name: float(fn(data)) for name, fn in functions.items()}
    rows_n = n if n is not None else sum(k for k, _ in data.strata)
    rows = [MetricRow(dataset or ref.label, ref.split, name, value, int(rows_n)) for name, value in values.items()]
    if task.bootstrap > 0 and functions:
        session = _SESSION.get()
        if session is not None:
            session.defer(rows, functions, data, task.bootstrap, task.seed)
        else:
            from plexbench.metrics.bootstrap import bootstrap_distributions, percentile_interval

            draws = bootstrap_distributions(functions, data, num_samples=task.bootstrap, seed=task.seed)
            rows = [with_replicates(row, draws[row.metric], percentile_interval(draws[row.metric], what=row.metric))
                    for row in rows]
    return rows


def with_replicates(row: MetricRow, replicates: np.ndarray, interval: tuple[float, float]) -> MetricRow:
    """`row` with its bootstrap interval and the per-resample values it came from."""
    return dataclasses.replace(row, ci_low=float(interval[0]), ci_high=float(interval[1]),
                               replicates=np.asarray(replicates, dtype=np.float64))


class ArrayRows:
    """Arrays with the same first axis (N rows), resampled together: the data of a metric that
    `measure` computes on raw arrays."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays = tuple(np.asarray(a) for a in arrays)
        n = self.arrays[0].shape[0] if self.arrays and self.arrays[0].ndim else 0
        if n == 0 or any(a.ndim == 0 or a.shape[0] != n for a in self.arrays):
            from plexbench.errors import PlexbenchError

            raise PlexbenchError("measure: arrays must be non-empty with the same number of rows, got "
                                 + ", ".join(str(a.shape) for a in self.arrays))
        self.strata = ((n, 0),)

    def resample(self, draws) -> "ArrayRows":
        idx = draws[0] if isinstance(draws, tuple) else draws
        return ArrayRows([a[idx] for a in self.arrays])


class BootstrapSession:
    """Intervals deferred by `measure` calls made inside `shared_bootstrap()`: `resolve(rows)`
    computes them with one bootstrap per (data, resamples, seed), every metric of every call on the
    same data seeing the same resamples (what separate calls with the same seed would draw, so the
    numbers are the same; the draws and each resample's confidence order are made once)."""

    def __init__(self):
        self._pending: list[tuple[list[MetricRow], Mapping[str, Callable], Any, int, int]] = []
        self._done: dict[int, MetricRow] = {}

    def defer(self, rows, functions, data, num_samples: int, seed: int) -> None:
        self._pending.append((rows, functions, data, num_samples, seed))

    def resolve(self, rows: Sequence[MetricRow]) -> list[MetricRow]:
        """`rows` with the intervals of the deferred ones filled in (computed now if pending)."""
        from plexbench.metrics import bootstrap_intervals

        groups: dict[tuple, list] = {}
        for entry in self._pending:
            groups.setdefault((id(entry[2]), entry[3], entry[4]), []).append(entry)
        self._pending = []
        for entries in groups.values():
            functions = {(i, name): fn for i, entry in enumerate(entries) for name, fn in entry[1].items()}
            _, _, data, num_samples, seed = entries[0]
            intervals = bootstrap_intervals(functions, data, num_samples=num_samples, seed=seed)
            for i, (deferred, *_) in enumerate(entries):
                for row in deferred:
                    low, high = intervals[(i, row.metric)]
                    self._done[id(row)] = dataclasses.replace(row, ci_low=float(low), ci_high=float(high))
        return [self._done.get(id(row), row) for row in rows]


_SESSION: contextvars.ContextVar[BootstrapSession | None] = contextvars.ContextVar("bootstrap_session", default=None)


@contextlib.contextmanager
def shared_bootstrap():
    """Defer the intervals of `measure` inside the block to one bootstrap per data (BootstrapSession);
    call `session.resolve(rows)` for the rows with intervals. Used by `plexbench score`, whose kinds
    measure the same split."""
    session = BootstrapSession()
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)


def summary_row(ref_label: str, split: str, metric: str, value: float, n: int,
                num_classes: int | None = None, replicates: np.ndarray | None = None) -> MetricRow:
    """A row computed from other rows (averages over datasets, group summaries). With `replicates`
    (the summary computed on each bootstrap resample of its parts) it gets their percentile
    interval; without, no interval."""
    row = MetricRow(ref_label, split, metric, float(value), int(n), num_classes=num_classes)
    if replicates is None:
        return row
    from plexbench.metrics.bootstrap import percentile_interval

    return with_replicates(row, replicates, percentile_interval(replicates, what=metric))


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
