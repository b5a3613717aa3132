"""in_distribution: accuracy, NLL and Brier score of the ensemble prediction on one split (spec §5)."""

from __future__ import annotations

from typing import Mapping

from plexbench.tasks.kinds.base import EvalContext, Split, TaskKind, TaskResult, measure, selected
from plexbench.tasks.registry import register_kind
from plexbench.tasks.spec import TaskSpec


@register_kind("in_distribution")
class InDistribution(TaskKind):
    """accuracy = mean(argmax p == y) (ties: the lowest class index wins, as np.argmax);
    nll = mean -log p_y, exact from the log-probabilities (plexbench.metrics.nll;
    Plex's clip at 1e-7 differs only where p_y < 1e-7); brier = mean sum_k (p_k - onehot_k)^2; ece (15 bins) on
    request (`metrics: [..., ece]`, e.g. for ImageNet-A/R/V2 as in spec §5)."""

    metrics = ("accuracy", "nll", "brier", "ece")
    default_metrics = ("accuracy", "nll", "brier")
    summary = "accuracy, NLL and Brier score on the evaluated split"
    headline = ("accuracy", "nll", "brier", "ece")

    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        from plexbench import metrics as M

        split = inputs["eval"]
        arrays = {"accuracy": (M.accuracy, split.probs), "nll": (M.nll, split.log_probs),
                  "brier": (M.brier, split.probs), "ece": (M.ece, split.probs)}
        rows = [measure(task, split.ref, name, arrays[name][0], (split.labels, arrays[name][1]))
                for name in selected(task, self)]
        return TaskResult(rows=rows)
