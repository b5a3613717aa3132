"""few_shot: linear probes on frozen pre-logits, the paper's few-shot protocol (spec §6).

Targets: the task's `dataset` (its test split) and every reference in `params.datasets`; each
target's probe is trained on its `train_split`. For each target, shot count s and l2 value:

1. training examples: per class, the first s examples of the train split in dataset order
   (after the reference's class filter and limit); a class with fewer than s examples is an
   error;
2. per ensemble member m: features standardised with the selected examples' mean and std
   (population std, + 1e-5), the same transform applied to the test features;
3. `probe: logistic`: per member a multinomial logistic regression (scikit-learn,
   C = 1 / l2, lbfgs, max_iter 150); the ensemble prediction is the mean of the members'
   probabilities. `probe: closed_form`: per member, with a bias column of value 100 appended,
   W = solve(X^T X + l2 I, X^T (2 onehot - 1)); the members' scores X W are averaged and the
   prediction is their argmax (no probabilities: only prec@1 is reported);
4. l2: a fixed `params.l2`, or, with two or more targets, the spec's rule: for each target t and
   shot s, every l2 of the grid {2^i, i = l2_exponents[0]..l2_exponents[1]} is ranked by test
   accuracy on every OTHER target (rank 1 = best, ties averaged); the l2 with the lowest mean
   rank is used for t (a tie goes to the smaller l2). So no target's own test labels choose
   its l2.

Rows, with `dataset` = the target's label: `fewshot/<s>shot/prec@1`, `.../ece` (15 bins),
`.../nll`, `.../calib_auc` (probabilities are over the classes present in the train split;
labels are mapped to their index there); each row's `num_classes` is that class count, not the
model's (it is the K of the reliability score's 1 - nll / ln K). The reliability score drops the 1-shot columns and puts
the rest in its `adaptation` category (spec §7). Curves: `few_shot` {target: {shot: {l2: [...],
accuracy: [...], chosen_l2}}}, the accuracy of every l2 on the target's test split.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.tasks.kinds.base import (EvalContext, Need, Split, TaskKind, TaskResult, check_dataset_ref, jsonable,
                                        selected, summary_row)
from plexbench.tasks.registry import register_kind
from plexbench.tasks.spec import POSITIVE, DatasetRef, FieldError, SplitRole, TaskSpec

STD_EPS = 1e-5
BIAS_VALUE = 100.0
MAX_ITER = 150
ECE_BINS = 15


@dataclass(frozen=True)
class FewShotRef(DatasetRef):
    """A further target: its test split (`split`) and the split its probes train on."""

    train_split: SplitRole = "train"
    train_limit: int | None = field(default=None, metadata=POSITIVE)


@dataclass(frozen=True)
class FewShotParams:
    """- `shots`: examples per class (spec: 1, 5, 10, 25).
    - `datasets`: further targets besides the task's `dataset`.
    - `train_split`, `train_limit`: the split the task dataset's probes train on, and an
      optional prefix of it (the first s examples per class must lie in the prefix); a shorter
      prefix shares prediction-store entries with other tasks and saves inference.
    - `probe`: `logistic` (spec) or `closed_form` (spec's closed-form variant, prec@1 only).
    - `l2`: a fixed l2 for every target and shot; required when there is only one target.
    - `l2_exponents`: the grid {2^i, i = first..last} (spec: -10..19).
    """

    shots: tuple[int, ...] = (1, 5, 10, 25)
    datasets: tuple[FewShotRef, ...] = ()
    train_split: SplitRole = "train"
    train_limit: int | None = field(default=None, metadata=POSITIVE)
    probe: Literal["logistic", "closed_form"] = "logistic"
    l2: float | None = None
    l2_exponents: tuple[int, int] = (-10, 19)

    def validate(self) -> None:
        if not self.shots or any(s < 1 for s in self.shots) or len(set(self.shots)) != len(self.shots):
            raise FieldError("shots", "distinct positive shot counts", list(self.shots))
        if len(self.l2_exponents) != 2 or self.l2_exponents[0] > self.l2_exponents[1]:
            raise FieldError("l2_exponents", "[first, last] with first <= last", list(self.l2_exponents))
        if self.l2 is not None and not self.l2 > 0:
            raise FieldError("l2", "a positive number", self.l2)

    def l2_grid(self) -> np.ndarray:
        first, last = self.l2_exponents
        return 2.0 ** np.arange(first, last + 1)


def shot_metric(shots: int, metric: str) -> str:
    """The row name of a few-shot metric: `fewshot/<shots>shot/<metric>`."""
    return f"fewshot/{shots}shot/{metric}"


def shots_of(metric: str) -> int | None:
    """The shot count of a row name made by `shot_metric`, else None."""
    parts = metric.split("/")
    if len(parts) == 3 and parts[0] == "fewshot" and parts[1].endswith("shot") and parts[1][:-4].isdigit():
        return int(parts[1][:-4])
    return None


@register_kind("few_shot")
class FewShot(TaskKind):
    """Linear probes on frozen pre-logits (spec §6); see the module docstring for every rule."""

    Params = FewShotParams
    metrics = ("prec@1", "ece", "nll", "calib_auc")
    summary = "few-shot linear probes on frozen pre-logits (1/5/10/25 shots), l2 chosen on the other targets"
    category = "adaptation"  # spec §7.5
    headline = ("fewshot/*/prec@1",)

    def score_exclusion(self, task: TaskSpec | None, metric: str, dataset: str) -> str:
        """1-shot rows are reported but not scored (spec §7.3: the paper drops them)."""
        return "1-shot column (dropped as in the paper)" if shots_of(metric) == 1 else ""

    def validate(self, task: TaskSpec) -> None:
        p = task.params
        labels = [task.dataset.label] + [r.label for r in p.datasets]
        for i, ref in enumerate(p.datasets):
            check_dataset_ref(ref, f"params.datasets[{i}]")
            check_dataset_ref(dataclasses.replace(ref, split=ref.train_split), f"params.datasets[{i}]",
                              split_path=f"params.datasets[{i}].train_split")
            if labels.index(ref.label) != i + 1:
                raise FieldError(f"params.datasets[{i}]", "targets with distinct names (set alias:)", ref.label)
        check_dataset_ref(dataclasses.replace(task.dataset, split=p.train_split), "dataset",
                          split_path="params.train_split")
        if p.l2 is None and not p.datasets:
            raise FieldError("params.l2", "a fixed l2 when there is only one target (with several targets "
                             "each one's l2 is chosen on the others)")
        if p.probe == "closed_form" and set(selected(task, self)) - {"prec@1"}:
            raise FieldError("metrics", "[prec@1] with probe: closed_form (it gives no probabilities)",
                             list(selected(task, self)))

    def num_classes(self, task: TaskSpec) -> int | None:
        return None  # the probe replaces the model's head: any number of classes fits

    def targets(self, task: TaskSpec) -> list[tuple[DatasetRef, DatasetRef]]:
        """(test reference, train reference) per target, the task's dataset first."""
        p = task.params
        out = [(task.dataset, dataclasses.replace(task.dataset, split=p.train_split, limit=p.train_limit,
                                                  alias=None))]
        for ref in p.datasets:
            out.append((ref, dataclasses.replace(ref, split=ref.train_split, limit=ref.train_limit, alias=None)))
        return out

    def needs(self, task: TaskSpec) -> list[Need]:
        needs = []
        for test, train in self.targets(task):
            needs += [Need(f"test:{test.label}", test, True), Need(f"train:{test.label}", train, True)]
        return needs

    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        p = task.params
        for split in inputs.values():
            if split.embeddings is None:
                raise PlexbenchError(f"few-shot task '{task.name}' needs pre-logits, which these predictions lack")
        grid = np.array([p.l2]) if p.l2 is not None else p.l2_grid()
        labels = [test.label for test, _ in self.targets(task)]
        # every (target, shot, l2): the probe's test predictions; accuracy drives the l2 choice
        outcomes = {}
        for t in labels:
            for s in p.shots:
                data = prepare_probe(inputs[f"train:{t}"], inputs[f"test:{t}"], s)  # once for the whole grid
                outcomes[(t, s)] = [data.predict(l2, p.probe) for l2 in grid]
        accuracy = {key: np.array([o.accuracy for o in outs]) for key, outs in outcomes.items()}
        rows, curves, chosen = [], {}, {}
        for t in labels:
            test = inputs[f"test:{t}"]
            for s in p.shots:
                others = [accuracy[(u, s)] for u in labels if u != t]
                i = 0 if p.l2 is not None else choose_l2(others)
                chosen[f"{t}/{s}shot"] = float(grid[i])
                curves.setdefault(t, {})[str(s)] = {"l2": grid, "accuracy": accuracy[(t, s)], "chosen_l2": grid[i]}
                outcome = outcomes[(t, s)][i]
                for metric, value in outcome.metrics(selected(task, self)).items():
                    rows.append(summary_row(t, test.ref.split, shot_metric(s, metric), value, test.n,
                                            num_classes=outcome.num_classes))
        return TaskResult(rows=rows, curves={"few_shot": jsonable(curves)},
                          info={"chosen_l2": chosen, "probe": p.probe, "targets": labels})


# ----------------------------------------------------------------------------- the protocol


def choose_l2(other_accuracies: list[np.ndarray]) -> int:
    """Index of the l2 with the best (lowest) mean accuracy rank over the other targets.

    Each array holds one target's test accuracy per l2 (grid order); rank 1 = highest accuracy,
    ties get their average rank; among equal mean ranks the first (smallest) l2 wins.
    """
    from scipy.stats import rankdata

    if not other_accuracies:
        raise PlexbenchError("choosing l2 needs at least one other few-shot target")
    ranks = np.mean([rankdata(-np.asarray(a, dtype=np.float64), method="average") for a in other_accuracies], axis=0)
    return int(np.argmin(ranks))


def first_per_class(labels: np.ndarray, ids: np.ndarray, shots: int) -> np.ndarray:
    """Row indices of the first `shots` examples of each class present, in dataset (id) order."""
    order = np.argsort(ids, kind="stable")
    picked = []
    for c in np.unique(labels):
        rows = order[labels[order] == c][:shots]
        if rows.shape[0] < shots:
            raise PlexbenchError(f"class {int(c)} has {rows.shape[0]} training example(s), fewer than {shots} shots")
        picked.append(rows)
    return np.sort(np.concatenate(picked))


@dataclass(frozen=True)
class ProbeOutcome:
    """A probe's test predictions: labels as class positions, and probs (N, C) or scores."""

    labels: np.ndarray
    probs: np.ndarray | None
    scores: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.scores.shape[1])

    @property
    def accuracy(self) -> float:
        return float(np.mean(np.argmax(self.scores, axis=1) == self.labels))

    def metrics(self, names) -> dict[str, float]:
        from plexbench import metrics as M

        fns = {"prec@1": lambda: self.accuracy,
               "ece": lambda: M.ece(self.labels, self.probs, num_bins=ECE_BINS),
               "nll": lambda: M.nll(self.labels, np.log(self.probs)),
               "calib_auc": lambda: _calib_auc_or_nan(self.labels, self.probs)}
        return {name: float(fns[name]()) for name in names}


