"""Drawing: paper-style figures from the data of `plot_data` (nothing here reads results).

Every `draw_*` function returns a `matplotlib.figure.Figure` built without pyplot (no global
figure state, no GUI backend); `save_figure` writes it as vector PDF (TrueType fonts) and
PNG (rendered by the Agg canvas), both atomically. Style: serif fonts, 8-9 pt text, small
single-column sizes. Every figure labels its axes (with units or "fraction") and names its
models (legend or panel titles) and datasets (title).

Figure kinds are registered with `@register_figure(name, title)`: a function that takes the
results of the tasks whose kind declares the figure (`TaskKind.figures`, written into each task
JSON) and yields (figure, file-name parts). `plot_results(dirs, out_dir)` draws every registered
figure the results support, plus the summary figures of the whole run (radar, score against
cost), and writes `figures.json` beside them: which file shows which figure kind (report.md
reads it). `plot_paper_figures(out_dir)` draws the paper's radar and subpopulation figures from
the published numbers alone.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from plexbench import fileio
from plexbench.registry import Registry
from plexbench.reports import plot_data
from plexbench.results_schema import Results, load_results

MANIFEST = "figures.json"


@dataclass(frozen=True)
class FigureKind:
    """A registered figure: `draw(results)` yields (figure, file-name parts) for the results of
    the tasks that declare it; `order` is the registration order (the report's order)."""

    name: str
    title: str
    draw: Callable[[Results], Iterable[tuple[object, tuple[str, ...]]]]
    order: int


FIGURES: Registry[FigureKind] = Registry("figure kind")
# Figures of a whole run (not fed by one task kind), in the report's order before the task figures.
SUMMARY_FIGURES = {"radar": "Reliability radar", "score_vs": "Score against cost"}


def register_figure(name: str, title: str):
    """Decorator: register a figure kind drawn from the curves of the tasks that declare it."""

    def decorator(fn):
        FIGURES.add(name, FigureKind(name, title, fn, len(FIGURES)))
        return fn

    return decorator


def figure_titles() -> dict[str, str]:
    """Figure kind -> title, summary figures first, then task figures in registration order."""
    kinds = sorted((FIGURES.get(n) for n in FIGURES.names()), key=lambda k: k.order)
    return {**SUMMARY_FIGURES, **{k.name: k.title for k in kinds}}

STYLE = {
    "font.family": "serif",
    "font.serif": ["DejaVu Serif", "Times New Roman", "Times"],
    "mathtext.fontset": "dejavuserif",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.2,
    "pdf.fonttype": 42,  # TrueType: text stays text in the PDF
    "svg.fonttype": "none",
}
PNG_DPI = 150
_PANELS_PER_ROW = 4  # per-model small multiples wrap onto more rows beyond this


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def fit_texts(fig, *, max_rounds: int = 3) -> None:
    """Wrap every title, suptitle and axis label that is wider than the space it has, so that
    nothing is clipped at the figure's edge (constrained layout then makes room for the lines).

    Space: a suptitle or the title of a figure's only panel may use 95% of the figure width; a
    panel's title and x label its panel's width; a y label its panel's height."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    for _ in range(max_rounds):
        fig.draw_without_rendering()  # runs the constrained layout: positions are final
        renderer = canvas.get_renderer()
        width, height = fig.bbox.width, fig.bbox.height
        axes = [ax for ax in fig.axes if ax.get_visible()]
        items = [(fig._suptitle, 0.95 * width, False)] if getattr(fig, "_suptitle", None) is not None else []
        for ax in axes:
            box = ax.get_position()
            centre = (box.x0 + box.x1) / 2 * width  # a title is centred on its panel
            room = 1.9 * min(centre, width - centre)
            if len(axes) > 1:
                room = min(room, box.width * width * 1.1)
            items += [(ax.title, room, False), (ax.xaxis.label, max(box.width * width, 0.5 * width), False),
                      (ax.yaxis.label, box.height * height, True)]
        changed = False
        for text, room, vertical in items:
            label = text.get_text()
            if not label:
                continue
            extent = text.get_window_extent(renderer)
            size = extent.height if vertical else extent.width
            longest = max(len(line) for line in label.split("\n"))
            if size <= room or longest <= 12:
                continue
            chars = max(12, int(longest * room / size * 0.95))
            text.set_text("\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in label.split("\n")))
            changed = True
        if not changed:
            return


def save_figure(fig, stem: str | Path) -> list[Path]:
    """Write `stem.pdf` and `stem.png` atomically (after `fit_texts`); returns both paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.backends.backend_pdf import FigureCanvasPdf

    stem = Path(stem)
    paths = []
    with paper_style():
        fit_texts(fig)
        for ext, canvas_cls, kw in (("pdf", FigureCanvasPdf, {}), ("png", FigureCanvasAgg, {"dpi": PNG_DPI})):
            buf = io.BytesIO()
            canvas_cls(fig).print_figure(buf, format=ext, **kw)
            path = stem.with_suffix(f".{ext}")
            fileio.write_bytes(path, buf.getvalue())
            paths.append(path)
    return paths


def _panels(n: int, width: float, height: float, **kw):
    """A figure with n panels, at most `_PANELS_PER_ROW` per row; returns (fig, flat axes[:n])."""
    cols, rows = min(n, _PANELS_PER_ROW), math.ceil(n / _PANELS_PER_ROW)
    fig = _figure(width * cols + 0.4, height * rows)
    axes = fig.subplots(rows, cols, squeeze=False, **kw).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _slug(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9._+-]+", "-", p).strip("-") for p in parts if p)


def _models_text(models: Sequence[str]) -> str:
    return ", ".join(dict.fromkeys(models))


# --------------------------------------------------------------------------- radar


def draw_radar(data: plot_data.RadarData, *, width: float = 4.2):
    """Radar chart, one polygon per model, outward = better.

    `data.relative_to_best`: each axis is shown as value / best model's value on that axis, on a
    radial range that starts just below the lowest ratio (stated on the figure), so two close
    models remain distinguishable; otherwise the values are drawn as they are on [0, 1].
    A model without a value on some axes is drawn through the axes it has (markers only where
    it has a value) and named as such in the legend.
    """
    values = np.asarray(data.values, dtype=np.float64)
    floor, note = 0.0, data.note
    if data.relative_to_best:
        with np.errstate(invalid="ignore", divide="ignore"):
            best = np.nanmax(values, axis=0)
            values = np.where(best > 0, values / best, np.nan)
        finite = values[np.isfinite(values)]
        low = float(finite.min()) if finite.size else 0.0
        floor = max(0.0, low - 0.25 * (1.0 - low)) if low < 1.0 else 0.9
        note = f"value / best model's value on each axis ({data.note}); centre at {floor:.3f}"
    n = len(data.labels)
    with paper_style():
        fig = _figure(width, width * 0.95)
        ax = fig.add_subplot(projection="polar")
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
        complete = bool(np.isfinite(values).all())
        closed = np.r_[angles, angles[:1]]
        labels = []
        for model, vals in zip(data.models, values):
            gaps = int(n - np.isfinite(vals).sum())
            labels.append(model + (f" (no value on {gaps} of {n} axes)" if gaps else ""))
            # one style for every model: markers at its values, lines between neighbouring axes that
            # both have one (a missing value breaks the outline); filled only when no model has a gap
            v = np.r_[vals, vals[:1]]
            (line,) = ax.plot(closed, v, marker="o", markersize=3, label=labels[-1])
            if complete:
                ax.fill(closed, v, alpha=0.08, color=line.get_color())
        ax.set_xticks(angles)
        ax.set_xticklabels([_radar_label(lbl) for lbl in data.labels], fontsize=6)
        for tick, angle in zip(ax.get_xticklabels(), angles):
            # labels on the right start at their axis, those on the left end there: no overlap with the circle
            tick.set_horizontalalignment("left" if np.cos(angle) > 0.2 else "right" if np.cos(angle) < -0.2
                                         else "center")
        ax.tick_params(axis="x", pad=4)
        finite = values[np.isfinite(values)]
        top = max(1.0, float(finite.max())) if finite.size else 1.0
        low = floor if data.relative_to_best else (min(0.0, float(finite.min())) if finite.size else 0.0)
        ax.set_ylim(low, top)
        ax.set_rlabel_position(180.0 / n)  # radial tick labels between the first two axes
        ax.tick_params(axis="y", labelsize=6)
        ax.set_xlabel(f"radius: {note}", labelpad=10, fontsize=6)
        ax.set_title(data.title, pad=14)
        columns = 1 if max(map(len, labels)) > 28 else min(3, len(data.models))
        fig.legend(loc="outside lower center", ncol=columns, frameon=False)
    return fig


def _radar_label(label: str) -> str:
    """`metric@dataset` on two lines (metric, then @dataset); other labels wrapped at 26 chars."""
    metric, sep, dataset = label.rpartition("@")
    if sep and " " not in label:
        return f"{metric}\n@{dataset}"
    return "\n".join(_wrap(line, 26) for line in label.split("\n"))


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


# --------------------------------------------------------------------------- calibration and selective prediction


def draw_reliability(diagrams: Sequence[plot_data.ReliabilityBins]):
    """Reliability diagrams of one dataset, one panel per model: accuracy per confidence bin."""
    diagrams = list(diagrams)
    with paper_style():
        fig, axes = _panels(len(diagrams), 2.0, 2.3, sharey=True)
        for ax, d in zip(axes, diagrams):
            width = d.bin_upper - d.bin_lower
            ax.bar(d.bin_lower, d.accuracy, width=width, align="edge", color="C0", edgecolor="white",
                   linewidth=0.4, label="accuracy")
            ax.bar(d.bin_lower, d.confidence - d.accuracy, bottom=d.accuracy, width=width, align="edge",
                   color="C3", alpha=0.35, label="gap to confidence")
            ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=0.8, label="perfect calibration")
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-label probability)")
            ece = "" if math.isnan(d.ece) else f", ECE {d.ece:.3f}"
            ax.set_title(f"{d.model}{ece}")
        for ax in axes[::_PANELS_PER_ROW]:
            ax.set_ylabel("accuracy (fraction correct)")
        axes[0].legend(loc="upper left", frameon=False)
        first = diagrams[0]
        fig.suptitle(f"Reliability diagram: {first.dataset} ({first.task}, {len(first.count)} bins)")
    return fig


