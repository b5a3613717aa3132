"""in_distribution: accuracy, NLL and Brier score of the ensemble prediction on one split (spec §5)."""

from __future__ import annotations

from typing import Mapping

from plexbench.tasks.kinds.base import EvalContext, Split, TaskKind, TaskResult, measure, selected, split_stats
from plexbench.tasks.registry import register_kind
from plexbench.tasks.spec import TaskSpec


@register_kind("in_distribution")
class InDistribution(TaskKind):
    """accuracy = mean(argmax p == y) (ties: the lowest class index wins, as np.argmax);
    nll = mean -log max(p_y, 1e-7) from the log-probabilities, Plex's clip (spec §5,
    plexbench.metrics.nll; it differs from the exact value only where p_y < 1e-7); brier = mean
    sum_k (p_k - onehot_k)^2; ece (15 bins) on request (`metrics: [..., ece]`, e.g. for
    ImageNet-A/R/V2 as in spec §5). All from the split's per-example statistics, one bootstrap."""

    metrics = ("accuracy", "nll", "brier", "ece")
    default_metrics = ("accuracy", "nll", "brier")
    summary = "accuracy, NLL and Brier score on the evaluated split"
    headline = ("accuracy", "nll", "brier", "ece")

    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        from plexbench import metrics as M

        split = inputs["eval"]
        functions = {"accuracy": M.accuracy, "nll": M.nll, "brier": M.brier, "ece": M.ece}
        wanted = {name: functions[name] for name in selected(task, self)}
        return TaskResult(rows=measure(task, split.ref, wanted, split_stats(split)))
