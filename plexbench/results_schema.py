"""The results directory: one schema that the task runner writes with and reports read with.

    <out>/tasks/<task>/<model>.json   one per (task, model), written atomically when it finishes
    <out>/metrics_long.csv            every row of every task JSON of the suite in <out>
    <out>/run.json                    provenance, suite, tasks, models, datasets, seeds, timings

**metrics_long.csv, format 3** (`LONG_COLUMNS`, one row per number):

| column | dtype | meaning |
| --- | --- | --- |
| model, task | str | who and which task |
| task_version | str | the task's version (bumped when its numbers can move) |
| kind | str | the task kind that computed the row |
| category | str | reliability category declared by the kind (or by the metric when the kind has none) |
| dataset, split | str | the evaluated dataset's label and split role (OOD rows: the in-distribution one) |
| metric | str | `/`-separated name; its last component is declared in plexbench.metrics.vocabulary |
| value, ci_low, ci_high | float | value and 95% bootstrap interval (empty cell: no interval) |
| n | int | examples behind the value |
| num_classes | int | K behind the row (a few-shot probe's classes where it is not the model's) |
| model_num_classes | int | the model's own K |
| score_exclusion | str | empty, or why the row is reported but not part of a reliability score |
| modality | str | what the task's dataset holds, `image` or `text` (`dataset_modality`: declared by the data registry, `DatasetInfo.text`); empty when unknown |

Format 1 (the 11 columns model ... num_classes, without kind, category, model_num_classes and
score_exclusion) is converted on read: the kind comes from the task JSON beside the CSV, and the
category and exclusion from that kind's declarations (`TaskKind.row_category`,
`TaskKind.score_exclusion`), so old results are read with today's declarations. Format 2 (format
3 without `modality`) and format 1 get the modality on read from the task JSON, else from the
task's dataset name in the `run.json` beside them (its `tasks.<task>.spec.dataset.name`, looked
up in the data registry), else it stays empty (unknown).

**Task JSON** (`tasks/<task>/<model>.json`): `format_version`, `task, kind, version, model,
dataset, split`, `metrics` ({name: value} for the task's own dataset, `<metric>@<dataset>` for
others), `rows` (every row with the CSV's per-row fields: the source of metrics_long.csv),
`curves` (plain JSON data for figures), `info`, `num_classes` (the model's K), `modality` (as
in the CSV), `headline`
([[metric, dataset], ...]: the columns report tables show, resolved by the kind), `figures`
(figure kinds the task feeds, declared by the kind), `bootstrap`, `limit`, `inputs_sha256`
(resume reuses the file only when it is unchanged), `seconds`, and `replicates_file` when the
task bootstrapped: `<model>.bootstrap.npz` beside it with the resamples of its scored rows
(`columns` 'metric@dataset' (C,), `replicates` float64 (C, B)), from which reports compute the
reliability score's interval.

Every problem reading these files is a one-line `PlexbenchError` naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from plexbench import fileio
from plexbench.errors import PlexbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from plexbench.tasks.kinds.base import MetricRow, TaskKind
    from plexbench.tasks.spec import TaskSpec

FORMAT_VERSION = 3
LONG_COLUMNS = ("model", "task", "task_version", "kind", "category", "dataset", "split", "metric", "value",
                "ci_low", "ci_high", "n", "num_classes", "model_num_classes", "score_exclusion", "modality")
MODALITIES = ("image", "text")
V1_COLUMNS = ("model", "task", "task_version", "dataset", "split", "metric", "value", "ci_low", "ci_high", "n",
              "num_classes")
REQUIRED_COLUMNS = ("model", "task", "task_version", "dataset", "split", "metric", "value", "ci_low", "ci_high", "n")
FLOAT_COLUMNS = ("value", "ci_low", "ci_high")
COUNT_COLUMNS = ("n", "num_classes", "model_num_classes")
MAX_HEADLINE = 8  # report tables show at most this many columns of a task


# --------------------------------------------------------------------------- writing (the task runner)


def task_result_path(out_dir: Path, task: str, model: str) -> Path:
    return Path(out_dir) / "tasks" / task / f"{safe_name(model)}.json"


def safe_name(model: str) -> str:
    """A model name as a file name: path separators and ':' become '_'."""
    return "".join("_" if c in '/\\:' else c for c in model)


def dataset_modality(name: str) -> str:
    """What a dataset of plexbench.data holds: "text" when its registry entry declares text
    features (`DatasetInfo.text`), else "image"; "" for a name the registry does not know.

    >>> dataset_modality("fortunes"), dataset_modality("fashion_mnist"), dataset_modality("no_such_set")
    ('text', 'image', '')
    """
    from plexbench.data.registry import DATASETS

    if name not in DATASETS:
        return ""
    return "text" if DATASETS.get(name).is_text else "image"


def row_document(row: "MetricRow", kind: "TaskKind", task: "TaskSpec | None") -> dict:
    """One row of a task JSON: the row's numbers plus the kind's declared category and exclusion."""
    out = {"dataset": row.dataset, "split": row.split, "metric": row.metric, "value": row.value, "n": row.n,
           "ci_low": row.ci_low, "ci_high": row.ci_high,
           "category": kind.row_category(task, row.metric),
           "score_exclusion": row.score_exclusion or kind.score_exclusion(task, row.metric, row.dataset)}
    if row.num_classes is not None:
        out["num_classes"] = row.num_classes
    return out


def metrics_map(rows: Iterable[dict], dataset: str) -> dict[str, float]:
    """{metric: value} for rows of `dataset`, `<metric>@<dataset>` for rows of other datasets."""
    return {r["metric"] if r["dataset"] == dataset else f"{r['metric']}@{r['dataset']}": r["value"] for r in rows}


def task_document(*, task: "TaskSpec", kind: "TaskKind", model: str, result, num_classes: int,
                  extra: dict | None = None) -> dict:
    """The task JSON of one (task, model) result (`result`: the kind's TaskResult)."""
    dataset = result.dataset or task.dataset.label
    split = result.split or task.dataset.split
    rows = [row_document(r, kind, task) for r in result.rows]
    return {
        "format_version": FORMAT_VERSION, "task": task.name, "kind": task.kind, "version": task.version,
        "model": model, "dataset": dataset, "split": split, "metrics": metrics_map(rows, dataset), "rows": rows,
        "curves": result.curves, "info": result.info, "num_classes": num_classes,
        "modality": dataset_modality(task.dataset.name), "headline": [list(c) for c in kind.headline_columns(task, [(r["metric"], r["dataset"]) for r in rows])],
        "figures": list(kind.figures), **(extra or {}),
    }


def replicates_path(task_json: Path) -> Path:
    """`tasks/<task>/<model>.bootstrap.npz` beside a task JSON."""
    return Path(task_json).with_suffix(".bootstrap.npz")


def write_task_result(path: Path, doc: dict, rows: Sequence["MetricRow"] = ()) -> None:
    """The task JSON, and before it (so a JSON on disk implies a complete pair) the bootstrap
    resamples of its SCORED rows (no score exclusion) in `<model>.bootstrap.npz`: `columns`
    ('metric@dataset', a unicode array) and `replicates` float64 (C, B); the JSON names that file
    in `replicates_file`. Rows without resamples (no bootstrap, summaries) are not in it."""
    excluded = {(r["metric"], r["dataset"]) for r in doc.get("rows", []) if r.get("score_exclusion")}
    kept = [r for r in rows if r.replicates is not None and (r.metric, r.dataset) not in excluded]
    sizes = {r.replicates.shape for r in kept}
    doc = {k: v for k, v in doc.items() if k != "replicates_file"}
    if kept and len(sizes) == 1:
        target = replicates_path(path)
        fileio.save_npz(target, {"columns": np.array([f"{r.metric}@{r.dataset}" for r in kept]),
                                 "replicates": np.stack([r.replicates for r in kept])})
        doc["replicates_file"] = target.name
    fileio.write_json(path, doc)


def read_task_result(path: Path) -> dict | None:
    """A task JSON (upgraded to the current format, the modality of older ones from the run.json
    of its results directory `<out>/tasks/<task>/<model>.json`), or None when it is missing or
    unreadable (the runner then recomputes it)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_json_constant)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        return None
    try:
        return upgrade_task_document(doc, run_dataset_names(Path(path).parent.parent.parent))
    except (KeyError, TypeError, ValueError):
        return None


def run_dataset_names(results_dir: Path) -> dict[str, str]:
    """{task: the registry name of its dataset} from `<results_dir>/run.json` (`tasks.<task>.spec`),
    empty when the file is missing or unreadable: how older results get their modality."""
    try:
        run = json.loads((Path(results_dir) / "run.json").read_text(encoding="utf-8"), parse_constant=_json_constant)
        tasks = run.get("tasks") or {}
        return {str(t): str(doc["spec"]["dataset"]["name"]) for t, doc in tasks.items()
                if isinstance(doc, dict) and isinstance((doc.get("spec") or {}).get("dataset"), dict)
                and "name" in doc["spec"]["dataset"]}
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError):
        return {}


def long_rows(doc: dict) -> list[dict]:
    """metrics_long.csv rows of one (current-format) task JSON."""
    return [{"model": doc["model"], "task": doc["task"], "task_version": doc["version"], "kind": doc.get("kind", ""),
             "category": r["category"], "dataset": r["dataset"], "split": r["split"], "metric": r["metric"],
             "value": r["value"], "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high"), "n": r["n"],
             "num_classes": r.get("num_classes", doc.get("num_classes")), "model_num_classes": doc.get("num_classes"),
             "score_exclusion": r.get("score_exclusion", ""), "modality": doc.get("modality", "")}
            for r in doc["rows"]]


def write_long_csv(path: Path, rows: Sequence[dict]) -> None:
    """Atomic CSV in format 2; NaN intervals are empty cells, NaN values are written `nan`."""
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


# --------------------------------------------------------------------------- formats 1 and 2 -> 3


def _kind(name: str) -> "TaskKind | None":
    """The registered kind `name`, or None (a kind this version does not have)."""
    from plexbench.tasks.registry import KINDS, load_kinds

    load_kinds()
    return KINDS.get(name) if name in KINDS else None


def upgrade_task_document(doc: dict, dataset_names: dict[str, str] | None = None) -> dict:
    """A task JSON of an older format in the current one; the current format is returned as is.

    Format 1 -> 2: rows gain category and score_exclusion, the document headline and figures, from
    today's declarations of its kind. Format 2 -> 3: the document gains `modality`, that of the
    task's dataset as `dataset_names` ({task: registry name}, from run.json: `run_dataset_names`)
    names it, else "" (unknown)."""
    version = int(doc.get("format_version", 1))
    if version >= FORMAT_VERSION:
        return doc
    if version < 2:
        doc = _upgrade_v1(doc)
    name = (dataset_names or {}).get(str(doc.get("task")))
    return {**doc, "format_version": FORMAT_VERSION, "modality": dataset_modality(name) if name else ""}


def _upgrade_v1(doc: dict) -> dict:
    """Format 1 -> 2 (see upgrade_task_document)."""
    kind = _kind(str(doc.get("kind", "")))
    rows = []
    for r in doc["rows"]:
        r = dict(r)
        r["category"] = _category(kind, r["metric"])
        r["score_exclusion"] = kind.score_exclusion(None, r["metric"], r["dataset"]) if kind else ""
        rows.append(r)
    pairs = [(r["metric"], r["dataset"]) for r in rows]
    headline = kind.headline_columns(None, pairs) if kind else []
    return {**doc, "format_version": 2, "rows": rows, "headline": [list(c) for c in headline],
            "figures": list(kind.figures) if kind else []}


def _category(kind: "TaskKind | None", metric: str) -> str:
    if kind is not None:
        return kind.row_category(None, metric)
    from plexbench.metrics.vocabulary import find_metric

    info = find_metric(metric)
    return info.category if info else ""


def _docs_beside(path: Path) -> dict[tuple[str, str], dict]:
    """(task, model) -> the task JSON (current format) of the results directory holding `path`."""
    docs = {}
    for p in sorted((path.parent / "tasks").glob("*/*.json")):
        doc = read_task_result(p)
        if doc is not None:
            docs[(str(doc.get("task")), str(doc.get("model")))] = doc
    return docs


def _add_modality(df: "pd.DataFrame", path: Path, docs: dict[tuple[str, str], dict] | None = None) -> "pd.DataFrame":
    """Rows of format 1 or 2 with the `modality` column: the task JSON's (upgraded: see
    `upgrade_task_document`), else that of the task's dataset in run.json, else ""."""
    docs = _docs_beside(path) if docs is None else docs
    names = run_dataset_names(path.parent)
    modality = []
    for task, model in zip(df["task"], df["model"]):
        doc = docs.get((task, model))
        if doc is not None:
            modality.append(str(doc.get("modality", "")))
        else:
            modality.append(dataset_modality(names[task]) if task in names else "")
    return df.assign(modality=modality)


