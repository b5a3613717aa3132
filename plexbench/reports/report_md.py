"""`report.md`: one Markdown page for a results directory (what `plexbench demo` writes last).

`write_report(results_dir)` reads ONLY files of the results directory (docs/ARCHITECTURE.md,
"results directory"): `metrics_long.csv`, `tasks/<task>/<model>.json`, `run.json`, and, when
present, the leaderboard files `leaderboard_<preset>.*`, the figures under `plots/` and the
demo's stage timings `demo.json`. Nothing is recomputed from data or models.

Sections, in order:

1. **Reliability score**, per model group. Models are grouped by their modality and number of
   classes K (`plexbench.reports.model_groups`: the `modality` and `model_num_classes` columns of
   `metrics_long.csv`; one group when K is unknown): the
   runner gives a 6-class model other tasks than a 10-class one, so a single ranking would
   compare numbers measured on different tasks (and the paper preset, which needs every
   column, would give every model NaN). Within a group both presets are computed with
   `plexbench.reports.reliability_score.compute_score` on the group's rows, exactly as the
   leaderboard computes them.
2. **Key metrics per task**, in suite order: one table per task, a row per model, the headline
   columns its kind declared (`TaskKind.headline`, resolved into each task JSON's `headline`;
   a shift task shows its family averages). Every cell is `value [ci_low, ci_high]`
   (the task's percentile bootstrap; no interval when the task computed none), `n` is the
   number of examples of the first metric; the best model per column is bold (direction from
   `plexbench.reports.columns.direction`; ties all bold).
3. **Figures**: the PNG files under `plots/` (any depth), embedded with relative links, grouped
   by figure kind as listed in each plot folder's `figures.json` (written by
   `plexbench.reports.plots`); PNGs it does not list go under "Other figures".
4. **Models**: source, K, members, parameters, FLOPs per example, weights hash (from run.json).
5. **Provenance and timings**: versions, commit, platform, suite and task versions, run options,
   the last run's time, per (task, model) compute seconds from the task files (the time when the
   result was computed, so a reused result still shows its cost), per model inference seconds
   of the last run, and the demo's stage timings of every recorded demo run (`demo.json`).

Numbers are printed with 4 decimals (scores x100 with 1), missing ones as `–`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from plexbench import fileio
from plexbench.errors import PlexbenchError
from plexbench.reports import reliability_score, tables
from plexbench.reports.columns import direction
from plexbench.reports.model_groups import ModelGroup, group_results, model_groups  # noqa: F401 (re-exported)
from plexbench.results_schema import MAX_HEADLINE, Results, load_results

REPORT_NAME = "report.md"
DEMO_JSON = "demo.json"
PRESETS = ("paper", "plexbench")
MISSING = tables.MISSING_MD
DEMO_STAGES = ("data", "run", "leaderboard", "plots", "compare", "report")  # the stages of `plexbench demo`


# --------------------------------------------------------------------------- entry points


def write_report(results_dir: str | Path) -> Path:
    """Write `<results_dir>/report.md` atomically (plexbench.fileio); returns its path."""
    results_dir = Path(results_dir)
    text = render_report(results_dir)
    path = results_dir / REPORT_NAME
    fileio.write_text(path, text)
    return path


def render_report(results_dir: str | Path) -> str:
    """The report's Markdown (see the module docstring); PlexbenchError for unreadable results."""
    results_dir = Path(results_dir)
    results = load_results([results_dir])
    if results.long.empty:
        raise PlexbenchError(f"no rows in {results_dir / 'metrics_long.csv'}: nothing to report")
    run = results.runs.get(results_dir, {})
    demo = read_demo_json(results_dir)
    groups = model_groups(results.long)
    parts = [
        _title(results_dir, run, results),
        _score_section(results, groups, results_dir),
        _reproducibility_section(results_dir),
        _task_section(results, run),
        _figure_section(results_dir),
        _models_section(results, run),
        _provenance_section(run),
        _timings_section(results_dir, results, run, demo),
    ]
    return "\n".join(p for p in parts if p).rstrip() + "\n"


def read_demo_json(results_dir: str | Path) -> dict:
    """`demo.json` of a results directory ({} when absent); PlexbenchError when unreadable."""
    path = Path(results_dir) / DEMO_JSON
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlexbenchError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict):
        raise PlexbenchError(f"{path}: expected a JSON object")
    return doc


