"""`plexbench leaderboard`: the models of one or more results directories, scored within groups.

Models are scored, ranked and compared within their group (`plexbench.reports.model_groups`:
models of the same modality and number of classes ran the same tasks); each group has its own score over
its own columns. Results with one group give one table, as before.

Files written from an output path `X.csv` (all atomically, via plexbench.fileio):

- `X.csv` wide: one row per model, by group, then by score within the group (NaN last), then the
  paper's reference rows (`paper:<model>`, column `kind` = `reference`, no score). Columns:
  `model`, `kind`, `group`, `task_versions` (`task=version; ...` of the model's rows), the score
  block (`score_x100`, `score_ci_low_x100`, `score_ci_high_x100`, `best`, `mean_rank`, `n_columns`,
  `n_missing`, `interval_method` (`bootstrap` from the kept resamples, else `conservative`) and
  `interval_fixed` (scored columns without resamples, held at their value), `score_note` (why a
  score is missing or partial), and per category that has scored
  columns `<cat>_score_x100`, `<cat>_best`, `<cat>_mean_rank`), then one column per (metric,
  dataset) with the RAW metric value, headed `metric@dataset (higher|lower|n/a)`.
- `X.long.csv`: the input `metrics_long.csv` files concatenated (+ `results_dir`).
- `X.json`: conventions (ECE binning, OOD positive class, FPR threshold), the preset and
  every column's normalisation and category, excluded and missing columns, the paper
  mapping used, input hashes and `plexbench.provenance.provenance()`.
- `X.md`, `X.tex`: the score table and the metric table (metrics as rows with the tasks
  and task versions that report them, models as columns, best run model in bold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from plexbench import fileio
from plexbench.errors import PlexbenchError
from plexbench.reports import paper_numbers, reliability_score, tables
from plexbench.reports.columns import direction, header, parse_column
from plexbench.reports.model_groups import ModelGroup, model_groups
from plexbench.results_schema import Results, load_results

CONVENTIONS = {
    "ece": "15 equal-width bins on [0, 1] of the top-label confidence; bin = floor(15 c) clipped to [0, 14]; "
           "ECE = sum_b (n_b / N) |acc_b - conf_b|",
    "ood": "in-distribution labelled 0, OOD labelled 1 (the positive class); higher score = more OOD; "
           "auroc = ROC AUC, auprc = average precision with OOD positive",
    "fpr95": "false-positive rate at the first threshold where TPR >= 0.95 (OOD positive)",
    "nll": "mean cross-entropy of the ensemble probabilities, clipped at 1e-7",
    "brier": "sum_k (p_k - y_k)^2 per example, averaged (range [0, 2])",
    "direction": "declared with each metric (plexbench.metrics.vocabulary); headers say (higher) or (lower); "
                 "(n/a) = not scored",
    "groups": "models are scored and ranked within groups of the same modality and number of classes (they ran the same tasks)",
    "scale": "scores and their interval bounds are x100; metric columns hold raw values",
}


@dataclass
class Leaderboard:
    """What `write_leaderboard` writes. `wide` has header strings as columns; `groups` pairs each
    model group with its score (None when no column of the group can be scored, see `notes`)."""

    results: Results
    groups: list[tuple[ModelGroup, reliability_score.ScoreResult | None]]
    wide: pd.DataFrame
    references: pd.DataFrame
    metadata: dict
    metric_headers: list[str]
    preset: str = "paper"
    baseline: str | None = None
    notes: dict[str, str] | None = None  # model -> why its score is missing or partial

    @property
    def scores(self) -> list[reliability_score.ScoreResult]:
        return [s for _, s in self.groups if s is not None]


def _score_block(group: ModelGroup, score: reliability_score.ScoreResult | None) -> pd.DataFrame:
    block = pd.DataFrame(index=pd.Index(group.models, name="model"))
    block["group"] = group.title
    if score is None:
        for name in ("score_x100", "score_ci_low_x100", "score_ci_high_x100", "mean_rank"):
            block[name] = np.nan
        for name in ("best", "n_columns", "n_missing"):
            block[name] = 0
        return block
    s = score.summary.reindex(block.index)
    for key, name in (("score", "score_x100"), ("ci_low", "score_ci_low_x100"), ("ci_high", "score_ci_high_x100")):
        block[name] = s[key]
    for key in ("best", "mean_rank", "n_columns", "n_missing", "interval_method", "interval_fixed"):
        block[key] = s[key]
    used = {c.category for c in score.columns}
    for cat in (c for c in reliability_score.categories_of(score.columns) if c in used):
        block[f"{cat}_score_x100"] = s[f"{cat}_score"]
        block[f"{cat}_best"] = s[f"{cat}_best"]
        block[f"{cat}_mean_rank"] = s[f"{cat}_mean_rank"]
    return block


def score_notes(groups, preset: str, group_errors: Mapping[str, str]) -> dict[str, str]:
    """model -> why its score is missing (NaN) or computed over fewer columns than its group's."""
    notes = {}
    for group, score in groups:
        if score is None:
            for m in group.models:
                notes[m] = f"no score: {group_errors.get(group.slug, 'no scorable column')}"
            continue
        total = len(score.columns)
        for m in group.models:
            lacks = score.missing.get(m, [])
            if not lacks:
                continue
            example = ", ".join(str(c) for c in lacks[:2]) + (" ..." if len(lacks) > 2 else "")
            if math.isnan(float(score.summary.at[m, "score"])):
                notes[m] = (f"no score: lacks {len(lacks)} of the {total} columns of the {group.title} "
                            f"({example}); the {preset} preset needs every column")
            else:
                notes[m] = f"scored on {total - len(lacks)} of {total} columns; lacks {example}"
    return notes