def _upgrade_long(df: "pd.DataFrame", path: Path) -> "pd.DataFrame":
    """Format 1 rows in format 3, with the kinds, model class counts and modalities of the task
    JSONs beside the CSV (a row without its task JSON takes its category from the metric's
    declaration)."""
    docs = _docs_beside(path)
    kinds, categories, exclusions, model_k = [], [], [], []
    for row in df.itertuples(index=False):
        doc = docs.get((row.task, row.model))
        kind_name = str(doc.get("kind", "")) if doc else ""
        kind = _kind(kind_name) if kind_name else None
        kinds.append(kind_name)
        categories.append(_category(kind, row.metric))
        exclusions.append(kind.score_exclusion(None, row.metric, row.dataset) if kind else "")
        own = doc.get("num_classes") if doc else None
        model_k.append(str(own) if own is not None else getattr(row, "num_classes", ""))
    df = df.assign(kind=kinds, category=categories, model_num_classes=model_k, score_exclusion=exclusions)
    return _add_modality(df, path, docs)


def user_selection(column: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> str:
    """Why a `metric@dataset` column is left out by a user's `--include` / `--exclude` shell
    patterns ('' when it is selected): it must match some include pattern (when given) and no
    exclude pattern.

    >>> user_selection("ece@cifar10", ["*@cifar10"], None), user_selection("ece@cifar10", None, ["ece@*"])
    ('', 'removed by --exclude')
    """
    import fnmatch

    if include and not any(fnmatch.fnmatchcase(column, p) for p in include):
        return "not selected by --include"
    if exclude and any(fnmatch.fnmatchcase(column, p) for p in exclude):
        return "removed by --exclude"
    return ""


# --------------------------------------------------------------------------- reading (reports)


@dataclass(frozen=True)
class TaskRecord:
    """One `tasks/<task>/<model>.json` file, read for reports (upgraded to the current format)."""

    path: Path
    task: str
    kind: str
    version: str
    model: str
    dataset: str
    split: str
    metrics: dict
    curves: dict
    headline: tuple[tuple[str, str], ...] = ()
    figures: tuple[str, ...] = ()
    replicates_file: Path | None = None  # bootstrap resamples of the scored rows (write_task_result)
    modality: str = ""  # "image" / "text" / "" (unknown): what the task's dataset holds


@dataclass
class Results:
    """Everything read from one or more results directories.

    `long` concatenates the `metrics_long.csv` files (row order kept, format 2 columns) with an
    extra column `results_dir`; `tasks` lists every per-task JSON; `runs` maps each directory to
    its `run.json` (an empty dict when the file is absent).
    """

    dirs: tuple[Path, ...]
    long: "pd.DataFrame"
    tasks: list[TaskRecord] = field(default_factory=list)
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

    def replicates(self) -> dict[str, dict[tuple[str, str], np.ndarray]]:
        """model -> {(metric, dataset): float64 (B,) bootstrap resamples} of every scored row whose
        task kept them (empty for results without resamples)."""
        out: dict[str, dict[tuple[str, str], np.ndarray]] = {}
        for rec in self.tasks:
            if rec.replicates_file is None or not rec.replicates_file.is_file():
                continue
            arrays = fileio.load_npz(rec.replicates_file, what="bootstrap resamples")
            columns, values = arrays.get("columns"), arrays.get("replicates")
            if columns is None or values is None or values.ndim != 2 or len(columns) != values.shape[0]:
                raise PlexbenchError(f"{rec.replicates_file}: expected 'columns' (C,) and 'replicates' (C, B)")
            mine = out.setdefault(rec.model, {})
            for column, row in zip(columns.tolist(), values):
                metric, _, dataset = str(column).rpartition("@")
                mine[(metric, dataset)] = np.asarray(row, dtype=np.float64)
        return out

    def restricted(self, models: Iterable[str]) -> "Results":
        """These results for a subset of the models (rows and task files; run.json kept)."""
        keep = set(models)
        long = self.long[self.long["model"].isin(keep)].reset_index(drop=True)
        return Results(self.dirs, long, [t for t in self.tasks if t.model in keep], self.runs)


def read_long_csv(path: str | Path) -> "pd.DataFrame":
    """Read, validate and (formats 1 and 2) upgrade one `metrics_long.csv`; columns in
    `LONG_COLUMNS` order (any others after them).

    Text columns stay strings exactly as written (a model called 'NA' stays 'NA'); `value`,
    `ci_low`, `ci_high` are float64 with empty cells (or `nan`) -> NaN; `n`, `num_classes` and
    `model_num_classes` are nullable Int64 (float64 if some value is fractional).
    Raises PlexbenchError for a missing file, missing columns or non-numeric numbers.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise PlexbenchError(f"results file not found: {path}")
    fileio.check_csv_complete(path, "results file")  # a truncated file (last row cut) is refused, not half-read
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PlexbenchError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise PlexbenchError(f"{path} lacks columns {', '.join(missing)} (expected {', '.join(LONG_COLUMNS)})")
    if "category" not in df.columns:
        df = _upgrade_long(df, path)
    elif "modality" not in df.columns:
        df = _add_modality(df, path)
    for col in FLOAT_COLUMNS + tuple(c for c in COUNT_COLUMNS if c in df.columns):
        df[col] = _to_float(df[col], path, col)
    for col in COUNT_COLUMNS:  # counts: nullable integers when they are whole numbers
        if col in df.columns and (df[col].dropna() % 1 == 0).all():
            df[col] = df[col].astype("Int64")
    empty = df[["model", "dataset", "metric"]].apply(lambda c: c.str.strip()).eq("").any(axis=1)
    if empty.any():
        raise PlexbenchError(f"{path} row {int(empty.idxmax()) + 2}: empty model, dataset or metric")
    for col in ("kind", "category", "score_exclusion", "modality"):
        if col not in df.columns:
            df[col] = ""
    return df[[c for c in LONG_COLUMNS if c in df.columns] + [c for c in df.columns if c not in LONG_COLUMNS]]


def _to_float(col: "pd.Series", path: Path, name: str) -> "pd.Series":
    import pandas as pd

    stripped = col.astype(str).str.strip()
    out = pd.to_numeric(stripped.where(stripped != "", "nan"), errors="coerce")
    bad = out.isna() & ~stripped.str.lower().isin(["", "nan", "<na>", "none"])
    if bad.any():
        row = int(bad.idxmax())
        raise PlexbenchError(f"{path} row {row + 2}: column {name} is not a number: {col[row]!r}")
    return out.astype("float64")


def read_task_records(results_dir: str | Path) -> list[TaskRecord]:
    """Every `tasks/<task>/<model>.json` under the directory, sorted by path."""
    out = []
    names = run_dataset_names(Path(results_dir))
    for path in sorted(Path(results_dir).glob("tasks/*/*.json")):
        obj = _read_json(path)
        try:
            doc = upgrade_task_document(obj, names) if isinstance(obj.get("rows"), list) else obj
            out.append(TaskRecord(
                path=path, task=str(doc["task"]), kind=str(doc.get("kind", "")), version=str(doc.get("version", "")),
                model=str(doc["model"]), dataset=str(doc.get("dataset", "")), split=str(doc.get("split", "")),
                metrics=dict(doc.get("metrics") or {}), curves=dict(doc.get("curves") or {}),
                headline=tuple((str(m), str(d)) for m, d in doc.get("headline") or ()),
                figures=tuple(str(f) for f in doc.get("figures") or ()),
                replicates_file=path.parent / str(doc["replicates_file"]) if doc.get("replicates_file") else None,
                modality=str(doc.get("modality", "")),
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
    import pandas as pd

    if not dirs:
        raise PlexbenchError("no results directory given")
    frames, tasks, runs = [], [], {}
    for d in map(Path, dirs):
        if not d.is_dir():
            raise PlexbenchError(f"results directory not found: {d}")
        frame = read_long_csv(d / "metrics_long.csv")
        frame["results_dir"] = str(d)
        frames.append(frame)
        tasks += read_task_records(d)
        runs[d] = _read_json(d / "run.json") if (d / "run.json").is_file() else {}
    long = pd.concat(frames, ignore_index=True)
    # Per-task files in the order models first appear in the tables (then by path), so every
    # figure lists models in the same order as the leaderboard.
    order = {m: i for i, m in enumerate(dict.fromkeys(long["model"]))}
    tasks.sort(key=lambda t: (order.get(t.model, len(order)), str(t.path)))
    return Results(dirs=tuple(map(Path, dirs)), long=long, tasks=tasks, runs=runs)