# --------------------------------------------------------------------------- sections


def _title(results_dir: Path, run: dict, results: Results) -> str:
    suite = run.get("suite") or {}
    name = suite.get("name") or results_dir.name
    models = results.models()
    tasks = list(dict.fromkeys(results.long["task"]))
    lines = [f"# plexbench results: suite `{name}`", ""]
    lines.append(f"{len(models)} models ({', '.join(f'`{m}`' for m in models)}) on {len(tasks)} tasks. "
                 "Generated by `plexbench demo` from the files of this directory only "
                 "(`plexbench.reports.report_md`); every number below is also in `metrics_long.csv`.")
    limit = (run.get("options") or {}).get("limit")
    if limit is not None:
        lines += ["", f"**Smoke mode**: every split was cut to its first {limit} examples (`--limit {limit}`); "
                      "these are not benchmark numbers."]
    return "\n".join(lines) + "\n"


def _score_section(results: Results, groups: Sequence[ModelGroup], results_dir: Path) -> str:
    replicates = results.replicates()
    lines = ["## Reliability score", "",
             "Scores x100 with their 95% interval (`bootstrap`: the score of every bootstrap resample of the "
             "tasks, columns without resamples held at their value; `conservative`: the mean of the columns' "
             "half-widths; see `plexbench.reports.reliability_score`), computed within "
             "each group of models with the same modality and number of classes (they ran the same tasks). Presets: `paper` "
             "(the paper's score and quirks; NaN when a column is missing) and `plexbench` (every lower-is-better "
             "metric flipped). Definitions: `plexbench.reports.reliability_score`."]
    links = [f"[`{p.name}`]({p.name})" for p in (results_dir / f"leaderboard_{s}.md" for s in PRESETS) if p.is_file()]
    if links:
        lines += ["", "The full metric tables (every metric@dataset, all models in one table) are in "
                      + " and ".join(links) + " (also as CSV, JSON and LaTeX beside them)."]
    for group in groups:
        lines += ["", f"### {group.title}: {', '.join(f'`{m}`' for m in group.models)}"]
        sub = results.long[results.long["model"].isin(group.models)]
        for preset in PRESETS:
            lines += ["", f"Preset `{preset}`:", ""]
            try:
                score = reliability_score.compute_score(sub, preset=preset, replicates=replicates)
            except PlexbenchError as e:
                lines.append(f"(no score: {e})")
                continue
            lines.append(score_table(score).rstrip("\n"))
    return "\n".join(lines) + "\n"


def score_table(score: reliability_score.ScoreResult) -> str:
    """Markdown score table of a ScoreResult: one row per model, best score first (NaN last)."""
    s = score.summary.sort_values("score", ascending=False, na_position="last", kind="stable")
    cats = [c for c in reliability_score.categories_of(score.columns) if any(col.category == c for col in score.columns)]
    head = ["model", "score", "interval", "interval method", *cats, "best", "mean rank", "columns", "missing"]
    rows = []
    for model, r in s.iterrows():
        method = str(r.get("interval_method", ""))
        if method == "bootstrap" and int(r.get("interval_fixed", 0)):
            method += f" ({int(r['interval_fixed'])} columns fixed)"
        rows.append([f"`{model}`", _num(r["score"], 1), _interval(r["ci_low"], r["ci_high"], 1), method,
                     *(_num(r[f"{c}_score"], 1) for c in cats), str(int(r["best"])), _num(r["mean_rank"], 2),
                     str(int(r["n_columns"])), str(int(r["n_missing"]))])
    return tables.markdown_table(head, rows)


def _reproducibility_section(results_dir: Path) -> str:
    """The verdict of `reproducibility.json` (written by `plexbench demo`), or nothing."""
    from plexbench.reports.reproducibility import FILE_NAME

    path = results_dir / FILE_NAME
    if not path.is_file():
        return ""
    try:
        v = json.loads(path.read_text(encoding="utf-8"))
        lines = ["## Reproducibility", "",
                 f"Compared with the reference `{v['reference']}`: **{v['reproduced']} of {v['compared']}** values "
                 f"reproduced within rel {v['rtol']:g} / abs {v['atol']:g}; {v['differ']} differ; "
                 f"{v['missing']} reference values not compared (tasks not run or at another version"
                 + (f": {', '.join(v['missing_tasks'])}" if v.get("missing_tasks") else "") + ")."]
        if v.get("largest_differences"):
            lines += ["", tables.markdown_table(
                ["model", "task", "metric@dataset", "this run", "reference"],
                [[f"`{d['model']}`", f"`{d['task']}`", f"`{d['metric']}@{d['dataset']}`", _num(d["value"], 6),
                  _num(d["reference"], 6)] for d in v["largest_differences"]]).rstrip("\n")]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PlexbenchError(f"cannot read {path}: {e}") from None
    return "\n".join(lines) + "\n"


