"""Task kinds (Python, registered by name) and task/suite instances (YAML files).

- A task *kind* is a `TaskKind` subclass in a module of `plexbench.tasks.kinds`, registered with
  `@register_kind("name")`; every module of that package is imported on first use, so adding a
  kind is adding one module.
- A task *instance* is `<tasks_dir>/<name>.yaml`; a suite is `<tasks_dir>/suites/<name>.yaml`.
  Files whose name starts with `_` are fragments, only read through `include:`.
- The tasks directory: `--tasks-dir`, else $PLEXBENCH_TASKS_DIR, else `<repo root>/tasks`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from plexbench.errors import PlexbenchError
from plexbench.paths import repo_root
from plexbench.registry import Registry, unknown_name_message
from plexbench.tasks import spec as S

if TYPE_CHECKING:  # pragma: no cover
    from plexbench.tasks.kinds.base import TaskKind

KINDS: Registry["TaskKind"] = Registry("task kind")


def register_kind(name: str):
    """Class decorator: register a TaskKind subclass under `name` (an instance is stored)."""

    def decorator(cls):
        cls.name = name
        KINDS.add(name, cls())
        return cls

    return decorator


@lru_cache(maxsize=None)
def load_kinds() -> None:
    """Import every module of plexbench.tasks.kinds (each registers its kinds)."""
    import plexbench.tasks.kinds as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"{package.__name__}.{module.name}")


def get_kind(name: str) -> "TaskKind":
    load_kinds()
    return KINDS.get(name)


# --------------------------------------------------------------------------- where tasks live

def tasks_dir(explicit: str | os.PathLike | None = None) -> Path:
    """`explicit`, else $PLEXBENCH_TASKS_DIR, else <repo root>/tasks; must be a directory."""
    if explicit:
        path, how = Path(explicit).expanduser(), "--tasks-dir"
    elif os.environ.get("PLEXBENCH_TASKS_DIR"):
        path, how = Path(os.environ["PLEXBENCH_TASKS_DIR"]).expanduser(), "$PLEXBENCH_TASKS_DIR"
    else:
        path, how = repo_root() / "tasks", "the default"
    if not path.is_dir():
        raise PlexbenchError(f"tasks directory not found: {path} (from {how}); pass --tasks-dir DIR or set "
                             f"$PLEXBENCH_TASKS_DIR to the tasks/ directory of a plexbench checkout")
    return path


def task_files(directory: Path) -> dict[str, Path]:
    """Task name -> file, for every `<name>.yaml` directly in `directory` (fragments `_*.yaml` left out)."""
    return {p.stem: p for p in sorted(directory.glob("*.yaml")) if not p.name.startswith("_")}


def suite_files(directory: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted((directory / "suites").glob("*.yaml")) if not p.name.startswith("_")}


# --------------------------------------------------------------------------- YAML reading

def read_yaml_mapping(path: Path) -> dict:
    """The top-level mapping of a YAML file; one-line errors for unreadable or non-mapping files."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PlexbenchError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise PlexbenchError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise PlexbenchError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data


def _with_include(path: Path, data: dict) -> dict:
    """Resolve `include:` (a file name relative to `path`'s directory); one level only.

    The included file must stay inside that directory (the tasks directory): an absolute path, a
    `..` component, or a symbolic link leading elsewhere is an error, so a task file can only
    share fragments of its own tasks directory.
    """
    if "include" not in data:
        return data
    name = data["include"]
    if not isinstance(name, str) or not name.endswith(".yaml"):
        raise PlexbenchError(S.FieldError("include", "a .yaml file name", name).message(path))
    root = path.parent.resolve()
    base_path = path.parent / name
    inside = not Path(name).is_absolute() and ".." not in Path(name).parts
    if inside:
        try:
            inside = base_path.resolve().is_relative_to(root)
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
    if not inside:
        raise PlexbenchError(S.FieldError("include", f"a file inside the tasks directory {root}", name).message(path))
    if not base_path.is_file():
        raise PlexbenchError(S.FieldError("include", f"an existing file beside it ({base_path} not found)",
                                          name).message(path))
    base = read_yaml_mapping(base_path)
    if "include" in base:
        raise PlexbenchError(S.FieldError("include", "a file without its own include (one level only)",
                                          base["include"]).message(base_path))
    return S.merge_include(base, {k: v for k, v in data.items() if k != "include"})