def draw_risk_coverage(curves: Sequence[plot_data.Curve]):
    """Risk-coverage curves of one dataset, one line per model (legend: AURC when known)."""
    with paper_style():
        fig = _figure(3.4, 2.6)
        ax = fig.add_subplot()
        for c in curves:
            extra = "" if math.isnan(c.summary) else f" (AURC {c.summary:.4f})"
            ax.plot(c.x, c.y, label=f"{c.model}{extra}")
        ax.set(xlim=(0, 1), xlabel="coverage (fraction of examples kept)",
               ylabel="selective risk (error rate on kept examples)")
        ax.set_title(f"Risk-coverage: {curves[0].dataset} ({curves[0].task})")
        ax.legend(frameon=False)
    return fig


# --------------------------------------------------------------------------- OOD


def draw_ood_histograms(scores: Sequence[plot_data.OODScores], bins: int = 30):
    """Histograms of OOD scores (in vs OOD) for one (dataset, OOD dataset, scorer), a panel per model."""
    scores = list(scores)
    s0 = scores[0]
    with paper_style():
        fig, axes = _panels(len(scores), 2.2, 2.2)
        for ax, s in zip(axes, scores):
            both = np.r_[s.score_in, s.score_out]
            edges = np.histogram_bin_edges(both[np.isfinite(both)], bins=bins)
            ax.hist(s.score_in, bins=edges, density=True, alpha=0.55, label=f"in: {s.dataset}")
            ax.hist(s.score_out, bins=edges, density=True, alpha=0.55, label=f"OOD: {s.ood_dataset}")
            ax.set(xlabel=f"{s.scorer} score (higher = more OOD)", title=s.model)
        for ax in axes[::_PANELS_PER_ROW]:
            ax.set_ylabel("density (1 / score unit)")
        axes[0].legend(frameon=False)
        fig.suptitle(f"OOD scores: {s0.dataset} vs {s0.ood_dataset} ({s0.scorer})")
    return fig


