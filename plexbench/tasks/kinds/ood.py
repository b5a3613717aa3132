"""ood: an in-distribution split against one or more OOD dataset references (spec §5, OOD).

Open-set recognition is the same kind with a class filter: e.g. Fashion-MNIST test classes 0-5
(in-distribution) against classes 6-9 of the same split (`classes:` on both references).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

from plexbench.tasks.kinds.base import (EvalContext, Need, Split, TaskKind, TaskResult, check_dataset_ref,
                                        even_subsample, jsonable, measure, selected, split_stats)
from plexbench.tasks.registry import register_kind
from plexbench.tasks.spec import POSITIVE, DatasetRef, FieldError, SplitRole, TaskSpec

SCORERS = ("msp", "entropy", "mlogit", "maha", "rmaha")  # the default `scorers`
EMBEDDING_SCORERS = ("maha", "rmaha")
# Scorers read from a model output of their own (Split.extras), asked for by name: scorer -> output.
EXTRA_SCORERS = {"gp_variance": "gp_variance"}
Scorer = Literal["msp", "entropy", "mlogit", "maha", "rmaha", "gp_variance"]


@dataclass(frozen=True)
class OODRef(DatasetRef):
    """A DatasetRef with `distance`: near or far OOD (recorded in the result JSON's info)."""

    distance: Literal["near", "far"] | None = None


@dataclass(frozen=True)
class OODParams:
    """- `ood`: the OOD dataset references (default split: test).
    - `scorers`: OOD scores, higher = more OOD (plexbench.metrics): msp = 1 - max p,
      entropy = -sum p log p, mlogit = -max logit, maha / rmaha = (relative) Mahalanobis distance
      on pre-logits (a T5's final decoder hidden state), fitted on the in-distribution dataset's
      `fit_split`; gp_variance = an SNGP head's predictive variance, mean over members
      (plexbench.metrics.ood.gp_variance_score; not a default: only models with an SNGP head
      have it, the others skip it with the reason).
    - `fit_split`, `fit_limit`: the Mahalanobis fit uses the first `fit_limit` examples (dataset
      order; all when left out) of that split, with the in-distribution reference's class filter
      and preprocessing. Only read when a Mahalanobis scorer is asked for.
    - `curve_points`: at most this many scores per side go into the result JSON's `ood` curves:
      the sorted scores at evenly spaced ranks (so a histogram keeps its shape).
    """

    ood: tuple[OODRef, ...]
    scorers: tuple[Scorer, ...] = SCORERS
    fit_split: SplitRole = "train"
    fit_limit: int | None = field(default=None, metadata=POSITIVE)
    curve_points: int = field(default=2000, metadata=POSITIVE)


_METRIC_FUNCTIONS = {"auroc": "auroc", "auprc": "auprc", "fpr95": "fpr_at_95_tpr"}


@register_kind("ood")
class OOD(TaskKind):
    """Rows `ood/<ood label>/<scorer>/<auroc|auprc|fpr95>` with OOD as the positive class
    (in-distribution 0, OOD 1); `dataset` is the in-distribution label, n = in + OOD examples. A
    scorer whose input the predictions lack (mlogit without logits, maha without pre-logits, e.g.
    from prediction files; gp_variance from a model without an SNGP head) is left out and named
    in the result's `info.skipped_scorers` with the reason.
    Intervals: stratified bootstrap, the in-distribution rows resampled with the task seed (the
    same draws for every OOD set and scorer) and the rows of the j-th OOD set (0-based) on their
    own with stream 1 + j of it (plexbench.metrics.bootstrap); each scorer's scores are sorted once
    and a resample repeats them, O(N + M)."""

    Params = OODParams
    metrics = ("auroc", "auprc", "fpr95")
    summary = "OOD detection (near/far, open-set): msp, entropy, mlogit, (relative) Mahalanobis; AUROC, AUPRC, FPR@95"
    category = "uncertainty"
    headline = ("ood/*/msp/auroc", "ood/*/gp_variance/auroc", "ood/*/entropy/auroc", "ood/*/mlogit/auroc",
                "ood/*/maha/auroc",
                "ood/*/rmaha/auroc", "ood/*/msp/fpr95")
    figures = ("ood_roc", "ood_hist")

    def score_exclusion(self, task: TaskSpec | None, metric: str, dataset: str) -> str:
        """Rows of a scorer that only some models have (gp_variance: SNGP heads) are reported but
        not scored: a reliability score compares models on the same columns (the paper preset
        needs every column), and a model without the head would lack them. Rows are named
        `ood/<label>/<scorer>/<metric>` by this kind (labels have no '/')."""
        parts = metric.split("/")
        if len(parts) == 4 and parts[0] == "ood" and parts[2] in EXTRA_SCORERS:
            return f"{parts[2]}: a scorer only models with an SNGP head have"
        return ""

    def validate(self, task: TaskSpec) -> None:
        p = task.params
        if not p.ood:
            raise FieldError("params.ood", "a non-empty list of dataset references", [])
        for i, ref in enumerate(p.ood):
            check_dataset_ref(ref, f"params.ood[{i}]")
        labels = [r.label for r in p.ood]
        for i, label in enumerate(labels):
            if labels.index(label) != i:
                raise FieldError(f"params.ood[{i}]", "OOD references with distinct names (set alias:)", label)
        if len(set(p.scorers)) != len(p.scorers):
            raise FieldError("params.scorers", "distinct scorers", list(p.scorers))
        if any(s in EMBEDDING_SCORERS for s in p.scorers):
            fit = dataclasses.replace(task.dataset, split=p.fit_split)
            check_dataset_ref(fit, "dataset", split_path="params.fit_split")

    def needs(self, task: TaskSpec) -> list[Need]:
        p = task.params
        embed = any(s in EMBEDDING_SCORERS for s in p.scorers)
        needs = [Need("eval", task.dataset, embed)]
        needs += [Need(f"ood:{ref.label}", ref, embed) for ref in p.ood]
        if embed:
            fit = dataclasses.replace(task.dataset, split=p.fit_split, limit=p.fit_limit, alias=None)
            needs.append(Need("fit", fit, True, optional=True))
        return needs

    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        from plexbench import metrics as M

        p, ind = task.params, inputs["eval"]
        skipped = _missing_inputs(p.scorers, inputs)
        scorers = [s for s in p.scorers if s not in skipped]
        maha = None
        if any(s in EMBEDDING_SCORERS for s in scorers):
            fit = inputs["fit"]
            maha = M.MahalanobisScorer().fit(fit.embeddings, fit.labels)
        scores_in = ood_scores(ind, scorers, maha)
        result = TaskResult(info={"skipped_scorers": skipped, "ood_sets": {}})
        curves: dict = {}
        for j, ref in enumerate(p.ood):
            out = inputs[f"ood:{ref.label}"]
            scores_out = ood_scores(out, scorers, maha)
            result.info["ood_sets"][ref.label] = {"dataset": ref.name, "split": ref.split, "n": out.n,
                                                  "classes": ref.classes, "distance": ref.distance}
            detection = M.DetectionSet({scorer: M.DetectionScores(scores_in[scorer], scores_out[scorer], stream=1 + j)
                                        for scorer in scorers})
            functions = {f"ood/{ref.label}/{scorer}/{metric}": _detection_metric(scorer, metric)
                         for scorer in scorers for metric in selected(task, self)}
            if functions:
                result.rows += measure(task, ind.ref, functions, detection)
            curves[ref.label] = {scorer: {"in": even_subsample(np.sort(scores_in[scorer]), p.curve_points),
                                          "out": even_subsample(np.sort(scores_out[scorer]), p.curve_points)}
                                 for scorer in scorers}
        result.curves = {"ood": jsonable(curves)}
        return result


def _detection_metric(scorer: str, metric: str):
    """fn(DetectionSet) -> the metric of one scorer (plexbench.metrics.auroc / auprc / fpr_at_95_tpr)."""
    from plexbench import metrics as M

    fn = getattr(M, _METRIC_FUNCTIONS[metric])
    return lambda detection: fn(detection[scorer])


def has_logits(split: Split) -> bool:
    """The split's logits are known: as an array, or as the per-example -max logit of its stats."""
    return split.logits is not None or (split.stats is not None and split.stats.mlogit is not None)


def _missing_inputs(scorers, inputs: Mapping[str, Split]) -> dict[str, str]:
    """Scorer -> why it cannot run on these predictions."""
    skipped = {}
    for s in scorers:
        if s == "mlogit" and not all(has_logits(split) for role, split in inputs.items() if role != "fit"):
            skipped[s] = "predictions without logits"
        if s in EMBEDDING_SCORERS and any(split.embeddings is None for split in inputs.values()):
            skipped[s] = "predictions without pre-logits"
        if s in EMBEDDING_SCORERS and "fit" not in inputs:
            skipped[s] = "no predictions on the fit split"
        if s in EXTRA_SCORERS and not all(EXTRA_SCORERS[s] in split.extras
                                          for role, split in inputs.items() if role != "fit"):
            skipped[s] = f"predictions without {EXTRA_SCORERS[s]} (the model has no SNGP head)"
    return skipped


def ood_scores(split: Split, scorers, maha) -> dict[str, np.ndarray]:
    """Scorer -> (N,) float64 OOD scores of `split` (higher = more OOD), from its per-example
    statistics (computed without labels: OOD data may carry labels outside the model's classes)."""
    from plexbench import metrics as M

    stats = split_stats(split, labels=False, want=[s for s in ("entropy",) if s in scorers])
    out = {}
    if "msp" in scorers:
        out["msp"] = M.msp_score(stats)
    if "entropy" in scorers:
        out["entropy"] = M.entropy_score(stats)
    if "mlogit" in scorers:
        out["mlogit"] = stats.mlogit if stats.mlogit is not None else M.mlogit_score(split.logits)
    if maha is not None:
        distances = maha.score(split.embeddings)
        for s in EMBEDDING_SCORERS:
            if s in scorers:
                out[s] = distances[s]
    if "gp_variance" in scorers:
        from plexbench.metrics.ood import gp_variance_score

        out["gp_variance"] = gp_variance_score(split.extras[EXTRA_SCORERS["gp_variance"]])
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