def wide_frame(results: Results, groups, references: pd.DataFrame, notes: Mapping[str, str]) -> pd.DataFrame:
    """The wide leaderboard table (see the module docstring)."""
    raw = reliability_score.wide_table(results.long)
    blocks = []
    for group, score in groups:
        block = _score_block(group, score)
        blocks.append(block.sort_values("score_x100", ascending=False, na_position="last", kind="stable"))
    block = pd.concat(blocks, axis=0)
    block["score_note"] = [notes.get(m, "") for m in block.index]
    order = block.index
    runs = pd.concat([block, raw.loc[order]], axis=1)
    runs.insert(0, "task_versions", [task_versions(results.long, m) for m in order])
    runs.insert(0, "kind", "run")
    if len(references):
        ref = reliability_score.wide_table(references).reindex(columns=raw.columns)
        ref.insert(0, "kind", "reference")
        runs = pd.concat([runs, ref], axis=0)
    counts = [c for c in block.columns if c in ("best", "n_columns", "n_missing") or c.endswith("_best")]
    runs[counts] = runs[counts].astype("Int64")  # reference rows have none: empty cells, not 0.0
    runs = runs.rename(columns={c: header(parse_column(c)) for c in raw.columns})
    runs.index.name = "model"
    return runs.reset_index()


def task_versions(long: pd.DataFrame, model: str | None = None) -> str:
    """`task=version` pairs ('; '-joined, sorted) of a model's rows, or of all rows."""
    rows = long if model is None else long[long["model"] == model]
    pairs = sorted({f"{t}={v}" for t, v in zip(rows["task"], rows["task_version"])})
    return "; ".join(pairs)


def _column_tasks(long: pd.DataFrame) -> dict[str, str]:
    """`metric@dataset` -> 'task v1' (', '-joined when several tasks report the column)."""
    out: dict[str, set] = {}
    for t, v, m, d in zip(long["task"], long["task_version"], long["metric"], long["dataset"]):
        out.setdefault(f"{m}@{d}", set()).add(f"{t} v{v}")
    return {k: ", ".join(sorted(v)) for k, v in out.items()}