def draw_ood_roc(scores: Sequence[plot_data.OODScores]):
    """ROC curves (OOD positive) for one (dataset, OOD dataset, scorer), one line per model."""
    s0 = scores[0]
    with paper_style():
        fig = _figure(3.0, 2.8)
        ax = fig.add_subplot()
        for s in scores:
            fpr, tpr, auc = plot_data.roc_curve(s.score_in, s.score_out)
            auc = auc if math.isnan(s.auroc) else s.auroc  # the task's value uses every example
            ax.plot(fpr, tpr, label=f"{s.model} (AUROC {auc:.3f})")
        ax.plot([0, 1], [0, 1], ls=":", color="0.4", lw=0.8, label="chance")
        ax.axhline(0.95, ls="--", color="0.6", lw=0.6)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate (in-distribution flagged)",
               ylabel="true-positive rate (OOD flagged)")
        ax.set_title(f"OOD ROC: {s0.dataset} vs {s0.ood_dataset} ({s0.scorer})")
        ax.legend(frameon=False, loc="lower right")
    return fig


# --------------------------------------------------------------------------- shift and subpopulations

_SHIFT_LABELS = {"accuracy": "accuracy (fraction)", "ece": "ECE (15 bins, fraction)", "nll": "NLL (nats)",
                 "brier": "Brier score"}


