"""What each plot shows, computed from results files only (no drawing here; see `plots`).

Every function takes a `Results` (or the paper's numbers) and returns small dataclasses of
numpy arrays, so the numbers behind a figure can be tested and reused without matplotlib.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from plexbench.errors import PlexbenchError
from plexbench.reports import paper_numbers, reliability_score
from plexbench.reports.columns import Column, parse_column
from plexbench.results_schema import Results

# --------------------------------------------------------------------------- radar


@dataclass(frozen=True)
class RadarData:
    """`values[m, a]`: model m on axis a (normalised, NaN = not measured); `labels` name the axes."""

    labels: list[str]
    models: list[str]
    values: np.ndarray
    title: str
    note: str = ""
    relative_to_best: bool = False  # draw each axis as value / best model's value (plots.draw_radar)


def default_radar_axes(results: Results, available: Sequence[Column], max_axes: int = 8) -> list[Column]:
    """Up to `max_axes` of the `available` columns, from the headline columns the task kinds
    declared (each task JSON's `headline`), one reliability aspect at a time.

    Pass 1 takes each task's first available headline column (tasks in the order they first
    appear in the results); pass 2 fills the remaining slots with further headline columns in
    the same order. With no headline at all (results written by hand), the first available
    columns.
    """
    available_set = set(available)
    order = {t: i for i, t in enumerate(dict.fromkeys(results.long["task"]))}
    per_task: dict[str, list[Column]] = {}
    for rec in sorted(results.tasks, key=lambda r: order.get(r.task, len(order))):
        cols = per_task.setdefault(rec.task, [])
        cols += [c for c in (Column(m, d) for m, d in rec.headline) if c in available_set and c not in cols]
    chosen: list[Column] = []
    for take_all in (False, True):
        for cols in per_task.values():
            for col in (cols if take_all else cols[:1]):
                if len(chosen) < max_axes and col not in chosen:
                    chosen.append(col)
    return chosen or list(available)[:max_axes]


def radar_data(results: Results, axes: Sequence[str | Column] | None = None, *, preset: str = "plexbench",
               num_classes: Mapping[str, int] | None = None, max_axes: int = 8) -> RadarData:
    """Each model's normalised value on each axis (as in the score of `preset`).

    `axes`: `metric@dataset` strings or Columns; default: `default_radar_axes` over the
    columns every model has and the preset scores. Values are the preset's normalised
    values (1 - ece, 1 - nll/ln K, ...), so outward is better on every axis.
    """
    score = reliability_score.compute_score(results.long, preset=preset, num_classes=num_classes)
    norm = score.normalised
    if axes:
        cols = [a if isinstance(a, Column) else parse_column(a) for a in axes]
        unknown = [str(c) for c in cols if str(c) not in norm.columns]
        if unknown:
            raise PlexbenchError(f"radar axes not in the results (or not scored by preset {preset}): "
                                 f"{', '.join(unknown)}; available: {', '.join(list(norm.columns)[:12])}")
    else:
        complete = [parse_column(c) for c in norm.columns if norm[c].notna().all()]
        cols = default_radar_axes(results, complete, max_axes)
    if len(cols) < 3:
        raise PlexbenchError(f"a radar chart needs at least 3 axes; found {len(cols)} scored columns shared by all models")
    values = norm[[str(c) for c in cols]].to_numpy(dtype=np.float64)
    datasets = ", ".join(dict.fromkeys(c.dataset for c in cols))
    return RadarData([str(c) for c in cols], list(norm.index), values,
                     title=f"Reliability radar ({datasets})",
                     note=f"values normalised as in the '{preset}' score, outward = better",
                     relative_to_best=len(norm.index) > 1)


def paper_radar_data(numbers: pd.DataFrame | None = None,
                     models: Sequence[str] = ("plex_l", "det", "sota_specialized")) -> RadarData:
    """The paper's radar figure from the published numbers alone.

    Axes: every (axis, dataset, budget) of the `radar` rows. Model `plex_l` also takes the
    `plex_l_be` rows (the BatchEnsemble Plex-L numbers of the same figure), preferring
    `plex_l` where both exist. Each axis is scaled by its best shown value: value / max for
    higher-is-better axes, min / value for lower-is-better ones (the soft-label loss; the
    direction is that of the plexbench metric the axis maps to), so the
    best model on an axis sits at 1. Axes a model has no number for are NaN (a gap).
    """
    df = (paper_numbers.load_paper_numbers() if numbers is None else numbers)
    df = df[df["figure"] == "radar"]
    keys = list(dict.fromkeys(zip(df["axis"], df["dataset"], df["budget_or_quantile"])))
    raw = np.full((len(models), len(keys)), np.nan)
    for i, model in enumerate(models):
        for alias in ((model, f"{model}_be") if model == "plex_l" else (model,))[::-1]:
            rows = df[df["model"] == alias]
            for a, d, b, v in zip(rows["axis"], rows["dataset"], rows["budget_or_quantile"], rows["value"]):
                raw[i, keys.index((a, d, b))] = v  # plex_l is written last, so it wins
    lower = np.array([_paper_axis_direction(a, b) == "lower" for a, _, b in keys])
    with np.errstate(invalid="ignore", divide="ignore"):
        best = np.where(lower, np.nanmin(raw, axis=0), np.nanmax(raw, axis=0))
        values = np.where(lower, best / raw, raw / best)
    labels = [_paper_axis_label(a, d, b) for a, d, b in keys]
    return RadarData(labels, [_paper_model_label(m) for m in models], values,
                     title="Plex (Tran et al. 2022): published radar numbers",
                     note="each axis scaled by its best shown value (loss: min / value)")


def _paper_axis_direction(axis: str, budget: str) -> str | None:
    """The declared direction of the plexbench metric a paper axis maps to (None: no mapping)."""
    from plexbench.metrics.vocabulary import find_metric

    candidates = paper_numbers.plexbench_metrics(axis, budget)
    info = find_metric(candidates[0]) if candidates else None
    return info.direction if info else None


_PAPER_AXIS_SHORT = {
    "in_domain_accuracy": "in-domain accuracy",
    "label_uncertainty_soft_label_loss": "soft-label loss",
    "selective_prediction_accuracy_auc_ood": "selective prediction AUC (OOD)",
    "active_learning_accuracy": "active learning accuracy",
}


def _paper_axis_label(axis: str, dataset: str, budget: str) -> str:
    """Short two-line axis label, e.g. 'OOD AUROC (msp) vs cifar100' / 'cifar10'."""
    if m := re.fullmatch(r"ood_(\w+?)_(auroc|auprc|fpr95)_vs_(\w+)", axis):
        short = f"OOD {m[2].upper()} ({m[1]}) vs {m[3]}"
    elif m := re.fullmatch(r"subpopulation_accuracy_(\w+)", axis):
        short = f"subpopulation accuracy {m[1]}"
    else:
        short = _PAPER_AXIS_SHORT.get(axis, axis.replace("_", " "))
    return f"{short}\n{dataset}{', ' + budget if budget else ''}"


def _paper_model_label(model: str) -> str:
    return {"plex_l": "Plex-L (plex_l, plex_l_be rows)", "det": "deterministic",
            "sota_specialized": "specialised SOTA"}.get(model, model)


# --------------------------------------------------------------------------- curves in per-task JSON


@dataclass(frozen=True)
class ReliabilityBins:
    model: str
    task: str
    dataset: str
    bin_lower: np.ndarray
    bin_upper: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    ece: float = math.nan


def reliability_diagrams(results: Results) -> list[ReliabilityBins]:
    """Every `reliability_diagram` curve; empty bins (count 0) keep NaN accuracy/confidence."""
    out = []
    for t in results.tasks:
        c = t.curves.get("reliability_diagram")
        if not c:
            continue
        arr = {k: np.asarray(c[k], dtype=np.float64) for k in ("bin_lower", "bin_upper", "count", "accuracy", "confidence")}
        empty = arr["count"] == 0
        arr["accuracy"][empty] = np.nan
        arr["confidence"][empty] = np.nan
        out.append(ReliabilityBins(t.model, t.task, t.dataset, **arr, ece=float(t.metrics.get("ece", math.nan))))
    return out


@dataclass(frozen=True)
class Curve:
    model: str
    task: str
    dataset: str
    x: np.ndarray
    y: np.ndarray
    summary: float = math.nan


def risk_coverage_curves(results: Results) -> list[Curve]:
    """Every `risk_coverage` curve: x = coverage, y = risk, summary = the task's `aurc` if any."""
    out = []
    for t in results.tasks:
        c = t.curves.get("risk_coverage")
        if c:
            out.append(Curve(t.model, t.task, t.dataset, np.asarray(c["coverage"], np.float64),
                             np.asarray(c["risk"], np.float64), float(t.metrics.get("aurc", math.nan))))
    return out


