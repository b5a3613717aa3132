"""Run a suite over models and write the results directory (format: plexbench.results_schema).

Per model, in the suite's task order:

1. which tasks apply: the task's `models:` filter, and the model's class count must equal the
   task's (`TaskKind.num_classes`: the dataset's K, or len(classes) under a class filter);
2. reuse: a finished `tasks/<task>/<model>.json` whose `inputs_sha256` equals the current one
   (task spec and version, model identity, data fingerprints, --limit, dtype, seed, plexbench
   version) is kept as it is, without any inference;
3. inference, planned over all the model's tasks: each (dataset, split, preprocessing) is inferred
   once, over the largest example prefix any task needs, with pre-logits if any task needs them,
   through the prediction store (so a second run does no inference at all);
4. the kind's `evaluate` on those predictions; the task JSON is written atomically at once, so an
   interrupted run keeps every finished (task, model) and resumes after it. A kind that adapts
   the model (`TaskKind.adapts`) also gets the model's `TrainableModel` as `ctx.model` (models
   that cannot be trained are skipped, with the reason); every kind gets a scratch file
   `ctx.state_path` (`tasks/<task>/.<model>.state.json`) for resumable state within a result,
   deleted once the result is written.

`metrics_long.csv` (every task JSON of the suite's tasks in the directory, earlier models and
earlier runs' tasks included) is rewritten after each model and at the end, also when the run stops
on an error; `run.json` at the end. Both are written holding a lock on the directory, and
run.json is merged with the one on disk at that moment (models, tasks and datasets of every run into
the directory are kept; timings, options and the computed/reused/skipped lists are this run's), so
two runs into one directory, even at the same time, lose nothing.

The results directory is checked to be writable before any work; temporary files that an
interrupted earlier run left in it are removed (plexbench.fileio.remove_stale_temp_files).

Smoke mode `limit=N`: every split is cut to its first N examples, and so is every subset a
protocol reads (the Mahalanobis fit, a grouping's fit set). A task whose protocol cannot run on N
examples (e.g. 25-shot probes with fewer than 25 examples of a class) is skipped with its reason,
and the other tasks are written.

Output: one overall progress display over the (task, model) pairs with the stage's ETA
(plexbench.progress.overall), and at the end one summary of the skipped pairs (`skip_summary`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from plexbench import __version__, fileio, paths, progress
from plexbench import results_schema as RS
from plexbench.errors import PlexbenchError, shown
from plexbench.tasks import registry as R
from plexbench.tasks.kinds.base import EvalContext, Need, Split
from plexbench.tasks.sources import (FileModel, InferenceModel, ModelSource, Request, config_modality,
                                     modality_mismatch, split_from_arrays)
from plexbench.tasks.spec import SuiteSpec, TaskSpec


@dataclass
class RunOptions:
    """Everything `plexbench run` takes (see plexbench.commands.run for the flags)."""

    suite: str
    out_dir: Path
    models: tuple[str, ...] = ()
    checkpoints: Mapping[str, str] = field(default_factory=dict)
    callables: tuple[str, ...] = ()
    predictions: Mapping[str, str] = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None
    data_dir: Path | None = None
    store_dir: Path | None = None
    tasks_dir: Path | None = None
    batch_size: int = 256
    limit: int | None = None
    dtype: str = "float32"
    seed: int = 0
    skip_missing: bool = False
    verbose: bool = True


@dataclass
class RunReport:
    out_dir: Path
    computed: list[tuple[str, str]] = field(default_factory=list)  # (task, model)
    reused: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- models

def make_sources(options: RunOptions) -> list[ModelSource]:
    """Model sources from --models (+ --checkpoint), --model (callables) and --predictions."""
    from plexbench.inference import handle_from_callable, handle_from_registry

    unknown = sorted(set(options.checkpoints) - set(options.models))
    if unknown:
        raise PlexbenchError(f"--checkpoint given for {', '.join(unknown)}, which is not in --models")
    sources: list[ModelSource] = []
    for name in options.models:
        from plexbench.models.registry import get_model

        entry = get_model(name)
        classes = getattr(entry, "classes", None)
        if classes is not None and tuple(classes) != tuple(range(len(classes))):
            # Tasks compare logit j with dataset label j (class filters never renumber labels).
            raise PlexbenchError(f"model '{name}' predicts dataset labels {list(classes)} in logit order; "
                                 "plexbench tasks need logit j to be label j (classes 0..K-1)")
        handle = handle_from_registry(name, options.checkpoints.get(name))
        sources.append(InferenceModel(handle, "registry", config=entry.config))
    sources += [InferenceModel(handle_from_callable(spec), "callable") for spec in options.callables]
    sources += [FileModel(name, where) for name, where in options.predictions.items()]
    return sources


def _check_unique(sources: Sequence[ModelSource]) -> None:
    names = [s.name for s in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PlexbenchError(f"model name(s) given twice: {', '.join(twice)}")
    if not names:
        raise PlexbenchError("no models: pass --models NAMES, --model MODULE:FUNCTION or --predictions NAME=DIR")


# --------------------------------------------------------------------------- planning

def need_limit(need: Need, options: RunOptions) -> int | None:
    """Examples a need reads from the start of its split: its protocol limit and --limit, whichever is smaller."""
    given = [x for x in (need.ref.limit, options.limit) if x is not None]
    return min(given) if given else None


def plan_requests(tasks: Sequence[TaskSpec], options: RunOptions) -> dict[tuple, Request]:
    """One Request per (dataset, split, preprocess prefix): the largest prefix and pre-logits if any need wants them."""
    plan: dict[tuple, Request] = {}
    for task in tasks:
        for need in R.get_kind(task.kind).needs(task):
            n = need_limit(need, options)
            req = Request(need.ref.name, need.ref.split, need.ref.preprocess, n, need.pre_logits)
            old = plan.get(req.key)
            if old is not None:
                n = None if old.n is None or n is None else max(old.n, n)
                req = dataclasses.replace(req, n=n, pre_logits=old.pre_logits or need.pre_logits)
            plan[req.key] = req
    return plan


class ModelPredictions:
    """A model's predictions for a run, computed on first use and kept for the model's tasks."""

    def __init__(self, model: ModelSource, plan: dict[tuple, Request], options: RunOptions, timings: list):
        self.model, self.plan, self.options, self.timings = model, plan, options, timings
        self._cache: dict[tuple, object] = {}

    def request_for(self, need: Need) -> Request:
        return self.plan[(need.ref.name, need.ref.split, need.ref.preprocess)]

    def split(self, need: Need) -> Split:
        request = self.request_for(need)
        if request.key not in self._cache:
            started = time.perf_counter()
            self._cache[request.key] = self.model.predictions(request, options=self.options)
            self.timings.append({"model": self.model.name, "dataset": request.dataset, "split": request.split,
                                 "preprocess_prefix": request.prefix, "n": request.n,
                                 "seconds": round(time.perf_counter() - started, 3)})
        return split_from_arrays(need.ref, self._cache[request.key], need_limit(need, self.options))

    def release(self, keys) -> None:
        """Drop cached predictions no later task needs (bounds memory on large suites)."""
        for key in keys:
            self._cache.pop(key, None)

    def num_classes(self, task: TaskSpec) -> int:
        """K of the model, running its first need of `task` when K is not known beforehand."""
        k = self.model.num_classes()
        if k is None:
            first = R.get_kind(task.kind).needs(task)[0]
            k = int(self.split(first).log_probs.shape[1])
        return k


# --------------------------------------------------------------------------- data

def data_fingerprint(name: str, split: str, data_dir) -> str:
    """plexbench.data.load.dataset_fingerprint of a prepared split, or 'unprepared'."""
    from plexbench.data import registry as D
    from plexbench.data.load import dataset_fingerprint

    if not D.is_available(name, data_dir):
        return "unprepared"
    return dataset_fingerprint(name, split, data_dir)


class DataFingerprints:
    """`data_fingerprint` of each (dataset, split), computed once per run.

    A fingerprint hashes the decoded split (seconds for a corrupted family of 75 datasets), and
    every (task, model) pair and run.json need the fingerprints of the task's datasets: a run
    computes each one once, after the missing embedded datasets are prepared (data does not change
    during a run). `calls` counts the fingerprints computed.
    """

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self._known: dict[tuple[str, str], str] = {}
        self.calls = 0

    def __call__(self, name: str, split: str) -> str:
        key = (name, split)
        if key not in self._known:
            self._known[key] = data_fingerprint(name, split, self.data_dir)
            self.calls += 1
        return self._known[key]


def missing_datasets(tasks: Sequence[TaskSpec], data_dir) -> dict[str, list[str]]:
    """Dataset name -> tasks needing it, for datasets not prepared in `data_dir`."""
    from plexbench.data import registry as D

    out: dict[str, list[str]] = {}
    for task in tasks:
        for name, _ in R.get_kind(task.kind).datasets(task):
            if not D.is_available(name, data_dir):
                out.setdefault(name, []).append(task.name)
    return out


def prepare_embedded(names: Sequence[str], data_dir) -> list[str]:
    """Prepare the embedded datasets among `names` (offline); returns the names still missing."""
    from plexbench.data import registry as D
    from plexbench.data.prepare import prepare

    embedded = [n for n in names if D.get_dataset(n).embedded]
    for name in progress.track(embedded, len(embedded), "prepare embedded datasets", unit="ds"):
        prepare(name, paths.data_dir(data_dir))
    return [n for n in names if n not in embedded]


# --------------------------------------------------------------------------- running

def run(options: RunOptions, extra_models: Sequence[ModelSource] = (), context: EvalContext | None = None
        ) -> RunReport:
    """Run the suite over every model; see the module docstring. Returns what was done.

    `extra_models`: sources built by the caller (e.g. a ModelHandle wrapped in InferenceModel);
    `context`: the EvalContext kinds read dataset arrays through (default: one over options.data_dir).
    """
    started = time.perf_counter()
    suite, tasks = load_suite_tasks(options)
    all_tasks = R.load_suite(options.suite, options.tasks_dir)[1]  # metrics_long.csv lists them all
    out = fileio.check_output_dir(options.out_dir, "results directory (--out)")
    sources = make_sources(options) + list(extra_models)
    _check_unique(sources)
    paths.store_dir(options.store_dir)  # a file, or under one: an error now (a read-only store is fine to read)
    fileio.remove_stale_temp_files(out)
    report = RunReport(out)
    missing = _ensure_data(tasks, sources, options)
    fingerprints = DataFingerprints(options.data_dir)
    previous = _read_json(out / "run.json")
    ctx = context or EvalContext(data_dir=options.data_dir, limit=options.limit)
    inference_timings: list[dict] = []
    task_timings: list[dict] = []
    models_info: dict[str, dict] = {}
    display = progress.overall(len(sources) * len(tasks), "run", unit="result") if options.verbose \
        else contextlib.nullcontext()
    try:
        with display as shown:
            for model in sources:
                candidates = [t for t in tasks if _skip_reason(t, model, R.get_kind(t.kind), missing) is None]
                preds = ModelPredictions(model, plan_requests(candidates, options), options, inference_timings)
                last_use = _last_use(tasks, preds)
                for i, task in enumerate(tasks):
                    done = len(report.computed)
                    _run_one(task, model, preds, options, ctx, missing, report, task_timings, fingerprints)
                    if shown is not None and len(report.computed) > done:
                        shown.advance()
                    elif shown is not None:
                        shown.drop()  # reused or skipped: no work, so not in the ETA
                    preds.release([key for key, last in last_use.items() if last == i])
                models_info[model.name] = _model_info(model, previous, options)
                _write_long(out, all_tasks)
        report.seconds = time.perf_counter() - started
        _write_run_json(out, suite, tasks, all_tasks, models_info, options, report, inference_timings,
                        task_timings, fingerprints)
    finally:
        _write_long(out, all_tasks)  # also after an error: every finished result is listed
    return report


def _last_use(tasks: Sequence[TaskSpec], preds: ModelPredictions) -> dict[tuple, int]:
    """Request key -> index of the last task (suite order) that reads it."""
    out: dict[tuple, int] = {}
    for i, task in enumerate(tasks):
        for need in R.get_kind(task.kind).needs(task):
            key = (need.ref.name, need.ref.split, need.ref.preprocess)
            if key in preds.plan:
                out[key] = i
    return out


def load_suite_tasks(options: RunOptions) -> tuple[SuiteSpec, list[TaskSpec]]:
    suite, tasks = R.load_suite(options.suite, options.tasks_dir)
    if options.tasks:
        names = [t.name for t in tasks]
        unknown = [t for t in options.tasks if t not in names]
        if unknown:
            raise PlexbenchError(f"--tasks: {', '.join(unknown)} not in suite {suite.name} "
                                 f"(it has: {', '.join(names)})")
        tasks = [t for t in tasks if t.name in options.tasks]
    return suite, tasks


def _ensure_data(tasks, sources, options) -> dict[str, list[str]]:
    """Prepare missing embedded datasets; missing others raise, or are returned when skip_missing.

    Models given by prediction files need the data only for kinds that read it themselves
    (`TaskKind.reads_data`: soft labels, images for groupings)."""
    if not any(isinstance(s, InferenceModel) for s in sources):
        tasks = [t for t in tasks if R.get_kind(t.kind).reads_data]
    missing = missing_datasets(tasks, options.data_dir)
    if not missing:
        return {}
    left = prepare_embedded(sorted(missing), options.data_dir)
    missing = {name: missing[name] for name in left}
    if missing and not options.skip_missing:
        raise PlexbenchError(f"{len(missing)} dataset(s) not prepared in {paths.data_dir(options.data_dir)}: "
                             f"{', '.join(sorted(missing)[:6])}{' ...' if len(missing) > 6 else ''}; "
                             f"see `plexbench run --suite {options.suite} --dry-run` for how to prepare them, "
                             "or pass --skip-missing to run the other tasks")
    return missing


def _run_one(task, model, preds: ModelPredictions, options, ctx, missing, report: RunReport, timings,
             fingerprints: DataFingerprints | None = None) -> None:
    """Reuse, skip or compute one (task, model) result; a computed one is written at once.

    With --limit, a task whose protocol cannot run on that many examples (a PlexbenchError from
    its inputs or its kind) is skipped with the error as its reason; without a limit the error
    stops the run (after metrics_long.csv is written, see `run`)."""
    kind = R.get_kind(task.kind)
    path = RS.task_result_path(options.out_dir, task.name, model.name)
    skip = _skip_reason(task, model, kind, missing)
    if skip is None:
        inputs_sha = inputs_fingerprint(task, model, options, fingerprints)
        old = RS.read_task_result(path)
        if old is not None and old.get("inputs_sha256") == inputs_sha:
            report.reused.append((task.name, model.name))
            timings.append({"task": task.name, "model": model.name, "seconds": 0.0, "reused": True})
            return
        k = preds.num_classes(task)
        skip = _class_mismatch(task, kind, k)
    if skip is not None:
        report.skipped.append({"task": task.name, "model": model.name, "reason": skip})
        return
    started = time.perf_counter()
    if options.verbose:
        progress.doing(f"{task.name} / {model.name}")
    state = state_path(path)
    adapted = dataclasses.replace(ctx, model=model.trainable() if kind.adapts(task) else None, state_path=state,
                                  state_key=inputs_sha)
    try:
        inputs = {need.role: preds.split(need) for need in kind.needs(task)
                  if not (need.optional and model.missing(preds.request_for(need)))}
        result = kind.evaluate(task, inputs, adapted)
    except PlexbenchError as e:
        if options.limit is None:
            raise
        report.skipped.append({"task": task.name, "model": model.name,
                               "reason": f"cannot run at --limit {options.limit}: {e}"})
        return
    seconds = time.perf_counter() - started
    RS.write_task_result(path, _task_doc(task, kind, model, result, k, inputs_sha, options, seconds), result.rows)
    state.unlink(missing_ok=True)
    report.computed.append((task.name, model.name))
    timings.append({"task": task.name, "model": model.name, "seconds": round(seconds, 3), "reused": False})


def state_path(result_path: Path) -> Path:
    """The scratch state file of a (task, model) result: `.<model>.state.json` beside its JSON."""
    return result_path.with_name(f".{result_path.stem}.state.json")


def _class_mismatch(task, kind, k: int) -> str | None:
    """Why a model with k classes does not fit the task, or None."""
    need_k = kind.num_classes(task)
    if need_k is not None and k != need_k:
        return f"model has {k} classes, the task {need_k}"
    if task.models is not None and task.models.num_classes is not None and task.models.num_classes != k:
        return f"task is for models with {task.models.num_classes} classes, this one has {k}"
    return None


def fit_reason(task: TaskSpec, name: str, k: int | None, reads: str | None = None) -> str | None:
    """Why a model called `name` with `k` classes (None: not known yet) reading `reads` ("image" /
    "text" / None = unknown) does not fit `task`, or None. First a dataset of the other modality
    (`modality_mismatch`: it says more than a class count that happens to differ, a text model never
    runs an image task whatever its K), then the task's `models:` filter, then the kind's class count
    (`TaskKind.num_classes`). `run` and `--dry-run` decide with this one function."""
    kind = R.get_kind(task.kind)
    for need in kind.needs(task):
        why = modality_mismatch(name, reads, need.ref.name)
        if why and not need.optional:
            return why
    if task.models is not None and task.models.names is not None and name not in task.models.names:
        return f"task is for models {', '.join(task.models.names)}"
    if task.models is not None and k is not None and not task.models.accepts(name, k):
        return f"task is for models with {task.models.describe()}; this one has {k} classes"
    need_k = kind.num_classes(task)
    if k is not None and need_k is not None and k != need_k:
        return f"model has {k} classes, the task {need_k}"
    return None


def _skip_reason(task, model: ModelSource, kind, missing) -> str | None:
    """Why `task` does not run for `model` (decided without inference), or None."""
    fit = fit_reason(task, model.name, model.num_classes(), model.input_modality())
    if fit is not None:
        return fit
    if kind.adapts(task) and model.trainable() is None:
        return f"the task trains the model, and {model.untrainable_reason()}"
    absent = sorted({name for name, _ in kind.datasets(task) if name in missing})
    if absent and (isinstance(model, InferenceModel) or kind.reads_data):
        return f"dataset(s) not prepared: {', '.join(absent)}"
    for need in kind.needs(task):
        why = model.missing(Request(need.ref.name, need.ref.split, need.ref.preprocess, None))
        if why and not need.optional:
            return why
    return None


def inputs_fingerprint(task: TaskSpec, model: ModelSource, options: RunOptions,
                       fingerprints: DataFingerprints | None = None) -> str:
    """sha256 of everything a (task, model) result depends on (module docstring, step 2).

    `fingerprints`: the run's DataFingerprints (each dataset hashed once per run); default: a fresh one.
    """
    kind = R.get_kind(task.kind)
    fingerprints = fingerprints or DataFingerprints(options.data_dir)
    data = {f"{name}:{split}": fingerprints(name, split) for name, split in kind.datasets(task)}
    return fileio.sha256_json({"task": task.to_dict(), "model": model.identity(), "data": data,
                               "limit": options.limit, "dtype": options.dtype, "seed": options.seed,
                               "plexbench": __version__})


def _task_doc(task, kind, model, result, k, inputs_sha, options, seconds) -> dict:
    return RS.task_document(task=task, kind=kind, model=model.name, result=result, num_classes=k, extra={
        "bootstrap": task.bootstrap, "limit": options.limit, "inputs_sha256": inputs_sha,
        "seconds": round(seconds, 3)})


def _model_info(model: ModelSource, previous: dict, options) -> dict:
    """run.json facts of a model (InferenceModel costs are cached in the store, see InferenceModel.cost;
    the previous run.json's numbers for the same identity are the fallback)."""
    if isinstance(model, InferenceModel):
        old = (previous.get("models") or {}).get(model.name) or {}
        known = old if old.get("identity") == model.identity() else None
        return model.info(options.store_dir, known)
    return model.info()


@contextlib.contextmanager
def results_lock(out: Path):
    """Exclusive lock on the results directory itself (flock on its file descriptor, so no lock
    file is left in it) while run.json / metrics_long.csv are rewritten."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_long(out: Path, all_tasks: Sequence[TaskSpec]) -> None:
    """metrics_long.csv from every task JSON of the suite's tasks in `out` (suite order, then model
    name): all of the suite's tasks, not only this run's --tasks, so a run of some tasks keeps the
    rows an earlier run wrote for others."""
    with results_lock(out):
        rows = []
        for task in all_tasks:
            for path in sorted((out / "tasks" / task.name).glob("*.json")):
                doc = RS.read_task_result(path)
                if doc is not None:
                    rows += RS.long_rows(doc)
        RS.write_long_csv(out / "metrics_long.csv", rows)


def _write_run_json(out, suite, tasks, all_tasks, models_info, options, report, inference, task_timings,
                    fingerprints: DataFingerprints):
    """run.json, merged under the lock with the one on disk now (module docstring)."""
    with results_lock(out):
        current = _read_json(out / "run.json")
        fileio.write_json(out / "run.json", _run_doc(current, suite, tasks, all_tasks, models_info, options, report,
                                                     inference, task_timings, fingerprints))


def _run_doc(current, suite, tasks, all_tasks, models_info, options, report, inference, task_timings,
             fingerprints: DataFingerprints) -> dict:
    from plexbench.provenance import provenance

    same_suite = (current.get("suite") or {}).get("name") == suite.name
    models = dict(current.get("models") or {}) if same_suite else {}
    models.update(models_info)
    earlier_tasks = dict(current.get("tasks") or {}) if same_suite else {}
    datasets = dict(current.get("datasets") or {}) if same_suite else {}
    for task in tasks:
        for name, split in R.get_kind(task.kind).datasets(task):
            datasets[f"{name}:{split}"] = fingerprints(name, split)
    task_docs = {**earlier_tasks, **{t.name: {"kind": t.kind, "version": t.version, "sha256": fileio.sha256_file(t.path),
                                              "spec": t.to_dict()} for t in tasks}}
    task_names = [t.name for t in all_tasks if t.name in task_docs]  # suite order
    doc = {
        "provenance": provenance(),
        "suite": {"name": suite.name, "version": suite.version, "path": str(suite.path),
                  "sha256": fileio.sha256_file(suite.path), "tasks": task_names},
        "tasks": {n: task_docs[n] for n in task_names},
        "models": models,
        "datasets": datasets,
        "seeds": {"inference": options.seed, "tasks": {t.name: t.seed for t in tasks}},
        "options": {"limit": options.limit, "batch_size": options.batch_size, "dtype": options.dtype,
                    "data_dir": str(paths.data_dir(options.data_dir)),
                    "store_dir": str(paths.store_dir(options.store_dir)),
                    "checkpoints": dict(options.checkpoints)},
        "timings": {"total_s": round(report.seconds, 3), "inference": inference, "tasks": task_timings},
        "computed": [list(x) for x in report.computed],
        "reused": [list(x) for x in report.reused],
        "skipped": report.skipped,
    }
    return doc


def _read_json(path: Path) -> dict:
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def skip_summary(skipped: Sequence[dict]) -> list[str]:
    """The skipped (task, model) pairs as a few lines: one per reason, with its tasks and models.

    Example: 4 pairs skipped because 'task is for models with num_classes 6; this one has 10
    classes' -> "  4 x task is for models with num_classes 6; this one has 10 classes:
    fmnist6_in_distribution, fmnist_open_set (plex-mini, det-mini)".
    """
    if not skipped:
        return []
    by_reason: dict[str, list[dict]] = {}
    for s in skipped:
        by_reason.setdefault(s["reason"], []).append(s)
    lines = [f"skipped {len(skipped)} (task, model) pair(s):"]
    for reason, items in by_reason.items():
        task_names = ", ".join(dict.fromkeys(s["task"] for s in items))
        models = ", ".join(dict.fromkeys(s["model"] for s in items))
        lines.append(f"  {len(items)} x {reason}: {task_names} ({models})")
    return lines


# --------------------------------------------------------------------------- dry run

def dry_run(options: RunOptions) -> list[str]:
    """Lines saying what `run` would do: every task, its datasets, which are missing and how to prepare them."""
    from plexbench.data import registry as D
    from plexbench.table import format_table

    suite, tasks = load_suite_tasks(options)
    data_dir = paths.data_dir(options.data_dir)
    missing = missing_datasets(tasks, data_dir)
    rows = []
    for task in tasks:
        names = list(dict.fromkeys(n for n, _ in R.get_kind(task.kind).datasets(task)))
        absent = [n for n in names if n in missing]
        rows.append({"task": task.name, "kind": task.kind, "version": task.version,
                     "models": task.models.describe() if task.models else "all",
                     "datasets": _compact(names), "missing": _compact(absent) if absent else "-"})
    lines = [f"suite {suite.name} (version {suite.version}): {len(tasks)} tasks; data dir {data_dir}",
             format_table(rows)]
    if missing:
        lines.append("missing datasets:")
        groups: dict[str, list[str]] = {}
        for name in sorted(missing):
            groups.setdefault(D.get_dataset(name).family or name, []).append(name)
        for label, names in groups.items():
            info = D.get_dataset(names[0])
            target = label if len(names) > 1 or info.family else names[0]
            shown = f"{label}/* ({len(names)} datasets)" if info.family else label
            how = ("prepared automatically by `plexbench run` (embedded, offline)" if info.embedded else
                   f"plexbench data prepare {target} --data-dir {data_dir} ({info.prepare_hint})")
            lines.append(f"  {shown}: {how}")
    else:
        lines.append("every dataset is prepared")
    lines += _dry_run_models(options, tasks)
    lines += _inference_cost_lines(tasks, options, data_dir)
    lines += _training_cost_lines(tasks, options.models)
    return lines


def _dry_run_models(options: RunOptions, tasks: Sequence[TaskSpec]) -> list[str]:
    """Per model: its class count and which tasks it runs. Unknown names fail here, as in `run`.

    Registry models are looked up (no weights are read); prediction files are found and one is
    read for K; a `--model MODULE:FUNCTION` is not imported (that runs its code): its K is only
    known after its first forward pass, so the tasks are listed for each K the suite's tasks need.
    """
    from plexbench.models.registry import get_model

    unknown = sorted(set(options.checkpoints) - set(options.models))
    if unknown:
        raise PlexbenchError(f"--checkpoint given for {', '.join(unknown)}, which is not in --models")
    reads: dict[str, str | None] = {}  # registry model -> the modality it reads
    models: list[tuple[str, int | None, str]] = []
    for name in options.models:
        entry = get_model(name)
        weights = name in options.checkpoints or (entry.checkpoint is not None and Path(entry.checkpoint).exists())
        source = "registry" if weights else f"registry, needs --checkpoint {name}=PATH"
        models.append((name, getattr(entry.config, "num_classes", None), source))
        reads[name] = config_modality(entry.config)
    for spec in options.callables:
        if spec.count(":") != 1 or not all(spec.split(":")):
            raise PlexbenchError(f"--model {shown(spec)} is not of the form package.module:function")
        models.append((spec, None, "callable, not imported by --dry-run"))
    for name, where in options.predictions.items():
        models.append((name, FileModel(name, where).num_classes(), "prediction files"))
    if not models:
        return ["models: (none given)"]
    lines = ["models:"]
    for name, k, source in models:
        if k is not None:
            lines.append(f"  {name} ({source}, {k} classes): " + _tasks_for(tasks, name, k, reads.get(name)))
            continue
        needed = sorted({n for n in (R.get_kind(t.kind).num_classes(t) for t in tasks) if n is not None})
        lines.append(f"  {name} ({source}): classes known after its first forward pass; "
                     + "; ".join(f"with {n} classes: {_tasks_for(tasks, name, n)}" for n in needed))
    return lines


def _tasks_for(tasks: Sequence[TaskSpec], name: str, k: int, reads: str | None = None) -> str:
    runs = [t.name for t in _runnable(tasks, name, k, reads)]
    text = f"runs {len(runs)} of {len(tasks)} tasks ({', '.join(runs) or 'none'})"
    if not runs and tasks:  # say why, once per reason
        why = dict.fromkeys(fit_reason(t, name, k, reads) for t in tasks)
        text += "; " + "; ".join(r for r in why if r)
    return text


def _runnable(tasks: Sequence[TaskSpec], name: str, k: int | None, reads: str | None) -> list[TaskSpec]:
    return [t for t in tasks if fit_reason(t, name, k, reads) is None]


def _inference_cost_lines(tasks: Sequence[TaskSpec], options: RunOptions, data_dir: Path) -> list[str]:
    """Per registry model: the forward passes its tasks need, planned as `run` plans them (each
    (dataset, split, preprocessing) once, over the largest prefix any task reads: `plan_requests`),
    their example counts (prepared splits; --limit and task limits applied) and the forward matmul
    FLOPs, FLOPs per example (plexbench.models.flops, all members) x examples. Unprepared splits
    are named, their size unknown until prepared (not in the total)."""
    from plexbench.data import registry as D
    from plexbench.data.load import num_examples
    from plexbench.models.flops import flops_per_example
    from plexbench.models.registry import MODELS

    lines = []
    for name in options.models:
        if name not in MODELS:
            continue
        config = MODELS.get(name).config
        runs = _runnable(tasks, name, config.num_classes, config_modality(config))
        if not runs:
            continue
        per_example = float(flops_per_example(config)["total"])
        examples, unknown = 0, []
        for req in plan_requests(runs, options).values():
            if not D.is_available(req.dataset, data_dir):
                unknown.append(f"{req.dataset}:{req.split}")
                continue
            n = num_examples(req.dataset, req.split, data_dir)
            examples += n if req.n is None else min(n, req.n)
        text = f"  {name} ({len(runs)} task(s), {per_example:.3g} FLOPs per example): "
        if examples:
            text += f"{examples:,} examples = {examples * per_example:.3g} FLOPs"
        if unknown:
            text += ("; plus " if examples else "") + f"split(s) not prepared, size unknown: {', '.join(unknown)}"
        lines.append(text)
    return ["inference (forward matmul FLOPs, each split inferred once):"] + lines if lines else []


def _training_cost_lines(tasks: Sequence[TaskSpec], models: Sequence[str]) -> list[str]:
    """Upper bounds of the training work of kinds that train (`TaskKind.cost`): curves x rounds x
    steps x batch, and per registry model the FLOPs, 3 x its forward matmul FLOPs per example
    (backward ~ 2 x forward) per trained example. Pool scoring and evaluation passes are extra."""
    lines = []
    for task in tasks:
        cost = R.get_kind(task.kind).cost(task)
        if not cost:
            continue
        text = f"{cost['curves']} curves x {cost['rounds']} rounds"
        if "max_steps" not in cost:
            lines.append(f"  {task.name}: {text} (linear probes on pre-logits)")
            continue
        examples = cost["curves"] * cost["rounds"] * cost["max_steps"] * cost["batch_size"]
        text += f" x <= {cost['max_steps']} steps x {cost['batch_size']} examples = {examples:.3g} trained examples"
        for name in models:
            from plexbench.models.flops import flops_per_example
            from plexbench.models.registry import MODELS

            if name in MODELS:
                text += f"; {name}: <= {3 * examples * flops_per_example(MODELS.get(name).config)['total']:.3g} FLOPs"
        lines.append(f"  {task.name}: {text}")
    return ["training (upper bound: every round runs its step limit):"] + lines if lines else []


def _compact(names: Sequence[str]) -> str:
    """Family members collapse to `family/* (count)`."""
    out: dict[str, int] = {}
    for n in names:
        key = f"{n.split('/', 1)[0]}/*" if "_corrupted/" in n else n
        out[key] = out.get(key, 0) + 1
    return ", ".join(k if c == 1 and not k.endswith("/*") else f"{k} ({c})" for k, c in out.items())