def draw_shift(series: Sequence[plot_data.ShiftSeries]):
    """Metrics against corruption severity for one dataset: a panel per metric, a line per model."""
    metrics = list(dict.fromkeys(s.metric for s in series))
    models = list(dict.fromkeys(s.model for s in series))
    with paper_style():
        fig = _figure(2.3 * len(metrics) + 0.4, 2.4)
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        for ax, metric in zip(axes, metrics):
            for s in (s for s in series if s.metric == metric):
                color = f"C{models.index(s.model) % 10}"
                # the curves on top; each band only as its two edges (thin, dotted) and a faint fill,
                # so overlapping bands do not hide the means
                ax.fill_between(s.severities, s.low, s.high, color=color, alpha=0.06, lw=0, zorder=1)
                for edge in (s.low, s.high):
                    ax.plot(s.severities, edge, color=color, lw=0.6, ls=":", zorder=2)
                ax.plot(s.severities, s.mean, marker="o", markersize=3, color=color, lw=1.5, label=s.model, zorder=3)
            ax.set(xlabel="corruption severity", ylabel=_SHIFT_LABELS.get(metric, metric))
            ax.set_xticks(sorted({int(v) for s in series for v in s.severities}))
        axes[0].legend(frameon=False)
        n = max(len(s.corruptions) for s in series)
        fig.suptitle(f"Covariate shift: {series[0].dataset} (mean over {n} corruptions; dotted: min and max)")
    return fig


def draw_subpopulation(groups: Sequence[plot_data.GroupAccuracies]):
    """Box plots of per-subpopulation accuracy, one box per model (whiskers: 5th-95th percentiles)."""
    with paper_style():
        fig = _figure(0.8 * len(groups) + 1.6, 2.6)
        ax = fig.add_subplot()
        ax.boxplot([g.accuracy for g in groups], whis=(5, 95), showfliers=True, widths=0.5,
                   tick_labels=[g.model for g in groups], flierprops={"markersize": 2})
        ax.set(xlabel="model", ylabel="accuracy per subpopulation (fraction)")
        ax.set_title(f"Subpopulation shift: {groups[0].dataset} ({len(groups[0].accuracy)} subpopulations)")
    return fig