def _task_section(results: Results, run: dict) -> str:
    lines = ["## Key metrics per task", "",
             "Each cell: value [95% bootstrap interval] (no interval where the task computes none); "
             "`n`: examples; best model per column in bold."]
    specs = run.get("tasks") or {}
    kinds = {t.task: t.kind for t in results.tasks}
    long = results.long
    order = [t for t in (run.get("suite") or {}).get("tasks", []) if t in set(long["task"])]
    order += [t for t in dict.fromkeys(long["task"]) if t not in order]
    for task in order:
        rows = long[long["task"] == task]
        spec = specs.get(task) or {}
        kind = spec.get("kind") or kinds.get(task, "")
        description = (spec.get("spec") or {}).get("description") or ""
        version = rows["task_version"].iloc[0]
        lines += ["", f"### `{task}` ({kind}, v{version})", ""]
        if description:
            lines += [description[0].upper() + description[1:] + ".", ""]
        cols = key_columns(results, task)
        prefix = common_prefix([m for m, _ in cols])
        if prefix:
            lines += [f"Metrics under `{prefix}`:", ""]
        lines.append(task_table(rows, cols).rstrip("\n"))
    return "\n".join(lines) + "\n"


def key_columns(results: Results, task: str) -> list[tuple[str, str]]:
    """(metric, dataset) pairs shown for a task: the headline columns its kind declared (each
    task JSON's `headline`, over the task's models in order); without any, the task's first
    columns. At most `MAX_HEADLINE`."""
    pairs: list[tuple[str, str]] = []
    for rec in results.tasks:
        if rec.task == task:
            pairs += [p for p in rec.headline if p not in pairs]
    if not pairs:
        rows = results.long[results.long["task"] == task]
        pairs = list(dict.fromkeys(zip(rows["metric"], rows["dataset"])))
    return pairs[:MAX_HEADLINE]


def task_table(rows: pd.DataFrame, cols: Sequence[tuple[str, str]]) -> str:
    """One task's key-metric table over the (metric, dataset) columns `cols` (module docstring, section 2)."""
    several = len({d for _, d in cols}) > 1
    prefix = common_prefix([m for m, _ in cols])
    head = ["model", *(f"{m[len(prefix):]} @{d}" if several else m[len(prefix):] for m, d in cols), "n"]
    models = list(dict.fromkeys(rows["model"]))
    cell = {(r.model, r.metric, r.dataset): r for r in rows.itertuples(index=False)}
    values = [[getattr(cell.get((m, *c)), "value", math.nan) for c in cols] for m in models]
    best = [tables.best_mask([v[j] for v in values], direction(c[0])) for j, c in enumerate(cols)]
    body = []
    for i, m in enumerate(models):
        cells = []
        for j, c in enumerate(cols):
            r = cell.get((m, *c))
            text = MISSING if r is None else _with_interval(r.value, r.ci_low, r.ci_high)
            cells.append(f"**{text}**" if best[j][i] and len(models) > 1 else text)
        first = cell.get((m, *cols[0])) if cols else None
        n = getattr(first, "n", None)
        body.append([f"`{m}`", *cells, MISSING if n is None or pd.isna(n) else f"{int(n):,}"])
    return tables.markdown_table(head, body)


def common_prefix(metrics: Sequence[str]) -> str:
    """The leading '/'-components shared by every metric name, keeping at least one component each.

    >>> common_prefix(["ood/digits/msp/auroc", "ood/digits/maha/auroc"])
    'ood/digits/'
    >>> common_prefix(["accuracy", "nll"])
    ''
    """
    parts = [m.split("/") for m in metrics]
    if not parts:
        return ""
    shared = []
    for level in zip(*(p[:-1] for p in parts)):
        if len(set(level)) != 1:
            break
        shared.append(level[0])
    return "".join(c + "/" for c in shared)


