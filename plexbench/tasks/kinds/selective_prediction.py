"""selective_prediction: oracle-collaborative accuracy, AURC, E-AURC, risk-coverage curve (spec §5)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from plexbench.tasks.kinds.base import (EvalContext, Split, TaskKind, TaskResult, even_subsample, jsonable,
                                        measure, selected, split_stats)
from plexbench.tasks.registry import register_kind
from plexbench.tasks.spec import POSITIVE, FieldError, TaskSpec, check


def _fraction(v: float) -> bool:
    return 0.0 < v < 1.0


@dataclass(frozen=True)
class SelectiveParams:
    """`fractions`: shares of least-confident examples handed to the oracle (0.5%, 1%, 2%, 5% as
    in Plex); `curve_points`: at most this many points of the risk-coverage curve go into the
    result JSON (evenly spaced, the full curve's ends kept)."""

    fractions: tuple[float, ...] = field(default=(0.005, 0.01, 0.02, 0.05),
                                         metadata=check("fractions strictly between 0 and 1", _fraction))
    curve_points: int = field(default=1000, metadata=POSITIVE)


def oc_metric_name(fraction: float) -> str:
    """`oc_acc@<percent>%`, as `plexbench score` names it: 0.005 -> 'oc_acc@0.5%', 0.01 -> 'oc_acc@1%'."""
    return f"oc_acc@{round(fraction * 100, 10):g}%"


@register_kind("selective_prediction")
class SelectivePrediction(TaskKind):
    """Metrics: `oc_acc` (one row `oc_acc@<percent>%` per fraction: the least confident fraction
    of examples counted correct, the rest scored; multi-class definition of
    plexbench.metrics.oracle_collaborative_accuracy), `aurc` (area under the risk-coverage curve,
    risk = error rate among the most confident), `eaurc` (aurc minus that of an oracle ranking).
    Curve: `risk_coverage` {coverage, risk}."""

    Params = SelectiveParams
    metrics = ("oc_acc", "aurc", "eaurc")
    summary = "oracle-collaborative accuracy at 0.5/1/2/5%, AURC, E-AURC, risk-coverage curve"
    category = "uncertainty"
    headline = ("oc_acc@1%", "oc_acc@5%", "aurc", "eaurc")
    figures = ("risk_coverage",)

    def declared_metric(self, selector: str) -> str:
        return "oc_acc@1%" if selector == "oc_acc" else selector  # `oc_acc` selects oc_acc@<fraction> rows

    def validate(self, task: TaskSpec) -> None:
        if len(set(task.params.fractions)) != len(task.params.fractions):
            raise FieldError("params.fractions", "distinct fractions", list(task.params.fractions))

    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        from plexbench import metrics as M

        split = inputs["eval"]
        stats, wanted = split_stats(split), selected(task, self)
        functions = {}
        if "oc_acc" in wanted:
            for fraction in task.params.fractions:
                functions[oc_metric_name(fraction)] = functools.partial(M.oracle_collaborative_accuracy,
                                                                       fraction=fraction)
        for name, fn in (("aurc", M.aurc), ("eaurc", M.eaurc)):
            if name in wanted:
                functions[name] = fn
        rows = measure(task, split.ref, functions, stats)
        curve = M.risk_coverage_curve(stats)
        coverage = np.asarray(curve["coverage"], dtype=np.float64)
        keep = even_subsample(np.arange(coverage.shape[0]), task.params.curve_points)
        curves = {"risk_coverage": jsonable({"coverage": coverage[keep],
                                             "risk": np.asarray(curve["risk"], dtype=np.float64)[keep]})}
        return TaskResult(rows=rows, curves=curves)