def draw_paper_subpopulation(stats: Sequence[dict]):
    """The paper's subpopulation box plots from published quantiles, a panel per dataset."""
    datasets = list(dict.fromkeys(s["dataset"] for s in stats))
    with paper_style():
        fig = _figure(2.3 * len(datasets) + 0.4, 2.6)
        axes = fig.subplots(1, len(datasets), squeeze=False, sharey=False)[0]
        for ax, ds in zip(axes, datasets):
            rows = [s for s in stats if s["dataset"] == ds]
            ax.bxp([{**{k: s[k] for k in ("whislo", "q1", "med", "q3", "whishi")}, "label": s["model"], "fliers": []}
                    for s in rows], showfliers=False, widths=0.5)
            ax.set(title=ds.replace("_", " "), xlabel="model (pretraining -> fine-tuning)")
            ax.tick_params(axis="x", labelrotation=45)
        axes[0].set_ylabel("accuracy per subpopulation (fraction)")
        fig.suptitle("Plex (Tran et al. 2022): published subpopulation accuracies (p05/p25/p50/p75/p95)")
    return fig


# --------------------------------------------------------------------------- score against cost


def draw_score_vs_cost(data: plot_data.CostScore):
    """Reliability score against parameters or FLOPs, Pareto front drawn as a step line."""
    label = plot_data.COST_LABELS[data.cost_name]
    with paper_style():
        fig = _figure(3.4, 2.6)
        ax = fig.add_subplot()
        for i, m in enumerate(data.models):
            ax.scatter(data.cost[i], data.score[i], s=18, color=f"C{i % 10}", label=m, zorder=3)
        if len(data.front):
            # the front's models ringed and joined as a step (a front of one model is its ring alone)
            f = data.front
            ax.step(data.cost[f], data.score[f], where="post", color="0.2", lw=0.9, ls="--", zorder=2)
            ax.plot(data.cost[f], data.score[f], ls="none", marker="o", markersize=9, markerfacecolor="none",
                    markeredgecolor="0.2", label=f"Pareto front ({len(f)} of {len(data.models)} models)", zorder=4)
        positive = data.cost[data.cost > 0]
        if positive.size == len(data.cost) and positive.size and positive.max() / positive.min() > 10:
            ax.set_xscale("log")
        from matplotlib.ticker import EngFormatter, MaxNLocator

        if ax.get_xscale() == "linear":  # counts as 146k / 9.8M, few ticks: long numbers would collide
            ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set(xlabel=f"{label} (count)", ylabel=f"reliability score x100 ({data.preset} preset)")
        ax.set_title(f"Reliability vs {label}: {_models_text(data.models)}")
        ax.legend(frameon=False, fontsize=6)
    return fig


_ACQUISITION_ORDER = ("uniform", "entropy", "margin", "msp", "bald", "density")


