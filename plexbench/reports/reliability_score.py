"""The reliability score of Plex (spec §7), in two presets: `paper` and `plexbench`.

Steps (both presets): a table with one row per model and one column per (metric, dataset)
pair of `metrics_long.csv` -> normalise each column to "higher is better, about [0, 1]" ->
drop 1-shot columns -> optionally divide by a baseline model's row -> score = unweighted
mean over columns -> per category (prediction / uncertainty / adaptation): score, number of
columns where the model is best, mean rank. Scores are shown x100.

Preset `paper` (the paper's code, quirks included):
- columns: only the metric kinds of the paper's score (last '/'-component `ece`, `loss`,
  `nll`, `accuracy`, `prec@1`, `auroc`, `brier`, `mce`, or containing `auc`, e.g.
  `calib_auc`; plexbench's soft-label loss `soft_ce` / `soft_cross_entropy` counts as the
  paper's `loss` on CIFAR-10H); other columns are excluded and listed with that reason;
- normalisation: ece -> 1 - ece; loss, nll -> 1 - value / ln(K); everything else unchanged.
  QUIRK: Brier and mCE are lower-is-better but stay UNflipped, so a larger Brier raises the
  score and the rank, as in the paper's code;
- score, category scores and mean ranks are NaN when the model lacks any of their columns;
- categories by name: a metric whose name contains "shot" -> adaptation; last component
  loss/nll/brier/mce/accuracy/prec@1 -> prediction; containing "auc", "auroc" or "ece" ->
  uncertainty.

Preset `plexbench`:
- columns: every metric with a direction (`plexbench.metrics.direction`); metrics without
  one (diversity statistics) are excluded with that reason;
- higher-is-better metrics are unchanged (all are proportions or areas in [0, 1]); every
  lower-is-better metric is flipped with a documented map (see `_PLEXBENCH_LOWER`):
  ece-like, rms_ce, fpr95, aurc, eaurc: 1 - v (all in [0, 1]); mce: 1 - v (v is mCE as a
  fraction, 1 = AlexNet's error, so the value is negative for models worse than AlexNet);
  nll, loss, soft_ce: 1 - v / ln(K) (negative when worse than the uniform prediction; not clipped,
  clipping would hide such a model); brier, ged: 1 - v / 2 (both lie in [0, 2]; GED
  equals ||y - p||^2); variance (of subpopulation accuracies in [0, 1], at most 1/4 by
  Popoviciu's inequality): 1 - 4 v. A lower-is-better metric without a map is excluded;
- a missing cell (no row, a NaN value, or a NaN after baseline division) does not make the
  score NaN: the score is the mean over the columns the model has, and `missing` lists
  the (metric, dataset) pairs it lacks (the column `n_missing` counts them);
- categories: "shot" in the name or a name starting with `active_learning` -> adaptation;
  last component loss/nll/brier/mce/accuracy/prec@1 or a `subpop/` metric -> prediction;
  everything else (calibration, selective prediction, OOD, label uncertainty) -> uncertainty.

Common rules:
- 1-shot columns (a metric naming 1 shot, see `columns.shot_count`) are dropped (spec §7);
- a shifted variant `family/variant` (e.g. `cifar10_corrupted/snow_3`) is not scored when
  the same metric is reported for the family average (`cifar10_corrupted`): the average
  already stands for the family, and 75 cells would otherwise outweigh everything else;
  variants without an average (e.g. `imagenet_v2/matched-frequency`) are scored; for the same
  reason the breakdowns of a family average (`severity_3/accuracy`, `snow/accuracy` at
  `cifar10_corrupted`) are not scored when the overall `accuracy@cifar10_corrupted` is present
  (the paper scores ImageNet-C by its average over corruptions and severities, spec §5);
- 'shot' in a metric name means few-shot, except in the corruption name `shot_noise`;
- K for loss/nll: the `num_classes` override argument, else a `num_classes` column of the
  long CSV, else `plexbench.data.registry.get_dataset(name).num_classes`; a shifted dataset
  `family/variant` and an average `x_corrupted` fall back to `family` and `x`;
- baseline division: normalised value / the baseline's normalised value in the same column;
  a baseline cell equal to 0 (paper) or <= 0 (plexbench, where a ratio to a negative number
  would reverse the order) gives NaN; the baseline itself scores 100;
- ranks: per column among the models that have it, 1 = best (highest normalised value),
  ties get the average of the ranks they span (scipy's rankdata 'average'); "best" counts
  the columns where the model's value equals the column maximum, so tied models all count;
- intervals: `metrics_long.csv` carries a per-column interval [ci_low, ci_high] but no
  bootstrap replicates, so the joint distribution of the columns is unknown (columns on
  the same test set are correlated). Rule: read each column's half-width
  h_c = (ci_high - ci_low) / 2 as z * se_c (normal approximation), carry it through the
  column's affine normalisation (|slope| * h_c) and report score +- mean_c(|slope_c| h_c).
  Since sd(sum X_c) <= sum sd(X_c) for ANY correlation, that interval covers at least the
  columns' nominal level under joint normality: conservative, never too narrow (under
  independence the exact width would be up to sqrt(C) times smaller). Baseline ratios use
  the same worst-case delta rule: h(x/b) = h_x/|b| + |x| h_b / b^2 (0 for the baseline row).
  The interval is NaN when a column the score uses has no interval.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from plexbench.errors import PlexbenchError
from plexbench.registry import Registry
from plexbench.reports.columns import Column, base_name, direction, is_shot_metric, parse_column, shot_count

CATEGORIES = ("prediction", "uncertainty", "adaptation")
SCALE = 100.0  # scores are shown x100 (spec §7.6)
# The label-uncertainty loss (cross-entropy against soft labels) is the paper's `loss` on CIFAR-10H.
_SOFT_LOSSES = ("soft_ce", "soft_cross_entropy")
_PREDICTION_BASES = frozenset({"loss", "nll", "brier", "mce", "accuracy", "prec@1", *_SOFT_LOSSES})


# --------------------------------------------------------------------------- normalisations


@dataclass(frozen=True)
class Normalisation:
    """An affine map v -> intercept + slope * v (slope may depend on K, the number of classes)."""

    name: str
    formula: str
    uses_num_classes: bool = False

    def slope(self, num_classes: float = math.nan) -> float:
        return {"identity": 1.0, "one_minus": -1.0, "half": -0.5, "variance": -4.0,
                "nll": -1.0 / math.log(num_classes) if num_classes > 1 else math.nan}[self.name]

    def apply(self, values, num_classes: float = math.nan):
        """Normalised values; `values` float array or scalar, NaN stays NaN."""
        intercept = 0.0 if self.name == "identity" else 1.0
        return intercept + self.slope(num_classes) * np.asarray(values, dtype=np.float64)


NORMALISATIONS = {
    n.name: n for n in (
        Normalisation("identity", "v"),
        Normalisation("one_minus", "1 - v"),
        Normalisation("nll", "1 - v / ln(K)", uses_num_classes=True),
        Normalisation("half", "1 - v / 2"),
        Normalisation("variance", "1 - 4 v"),
    )
}


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """How one preset treats a metric.

    `normalisation(metric) -> (name | None, reason)`: None excludes the column, `reason`
    says why (or describes a quirk); `category(metric) -> str`; `strict_missing`: True makes
    any missing cell NaN the score (paper), False scores the present columns (plexbench).
    """

    name: str
    description: str
    normalisation: Callable[[str], tuple[str | None, str]]
    category: Callable[[str], str]
    strict_missing: bool
    baseline_needs_positive: bool


PRESETS: Registry[Preset] = Registry("score preset")


def _paper_normalisation(metric: str) -> tuple[str | None, str]:
    base = base_name(metric)
    if base == "ece":
        return "one_minus", ""
    if base in ("loss", "nll", *_SOFT_LOSSES):
        return "nll", ""
    if base in ("brier", "mce"):
        return "identity", "paper quirk: lower-is-better but left unflipped, as in the paper's code"
    if base in ("accuracy", "prec@1", "auroc") or "auc" in base:
        return "identity", ""
    return None, "not one of the metric kinds of the paper's score"


def _paper_category(metric: str) -> str:
    base = base_name(metric)
    if is_shot_metric(metric):
        return "adaptation"
    if base in _PREDICTION_BASES:
        return "prediction"
    if "auc" in base or "auroc" in base or "ece" in base:
        return "uncertainty"
    # Unreachable for columns the paper preset keeps; stated for completeness.
    raise PlexbenchError(f"metric '{metric}' has no category in the paper preset")


# Lower-is-better metrics of plexbench and their map to [0, 1]: (pattern on the last '/'-component, map).
_PLEXBENCH_LOWER = (
    ("ece", "one_minus"), ("*_ece", "one_minus"), ("ece_*", "one_minus"), ("rms_ce", "one_minus"),
    ("rms_calibration_error", "one_minus"), ("fpr95", "one_minus"), ("fpr_at_95_tpr", "one_minus"),
    ("aurc", "one_minus"), ("eaurc", "one_minus"), ("mce", "one_minus"),
    ("nll", "nll"), ("loss", "nll"), ("soft_ce", "nll"), ("soft_cross_entropy", "nll"),
    ("brier", "half"), ("ged", "half"),
    ("variance", "variance"),
)


def _plexbench_normalisation(metric: str) -> tuple[str | None, str]:
    d = direction(metric)
    if d is None:
        return None, "no direction declared in plexbench.metrics"
    if d == "higher":
        return "identity", ""
    base = base_name(metric)
    for pattern, name in _PLEXBENCH_LOWER:
        if fnmatch.fnmatchcase(base, pattern):
            return name, ""
    return None, "lower-is-better metric without a declared map to [0, 1]"


def _plexbench_category(metric: str) -> str:
    low = metric.lower()
    if is_shot_metric(metric) or low.startswith("active_learning"):
        return "adaptation"
    if base_name(metric) in _PREDICTION_BASES or low.startswith("subpop/"):
        return "prediction"
    return "uncertainty"


PRESETS.add("paper", Preset(
    "paper", "the paper's score, quirks included: Brier and mCE unflipped, NaN if any column is missing",
    _paper_normalisation, _paper_category, strict_missing=True, baseline_needs_positive=False))
PRESETS.add("plexbench", Preset(
    "plexbench", "every lower-is-better metric flipped to [0, 1]; missing columns reported, not NaN",
    _plexbench_normalisation, _plexbench_category, strict_missing=False, baseline_needs_positive=True))


INTERVAL_RULE = (
    "per column, half-width h = (ci_high - ci_low) / 2 read as z * se and scaled by |slope| of the column's "
    "affine normalisation; score interval = score +- mean over used columns of the scaled h; conservative for "
    "any correlation between columns (sd of a sum <= sum of sds); baseline ratios: h(x/b) = h_x/|b| + |x| h_b/b^2; "
    "NaN when a used column has no interval")
RANK_RULE = ("per column among the models that have it, rank 1 = highest normalised value, ties get their "
             "average rank; best = columns where the model equals the column maximum (ties all count)")


def describe_presets() -> dict[str, dict]:
    """Each preset's normalisations and category rules, for the leaderboard's JSON sidecar."""
    lower = {}
    for pattern, name in _PLEXBENCH_LOWER:
        lower.setdefault(NORMALISATIONS[name].formula, []).append(pattern)
    return {
        "paper": {
            "description": PRESETS.get("paper").description,
            "normalisation": {"ece": "1 - v", "loss, nll": "1 - v / ln(K)",
                              "accuracy, prec@1, auroc, *auc*": "v",
                              "brier, mce": "v (quirk: lower-is-better, left unflipped as in the paper's code)"},
            "columns": "only the metric kinds above (last '/'-component); others excluded",
            "missing": "NaN score, category score and mean rank when any of their columns is missing",
            "categories": {"adaptation": "'shot' in the name", "prediction": "loss, nll, brier, mce, accuracy, prec@1",
                           "uncertainty": "containing auc, auroc or ece"},
        },
        "plexbench": {
            "description": PRESETS.get("plexbench").description,
            "normalisation": {"higher-is-better (proportions, AUCs)": "v",
                              **{f"lower: {', '.join(p)}": f for f, p in lower.items()}},
            "columns": "every metric with a direction; lower-is-better metrics without a map are excluded",
            "missing": "score over the present columns; missing (metric, dataset) pairs listed per model",
            "categories": {"adaptation": "'shot' in the name or active_learning*",
                           "prediction": "loss, nll, brier, mce, accuracy, prec@1, subpop/*",
                           "uncertainty": "everything else (calibration, selective prediction, OOD, label uncertainty)"},
        },
        "common": {"dropped": "1-shot columns; shifted variants family/x whose family average is present, and "
                              "breakdowns group/metric@family (per severity, per corruption) whose metric@family is present", "num_classes": "K for loss/nll: override > num_classes column > dataset registry",
                   "baseline": "normalised value / baseline's normalised value per column (0, or <= 0 for plexbench, -> NaN)",
                   "scale": "x100"},
    }


def category(metric: str, preset: str = "paper") -> str:
    """Category of a metric under a preset: 'prediction', 'uncertainty' or 'adaptation'."""
    return PRESETS.get(preset).category(metric)


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

    Each source is asked for the name itself, then its family (`family/variant` ->
    `family`), then the family without a `_corrupted` suffix. Raises PlexbenchError naming
    the dataset when none knows it.
    """
    overrides = dict(overrides or {})
    column = _num_classes_column(long)
    out = {}
    for name in datasets:
        names = _dataset_candidates(name)
        k = next((overrides[n] for n in names if n in overrides), None)
        k = k if k is not None else column.get(name)
        k = k if k is not None else next((r for r in map(_registry_num_classes, names) if r is not None), None)
        if k is None or not float(k).is_integer() or int(k) < 2:
            raise PlexbenchError(
                f"number of classes unknown for dataset '{name}' (needed to normalise nll/loss); "
                "add a num_classes column to metrics_long.csv or pass --num-classes NAME=K")
        out[name] = int(k)
    return out