def parse_task(name: str, data: dict, path: Path) -> S.TaskSpec:
    """Validate a task mapping into a TaskSpec (kind params and metric names included)."""
    try:
        task = S.parse(S.TaskSpec, data)
        kind = _kind_for(task.kind)
        params = S.parse(kind.Params, {} if task.params is None else task.params, "params")
        task = dataclasses.replace(task, params=params, name=name, path=path)
        _check_metrics(task, kind)
        from plexbench.tasks.kinds.base import check_dataset_ref

        check_dataset_ref(task.dataset, "dataset")
        kind.validate(task)
    except S.FieldError as e:
        raise S.spec_error(path, e) from None
    return task


def _kind_for(name: str) -> "TaskKind":
    load_kinds()
    if name not in KINDS:
        raise S.FieldError("kind", "a task kind, one of " + ", ".join(KINDS.names()), name)
    return KINDS.get(name)


def _check_metrics(task: S.TaskSpec, kind: "TaskKind") -> None:
    if task.metrics is None:
        return
    if not task.metrics:
        raise S.FieldError("metrics", "a non-empty list (or leave the field out for all)", [])
    for i, m in enumerate(task.metrics):
        if m not in kind.metrics:
            raise S.FieldError(f"metrics[{i}]", f"a metric of kind {kind.name}: " + ", ".join(kind.metrics), m)


def load_task_file(path: str | os.PathLike) -> S.TaskSpec:
    path = Path(path)
    return parse_task(path.stem, _with_include(path, read_yaml_mapping(path)), path)


def load_suite_file(path: str | os.PathLike) -> S.SuiteSpec:
    path = Path(path)
    data = read_yaml_mapping(path)
    try:
        suite = S.parse(S.SuiteSpec, data)
    except S.FieldError as e:
        raise S.spec_error(path, e) from None
    return dataclasses.replace(suite, name=path.stem, path=path)


def load_tasks(directory: str | os.PathLike | None = None) -> dict[str, S.TaskSpec]:
    """Every task of the tasks directory, by name; the first bad file raises (never skipped)."""
    directory = tasks_dir(directory)
    return {name: load_task_file(path) for name, path in task_files(directory).items()}


def load_task(name: str, directory: str | os.PathLike | None = None) -> S.TaskSpec:
    directory = tasks_dir(directory)
    files = task_files(directory)
    if name not in files:
        raise PlexbenchError(unknown_name_message("task", name, list(files)))
    return load_task_file(files[name])


def load_suites(directory: str | os.PathLike | None = None) -> dict[str, S.SuiteSpec]:
    directory = tasks_dir(directory)
    return {name: load_suite_file(path) for name, path in suite_files(directory).items()}


def load_suite(name: str, directory: str | os.PathLike | None = None) -> tuple[S.SuiteSpec, list[S.TaskSpec]]:
    """A suite and its tasks (in the suite's order); an unknown task name is an error naming the suite file."""
    directory = tasks_dir(directory)
    files = suite_files(directory)
    if name not in files:
        raise PlexbenchError(unknown_name_message("suite", name, list(files)))
    suite = load_suite_file(files[name])
    return suite, suite_tasks(suite, directory)


def suite_tasks(suite: S.SuiteSpec, directory: Path) -> list[S.TaskSpec]:
    files = task_files(directory)
    out = []
    for i, task_name in enumerate(suite.tasks):
        if task_name not in files:
            msg = unknown_name_message("task", task_name, list(files))
            raise PlexbenchError(f"{suite.path}: field 'tasks[{i}]': {msg}")
        out.append(load_task_file(files[task_name]))
    return out


# --------------------------------------------------------------------------- listing

def list_task_rows(args) -> list[dict]:
    """Rows of `plexbench list tasks`."""
    directory = tasks_dir(getattr(args, "tasks_dir", None))
    tasks = load_tasks(directory)
    member_of: dict[str, list[str]] = {}
    for suite in load_suites(directory).values():
        for t in suite.tasks:
            member_of.setdefault(t, []).append(suite.name)
    return [{
        "task": t.name,
        "kind": t.kind,
        "version": t.version,
        "dataset": f"{t.dataset.label}:{t.dataset.split}",
        "models": t.models.describe() if t.models else "all",
        "suites": ",".join(member_of.get(t.name, [])) or "-",
        "description": t.description,
    } for t in tasks.values()]


def list_suite_rows(args) -> list[dict]:
    """Rows of `plexbench list suites`."""
    directory = tasks_dir(getattr(args, "tasks_dir", None))
    rows = []
    for suite in load_suites(directory).values():
        tasks = suite_tasks(suite, directory)
        kinds = sorted({t.kind for t in tasks})
        rows.append({"suite": suite.name, "version": suite.version, "tasks": len(tasks),
                     "kinds": ",".join(kinds), "description": suite.description})
    return rows