def draw_active_learning(runs: Sequence[plot_data.LearningCurves]):
    """Test accuracy against the number of labels, one panel per model: one line per acquisition
    (the mean over seeds, markers at the labelled sizes; one colour per acquisition in every panel)
    with the seeds' min-max as a band; the paper's radar numbers for the dataset as labelled crosses
    when they fall in the x range. One legend for all panels."""
    with paper_style():
        fig, axes = _panels(len(runs), 2.6, 2.2, sharey=True)
        handles: dict[str, object] = {}
        for ax, run in zip(axes, runs):
            for curve in run.curves:
                order = _ACQUISITION_ORDER.index(curve.acquisition) if curve.acquisition in _ACQUISITION_ORDER else 9
                label = f"{curve.acquisition} ({curve.seeds} seed{'s' if curve.seeds > 1 else ''})"
                (line,) = ax.plot(curve.labels, curve.mean, marker="o", markersize=2.5, color=f"C{order}", label=label)
                if curve.seeds > 1:
                    ax.fill_between(curve.labels, curve.low, curve.high, color=line.get_color(), alpha=0.15, linewidth=0)
                handles.setdefault(label, line)
            lo, hi = run.curves[0].labels.min(), run.curves[0].labels.max()
            for name, x, y in run.references:
                if lo <= x <= hi:
                    ax.plot([x], [y], marker="x", color="black", markersize=5)
                    ax.annotate(f"paper: {name}", (x, y), fontsize=5, textcoords="offset points", xytext=(3, 3))
            skipped = f"; skipped: {', '.join(run.skipped)}" if run.skipped else ""
            ax.set_title(f"{run.model} ({run.mode}{skipped})")
            ax.set(xlabel="labelled examples", ylabel="test accuracy (fraction)")
        ordered = sorted(handles, key=lambda label: (_ACQUISITION_ORDER + (label.split()[0],)).index(label.split()[0]))
        fig.legend([handles[label] for label in ordered], ordered, loc="outside right center", frameon=False, fontsize=6)
        fig.suptitle(f"Active learning: {runs[0].dataset} ({runs[0].task}; band: min-max over seeds)")
    return fig


# --------------------------------------------------------------------------- registered task figures


def _grouped(items, key) -> dict:
    out: dict = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out


def _register_per_group(name: str, title: str, data: Callable, key: Callable, draw: Callable) -> None:
    """Register figure kind `name`: one figure `draw(group)` per group of the items `data(results)`
    with equal `key(item)`, the key giving the file name's parts."""

    def figures(results: Results):
        for parts, group in _grouped(data(results), key).items():
            yield draw(group), parts

    register_figure(name, title)(figures)


_register_per_group("reliability", "Reliability diagrams", plot_data.reliability_diagrams,
                    lambda d: (d.task, d.dataset), draw_reliability)


_register_per_group("risk_coverage", "Risk-coverage curves", plot_data.risk_coverage_curves,
                    lambda c: (c.task, c.dataset), draw_risk_coverage)


_register_per_group("shift", "Covariate shift by severity", plot_data.shift_series, lambda s: (s.dataset,), draw_shift)


_register_per_group("subpopulation", "Subpopulation accuracies", plot_data.subpopulation_groups,
                    lambda g: (g.dataset,), draw_subpopulation)


def _ood_key(s) -> tuple:
    return s.dataset, "vs", s.ood_dataset, s.scorer


_register_per_group("ood_roc", "OOD detection: ROC curves", plot_data.ood_scores, _ood_key, draw_ood_roc)
_register_per_group("ood_hist", "OOD detection: score histograms", plot_data.ood_scores, _ood_key,
                    draw_ood_histograms)


# --------------------------------------------------------------------------- label noise

_NOISE_TYPE_TITLES = {"symmetric": "symmetric (uniform over all classes)", "flip": "flip (uniform over the others)",
                      "asymmetric": "asymmetric (confusable classes)", "real": "real (human labels)"}
_SCORE_STYLES = {"self_confidence": "-", "normalized_margin": "--"}


def draw_label_noise_accuracy(series: Sequence[plot_data.NoiseAccuracy]):
    """Clean test accuracy against the realised fraction of wrong training labels: a panel per
    noise type, a line per model (band: min to max over noise draws; rate 0 is the clean-label
    reference)."""
    series = list(series)
    types = list(dict.fromkeys(s.noise_type for s in series))
    models = list(dict.fromkeys(s.model for s in series))
    with paper_style():
        fig, axes = _panels(len(types), 2.4, 2.5, sharey=True)
        for ax, noise_type in zip(axes, types):
            for s in (s for s in series if s.noise_type == noise_type):
                color = f"C{models.index(s.model) % 10}"
                ax.plot(s.rate, s.accuracy, marker="o", markersize=3, color=color, label=s.model)
                ax.fill_between(s.rate, s.low, s.high, color=color, alpha=0.15, lw=0)
            ax.set(xlabel="wrong training labels (fraction)", title=_NOISE_TYPE_TITLES.get(noise_type, noise_type))
            ax.margins(x=0.05)
        for ax in axes[::_PANELS_PER_ROW]:
            ax.set_ylabel("clean test accuracy (fraction)")
        axes[0].legend(frameon=False, loc="lower left")
        fig.suptitle(f"Trained on noisy labels: {series[0].dataset} ({series[0].task})")
    return fig