def build_leaderboard(dirs: Sequence[str | Path], *, preset: str = "paper", baseline: str | None = None,
                      num_classes: Mapping[str, int] | None = None, include: Sequence[str] | None = None,
                      exclude: Sequence[str] | None = None, with_paper: bool = True) -> Leaderboard:
    """Read the results directories, score each model group and assemble the tables (nothing is written)."""
    results = load_results(dirs)
    if results.long.empty:
        raise PlexbenchError(f"no rows in {', '.join(str(d / 'metrics_long.csv') for d in results.dirs)}")
    clash = sorted(m for m in results.models() if m.startswith(paper_numbers.REFERENCE_PREFIX))
    if clash:
        raise PlexbenchError(f"model names starting with '{paper_numbers.REFERENCE_PREFIX}' are reserved "
                             f"for the paper's reference rows: {', '.join(clash)}")
    if baseline is not None and baseline not in results.models():
        from plexbench.registry import unknown_name_message

        raise PlexbenchError(unknown_name_message("baseline model", baseline, results.models()))
    groups, errors = [], {}
    replicates = results.replicates()
    for group in model_groups(results.long):
        long = results.long[results.long["model"].isin(group.models)]
        try:
            score = reliability_score.compute_score(
                long, preset=preset, baseline=baseline if baseline in group.models else None,
                num_classes=num_classes, include=include, exclude=exclude, replicates=replicates)
        except PlexbenchError as e:
            if len(model_groups(results.long)) == 1:
                raise
            score, errors[group.slug] = None, str(e)
        groups.append((group, score))
    if all(s is None for _, s in groups):
        raise PlexbenchError(f"no column can be scored with preset '{preset}' in any model group")
    raw_cols = [parse_column(c) for c in reliability_score.wide_table(results.long).columns]
    references = paper_numbers.reference_rows(raw_cols) if with_paper else paper_numbers.reference_rows([])
    notes = score_notes(groups, preset, errors)
    wide = wide_frame(results, groups, references, notes)
    return Leaderboard(results, groups, wide, references, _metadata(results, groups, references, preset, baseline),
                       [header(c) for c in raw_cols], preset, baseline, notes)


def _metadata(results: Results, groups, references: pd.DataFrame, preset: str, baseline: str | None) -> dict:
    from plexbench.provenance import provenance

    scores = [(g, s) for g, s in groups if s is not None]
    return {
        "conventions": CONVENTIONS,
        "preset": preset,
        "presets": reliability_score.describe_presets(),
        "baseline": baseline,
        "interval_rule": reliability_score.INTERVAL_RULE,
        "rank_rule": reliability_score.RANK_RULE,
        "groups": [{"title": g.title, "slug": g.slug, "models": list(g.models), "scored": s is not None}
                   for g, s in groups],
        "columns": [{"group": g.title, "column": c.key, "metric": c.column.metric, "dataset": c.column.dataset,
                     "direction": direction(c.column.metric), "normalisation": c.normalisation,
                     "formula": reliability_score.NORMALISATIONS[c.normalisation].formula,
                     "num_classes": c.num_classes, "category": c.category, "note": c.note or None}
                    for g, s in scores for c in s.columns],
        "task_versions": task_versions(results.long),
        "excluded_columns": [{"group": g.title, **e} for g, s in scores for e in s.excluded],
        "columns_without_interval": sorted({c for _, s in scores for c in _without_interval(results.long, s)}),
        "missing": {m: [str(c) for c in cols] for _, s in scores for m, cols in s.missing.items()},
        "paper_reference": {"source": paper_numbers.REFERENCE_SOURCE, "mapping": paper_numbers.mapping_table(),
                            "dataset_aliases": paper_numbers.DATASET_ALIASES, "rows_shown": int(len(references))},
        "inputs": [{"results_dir": str(d), "metrics_long_sha256": fileio.sha256_file(d / "metrics_long.csv")}
                   for d in results.dirs],
        "provenance": provenance(),
    }


def _without_interval(long: pd.DataFrame, score: reliability_score.ScoreResult) -> list[str]:
    """Scored columns where some row lacks ci_low/ci_high (why a score interval is NaN)."""
    scored = {s.key for s in score.columns}
    rows = long[long["ci_low"].isna() | long["ci_high"].isna()]
    return sorted({f"{m}@{d}" for m, d in zip(rows["metric"], rows["dataset"])} & scored)


# --------------------------------------------------------------------------- Markdown and LaTeX


def _score_rows(lb: Leaderboard, missing: str, text) -> tuple[list[str], list[list[str]]]:
    block = lb.wide[lb.wide["kind"] == "run"]
    cats = [c[:-len("_score_x100")] for c in block.columns if c.endswith("_score_x100") and c != "score_x100"]
    several = block["group"].nunique() > 1
    head = [text(h) for h in ("model", *(("group",) if several else ()), "score", "interval", *cats, "best",
                              "mean rank", "missing")]
    rows = []
    for d in block.to_dict("records"):
        ci = (f"[{tables.format_number(d['score_ci_low_x100'], 1, missing)}, "
              f"{tables.format_number(d['score_ci_high_x100'], 1, missing)}]")
        if math.isnan(d["score_ci_low_x100"]):
            ci = missing
        rows.append([text(d["model"]), *((text(d["group"]),) if several else ()),
                     tables.format_number(d["score_x100"], 1, missing), ci,
                     *(tables.format_number(d[f"{c}_score_x100"], 1, missing) for c in cats),
                     str(int(d["best"])), tables.format_number(d["mean_rank"], 2, missing), str(int(d["n_missing"]))])
    return head, rows