def _dataset_candidates(name: str) -> list[str]:
    family = name.split("/", 1)[0]
    return list(dict.fromkeys([name, family, re.sub(r"_corrupted$", "", family)]))


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
    try:
        from plexbench.data.registry import get_dataset
    except ImportError:
        return None
    try:
        return int(get_dataset(name).num_classes)
    except (PlexbenchError, KeyError, TypeError, ValueError, AttributeError):
        return None


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


def plan_columns(columns: Sequence[Column], preset: Preset, *, include: Sequence[str] | None = None,
                 exclude: Sequence[str] | None = None) -> tuple[list[ScoredColumn], list[dict]]:
    """Split columns into scored ones (with their normalisation and category) and excluded ones.

    `include` / `exclude`: fnmatch patterns on `metric@dataset`; a column must match some
    include pattern (when given) and no exclude pattern. Besides, 1-shot columns, the
    cells of a shift family (`family/variant`) whose average `metric@family` is also present,
    and the breakdowns `group/metric@family` of such an average (per severity, per corruption)
    are excluded (each with its reason).
    """
    scored, excluded = [], []
    present = set(columns)
    families = {c.dataset.split("/", 1)[0] for c in columns if "/" in c.dataset}
    families |= {c.dataset for c in columns if c.dataset.endswith("_corrupted")}
    for col in columns:
        text = str(col)
        family = col.dataset.split("/", 1)[0]
        reason = ""
        if include and not any(fnmatch.fnmatchcase(text, p) for p in include):
            reason = "not selected by --include"
        elif exclude and any(fnmatch.fnmatchcase(text, p) for p in exclude):
            reason = "removed by --exclude"
        elif shot_count(col.metric) == 1:
            reason = "1-shot column (dropped as in the paper)"
        elif family != col.dataset and Column(col.metric, family) in present:
            reason = f"one shifted variant; the average over the family ({family}) is scored instead"
        elif col.dataset in families and "/" in col.metric and \
                Column(col.metric.rsplit("/", 1)[1], col.dataset) in present:
            overall = col.metric.rsplit("/", 1)[1]
            reason = f"a breakdown of the family average; {overall}@{col.dataset} is scored instead"
        if reason:
            excluded.append({"metric": col.metric, "dataset": col.dataset, "reason": reason})
            continue
        norm, note = preset.normalisation(col.metric)
        if norm is None:
            excluded.append({"metric": col.metric, "dataset": col.dataset, "reason": note})
            continue
        scored.append(ScoredColumn(col, norm, preset.category(col.metric), note=note))
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