def draw_label_noise_roc(curves: Sequence[plot_data.NoiseDetection]):
    """ROC curves of finding wrong labels (wrong = positive) by a label-quality score: a panel per
    noise setting, colour per model, line style per score; legend AUROC of the drawn (first) draw."""
    curves = list(curves)
    settings = list(dict.fromkeys(c.setting for c in curves))
    models = list(dict.fromkeys(c.model for c in curves))
    with paper_style():
        fig, axes = _panels(len(settings), 2.4, 2.6, sharey=True)
        for ax, setting in zip(axes, settings):
            for c in (c for c in curves if c.setting == setting):
                fpr, tpr, auc = plot_data.roc_curve(c.right, c.wrong)
                auc = auc if math.isnan(c.auroc) else c.auroc
                ax.plot(fpr, tpr, color=f"C{models.index(c.model) % 10}", ls=_SCORE_STYLES.get(c.score, ":"),
                        label=f"{c.model}, {c.score.replace('_', ' ')} ({auc:.3f})")
            ax.plot([0, 1], [0, 1], ls=":", color="0.5", lw=0.8)
            ax.set(xlim=(0, 1), ylim=(0, 1.01), title=setting.replace("_", " ") + "%" * setting[-1].isdigit(),
                   xlabel="FPR (correct labels flagged)")
            ax.legend(frameon=False, loc="lower right", fontsize=5)
        for ax in axes[::_PANELS_PER_ROW]:
            ax.set_ylabel("TPR (wrong labels flagged)")
        fig.suptitle(f"Finding wrong labels: {curves[0].dataset} ({curves[0].task}; legend: AUROC)")
    return fig


def _task_dataset(item) -> tuple:
    return item.task, item.dataset


_register_per_group("label_noise_accuracy", "Label noise: clean accuracy against the noise rate",
                    plot_data.label_noise_accuracy, _task_dataset, draw_label_noise_accuracy)
_register_per_group("label_noise_roc", "Label noise: finding wrong labels (ROC)", plot_data.label_noise_detection,
                    _task_dataset, draw_label_noise_roc)
_register_per_group("active_learning", "Active learning: accuracy against labels", plot_data.active_learning_curves,
                    _task_dataset, draw_active_learning)


# --------------------------------------------------------------------------- everything for a run


def plot_results(dirs: Sequence[str | Path] | Results, out_dir: str | Path, *,
                 radar_axes: Sequence[str] | None = None, preset: str = "plexbench",
                 num_classes: Mapping[str, int] | None = None, group_folders: bool | None = None
                 ) -> tuple[list[Path], list[str]]:
    """Draw every figure the results support, and a `figures.json` manifest per folder.

    Models are drawn within their group (`plexbench.reports.model_groups`: the same modality
    and number of classes, so the same tasks): with more than one group (or `group_folders=True`) each group
    gets its own folder `out_dir/<group slug>/`, else everything goes into `out_dir`.
    Returns (written paths, notes naming each figure not drawn and why).
    """
    from plexbench.reports.model_groups import group_results, model_groups

    results = dirs if isinstance(dirs, Results) else load_results(dirs)
    groups = model_groups(results.long)
    if group_folders is None:
        group_folders = len(groups) > 1
    if not group_folders:
        return _plot_group(results, Path(out_dir), radar_axes, preset, num_classes)
    written: list[Path] = []
    notes: list[str] = []
    for group in groups:
        paths, group_notes = _plot_group(group_results(results, group), Path(out_dir) / group.slug, radar_axes,
                                         preset, num_classes)
        written += paths
        notes += [f"{group.slug}: {n}" for n in group_notes]
    return written, notes