def _metric_rows(lb: Leaderboard, missing: str, text, bold) -> tuple[list[str], list[list[str]]]:
    w = lb.wide.set_index("model")
    metric_cols = lb.metric_headers
    is_run = (w["kind"] == "run").to_numpy()
    head = [text("metric@dataset (direction)"), text("task"), *map(text, w.index)]
    tasks = _column_tasks(lb.results.long)
    rows = []
    for col in metric_cols:
        values = pd.to_numeric(w[col], errors="coerce").to_numpy(dtype=np.float64)
        run_best = tables.best_mask(np.where(is_run, values, np.nan), col.rsplit("(", 1)[1].rstrip(")"))
        cells = [tables.format_number(v, 4, missing) for v in values]
        rows.append([text(col), text(tasks.get(col.rsplit(" (", 1)[0], "")),
                     *(bold(c) if b else c for c, b in zip(cells, run_best))])
    return head, rows


def _describe(lb: Leaderboard) -> str:
    base = f"; scores relative to baseline {lb.baseline} (= 100)" if lb.baseline else ""
    within = "; scored within groups of models with the same modality and number of classes" if len(lb.groups) > 1 else ""
    return f"Reliability score, preset {lb.preset}{base}{within}; scores x100"


def _notes_text(lb: Leaderboard) -> str:
    return "".join(f"- {m}: {n}\n" for m, n in (lb.notes or {}).items())


def to_markdown(lb: Leaderboard) -> str:
    """The leaderboard as Markdown: description, score table, metric table."""
    h1, r1 = _score_rows(lb, tables.MISSING_MD, str)
    h2, r2 = _metric_rows(lb, tables.MISSING_MD, str, lambda c: f"**{c}**")
    align2 = ["l", "l"] + ["r"] * (len(h2) - 2)
    note = ("Paper reference rows (`paper:*`) are numbers published with Tran et al. (2022); they are not scored."
            if len(lb.references) else "")
    notes = _notes_text(lb)
    return (f"## {_describe(lb)}\n\n" + tables.markdown_table(h1, r1) + (f"\n{notes}" if notes else "")
            + "\n## Metrics (raw values)\n\n"
            + tables.markdown_table(h2, r2, align2) + (f"\n{note}\n" if note else ""))


def to_latex(lb: Leaderboard) -> str:
    """The leaderboard as two LaTeX booktabs tables."""
    h1, r1 = _score_rows(lb, tables.MISSING_TEX, tables.escape_tex)
    h2, r2 = _metric_rows(lb, tables.MISSING_TEX, tables.escape_tex, lambda c: rf"\textbf{{{c}}}")
    return (tables.latex_table(h1, r1, caption=tables.escape_tex(_describe(lb)), label="tab:reliability-score")
            + "\n" + tables.latex_table(h2, r2, align=["l", "l"] + ["r"] * (len(h2) - 2),
                                        caption="Metrics (raw values; best run model in bold).",
                                        label="tab:reliability-metrics"))


def output_paths(out_csv: str | Path) -> dict[str, Path]:
    """`X.csv` -> {'wide': X.csv, 'long': X.long.csv, 'json': X.json, 'markdown': X.md, 'latex': X.tex}."""
    out = Path(out_csv)
    stem = out.with_suffix("") if out.suffix.lower() == ".csv" else out
    return {"wide": stem.with_name(stem.name + ".csv"), "long": stem.with_name(stem.name + ".long.csv"),
            "json": stem.with_name(stem.name + ".json"), "markdown": stem.with_name(stem.name + ".md"),
            "latex": stem.with_name(stem.name + ".tex")}


def write_leaderboard(lb: Leaderboard, out_csv: str | Path) -> dict[str, Path]:
    """Write the five files atomically; returns their paths by kind."""
    paths = output_paths(out_csv)
    fileio.write_text(paths["wide"], lb.wide.to_csv(index=False))
    fileio.write_text(paths["long"], lb.results.long.to_csv(index=False))
    fileio.write_json(paths["json"], {**lb.metadata, "files": {k: p.name for k, p in paths.items()}})
    fileio.write_text(paths["markdown"], to_markdown(lb))
    fileio.write_text(paths["latex"], to_latex(lb))
    return paths
