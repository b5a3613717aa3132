"""`plexbench task info NAME`: a task's definition as the registry parsed it."""

from __future__ import annotations

import dataclasses

from plexbench.tasks import registry as R
from plexbench.tasks.kinds.base import selected
from plexbench.tasks.spec import DatasetRef, to_dict


def task_info(name: str, tasks_dir=None) -> str:
    """Multi-line description: file, kind, version, datasets, metrics, parameters, model filter, suites."""
    directory = R.tasks_dir(tasks_dir)
    task = R.load_task(name, directory)
    kind = R.get_kind(task.kind)
    suites = [s.name for s in R.load_suites(directory).values() if task.name in s.tasks]
    lines = [
        f"task         {task.name}",
        f"file         {task.path}",
        f"kind         {task.kind}: {kind.summary}",
        f"version      {task.version}",
    ]
    if task.description:
        lines.append(f"description  {task.description}")
    lines.append(f"dataset      {_ref(task.dataset)}")
    lines.append(f"metrics      {', '.join(selected(task, kind))}")
    lines.append(f"bootstrap    {task.bootstrap} resamples (seed {task.seed})" if task.bootstrap else
                 "bootstrap    none (no intervals)")
    default_models = "all with the right class count" if kind.num_classes(task) is not None else "all"
    lines.append(f"models       {task.models.describe() if task.models else default_models}")
    lines.append(f"suites       {', '.join(suites) or '-'}")
    if dataclasses.is_dataclass(task.params) and dataclasses.fields(task.params):
        lines.append("params")
        for f in dataclasses.fields(task.params):
            value = getattr(task.params, f.name)
            if isinstance(value, tuple) and value and isinstance(value[0], DatasetRef):
                lines.append(f"  {f.name}:")
                lines += [f"    - {_ref(r)}" + (f", {r.distance} OOD" if getattr(r, "distance", None) else "")
                          for r in value]
            else:
                lines.append(f"  {f.name}: {_short(to_dict(value))}")
    lines.append("reads")
    for need in kind.needs(task):
        extra = " (+ pre-logits)" if need.pre_logits else ""
        lines.append(f"  {need.role}: {_ref(need.ref)}{extra}")
    return "\n".join(lines)


def _ref(ref) -> str:
    parts = [f"{ref.name}:{ref.split}"]
    if ref.classes is not None:
        parts.append(f"classes {list(ref.classes)}")
    if ref.preprocess:
        parts.append(f"preprocess '{ref.preprocess}' first")
    if ref.limit:
        parts.append(f"first {ref.limit:,} examples")
    if ref.alias:
        parts.append(f"as {ref.alias}")
    return ", ".join(parts)


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 110 else text[:107] + "..."