def _figure_section(results_dir: Path) -> str:
    from plexbench.reports.plots import MANIFEST, figure_titles

    plots = results_dir / "plots"
    pngs = sorted(plots.rglob("*.png")) if plots.is_dir() else []
    if not pngs:
        return "## Figures\n\nNo figures: `plots/` holds no PNG file.\n"
    lines = ["## Figures", "", "PNG previews; a vector PDF of each lies beside it."]
    by_folder: dict[Path, list[Path]] = {}
    for p in pngs:
        by_folder.setdefault(p.parent, []).append(p)
    titles = figure_titles()
    for folder, files in by_folder.items():
        rel_folder = folder.relative_to(results_dir).as_posix()
        if len(by_folder) > 1:
            lines += ["", f"### `{rel_folder}/`"]
        kind_of = _manifest_kinds(folder / MANIFEST)
        for kind, title in list(titles.items()) + [("", "Other figures")]:
            mine = [f for f in files if kind_of.get(f.name, "") == kind]
            if not mine:
                continue
            lines += ["", f"**{title}**", ""]
            lines += [f"![{f.stem}]({f.relative_to(results_dir).as_posix()})" for f in mine]
    return "\n".join(lines) + "\n"


def _manifest_kinds(path: Path) -> dict[str, str]:
    """PNG file name -> figure kind from a plot folder's figures.json ({} when absent or unreadable)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {str(f["file"]): str(f["figure"]) for f in doc.get("figures", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _models_section(results: Results, run: dict) -> str:
    info = results.model_info()
    head = ["model", "source", "classes", "members", "parameters", "FLOPs / example", "weights sha256"]
    rows = []
    for m in results.models():
        d = info.get(m, {})
        ident = d.get("identity") or {}
        digest = ident.get("checkpoint_sha256") or ident.get("params_sha256") or ""
        rows.append([f"`{m}`", str(d.get("source") or MISSING), _int(d.get("num_classes")),
                     _int(d.get("num_members")), _int(d.get("num_params")), _big(d.get("flops_per_example")),
                     f"`{digest[:12]}`" if digest else MISSING])
    return "## Models\n\n" + tables.markdown_table(head, rows, ["l", "l", "r", "r", "r", "r", "l"])


def _provenance_section(run: dict) -> str:
    if not run:
        return "## Provenance\n\nNo `run.json` in this directory.\n"
    prov = run.get("provenance") or {}
    versions = prov.get("versions") or {}
    suite = run.get("suite") or {}
    options = run.get("options") or {}
    commit = prov.get("git_commit")
    lines = ["## Provenance", ""]
    lines.append(f"- plexbench {versions.get('plexbench', '?')}, git commit `{commit or 'unknown'}`")
    lines.append(f"- Python {prov.get('python', '?')} on `{prov.get('platform', '?')}`")
    lines.append("- packages: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())
                                           if k != "plexbench" and v))
    if suite:
        lines.append(f"- suite `{suite.get('name')}` version {suite.get('version')} "
                     f"(sha256 `{str(suite.get('sha256', ''))[:12]}`); tasks: "
                     + ", ".join(f"`{t}` v{(run.get('tasks') or {}).get(t, {}).get('version', '?')}"
                                 for t in suite.get("tasks", [])))
    lines.append(f"- options: batch size {options.get('batch_size', '?')}, dtype {options.get('dtype', '?')}, "
                 f"inference seed {(run.get('seeds') or {}).get('inference', '?')}, "
                 f"limit {options.get('limit') if options.get('limit') is not None else 'none (full splits)'}")
    datasets = run.get("datasets") or {}
    if datasets:
        lines.append(f"- {len(datasets)} dataset splits, each with its content fingerprint in `run.json` (`datasets`)")
    skipped = run.get("skipped") or []
    if skipped:
        counts: dict[str, int] = {}
        for s in skipped:
            counts[s.get("reason", "")] = counts.get(s.get("reason", ""), 0) + 1
        # one sub-item per reason: reasons contain ';' themselves, so they are not joined into one line
        lines.append(f"- {len(skipped)} (task, model) pairs skipped by design (the runner's reasons, `run.json` `skipped`):")
        lines += [f"  - {n} x {reason}" for reason, n in sorted(counts.items())]
    return "\n".join(lines) + "\n"


def _timings_section(results_dir: Path, results: Results, run: dict, demo: dict) -> str:
    lines = ["## Timings", ""]
    history = demo_history(demo)
    if history:
        lines += ["`plexbench demo` runs recorded in `demo.json` (wall seconds per stage; load = 1-minute load "
                  "average at the start, on a machine possibly shared with other work):", ""]
        lines.append(_demo_table(history).rstrip("\n"))
        if "report" not in (history[-1].get("stages") or {}):
            lines += ["", "(The last run's report stage ends after this page is written; `demo.json` has it.)"]
        lines.append("")
    timings = run.get("timings") or {}
    if run:
        lines.append(f"Last `plexbench run`: {_num(timings.get('total_s'), 1)} s; "
                     f"{len(run.get('computed') or [])} (task, model) results computed, "
                     f"{len(run.get('reused') or [])} reused from an earlier run.")
    inference = timings.get("inference") or []
    if inference:
        per_model: dict[str, list[float]] = {}
        for t in inference:
            per_model.setdefault(str(t.get("model")), []).append(float(t.get("seconds") or 0.0))
        lines += ["", "Inference in the last run (through the prediction store): "
                  + "; ".join(f"`{m}` {sum(v):.1f} s over {len(v)} split{'s' if len(v) != 1 else ''}" for m, v in per_model.items()) + "."]
    compute = task_seconds(results_dir, results)
    if compute:
        lines += ["", "Seconds to compute each (task, model) result, from its task file (inference included; "
                      "kept when a later run reuses the result):", "", _seconds_table(compute).rstrip("\n")]
    return "\n".join(lines) + "\n"


def demo_history(demo: dict) -> list[dict]:
    """Recorded demo runs, oldest first: `demo["history"]` (earlier runs) then `demo` itself."""
    if not demo:
        return []
    earlier = [h for h in demo.get("history") or [] if isinstance(h, dict)]
    latest = {k: v for k, v in demo.items() if k != "history"}
    return earlier + [latest]


def _demo_table(history: Sequence[dict]) -> str:
    seen = {s for h in history for s in (h.get("stages") or {})}
    stages = [s for s in DEMO_STAGES if s in seen] + sorted(seen - set(DEMO_STAGES))
    head = ["started (UTC)", *stages, "total", "datasets prepared", "results computed", "load"]
    rows = []
    for h in history:
        st = h.get("stages") or {}
        rows.append([str(h.get("started", "?")), *(_num(st.get(s), 1) for s in stages), _num(h.get("total_s"), 1),
                     _int(h.get("datasets_prepared")), _int(h.get("results_computed")),
                     _num(h.get("load_average"), 2)])
    return tables.markdown_table(head, rows)


def task_seconds(results_dir: Path, results: Results) -> dict[tuple[str, str], float]:
    """(task, model) -> `seconds` of its task file (files without the field are left out)."""
    out = {}
    for t in results.tasks:
        try:
            doc = json.loads(t.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # load_results has read it already; a race with a writer is not worth failing for
        seconds = doc.get("seconds") if isinstance(doc, dict) else None
        if isinstance(seconds, (int, float)):
            out[(t.task, t.model)] = float(seconds)
    return out


def _seconds_table(seconds: dict[tuple[str, str], float]) -> str:
    tasks = list(dict.fromkeys(t for t, _ in seconds))
    models = list(dict.fromkeys(m for _, m in seconds))
    rows = [[f"`{t}`", *(_num(seconds.get((t, m)), 1) for m in models)] for t in tasks]
    rows.append(["total", *(_num(sum(v for (_, mm), v in seconds.items() if mm == m), 1) for m in models)])
    return tables.markdown_table(["task", *(f"`{m}`" for m in models)], rows)


# --------------------------------------------------------------------------- formatting


def _num(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value):
        return MISSING
    return f"{float(value):.{digits}f}"


def _int(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{int(value):,}"


def _big(value) -> str:
    """FLOPs: 151306.0 -> '151.3 k'; 1.2e9 -> '1.20 G'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    v = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.{2 if unit == 'G' else 1}f} {unit}"
    return f"{v:.0f}"


def _interval(low, high, digits: int) -> str:
    if pd.isna(low) or pd.isna(high):
        return MISSING
    return f"[{float(low):.{digits}f}, {float(high):.{digits}f}]"


def _with_interval(value, low, high) -> str:
    text = _num(value, 4)
    if text == MISSING or pd.isna(low) or pd.isna(high):
        return text
    return f"{text} [{float(low):.4f}, {float(high):.4f}]"
