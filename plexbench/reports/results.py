"""Reading results directories (the format of docs/ARCHITECTURE.md, "results directory").

A results directory holds

- `metrics_long.csv`: columns `model, task, task_version, dataset, split, metric, value,
  ci_low, ci_high, n` (extra columns such as `num_classes` are kept);
- `tasks/<task>/<model>.json`: per-task results with `metrics` and `curves`;
- `run.json`: provenance, suite, models (e.g. `num_params`, `flops_per_example`), datasets, ...

Reports and plots read only these files. Every problem with them is a one-line
`PlexbenchError` naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from plexbench.errors import PlexbenchError
from plexbench.fileio import check_csv_complete

LONG_COLUMNS = ("model", "task", "task_version", "dataset", "split", "metric", "value", "ci_low", "ci_high", "n")
_NUMBER_COLUMNS = ("value", "ci_low", "ci_high", "n")


@dataclass(frozen=True)
class TaskResult:
    """One `tasks/<task>/<model>.json` file."""

    path: Path
    task: str
    kind: str
    version: str
    model: str
    dataset: str
    split: str
    metrics: dict
    curves: dict


@dataclass
class Results:
    """Everything read from one or more results directories.

    `long` concatenates the `metrics_long.csv` files (row order kept) with an extra column
    `results_dir`; `tasks` lists every per-task JSON; `runs` maps each directory to its
    `run.json` (an empty dict when the file is absent).
    """

    dirs: tuple[Path, ...]
    long: pd.DataFrame
    tasks: list[TaskResult] = field(default_factory=list)
    runs: dict[Path, dict] = field(default_factory=dict)

    def models(self) -> list[str]:
        """Model names in order of first appearance."""
        return list(dict.fromkeys(self.long["model"]))

    def model_info(self) -> dict[str, dict]:
        """`run.json` `models` sections merged over directories: name -> dict (later dirs win)."""
        out: dict[str, dict] = {}
        for run in self.runs.values():
            models = run.get("models") or {}
            if isinstance(models, dict):
                for name, info in models.items():
                    if isinstance(info, dict):
                        out.setdefault(name, {}).update(info)
        return out


def read_long_csv(path: str | Path) -> pd.DataFrame:
    """Read and validate one `metrics_long.csv`.

    Text columns stay strings exactly as written (a model called 'NA' stays 'NA'); `value`,
    `ci_low`, `ci_high` are float64 with empty cells (or `nan`) -> NaN; `n` and `num_classes`
    are nullable Int64 (float64 if some value is fractional).
    Raises PlexbenchError for a missing file, missing columns or non-numeric numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise PlexbenchError(f"results file not found: {path}")
    check_csv_complete(path, "results file")  # a truncated file (last row cut) is refused, not half-read
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PlexbenchError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    missing = [c for c in LONG_COLUMNS if c not in df.columns]
    if missing:
        raise PlexbenchError(f"{path} lacks columns {', '.join(missing)} (expected {', '.join(LONG_COLUMNS)})")
    for col in _NUMBER_COLUMNS + (("num_classes",) if "num_classes" in df.columns else ()):
        df[col] = _to_float(df[col], path, col)
    for col in ("n", "num_classes"):  # counts: nullable integers when they are whole numbers
        if col in df.columns and (df[col].dropna() % 1 == 0).all():
            df[col] = df[col].astype("Int64")
    empty = df[["model", "dataset", "metric"]].apply(lambda c: c.str.strip()).eq("").any(axis=1)
    if empty.any():
        raise PlexbenchError(f"{path} row {int(empty.idxmax()) + 2}: empty model, dataset or metric")
    return df


def _to_float(col: pd.Series, path: Path, name: str) -> pd.Series:
    stripped = col.str.strip()
    out = pd.to_numeric(stripped.where(stripped != "", "nan"), errors="coerce")
    bad = out.isna() & ~stripped.str.lower().isin(["", "nan"])
    if bad.any():
        row = int(bad.idxmax())
        raise PlexbenchError(f"{path} row {row + 2}: column {name} is not a number: {col[row]!r}")
    return out.astype("float64")


def read_task_results(results_dir: str | Path) -> list[TaskResult]:
    """Every `tasks/<task>/<model>.json` under the directory, sorted by path."""
    out = []
    for path in sorted(Path(results_dir).glob("tasks/*/*.json")):
        obj = _read_json(path)
        try:
            out.append(TaskResult(
                path=path, task=str(obj["task"]), kind=str(obj.get("kind", "")), version=str(obj.get("version", "")),
                model=str(obj["model"]), dataset=str(obj.get("dataset", "")), split=str(obj.get("split", "")),
                metrics=dict(obj.get("metrics") or {}), curves=dict(obj.get("curves") or {}),
            ))
        except (KeyError, TypeError, ValueError) as e:
            raise PlexbenchError(f"{path}: malformed task result ({type(e).__name__}: {e})") from None
    return out


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"), parse_constant=_json_constant)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlexbenchError(f"cannot read {path}: {e}") from None
    if not isinstance(obj, dict):
        raise PlexbenchError(f"{path}: expected a JSON object")
    return obj


def _json_constant(name: str) -> float:
    # NaN / Infinity as written by Python's json module.
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[name]


def load_results(dirs: Sequence[str | Path]) -> Results:
    """Read one or more results directories (in the order given) into a `Results`."""
    if not dirs:
        raise PlexbenchError("no results directory given")
    frames, tasks, runs = [], [], {}
    for d in map(Path, dirs):
        if not d.is_dir():
            raise PlexbenchError(f"results directory not found: {d}")
        frame = read_long_csv(d / "metrics_long.csv")
        frame["results_dir"] = str(d)
        frames.append(frame)
        tasks += read_task_results(d)
        runs[d] = _read_json(d / "run.json") if (d / "run.json").is_file() else {}
    long = pd.concat(frames, ignore_index=True)
    # Per-task files in the order models first appear in the tables (then by path), so every
    # figure lists models in the same order as the leaderboard.
    order = {m: i for i, m in enumerate(dict.fromkeys(long["model"]))}
    tasks.sort(key=lambda t: (order.get(t.model, len(order)), str(t.path)))
    return Results(dirs=tuple(map(Path, dirs)), long=long, tasks=tasks, runs=runs)
