"""Writing a results directory (format: docs/ARCHITECTURE.md, "results directory").

    <out>/tasks/<task>/<model>.json   one per (task, model), written atomically when it finishes
    <out>/metrics_long.csv            every row of every task JSON of the suite in <out>
    <out>/run.json                    provenance, suite, tasks, models, datasets, seeds, timings

A task JSON holds, besides the contract's `task, kind, version, model, dataset, split, metrics,
curves`: `rows` (every metric row with n and interval: the source of metrics_long.csv), `info`,
`num_classes`, `inputs_sha256` (what the numbers depend on: resume reuses the file only when it
is unchanged) and `seconds`. `metrics` maps a metric name to its value for the rows of the task's
own dataset, and `<metric>@<dataset>` for rows of other datasets (covariate-shift cells).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable

from plexbench import fileio
from plexbench.tasks.kinds.base import MetricRow

LONG_COLUMNS = ("model", "task", "task_version", "dataset", "split", "metric", "value", "ci_low", "ci_high", "n",
                "num_classes")


def task_result_path(out_dir: Path, task: str, model: str) -> Path:
    return Path(out_dir) / "tasks" / task / f"{safe_name(model)}.json"


def safe_name(model: str) -> str:
    """A model name as a file name: path separators and ':' become '_'."""
    return "".join("_" if c in '/\\:' else c for c in model)


def rows_to_json(rows: Iterable[MetricRow]) -> list[dict]:
    return [{"dataset": r.dataset, "split": r.split, "metric": r.metric, "value": r.value, "n": r.n,
             "ci_low": r.ci_low, "ci_high": r.ci_high, **({} if r.num_classes is None else {"num_classes": r.num_classes})}
            for r in rows]


def metrics_map(rows: Iterable[MetricRow], dataset: str) -> dict[str, float]:
    out = {}
    for r in rows:
        out[r.metric if r.dataset == dataset else f"{r.metric}@{r.dataset}"] = r.value
    return out


def write_task_result(path: Path, doc: dict) -> None:
    fileio.write_json(path, doc)


def read_task_result(path: Path) -> dict | None:
    """A task JSON, or None when it is missing or unreadable (then it is recomputed)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("rows"), list) else None


def long_rows(doc: dict) -> list[dict]:
    """metrics_long.csv rows of one task JSON; `num_classes` is the row's own (a few-shot probe's
    classes) or else the model's."""
    return [{"model": doc["model"], "task": doc["task"], "task_version": doc["version"], "dataset": r["dataset"],
             "split": r["split"], "metric": r["metric"], "value": r["value"], "ci_low": r.get("ci_low"),
             "ci_high": r.get("ci_high"), "n": r["n"],
             "num_classes": r.get("num_classes", doc.get("num_classes"))}
            for r in doc["rows"]]


def write_long_csv(path: Path, rows: list[dict]) -> None:
    """Atomic CSV; NaN intervals are empty cells, NaN values are written `nan`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LONG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(k, row.get(k)) for k in LONG_COLUMNS})
    fileio.write_text(path, buf.getvalue())


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan" if column == "value" else ""
        return repr(value)
    return str(value)
