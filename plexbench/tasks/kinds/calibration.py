"""calibration: ECE and its variants, calibration AUC and the reliability diagram (spec §5)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Mapping

from plexbench.tasks.kinds.base import (EvalContext, Split, TaskKind, TaskResult, jsonable, measure, selected,
                                        split_stats)
from plexbench.tasks.registry import register_kind
from plexbench.tasks.spec import POSITIVE, TaskSpec


@dataclass(frozen=True)
class CalibrationParams:
    """`num_bins`: bins of ece, adaptive_ece, classwise_ece, rms_ce and of the reliability diagram
    (spec §5: 15 equal-width bins on [0, 1])."""

    num_bins: int = field(default=15, metadata=POSITIVE)


@register_kind("calibration")
class Calibration(TaskKind):
    """Metrics (plexbench.metrics): ece (equal-width bins of the top-label confidence),
    adaptive_ece (equal-mass bins), classwise_ece, rms_ce (rms_calibration_error), calib_auc
    (ROC AUC of 'prediction incorrect' against 1 - confidence). Curve: `reliability_diagram`."""

    Params = CalibrationParams
    metrics = ("ece", "adaptive_ece", "classwise_ece", "rms_ce", "calib_auc")
    summary = "expected calibration error (and variants), calibration AUC, reliability diagram"
    category = "uncertainty"
    headline = ("ece", "adaptive_ece", "rms_ce", "calib_auc")
    figures = ("reliability",)

    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        from plexbench import metrics as M

        split, bins = inputs["eval"], task.params.num_bins
        functions = {
            "ece": functools.partial(M.ece, num_bins=bins),
            "adaptive_ece": functools.partial(M.adaptive_ece, num_bins=bins),
            "classwise_ece": functools.partial(M.classwise_ece, num_bins=bins),
            "rms_ce": functools.partial(M.rms_calibration_error, num_bins=bins),
            "calib_auc": M.calib_auc,
        }
        stats = split_stats(split)
        rows = measure(task, split.ref, {name: functions[name] for name in selected(task, self)}, stats)
        diagram = M.reliability_diagram(stats, num_bins=bins)
        return TaskResult(rows=rows, curves={"reliability_diagram": jsonable(dict(diagram))})