@dataclass(frozen=True)
class OODScores:
    model: str
    task: str
    dataset: str
    ood_dataset: str
    scorer: str
    score_in: np.ndarray
    score_out: np.ndarray
    auroc: float = math.nan


def ood_scores(results: Results) -> list[OODScores]:
    """OOD scores (higher = more OOD) per model, in-dataset, OOD dataset and scorer.

    The task files may store an even subsample of the sorted scores; `auroc` is the task's
    own `ood/<ood>/<scorer>/auroc` (computed on all examples) when it reports one.
    """
    out = []
    for t in results.tasks:
        for ood, scorers in (t.curves.get("ood") or {}).items():
            for scorer, s in scorers.items():
                out.append(OODScores(t.model, t.task, t.dataset, ood, scorer,
                                     np.asarray(s["in"], np.float64), np.asarray(s["out"], np.float64),
                                     float(t.metrics.get(f"ood/{ood}/{scorer}/auroc", math.nan))))
    return out


def roc_curve(score_in: np.ndarray, score_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(fpr, tpr, auroc) with OOD as the positive class (label 1) and higher score = more OOD."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc_curve

    y = np.r_[np.zeros(len(score_in)), np.ones(len(score_out))]
    s = np.r_[score_in, score_out]
    if len(np.unique(y)) < 2:
        raise PlexbenchError("an ROC curve needs both in-distribution and OOD scores")
    fpr, tpr, _ = sk_roc_curve(y, s)
    return fpr, tpr, float(roc_auc_score(y, s))


@dataclass(frozen=True)
class ShiftSeries:
    """Mean over corruptions per severity, with the min and max over corruptions."""

    model: str
    dataset: str
    metric: str
    severities: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    corruptions: tuple[str, ...] = field(default_factory=tuple)


def shift_series(results: Results, metrics: Sequence[str] = ("accuracy", "ece", "nll")) -> list[ShiftSeries]:
    """From `curves.shift` ({corruption: {severity: {metric: value}}}) of every task."""
    out = []
    for t in results.tasks:
        shift = t.curves.get("shift")
        if not shift:
            continue
        for metric in metrics:
            table = pd.DataFrame({c: {int(s): v.get(metric, np.nan) for s, v in sev.items()} for c, sev in shift.items()})
            if table.isna().all().all():
                continue
            table = table.sort_index()
            out.append(ShiftSeries(t.model, t.dataset, metric, table.index.to_numpy(),
                                   table.mean(axis=1).to_numpy(), table.min(axis=1).to_numpy(),
                                   table.max(axis=1).to_numpy(), tuple(table.columns)))
    return out


@dataclass(frozen=True)
class GroupAccuracies:
    model: str
    dataset: str
    accuracy: np.ndarray


def subpopulation_groups(results: Results) -> list[GroupAccuracies]:
    """Per-subpopulation accuracies from `curves.subpopulation.group_accuracy`."""
    return [GroupAccuracies(t.model, t.dataset, np.asarray(t.curves["subpopulation"]["group_accuracy"], np.float64))
            for t in results.tasks if (t.curves.get("subpopulation") or {}).get("group_accuracy") is not None]


def paper_subpopulation_stats(numbers: pd.DataFrame | None = None) -> list[dict]:
    """Box statistics from the `subpopulation_boxplot` rows: one dict per (dataset, model).

    Keys: dataset, model, and `whislo, q1, med, q3, whishi` = p05, p25, p50, p75, p95
    (matplotlib `bxp` fields; whiskers at the 5th and 95th percentiles).
    """
    df = paper_numbers.load_paper_numbers() if numbers is None else numbers
    df = df[df["figure"] == "subpopulation_boxplot"]
    fields = {"p05": "whislo", "p25": "q1", "p50": "med", "p75": "q3", "p95": "whishi"}
    out = []
    for (dataset, model), g in df.groupby(["dataset", "model"], sort=False):
        stats = {fields[q]: v for q, v in zip(g["budget_or_quantile"], g["value"]) if q in fields}
        if len(stats) == 5:
            out.append({"dataset": dataset, "model": model, **stats})
    return out


# --------------------------------------------------------------------------- active learning


@dataclass(frozen=True)
class LearningCurve:
    """One acquisition's test accuracy against the number of labels, over seeds: `mean`, `low`
    and `high` (the minimum and maximum over seeds) per labelled size."""

    acquisition: str
    labels: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: int


@dataclass(frozen=True)
class LearningCurves:
    """The `active_learning` curves of one (task, model): one LearningCurve per acquisition, the
    mode, and the skipped acquisitions with their reasons; `references`: the paper's numbers at
    a labelled size for this dataset, (model label, labels, accuracy)."""

    model: str
    task: str
    dataset: str
    mode: str
    curves: list[LearningCurve]
    skipped: dict = field(default_factory=dict)
    references: list[tuple[str, int, float]] = field(default_factory=list)


def active_learning_curves(results: Results, numbers: pd.DataFrame | None = None) -> list[LearningCurves]:
    """Every `active_learning` curve of the results (plexbench.tasks.kinds.active_learning), with
    the paper's active-learning radar numbers for the same dataset as references."""
    out = []
    for t in results.tasks:
        c = t.curves.get("active_learning")
        if not c:
            continue
        labels = np.asarray(c["labels"], np.float64)
        curves = []
        for acq, d in c["acquisitions"].items():
            acc = np.asarray(d["accuracy"], np.float64)  # (seeds, sizes)
            curves.append(LearningCurve(acq, labels, acc.mean(axis=0), acc.min(axis=0), acc.max(axis=0), acc.shape[0]))
        out.append(LearningCurves(t.model, t.task, t.dataset, str(c.get("mode", "")), curves, dict(c.get("skipped") or {}),
                                  paper_active_learning_points(t.dataset, numbers)))
    return out


def paper_active_learning_points(dataset: str, numbers: pd.DataFrame | None = None) -> list[tuple[str, int, float]]:
    """The paper's radar numbers for active learning on `dataset`: (model label, labels, accuracy).

    >>> paper_active_learning_points("cifar10")[1]
    ('Plex-L', 1000, 0.964)
    """
    names = {"plex_l_be": "Plex-L", "plex_l": "Plex-L", "det": "deterministic", "sota_specialized": "specialised SOTA"}
    numbers = paper_numbers.load_paper_numbers() if numbers is None else numbers
    rows = numbers[(numbers["axis"] == "active_learning_accuracy") & (numbers["dataset"] == dataset)]
    out = []
    for r in rows.itertuples(index=False):
        labels = paper_numbers.label_budget(r.budget_or_quantile)
        if labels is not None:
            out.append((names.get(r.model, r.model), labels, float(r.value)))
    return out


# --------------------------------------------------------------------------- score against cost


def pareto_front(cost: Sequence[float], score: Sequence[float]) -> np.ndarray:
    """Indices of the points no other point dominates, sorted by cost (then by index).

    Lower cost and higher score are better; j dominates i when cost_j <= cost_i and
    score_j >= score_i with one of them strict. Identical points do not dominate each
    other (both are on the front). NaN points are never on the front.
    Example: cost (1, 2, 3, 4), score (50, 40, 60, 60) -> [0, 2] (1 is beaten by 0, 3 by 2).
    """
    cost = np.asarray(cost, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(cost) & np.isfinite(score))
    order = ok[np.lexsort((ok, -score[ok], cost[ok]))]  # cost up, score down, index up
    front, best, best_cost = [], -np.inf, None
    for i in order:
        if score[i] > best:
            front.append(i)
            best, best_cost = score[i], cost[i]
        elif score[i] == best and cost[i] == best_cost:
            front.append(i)
    return np.asarray(front, dtype=np.int64)


@dataclass(frozen=True)
class CostScore:
    models: list[str]
    cost: np.ndarray
    score: np.ndarray
    front: np.ndarray
    cost_name: str
    preset: str
    skipped: list[str] = field(default_factory=list)


COST_LABELS = {"num_params": "parameters", "flops_per_example": "FLOPs per example"}


def score_vs_cost(results: Results, cost: str = "num_params", *, preset: str = "plexbench",
                  baseline: str | None = None, num_classes: Mapping[str, int] | None = None) -> CostScore:
    """Reliability score (x100) against `run.json` models[name][cost]; models without it are skipped."""
    if cost not in COST_LABELS:
        raise PlexbenchError(f"unknown cost '{cost}' (choose from {', '.join(COST_LABELS)})")
    summary = reliability_score.compute_score(results.long, preset=preset, baseline=baseline,
                                              num_classes=num_classes).summary
    info = results.model_info()
    models, costs, scores, skipped = [], [], [], []
    for m in summary.index:
        c = (info.get(m) or {}).get(cost)
        if c is None or not np.isfinite(summary.at[m, "score"]):
            skipped.append(m)
            continue
        models.append(m)
        costs.append(float(c))
        scores.append(float(summary.at[m, "score"]))
    cost_arr, score_arr = np.asarray(costs), np.asarray(scores)
    return CostScore(models, cost_arr, score_arr, pareto_front(cost_arr, score_arr), cost, preset, skipped)



# --------------------------------------------------------------------------- label noise


@dataclass(frozen=True)
class NoiseAccuracy:
    """Clean test accuracy of one model's noisy-label adaptation against the fraction of wrong
    training labels, for one noise type: `rate` = realised rates (mean over draws), 0 first for
    the clean-label reference; `accuracy` the mean over draws, `low` / `high` their min and max."""

    model: str
    task: str
    dataset: str
    noise_type: str
    rate: np.ndarray
    accuracy: np.ndarray
    low: np.ndarray
    high: np.ndarray


def label_noise_accuracy(results: Results) -> list[NoiseAccuracy]:
    """From `curves.label_noise` of robustness tasks: one series per (model, task, noise type)."""
    out = []
    for t in results.tasks:
        curves = t.curves.get("label_noise") or {}
        if curves.get("protocol") != "robustness":
            continue
        clean = float((curves.get("clean") or {}).get("accuracy", math.nan))
        by_type: dict[str, list[tuple[float, list[float]]]] = {}
        for s in curves.get("settings", []):
            acc = [float(v) for v in s["metrics"].get("accuracy", [])]
            if acc:
                by_type.setdefault(s["type"], []).append((float(np.mean(s["realised_rate"])), acc))
        for noise_type, points in by_type.items():
            points = [(0.0, [clean])] + sorted(points, key=lambda p: p[0])
            out.append(NoiseAccuracy(t.model, t.task, t.dataset, noise_type,
                                     np.array([p[0] for p in points]), np.array([np.mean(p[1]) for p in points]),
                                     np.array([np.min(p[1]) for p in points]), np.array([np.max(p[1]) for p in points])))
    return out


@dataclass(frozen=True)
class NoiseDetection:
    """Issue scores (1 - label quality, higher = more likely wrong) of one model, noise setting and
    quality score, first draw: `wrong` on the wrong labels, `right` on the correct ones (sorted
    subsamples); `auroc` of that draw on every example."""

    model: str
    task: str
    dataset: str
    setting: str
    score: str
    wrong: np.ndarray
    right: np.ndarray
    auroc: float = math.nan


def label_noise_detection(results: Results) -> list[NoiseDetection]:
    """From `curves.label_noise.roc` of detection tasks: one entry per (model, task, setting, score)."""
    out = []
    for t in results.tasks:
        curves = t.curves.get("label_noise") or {}
        if curves.get("protocol") != "detection":
            continue
        roc = curves.get("roc") or {}
        order = [s["name"] for s in curves.get("settings", []) if s["name"] in roc]  # the task's order
        for setting in order + [k for k in roc if k not in order]:
            for score, s in roc[setting].items():
                out.append(NoiseDetection(t.model, t.task, t.dataset, setting, score,
                                          np.asarray(s["noisy"], np.float64), np.asarray(s["clean"], np.float64),
                                          float(s.get("auroc", math.nan))))
    return out
