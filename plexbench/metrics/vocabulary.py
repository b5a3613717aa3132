"""The metric vocabulary: every fact about a metric, declared once, next to its function.

A metric module declares each name it computes with `declares` on the function (or
`declare_metric` for names without a function of their own, at the bottom of this file):

- `direction`: "higher" or "lower" is better, or None (shown in tables, never scored or ranked);
- `category`: the reliability aspect the metric measures when its task kind does not set one
  (spec §7.5: loss/nll/brier/mce/accuracy/prec@1 -> prediction; auc/auroc/ece -> uncertainty);
  a task kind may override it for all its rows (few-shot and active learning -> adaptation);
- `value_range`: the closed interval the value lies in (`math.inf` for unbounded);
- `paper` / `plexbench`: the map to "higher is better, about [0, 1]" under each reliability-score
  preset, a name of `NORMALISATIONS`, or None when the preset does not score the metric. The
  paper preset keeps the paper's quirks (Brier and mCE left unflipped, spec §7.2), each stated in
  `paper_note`; `plexbench="auto"` means identity for higher-is-better metrics;
- `description`: one line for tables and the leaderboard's JSON sidecar.

A full metric name is `/`-separated (`ood/svhn/maha/auroc`, `fewshot/5shot/prec@1`,
`severity_3/accuracy`); its LAST component is the declared name. A trailing `ci_low` / `ci_high`
component is skipped first, so an interval bound has its metric's facts. Names are matched
exactly first, then against the declared glob patterns (`oc_acc@*`). Everything downstream
(score presets, leaderboards, report, plots) reads `metric_info`, never the name itself.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from dataclasses import dataclass
from typing import Callable, Literal, TypeVar

from plexbench.errors import PlexbenchError

Direction = Literal["higher", "lower"]
F = TypeVar("F", bound=Callable)

KNOWN_CATEGORIES = ("prediction", "uncertainty", "adaptation")  # spec §7.5; kinds may add others
_INTERVAL_SUFFIXES = ("ci_low", "ci_high")


@dataclass(frozen=True)
class Normalisation:
    """An affine map v -> intercept + slope * v; the `nll` map's slope depends on K (classes)."""

    name: str
    formula: str
    intercept: float
    slope_value: float | None = None  # None: -1 / ln K

    @property
    def uses_num_classes(self) -> bool:
        return self.slope_value is None

    def slope(self, num_classes: float = math.nan) -> float:
        if self.slope_value is not None:
            return self.slope_value
        return -1.0 / math.log(num_classes) if num_classes > 1 else math.nan

    def apply(self, values, num_classes: float = math.nan):
        """Normalised values of a float array or scalar; NaN stays NaN."""
        import numpy as np

        return self.intercept + self.slope(num_classes) * np.asarray(values, dtype=np.float64)


NORMALISATIONS: dict[str, Normalisation] = {n.name: n for n in (
    Normalisation("identity", "v", 0.0, 1.0),
    Normalisation("one_minus", "1 - v", 1.0, -1.0),
    Normalisation("nll", "1 - v / ln(K)", 1.0, None),
    Normalisation("half", "1 - v / 2", 1.0, -0.5),
    Normalisation("variance", "1 - 4 v", 1.0, -4.0),
)}
PRESET_NAMES = ("paper", "plexbench")


@dataclass(frozen=True)
class MetricInfo:
    """The declared facts of one metric name (or glob pattern); see the module docstring."""

    name: str
    direction: Direction | None
    category: str
    description: str
    value_range: tuple[float, float] = (0.0, 1.0)
    paper: str | None = None
    plexbench: str | None = None
    paper_note: str = ""

    def normalisation(self, preset: str) -> str | None:
        """The name of this metric's map to [0, 1] under `preset`, None when not scored there."""
        if preset not in PRESET_NAMES:
            raise PlexbenchError(f"unknown score preset '{preset}' (choose from {', '.join(PRESET_NAMES)})")
        return self.paper if preset == "paper" else self.plexbench


_METRICS: dict[str, MetricInfo] = {}  # declaration order kept: glob patterns are tried in this order


