"""`plexbench leaderboard`: one table of models from one or more results directories.

Files written from an output path `X.csv` (all atomically, via plexbench.fileio):

- `X.csv` wide: one row per model, sorted by score (NaN last), then the paper's reference
  rows (`paper:<model>`, column `kind` = `reference`, no score). Columns: `model`, `kind`,
  `task_versions` (`task=version; ...` of the model's rows), the score block (`score_x100`, `score_ci_low_x100`, `score_ci_high_x100`, `best`,
  `mean_rank`, `n_columns`, `n_missing`, and per category that has scored columns
  `<cat>_score_x100`, `<cat>_best`, `<cat>_mean_rank`), then one column per (metric,
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
from plexbench.results_schema import Results, load_results

CONVENTIONS = {
    "ece": "15 equal-width bins on [0, 1] of the top-label confidence; bin = floor(15 c) clipped to [0, 14]; "
           "ECE = sum_b (n_b / N) |acc_b - conf_b|",
    "ood": "in-distribution labelled 0, OOD labelled 1 (the positive class); higher score = more OOD; "
           "auroc = ROC AUC, auprc = average precision with OOD positive",
    "fpr95": "false-positive rate at the first threshold where TPR >= 0.95 (OOD positive)",
    "nll": "mean cross-entropy of the ensemble probabilities, clipped at 1e-7",
    "brier": "sum_k (p_k - y_k)^2 per example, averaged (range [0, 2])",
    "direction": "from plexbench.metrics.direction; headers say (higher) or (lower); (n/a) = not scored",
    "scale": "scores and their interval bounds are x100; metric columns hold raw values",
}


@dataclass
class Leaderboard:
    """What `write_leaderboard` writes. `wide` has header strings as columns."""

    results: Results
    score: reliability_score.ScoreResult
    wide: pd.DataFrame
    references: pd.DataFrame
    metadata: dict
    metric_headers: list[str]


def _score_block(score: reliability_score.ScoreResult) -> pd.DataFrame:
    s = score.summary
    block = pd.DataFrame(index=s.index)
    for key, name in (("score", "score_x100"), ("ci_low", "score_ci_low_x100"), ("ci_high", "score_ci_high_x100")):
        block[name] = s[key]
    for key in ("best", "mean_rank", "n_columns", "n_missing"):
        block[key] = s[key]
    used = {c.category for c in score.columns}
    for cat in (c for c in reliability_score.CATEGORIES if c in used):
        block[f"{cat}_score_x100"] = s[f"{cat}_score"]
        block[f"{cat}_best"] = s[f"{cat}_best"]
        block[f"{cat}_mean_rank"] = s[f"{cat}_mean_rank"]
    return block


def wide_frame(results: Results, score: reliability_score.ScoreResult, references: pd.DataFrame) -> pd.DataFrame:
    """The wide leaderboard table (see the module docstring)."""
    raw = reliability_score.wide_table(results.long)
    block = _score_block(score)
    order = block.sort_values("score_x100", ascending=False, na_position="last", kind="stable").index
    runs = pd.concat([block.loc[order], raw.loc[order]], axis=1)
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
    """Read the results directories, score them and assemble the tables (nothing is written)."""
    results = load_results(dirs)
    if results.long.empty:
        raise PlexbenchError(f"no rows in {', '.join(str(d / 'metrics_long.csv') for d in results.dirs)}")
    clash = sorted(m for m in results.models() if m.startswith(paper_numbers.REFERENCE_PREFIX))
    if clash:
        raise PlexbenchError(f"model names starting with '{paper_numbers.REFERENCE_PREFIX}' are reserved "
                             f"for the paper's reference rows: {', '.join(clash)}")
    score = reliability_score.compute_score(results.long, preset=preset, baseline=baseline, num_classes=num_classes,
                                            include=include, exclude=exclude)
    raw_cols = [parse_column(c) for c in reliability_score.wide_table(results.long).columns]
    references = paper_numbers.reference_rows(raw_cols) if with_paper else paper_numbers.reference_rows([])
    wide = wide_frame(results, score, references)
    return Leaderboard(results, score, wide, references, _metadata(results, score, references),
                       [header(c) for c in raw_cols])


def _metadata(results: Results, score: reliability_score.ScoreResult, references: pd.DataFrame) -> dict:
    from plexbench.provenance import provenance

    return {
        "conventions": CONVENTIONS,
        "preset": score.preset,
        "presets": reliability_score.describe_presets(),
        "baseline": score.baseline,
        "interval_rule": reliability_score.INTERVAL_RULE,
        "rank_rule": reliability_score.RANK_RULE,
        "columns": [{"column": s.key, "metric": s.column.metric, "dataset": s.column.dataset,
                     "direction": direction(s.column.metric), "normalisation": s.normalisation,
                     "formula": reliability_score.NORMALISATIONS[s.normalisation].formula,
                     "num_classes": s.num_classes, "category": s.category, "note": s.note or None}
                    for s in score.columns],
        "task_versions": task_versions(results.long),
        "excluded_columns": score.excluded,
        "columns_without_interval": _without_interval(results.long, score),
        "missing": {m: [str(c) for c in cols] for m, cols in score.missing.items()},
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
    cats = [c for c in reliability_score.CATEGORIES if f"{c}_score_x100" in block.columns]
    head = [text(h) for h in ("model", "score", "interval", *cats, "best", "mean rank", "missing")]
    rows = []
    for d in block.to_dict("records"):
        ci = (f"[{tables.format_number(d['score_ci_low_x100'], 1, missing)}, "
              f"{tables.format_number(d['score_ci_high_x100'], 1, missing)}]")
        if math.isnan(d["score_ci_low_x100"]):
            ci = missing
        rows.append([text(d["model"]), tables.format_number(d["score_x100"], 1, missing), ci,
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
    base = f"; scores relative to baseline {lb.score.baseline} (= 100)" if lb.score.baseline else ""
    return f"Reliability score, preset {lb.score.preset}{base}; scores x100"


def to_markdown(lb: Leaderboard) -> str:
    """The leaderboard as Markdown: description, score table, metric table."""
    h1, r1 = _score_rows(lb, tables.MISSING_MD, str)
    h2, r2 = _metric_rows(lb, tables.MISSING_MD, str, lambda c: f"**{c}**")
    align2 = ["l", "l"] + ["r"] * (len(h2) - 2)
    note = ("Paper reference rows (`paper:*`) are numbers published with Tran et al. (2022); they are not scored."
            if len(lb.references) else "")
    return (f"## {_describe(lb)}\n\n" + tables.markdown_table(h1, r1) + "\n## Metrics (raw values)\n\n"
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
