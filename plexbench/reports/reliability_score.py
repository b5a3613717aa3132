"""The reliability score of Plex (spec §7), in two presets: `paper` and `plexbench`.

Steps (both presets): a table with one row per model and one column per (metric, dataset)
pair of `metrics_long.csv` -> normalise each column to "higher is better, about [0, 1]" ->
drop 1-shot columns -> optionally divide by a baseline model's row -> score = unweighted
mean over columns -> per category (prediction / uncertainty / adaptation): score, number of
columns where the model is best, mean rank. Scores are shown x100.

Every fact about a column comes from a declaration, read from the results files:

- its normalisation and direction from the metric's declaration
  (`plexbench.metrics.vocabulary.metric_info(metric).normalisation(preset)`), so each metric says
  how each preset maps it to [0, 1] (or that the preset does not score it);
- its category from the `category` column of `metrics_long.csv` (declared by the task kind
  that computed it, or by the metric when the kind declares none); a table without that column
  falls back to the metric's declared category;
- whether it is scored at all from the `score_exclusion` column (declared by the kind: 1-shot
  probes, single corruption cells and per-severity breakdowns of a shift average, ...).

Preset `paper` (the paper's code, quirks included, spec §7):
- columns: only the metrics the paper's score has a map for (accuracy, prec@1, auroc, any
  `*auc*` metric such as calib_auc: v; ece: 1 - v; loss, nll and the soft-label loss: 1 - v / ln K;
  QUIRK: Brier and mCE are lower-is-better but stay UNflipped, so a larger Brier raises the score
  and the rank, as in the paper's code); other columns are excluded and listed with that reason;
- score, category scores and mean ranks are NaN when the model lacks any of their columns.

Preset `plexbench`:
- columns: every metric with a direction and a declared map: higher-is-better metrics unchanged
  (all are proportions or areas in [0, 1]); ece-like, rms_ce, fpr95, aurc, eaurc: 1 - v; mce:
  1 - v (negative for models worse than the reference); nll, loss, soft_ce: 1 - v / ln K (negative
  when worse than the uniform prediction; not clipped, clipping would hide such a model); brier,
  ged: 1 - v / 2 (both lie in [0, 2]); variance of subpopulation accuracies (at most 1/4): 1 - 4 v;
- a missing cell (no row, a NaN value, or a NaN after baseline division) does not make the
  score NaN: the score is the mean over the columns the model has, and `missing` lists
  the (metric, dataset) pairs it lacks (the column `n_missing` counts them).

Common rules:
- a column with a non-empty `score_exclusion` is not scored (that text is the reason shown);
- a column's category / exclusion is that of its first row (two tasks reporting the same
  (metric, dataset) declare the same facts for it);
- K for loss/nll: the `num_classes` override argument, else the `num_classes` column of the
  long CSV, else the dataset registry (`plexbench.data.registry`, a family's K for a shift
  family or one of its members);
- baseline division: normalised value / the baseline's normalised value in the same column;
  a baseline cell equal to 0 (paper) or <= 0 (plexbench, where a ratio to a negative number
  would reverse the order) gives NaN; the baseline itself scores 100;
- ranks: per column among the models that have it, 1 = best (highest normalised value),
  ties get the average of the ranks they span (scipy's rankdata 'average'); "best" counts
  the columns where the model's value equals the column maximum, so tied models all count;
- intervals, two methods (the summary's `interval_method` says which a model got):
  * `bootstrap` (issue 12 item 5), when the results keep the bootstrap resamples of the scored
    columns (`tasks/<task>/<model>.bootstrap.npz`, `plexbench.results_schema`): for resample b,
    every column's resampled value is normalised like the column (and divided by the baseline's
    resample b under a baseline), the score of resample b is the mean over the columns as for the
    point score, and the interval is the 2.5th-97.5th percentile of those B scores. Columns of one
    task share the resample draws (same seed, same rows), so their correlation is kept; columns of
    tasks with the same seed and number of examples share them too (the draws depend only on seed,
    size and b). B is the smallest number of resamples among the columns. A scored column without
    resamples (a summary such as a subpopulation percentile or a few-shot probe, or a task without
    bootstrap) is held at its value: the interval covers the test-set resampling of the others;
    `interval_fixed` counts such columns.
  * `conservative`, otherwise: `metrics_long.csv` carries a per-column interval [ci_low, ci_high]
    but not the joint distribution of the columns (columns on the same test set are correlated).
    Rule: read each column's half-width h_c = (ci_high - ci_low) / 2 as z * se_c (normal
    approximation), carry it through the column's affine normalisation (|slope| * h_c) and report
    score +- mean_c(|slope_c| h_c). Since sd(sum X_c) <= sum sd(X_c) for ANY correlation, that
    interval covers at least the columns' nominal level under joint normality: conservative, never
    too narrow (under independence the exact width would be up to sqrt(C) times smaller). Baseline
    ratios use the same worst-case delta rule: h(x/b) = h_x/|b| + |x| h_b / b^2 (0 for the
    baseline row). The interval is NaN when a column the score uses has no interval.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from plexbench.errors import PlexbenchError
from plexbench.registry import Registry
from plexbench.metrics.vocabulary import KNOWN_CATEGORIES, NORMALISATIONS, find_metric
from plexbench.reports.columns import Column, parse_column

CATEGORIES = KNOWN_CATEGORIES  # spec §7.5; categories a kind adds are scored after these
SCALE = 100.0  # scores are shown x100 (spec §7.6)


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """How one preset scores: `strict_missing` True makes any missing cell NaN the score (paper),
    False scores the present columns (plexbench); `baseline_needs_positive` (see the docstring)."""

    name: str
    description: str
    strict_missing: bool
    baseline_needs_positive: bool

    def normalisation(self, metric: str) -> tuple[str | None, str]:
        """(normalisation name or None, note): None excludes the column and the note says why;
        otherwise the note states a declared quirk (or is empty)."""
        info = find_metric(metric)
        if info is None:
            return None, "not declared in plexbench.metrics.vocabulary"
        norm = info.normalisation(self.name)
        if norm is not None:
            return norm, info.paper_note if self.name == "paper" else ""
        if self.name == "paper":
            return None, "not one of the metric kinds of the paper's score"
        if info.direction is None:
            return None, "no direction declared in plexbench.metrics"
        return None, "lower-is-better metric without a declared map to [0, 1]"


PRESETS: Registry[Preset] = Registry("score preset")
PRESETS.add("paper", Preset(
    "paper", "the paper's score, quirks included: Brier and mCE unflipped, NaN if any column is missing",
    strict_missing=True, baseline_needs_positive=False))
PRESETS.add("plexbench", Preset(
    "plexbench", "every lower-is-better metric flipped to [0, 1]; missing columns reported, not NaN",
    strict_missing=False, baseline_needs_positive=True))


INTERVAL_RULE = (
    "bootstrap (when the results keep the resamples of the scored columns): the score of every resample, "
    "each column normalised (and baseline-divided) per resample, columns without resamples held at their "
    "value; 2.5th-97.5th percentile. Otherwise conservative: per column, half-width h = (ci_high - ci_low) / 2 read as z * se and scaled by |slope| of the column's "
    "affine normalisation; score interval = score +- mean over used columns of the scaled h; conservative for "
    "any correlation between columns (sd of a sum <= sum of sds); baseline ratios: h(x/b) = h_x/|b| + |x| h_b/b^2; "
    "NaN when a used column has no interval")
RANK_RULE = ("per column among the models that have it, rank 1 = highest normalised value, ties get their "
             "average rank; best = columns where the model equals the column maximum (ties all count)")


def describe_presets() -> dict[str, dict]:
    """Each preset's declared normalisations, for the leaderboard's JSON sidecar."""
    from plexbench.metrics.vocabulary import declared

    out = {}
    for name, preset in PRESETS.items():
        maps: dict[str, list[str]] = {}
        for info in declared():
            norm = info.normalisation(name)
            if norm is not None:
                key = NORMALISATIONS[norm].formula + (f" ({info.paper_note})" if name == "paper" and info.paper_note else "")
                maps.setdefault(key, []).append(info.name)
        out[name] = {"description": preset.description,
                     "normalisation": {f: ", ".join(m) for f, m in maps.items()},
                     "missing": ("NaN score, category score and mean rank when any of their columns is missing"
                                 if preset.strict_missing else
                                 "score over the present columns; missing (metric, dataset) pairs listed per model")}
    out["common"] = {
        "columns": "metrics declared with a map for the preset (plexbench.metrics.vocabulary); others excluded",
        "categories": "the category column of metrics_long.csv, declared by the task kind (or the metric)",
        "dropped": "rows with a score_exclusion declared by their task kind (1-shot probes, shift cells and "
                   "breakdowns of a family average)",
        "num_classes": "K for loss/nll: override > num_classes column > dataset registry",
        "baseline": "normalised value / baseline's normalised value per column (0, or <= 0 for plexbench, -> NaN)",
        "scale": "x100"}
    return out


# --------------------------------------------------------------------------- the table


def wide_table(long: pd.DataFrame, value: str = "value") -> pd.DataFrame:
    """Pivot a long table to models x columns.

    Returns a float64 DataFrame, index = model (order of first appearance), columns =
    `metric@dataset` strings (`str(Column)`) sorted by (dataset, metric). A (model, metric, dataset) that
    occurs more than once must carry the same value (rows from two tasks computing the same
    number); different values raise PlexbenchError naming both sources.
    """
    _check_duplicates(long)
    firsts = long.drop_duplicates(["model", "metric", "dataset"])
    models = list(dict.fromkeys(firsts["model"]))
    cols = sorted({Column(m, d) for m, d in zip(firsts["metric"], firsts["dataset"])}, key=lambda c: (c.dataset, c.metric))
    out = pd.DataFrame(np.nan, index=pd.Index(models, name="model"), columns=[str(c) for c in cols])
    for model, metric, dataset, v in zip(firsts["model"], firsts["metric"], firsts["dataset"], firsts[value]):
        out.at[model, str(Column(metric, dataset))] = v
    return out


def _check_duplicates(long: pd.DataFrame) -> None:
    dup = long[long.duplicated(["model", "metric", "dataset"], keep=False)]
    for (model, metric, dataset), group in dup.groupby(["model", "metric", "dataset"], sort=False):
        values = group["value"].to_numpy(dtype=np.float64)
        if np.allclose(values, values[0], rtol=1e-9, atol=0.0, equal_nan=True):
            continue
        where = [f"{v:g} (task {t}, split {s}, {r})" for v, t, s, r in
                 zip(values, group["task"], group["split"], group.get("results_dir", group["task"]))]
        raise PlexbenchError(f"conflicting values for model {model}, {metric}@{dataset}: {' vs '.join(where[:2])}")


# --------------------------------------------------------------------------- number of classes


def resolve_num_classes(datasets: Iterable[str], long: pd.DataFrame | None = None,
                        overrides: Mapping[str, int] | None = None) -> dict[str, int]:
    """K for each dataset: override > `num_classes` column of `long` > dataset registry.

    The registry knows datasets and shift families (a family average such as
    `cifar10_corrupted` and its members `cifar10_corrupted/snow_3` have the family's K).
    Raises PlexbenchError naming the dataset when no source knows it.
    """
    overrides = dict(overrides or {})
    column = _num_classes_column(long)
    out = {}
    for name in datasets:
        k = overrides.get(name)
        k = k if k is not None else column.get(name)
        k = k if k is not None else _registry_num_classes(name)
        if k is None or not float(k).is_integer() or int(k) < 2:
            raise PlexbenchError(
                f"number of classes unknown for dataset '{name}' (needed to normalise nll/loss); "
                "add a num_classes column to metrics_long.csv or pass --num-classes NAME=K")
        out[name] = int(k)
    return out


def _num_classes_column(long: pd.DataFrame | None) -> dict[str, float]:
    if long is None or "num_classes" not in long.columns:
        return {}
    known = long.dropna(subset=["num_classes"]).drop_duplicates(["dataset", "num_classes"])
    clash = known[known.duplicated("dataset", keep=False)]
    if len(clash):
        name = clash["dataset"].iloc[0]
        ks = ", ".join(str(k) for k in clash.loc[clash["dataset"] == name, "num_classes"])
        raise PlexbenchError(f"dataset '{name}' has different num_classes in metrics_long.csv ({ks})")
    return dict(zip(known["dataset"], known["num_classes"]))


def _registry_num_classes(name: str) -> int | None:
    """K of a registered dataset, or of a shift family (its members share the K), else None."""
    from plexbench.data.registry import DATASETS, FAMILIES

    if name in FAMILIES and FAMILIES[name]:
        name = FAMILIES[name][0]
    return int(DATASETS.get(name).num_classes) if name in DATASETS else None


# --------------------------------------------------------------------------- the score


@dataclass(frozen=True)
class ScoredColumn:
    column: Column
    normalisation: str
    category: str
    num_classes: int | None = None
    note: str = ""

    @property
    def key(self) -> str:
        return str(self.column)

    @property
    def slope(self) -> float:
        return NORMALISATIONS[self.normalisation].slope(self.num_classes or math.nan)


@dataclass
class ScoreResult:
    """Output of `compute_score`.

    - `summary`: index model; columns `score`, `score_ci_low`, `score_ci_high`, `best`,
      `mean_rank`, `n_columns`, `n_missing`, then per category c: `c_score`, `c_ci_low`,
      `c_ci_high`, `c_best`, `c_mean_rank`. Scores and their bounds are x100.
    - `normalised`: models x scored columns (`metric@dataset`), normalised (and
      baseline-divided) values, NOT x100.
    - `ranks`: same shape, 1 = best, ties averaged, NaN where missing.
    - `columns`: the scored columns (normalisation, category, K).
    - `excluded`: dicts `{metric, dataset, reason}` for columns not in the score.
    - `missing`: model -> list of `Column` it lacks among the scored columns.
    """

    preset: str
    baseline: str | None
    summary: pd.DataFrame
    normalised: pd.DataFrame
    ranks: pd.DataFrame
    columns: list[ScoredColumn]
    excluded: list[dict] = field(default_factory=list)
    missing: dict[str, list[Column]] = field(default_factory=dict)


@dataclass(frozen=True)
class ColumnFacts:
    """What the results declare about one (metric, dataset) column (its first row's facts)."""

    category: str
    score_exclusion: str = ""


def column_facts(long: pd.DataFrame) -> dict[Column, ColumnFacts]:
    """Category and score exclusion of every column of a long table, from its `category` and
    `score_exclusion` columns (the declarations the task kinds wrote); a table without them (one
    written by hand) takes each metric's declared category and scores every column."""
    has_cat, has_excl = "category" in long.columns, "score_exclusion" in long.columns
    out: dict[Column, ColumnFacts] = {}
    cats = long["category"] if has_cat else [""] * len(long)
    excl = long["score_exclusion"] if has_excl else [""] * len(long)
    for metric, dataset, cat, why in zip(long["metric"], long["dataset"], cats, excl):
        col = Column(metric, dataset)
        if col in out:
            continue
        if not isinstance(cat, str) or not cat:
            info = find_metric(metric)
            cat = info.category if info else ""
        out[col] = ColumnFacts(cat, why if isinstance(why, str) else "")
    return out


def plan_columns(columns: Sequence[Column], preset: Preset, facts: Mapping[Column, ColumnFacts], *,
                 include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
                 ) -> tuple[list[ScoredColumn], list[dict]]:
    """Split columns into scored ones (with their normalisation and category) and excluded ones.

    `include` / `exclude`: the user's selection of `metric@dataset` columns
    (`plexbench.results_schema.user_selection`). A column with a declared score exclusion, or
    without a map in the preset, or without a category, is excluded with its reason.
    """
    from plexbench.results_schema import user_selection

    scored, excluded = [], []
    for col in columns:
        fact = facts.get(col, ColumnFacts(""))
        reason = user_selection(str(col), include, exclude) or fact.score_exclusion
        if not reason:
            norm, note = preset.normalisation(col.metric)
            if norm is None:
                reason = note
            elif not fact.category:
                reason = "no category declared"
        if reason:
            excluded.append({"metric": col.metric, "dataset": col.dataset, "reason": reason})
            continue
        scored.append(ScoredColumn(col, norm, fact.category, note=note))
    return scored, excluded


def normalise_table(raw: pd.DataFrame, plan: Sequence[ScoredColumn]) -> pd.DataFrame:
    """Apply each column's normalisation; returns models x plan columns (float64)."""
    out = pd.DataFrame(index=raw.index, columns=[s.key for s in plan], dtype=np.float64)
    for s in plan:
        out[s.key] = NORMALISATIONS[s.normalisation].apply(raw[s.key].to_numpy(), s.num_classes or math.nan)
    return out


def half_widths(ci_low: pd.DataFrame, ci_high: pd.DataFrame, plan: Sequence[ScoredColumn]) -> pd.DataFrame:
    """|slope| * (ci_high - ci_low) / 2 per cell: the interval half-width on the normalised scale."""
    out = pd.DataFrame(index=ci_low.index, columns=[s.key for s in plan], dtype=np.float64)
    for s in plan:
        out[s.key] = abs(s.slope) * (ci_high[s.key] - ci_low[s.key]).to_numpy() / 2.0
    return out


def divide_by_baseline(norm: pd.DataFrame, half: pd.DataFrame, baseline: str, *,
                       needs_positive: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ratios to the baseline row and their worst-case half-widths (see the module docstring)."""
    if baseline not in norm.index:
        from plexbench.registry import unknown_name_message

        raise PlexbenchError(unknown_name_message("baseline model", baseline, list(map(str, norm.index))))
    b = norm.loc[baseline]
    bad = (b <= 0) if needs_positive else (b == 0)
    b = b.mask(bad)
    hb = half.loc[baseline]
    ratio = norm / b
    ratio_half = half / b.abs() + norm.abs() * hb / (b * b)
    ratio_half.loc[baseline] = 0.0  # the baseline's ratio is 1 by construction
    return ratio, ratio_half


def rank_table(norm: pd.DataFrame) -> pd.DataFrame:
    """Per column, rank 1 = highest value; ties get their average rank; NaN stays NaN."""
    return norm.rank(axis=0, method="average", ascending=False, na_option="keep")


def best_table(norm: pd.DataFrame) -> pd.DataFrame:
    """True where the model's value equals the column maximum over the models that have it."""
    return norm.eq(norm.max(axis=0, skipna=True), axis=1) & norm.notna()


@dataclass(frozen=True)
class Resamples:
    """Normalised bootstrap resamples of the scored columns: `values[m]` float64 (B, C) in plan order
    for model m (a column without resamples repeats the model's value: held fixed); `fixed[m]`:
    those columns' keys; models without any resampled column are absent."""

    values: dict[str, np.ndarray]
    fixed: dict[str, list[str]]
    keys: list[str]


def resampled_table(models, plan: Sequence[ScoredColumn], replicates, raw: pd.DataFrame) -> Resamples | None:
    """The normalised resamples of every model (see `Resamples`); None when no model has any."""
    found = {m: {s.key: np.asarray(replicates[m][(s.column.metric, s.column.dataset)], np.float64)
                 for s in plan if (s.column.metric, s.column.dataset) in (replicates.get(m) or {})}
             for m in models}
    sizes = [a.shape[0] for cols in found.values() for a in cols.values()]
    if not sizes:
        return None
    b = min(sizes)
    values, fixed = {}, {}
    for m in models:
        if not found[m]:
            continue
        columns, held = [], []
        for s in plan:
            norm = NORMALISATIONS[s.normalisation]
            if s.key in found[m]:
                columns.append(norm.apply(found[m][s.key][:b], s.num_classes or math.nan))
            else:
                if not pd.isna(raw.at[m, s.key]):
                    held.append(s.key)
                columns.append(np.full(b, float(norm.apply(raw.at[m, s.key], s.num_classes or math.nan))))
        values[m], fixed[m] = np.stack(columns, axis=1), held
    return Resamples(values, fixed, [s.key for s in plan])


def divide_resamples_by_baseline(boot: Resamples, baseline: str, *, needs_positive: bool) -> Resamples:
    """Each model's resample b divided by the baseline's resample b, column by column (a baseline
    resample equal to 0, or <= 0 when `needs_positive`, gives NaN)."""
    if baseline not in boot.values:
        return Resamples({}, {}, boot.keys)
    base = boot.values[baseline]
    base = np.where((base <= 0) if needs_positive else (base == 0), np.nan, base)
    return Resamples({m: v / base for m, v in boot.values.items()}, boot.fixed, boot.keys)


def _bootstrap_bounds(boot: Resamples | None, model: str, cols: Sequence[str], strict: bool) -> tuple[float, float]:
    """(low, high) percentile interval of the model's resampled score over `cols`, NaN when unknown."""
    if boot is None or model not in boot.values or not cols:
        return math.nan, math.nan
    index = [boot.keys.index(c) for c in cols]
    sub = boot.values[model][:, index]
    if strict and np.isnan(sub).any():
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column missing in every resample
        scores = np.nanmean(sub, axis=1)
    scores = scores[np.isfinite(scores)]
    if not scores.size:
        return math.nan, math.nan
    low, high = np.quantile(scores, [0.025, 0.975])
    return float(low), float(high)


def _scope_summary(norm, half, ranks, best, cols, strict: bool, prefix: str, boot: Resamples | None = None
                   ) -> pd.DataFrame:
    """score / interval / best / mean rank over the columns `cols` for every model (the interval
    from the resamples where the model has them, else the conservative rule)."""
    sub, h, r = norm[cols], half[cols], ranks[cols]
    skip = not strict
    if cols:
        score = sub.mean(axis=1, skipna=skip)
        # Half-width over the columns the score used; NaN if one of them has no interval.
        h_used = h.where(sub.notna())
        width = h_used.mean(axis=1, skipna=True).where(~(h_used.isna() & sub.notna()).any(axis=1))
        mean_rank = r.mean(axis=1, skipna=skip)
    else:
        score = width = mean_rank = pd.Series(np.nan, index=norm.index)
    low, high = SCALE * (score - width), SCALE * (score + width)
    if boot is not None:
        for m in norm.index:
            if m in boot.values and not pd.isna(score.get(m, np.nan)):
                lo, hi = _bootstrap_bounds(boot, m, cols, strict)
                low[m], high[m] = SCALE * lo, SCALE * hi
    return pd.DataFrame({
        f"{prefix}score": SCALE * score,
        f"{prefix}ci_low": low,
        f"{prefix}ci_high": high,
        f"{prefix}best": best[cols].sum(axis=1).astype(int) if cols else 0,
        f"{prefix}mean_rank": mean_rank,
    }, index=norm.index)


def compute_score(long: pd.DataFrame, *, preset: str = "paper", baseline: str | None = None,
                  num_classes: Mapping[str, int] | None = None, include: Sequence[str] | None = None,
                  exclude: Sequence[str] | None = None,
                  replicates: Mapping[str, Mapping[tuple[str, str], np.ndarray]] | None = None) -> ScoreResult:
    """The reliability score of every model in a long table (`metrics_long.csv` format).

    `num_classes` overrides K per dataset (tests, datasets outside the registry). `replicates`:
    model -> {(metric, dataset): (B,) bootstrap resamples} (`Results.replicates()`), for the
    bootstrap interval (module docstring); without, the conservative interval.
    Worked example (paper preset, one column each of accuracy and ece on one dataset):
    model A accuracy 0.9, ece 0.1 -> (0.9 + (1 - 0.1)) / 2 = 0.9 -> score 90.
    """
    p = PRESETS.get(preset)
    long = _complete_long(long)
    raw = wide_table(long)
    plan, excluded = plan_columns([parse_column(c) for c in raw.columns], p, column_facts(long),
                                  include=include, exclude=exclude)
    if not plan:
        raise PlexbenchError(f"no column can be scored with preset '{preset}' "
                             f"(excluded: {', '.join(sorted({e['reason'] for e in excluded})) or 'none'})")
    ks = resolve_num_classes({s.column.dataset for s in plan if NORMALISATIONS[s.normalisation].uses_num_classes},
                             long, num_classes)
    plan = [ScoredColumn(s.column, s.normalisation, s.category, ks.get(s.column.dataset), s.note) for s in plan]
    norm = normalise_table(raw, plan)
    half = half_widths(wide_table(long, "ci_low"), wide_table(long, "ci_high"), plan)
    boot = resampled_table(norm.index, plan, replicates, raw) if replicates else None
    if baseline is not None:
        if boot is not None:
            boot = divide_resamples_by_baseline(boot, baseline, needs_positive=p.baseline_needs_positive)
        norm, half = divide_by_baseline(norm, half, baseline, needs_positive=p.baseline_needs_positive)
    return _summarise(p, baseline, norm, half, plan, excluded, boot)


def _complete_long(long: pd.DataFrame) -> pd.DataFrame:
    """Check the required columns; add absent optional ones (intervals NaN, text '')."""
    missing = [c for c in ("model", "dataset", "metric", "value") if c not in long.columns]
    if missing:
        raise PlexbenchError(f"long table lacks columns {', '.join(missing)}")
    if long.empty:
        raise PlexbenchError("no rows to score")
    defaults = {"ci_low": np.nan, "ci_high": np.nan, "task": "", "split": ""}
    extra = {k: v for k, v in defaults.items() if k not in long.columns}
    return long.assign(**extra) if extra else long


def categories_of(plan: Sequence[ScoredColumn]) -> list[str]:
    """The categories a score reports: the spec's three always (NaN when empty), then any category a
    task kind added, in order of first appearance."""
    extra = [c for c in dict.fromkeys(s.category for s in plan) if c not in CATEGORIES]
    return list(CATEGORIES) + extra


def _summarise(p: Preset, baseline, norm, half, plan, excluded, boot: Resamples | None = None) -> ScoreResult:
    ranks, best = rank_table(norm), best_table(norm)
    all_cols = [s.key for s in plan]
    parts = [_scope_summary(norm, half, ranks, best, all_cols, p.strict_missing, "", boot)]
    missing = {m: [s.column for s in plan if pd.isna(norm.at[m, s.key])] for m in norm.index}
    resampled = boot.values if boot is not None else {}
    counts = pd.DataFrame({"n_columns": [len(all_cols) - len(missing[m]) for m in norm.index],
                           "n_missing": [len(missing[m]) for m in norm.index],
                           "interval_method": ["bootstrap" if m in resampled else "conservative" for m in norm.index],
                           "interval_fixed": [len(boot.fixed.get(m, [])) if m in resampled else 0
                                              for m in norm.index]}, index=norm.index)
    parts.append(counts)
    for cat in categories_of(plan):
        cols = [s.key for s in plan if s.category == cat]
        parts.append(_scope_summary(norm, half, ranks, best, cols, p.strict_missing, f"{cat}_", boot))
    summary = pd.concat(parts, axis=1)
    summary.index.name = "model"
    return ScoreResult(p.name, baseline, summary, norm, ranks, list(plan), excluded,
                       {m: v for m, v in missing.items() if v})