def declare_metric(name: str, *, direction: Direction | None, category: str, description: str,
                   value_range: tuple[float, float] = (0.0, 1.0), paper: str | None = None,
                   plexbench: str | None = "auto", paper_note: str = "") -> MetricInfo:
    """Declare metric `name` (a last name component or a glob pattern); returns its MetricInfo.

    Raises ValueError for a second declaration of the same name or an unknown direction or
    normalisation (a programming error, not user input).
    """
    if direction not in ("higher", "lower", None):
        raise ValueError(f"direction must be 'higher', 'lower' or None, got {direction!r}")
    if plexbench == "auto":
        if direction == "lower":
            raise ValueError(f"metric '{name}' is lower-is-better: name its plexbench normalisation")
        plexbench = "identity" if direction == "higher" else None
    for preset, norm in (("paper", paper), ("plexbench", plexbench)):
        if norm is not None and norm not in NORMALISATIONS:
            raise ValueError(f"metric '{name}': unknown {preset} normalisation {norm!r}")
    if direction is None and (paper or plexbench):
        raise ValueError(f"metric '{name}' has no direction and cannot be scored")
    if name in _METRICS:
        raise ValueError(f"metric '{name}' declared twice")
    low, high = value_range
    if not low <= high:
        raise ValueError(f"metric '{name}': empty value range {value_range}")
    info = MetricInfo(name, direction, category, description, (float(low), float(high)), paper, plexbench,
                      paper_note)
    _METRICS[name] = info
    return info


def declares(*names: str, **facts) -> Callable[[F], F]:
    """Decorator for a metric function: `declare_metric(name, **facts)` for each of `names`."""

    def decorator(fn: F) -> F:
        for name in names:
            declare_metric(name, **facts)
        return fn

    return decorator


def base_name(metric_name: str) -> str:
    """The component of a metric name that its declaration is under.

    >>> base_name("ood/svhn/maha/auroc"), base_name("ece/ci_low"), base_name("fewshot/5shot/prec@1")
    ('auroc', 'ece', 'prec@1')
    """
    parts = [p for p in str(metric_name).strip().split("/") if p]
    while len(parts) > 1 and parts[-1] in _INTERVAL_SUFFIXES:
        parts.pop()
    if not parts:
        raise PlexbenchError(f"empty metric name {metric_name!r}")
    return parts[-1].lower()


def find_metric(metric_name: str) -> MetricInfo | None:
    """The MetricInfo of a full metric name, or None when nothing declares it."""
    base = base_name(metric_name)
    if base in _METRICS:
        return _METRICS[base]
    for pattern, info in _METRICS.items():
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(base, pattern):
            return info
    return None


def metric_info(metric_name: str) -> MetricInfo:
    """The MetricInfo of a full metric name; PlexbenchError with close matches when undeclared.

    >>> metric_info("ood/digits/msp/fpr95").direction, metric_info("oc_acc@1%").category
    ('lower', 'uncertainty')
    """
    info = find_metric(metric_name)
    if info is None:
        base = base_name(metric_name)
        close = difflib.get_close_matches(base, list(_METRICS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise PlexbenchError(f"unknown metric '{metric_name}'{hint} (declare it with "
                             "plexbench.metrics.vocabulary.declare_metric)")
    return info


def direction(metric_name: str) -> Direction | None:
    """'higher' or 'lower' (None: a declared metric without a direction); raises for an unknown name.

    >>> direction("ood/svhn/maha/fpr95"), direction("subpop/p05"), direction("ece/ci_low")
    ('lower', 'higher', 'lower')
    """
    return metric_info(metric_name).direction


def declared() -> list[MetricInfo]:
    """Every declaration, in declaration order (for docs and the leaderboard sidecar)."""
    return list(_METRICS.values())


# --------------------------------------------------------------------------- names without a function here
# The paper's own names (spec §5, §7) and the subpopulation summary statistics (spec §5: mean,
# median, variance and percentiles of the per-group accuracies).

declare_metric("prec@1", direction="higher", category="prediction", paper="identity",
               description="top-1 accuracy (the paper's name for accuracy)")
declare_metric("loss", direction="lower", category="prediction", value_range=(0.0, math.inf), paper="nll",
               plexbench="nll", description="cross-entropy loss (the paper's name for NLL)")
declare_metric("mce", direction="lower", category="prediction", value_range=(0.0, math.inf), paper="identity",
               plexbench="one_minus", paper_note="paper quirk: lower-is-better but left unflipped, as in the paper's code",
               description="mean corruption error relative to reference errors (1 = the reference model)")
declare_metric("auc", direction="higher", category="uncertainty", paper="identity",
               description="area under a ROC curve")
declare_metric("oc_auc@*", direction="higher", category="uncertainty", paper="identity",
               description="oracle-collaborative AUC with the given referred fraction")
for _name, _what in (("mean", "mean"), ("median", "median"), ("p05", "5th percentile"),
                     ("p25", "25th percentile"), ("p75", "75th percentile"), ("p95", "95th percentile")):
    declare_metric(_name, direction="higher", category="prediction",
                   description=f"{_what} of the per-subpopulation accuracies")
declare_metric("variance", direction="lower", category="prediction", value_range=(0.0, 0.25), plexbench="variance",
               description="population variance of the per-subpopulation accuracies (at most 1/4)")