def _calib_auc_or_nan(labels, probs) -> float:
    from plexbench import metrics as M
    from plexbench.metrics._checks import UndefinedMetricWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return M.calib_auc(labels, probs)


@dataclass(frozen=True)
class ProbeData:
    """One (target, shot count): the selected training rows and the test split, standardised per
    member with the selected rows' statistics; labels as positions in the train split's classes."""

    x: list[np.ndarray]  # per member (n_train, D)
    y: np.ndarray
    x_test: list[np.ndarray]  # per member (N, D)
    y_test: np.ndarray
    num_classes: int

    def predict(self, l2: float, probe: str) -> ProbeOutcome:
        """Fit the probe per member with this l2 and average the members' test outputs."""
        members = [_fit_predict(x, self.y, xt, self.num_classes, l2, probe) for x, xt in zip(self.x, self.x_test)]
        avg = np.mean(members, axis=0)
        return ProbeOutcome(self.y_test, avg if probe == "logistic" else None, avg)


def prepare_probe(train: Split, test: Split, shots: int) -> ProbeData:
    """Select the first `shots` examples per class of `train` and standardise both splits."""
    rows = first_per_class(train.labels, train.ids, shots)
    classes = np.unique(train.labels[rows])
    known = np.isin(test.labels, classes)
    if not known.all():
        raise PlexbenchError(f"test labels {sorted(set(test.labels[~known].tolist()))} do not occur in the train split")
    xs, xts = [], []
    for xm, tm in zip(np.asarray(train.embeddings, dtype=np.float64)[:, rows],
                      np.asarray(test.embeddings, dtype=np.float64)):
        mean, std = xm.mean(axis=0), xm.std(axis=0) + STD_EPS
        xs.append((xm - mean) / std)
        xts.append((tm - mean) / std)
    return ProbeData(xs, np.searchsorted(classes, train.labels[rows]), xts, np.searchsorted(classes, test.labels),
                     int(classes.shape[0]))


def probe_predictions(train: Split, test: Split, shots: int, l2: float, probe: str) -> ProbeOutcome:
    """Fit the probe on the first `shots` examples per class of `train`, predict `test`."""
    return prepare_probe(train, test, shots).predict(l2, probe)


def _fit_predict(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, num_classes: int, l2: float,
                 probe: str) -> np.ndarray:
    """One member: test probabilities (logistic) or scores X W (closed form), (N, C)."""
    if probe == "closed_form":
        xb = np.hstack([x, np.full((x.shape[0], 1), BIAS_VALUE)])
        targets = 2.0 * np.eye(num_classes)[y] - 1.0
        w = np.linalg.solve(xb.T @ xb + l2 * np.eye(xb.shape[1]), xb.T @ targets)
        return np.hstack([x_test, np.full((x_test.shape[0], 1), BIAS_VALUE)]) @ w
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the spec caps lbfgs at 150 iterations
        model = LogisticRegression(C=1.0 / l2, max_iter=MAX_ITER).fit(x, y)
    probs = np.zeros((x_test.shape[0], num_classes))
    probs[:, model.classes_] = model.predict_proba(x_test)
    return probs