def _plot_group(results: Results, out: Path, radar_axes, preset, num_classes) -> tuple[list[Path], list[str]]:
    """Every figure of one model group into `out` (see plot_results)."""
    written: list[Path] = []
    notes: list[str] = []
    manifest: list[dict] = []

    def emit(fig, figure: str, *name):
        paths = save_figure(fig, out / _slug(figure, *name))
        written.extend(paths)
        manifest.extend({"file": p.name, "figure": figure} for p in paths if p.suffix == ".png")

    _radar(results, radar_axes, preset, num_classes, emit, notes)
    for figure in sorted((FIGURES.get(n) for n in FIGURES.names()), key=lambda k: k.order):
        tasks = [t for t in results.tasks if figure.name in t.figures]
        if not tasks:
            continue  # no task of these results feeds this figure: nothing is missing
        drawn = 0
        for fig, name in figure.draw(Results(results.dirs, results.long, tasks, results.runs)):
            emit(fig, figure.name, *name)
            drawn += 1
        if not drawn:
            notes.append(f"{figure.name}: the tasks declaring it ({', '.join(sorted({t.task for t in tasks}))}) "
                         "hold no curves for it")
    for cost in plot_data.COST_LABELS:
        data = plot_data.score_vs_cost(results, cost, preset=preset, num_classes=num_classes)
        if data.models:
            emit(draw_score_vs_cost(data), "score_vs", cost)
        else:
            notes.append(f"score_vs_{cost}: no model has models.<name>.{cost} in run.json and a finite score")
    titles = figure_titles()
    fileio.write_json(out / MANIFEST, {"figures": [{**m, "title": titles[m["figure"]]} for m in manifest]})
    return written, notes


def _radar(results, radar_axes, preset, num_classes, emit, notes) -> None:
    from plexbench.errors import PlexbenchError

    try:
        data = plot_data.radar_data(results, radar_axes, preset=preset, num_classes=num_classes)
    except PlexbenchError as e:
        if radar_axes:  # the user asked for these axes: say what is wrong
            raise
        notes.append(f"radar: {e}")
        return
    emit(draw_radar(data), "radar")


def plot_paper_figures(out_dir: str | Path) -> list[Path]:
    """The paper's radar (Plex-L vs deterministic vs specialised SOTA), subpopulation and active
    learning figures."""
    out = Path(out_dir)
    paths = save_figure(draw_radar(plot_data.paper_radar_data(), width=5.0), out / "paper_radar")
    paths += save_figure(draw_paper_subpopulation(plot_data.paper_subpopulation_stats()), out / "paper_subpopulation")
    paths += save_figure(draw_paper_active_learning(), out / "paper_active_learning")
    return paths


def draw_paper_active_learning(datasets: Sequence[str] = ("cifar10", "cifar100", "imagenet2012")):
    """The paper's active-learning radar numbers: test accuracy at the quoted number of labels, one
    panel per dataset, one bar per model (what `active_learning` curves are compared with)."""
    with paper_style():
        fig, axes = _panels(len(datasets), 2.0, 2.2, sharey=True)
        for ax, dataset in zip(axes, datasets):
            points = plot_data.paper_active_learning_points(dataset)
            ax.bar(range(len(points)), [y for _, _, y in points], color="0.6")
            ax.set_xticks(range(len(points)), [label for label, _, _ in points], rotation=30, ha="right")
            for i, (_, _, y) in enumerate(points):
                ax.annotate(f"{y:.3f}", (i, y), ha="center", fontsize=6, textcoords="offset points", xytext=(0, 2))
            ax.set_title(f"{dataset}, {points[0][1]:,} labels" if points else dataset)
            ax.set(ylim=(0, 1), ylabel="test accuracy (fraction)")
        fig.suptitle("Active learning in the paper's radar (Tran et al. 2022; Plex-L: margin acquisition)")
    return fig