def _scope_summary(norm, half, ranks, best, cols, strict: bool, prefix: str) -> pd.DataFrame:
    """score / interval / best / mean rank over the columns `cols` for every model."""
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
    return pd.DataFrame({
        f"{prefix}score": SCALE * score,
        f"{prefix}ci_low": SCALE * (score - width),
        f"{prefix}ci_high": SCALE * (score + width),
        f"{prefix}best": best[cols].sum(axis=1).astype(int) if cols else 0,
        f"{prefix}mean_rank": mean_rank,
    }, index=norm.index)


def compute_score(long: pd.DataFrame, *, preset: str = "paper", baseline: str | None = None,
                  num_classes: Mapping[str, int] | None = None, include: Sequence[str] | None = None,
                  exclude: Sequence[str] | None = None) -> ScoreResult:
    """The reliability score of every model in a long table (`metrics_long.csv` format).

    `num_classes` overrides K per dataset (tests, datasets outside the registry).
    Worked example (paper preset, one column each of accuracy and ece on one dataset):
    model A accuracy 0.9, ece 0.1 -> (0.9 + (1 - 0.1)) / 2 = 0.9 -> score 90.
    """
    p = PRESETS.get(preset)
    long = _complete_long(long)
    raw = wide_table(long)
    plan, excluded = plan_columns([parse_column(c) for c in raw.columns], p, include=include, exclude=exclude)
    if not plan:
        raise PlexbenchError(f"no column can be scored with preset '{preset}' "
                             f"(excluded: {', '.join(sorted({e['reason'] for e in excluded})) or 'none'})")
    ks = resolve_num_classes({s.column.dataset for s in plan if NORMALISATIONS[s.normalisation].uses_num_classes},
                             long, num_classes)
    plan = [ScoredColumn(s.column, s.normalisation, s.category, ks.get(s.column.dataset), s.note) for s in plan]
    norm = normalise_table(raw, plan)
    half = half_widths(wide_table(long, "ci_low"), wide_table(long, "ci_high"), plan)
    if baseline is not None:
        norm, half = divide_by_baseline(norm, half, baseline, needs_positive=p.baseline_needs_positive)
    return _summarise(p, baseline, norm, half, plan, excluded)


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


def _summarise(p: Preset, baseline, norm, half, plan, excluded) -> ScoreResult:
    ranks, best = rank_table(norm), best_table(norm)
    all_cols = [s.key for s in plan]
    parts = [_scope_summary(norm, half, ranks, best, all_cols, p.strict_missing, "")]
    missing = {m: [s.column for s in plan if pd.isna(norm.at[m, s.key])] for m in norm.index}
    counts = pd.DataFrame({"n_columns": [len(all_cols) - len(missing[m]) for m in norm.index],
                           "n_missing": [len(missing[m]) for m in norm.index]}, index=norm.index)
    parts.append(counts)
    for cat in CATEGORIES:
        cols = [s.key for s in plan if s.category == cat]
        parts.append(_scope_summary(norm, half, ranks, best, cols, p.strict_missing, f"{cat}_"))
    summary = pd.concat(parts, axis=1)
    summary.index.name = "model"
    return ScoreResult(p.name, baseline, summary, norm, ranks, list(plan), excluded,
                       {m: v for m, v in missing.items() if v})
