"""active_learning: test accuracy against the number of labels acquired from a pool (spec §6).

The task's `dataset` is the TEST reference; `params.pool` the unlabelled pool, `params.validation`
the split early stopping / the probe's l2 choice look at (with its full labels). For every
acquisition function and seed one curve is run by plexbench.training.active_learning (its
docstring states every rule: initial class-balanced set, a fresh model each round, scores,
top-k / power selection, per-round seeds). Modes:

- `finetune` (Plex): the model is ADAPTED (the runner hands this kind a trainable model,
  base.py's contract): each round the pretrained parameters with a fresh zero head are
  fine-tuned on the labelled set (`params.finetune`: SGD momentum 0.9, constant LR, clip 1.0,
  batch 512 with repetition, validation accuracy every 5 steps, keep the best with ties to the
  later step, patience 128, at most 2000 steps). The pool, validation and test images are read
  with plexbench.data (in memory when the split fits, else streamed: ImageNet, Places365) and
  preprocessed as the reference says, then with the model's own preprocessing.
- `probe`: a logistic probe per ensemble member on the model's frozen pre-logits (from the
  runner's predictions, so prediction files with embeddings work too), l2 chosen on the
  validation split among {2^i, i = l2_exponents[0]..l2_exponents[1]}.

BALD needs members: for an E = 1 model it is skipped and named in `info.skipped` (no rows).

Rows (`dataset` = the test label; `num_classes` = the pool dataset's K, the adapted head's):
- `active_learning/<acquisition>/<labels>/accuracy` for every labelled size: the mean over
  seeds of the test accuracy, n = number of seeds, ci_low / ci_high = the minimum and maximum
  over seeds (the spread, not a confidence interval);
- `active_learning/<acquisition>/<max labels>/nll` and `.../ece` (15 bins) at the largest size,
  same aggregation;
- `active_learning/<acquisition>/area/accuracy`: per seed the area under accuracy vs labels
  (trapezoid rule over the labelled sizes) divided by (max - initial), i.e. the mean accuracy
  over the budget range (the accuracy itself when there is one size); mean, min and max over
  seeds.
Every row is in the `adaptation` category. The reliability score takes ONE column per task: the
curve's area of the `margin` acquisition (SCORED_ACQUISITION, the acquisition of the paper's
radar). Every other row carries a `score_exclusion`: the points of the curve and the final NLL /
ECE would weigh the curve many times over, and one column per acquisition would weigh a task by
the number of acquisitions it sweeps (and leave E = 1 models, which have no `bald`, with a
missing column).
Curves: `active_learning` {"labels": [...], "mode", "selection", "skipped": {acq: reason},
"acquisitions": {acq: {"seeds": [...], "accuracy" / "nll" / "ece": [[per seed, per size]],
"rounds": [[per-round facts: steps, best_step, validation_accuracy / l2]]}}}.

State: after every round the curves' state is written atomically to the runner's scratch file
(`EvalContext.state_path`, keyed by the result's inputs fingerprint); a killed run started
again resumes each curve at its next round and ends with identical results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.tasks.kinds.base import (EvalContext, MetricRow, Need, Split, TaskKind, TaskResult, check_dataset_ref,
                                        dataset_num_classes, jsonable, selected)
from plexbench.tasks.registry import register_kind
from plexbench.tasks.spec import POSITIVE, DatasetRef, FieldError, TaskSpec

Acquisition = Literal["uniform", "entropy", "margin", "msp", "bald", "density"]
AREA = "area"  # active_learning/<acquisition>/area/accuracy: the normalised area under the curve
SCORED_ACQUISITION = "margin"  # the one acquisition whose area enters the reliability score (docstring)
PAPER_SEEDS = (189, 827, 905, 964, 952)  # spec §6


@dataclass(frozen=True)
class BudgetParams:
    """Labelled-set sizes: `initial` (divisible by the class count), + `batch` per round up to `max`."""

    initial: int = field(metadata=POSITIVE)
    max: int = field(metadata=POSITIVE)
    batch: int = field(metadata=POSITIVE)

    def validate(self) -> None:
        if self.max < self.initial:
            raise FieldError("max", f"at least initial ({self.initial})", self.max)


@dataclass(frozen=True)
class FinetuneParams:
    """Fine-tuning of each round (spec §6 defaults); `trainable: head` trains the head only;
    `train_mc_samples`: heteroscedastic MC samples while training (None: the model's own)."""

    learning_rate: float = 0.01
    momentum: float = 0.9
    clip_norm: float = 1.0
    batch_size: int = field(default=512, metadata=POSITIVE)
    eval_every: int = field(default=5, metadata=POSITIVE)
    patience: int = field(default=128, metadata=POSITIVE)
    max_steps: int = field(default=2000, metadata=POSITIVE)
    trainable: Literal["all", "head"] = "all"
    train_mc_samples: int | None = field(default=None, metadata=POSITIVE)
    eval_batch_size: int = field(default=512, metadata=POSITIVE)

    def validate(self) -> None:
        if not self.learning_rate > 0:
            raise FieldError("learning_rate", "a positive number", self.learning_rate)
        if not 0 <= self.momentum < 1:
            raise FieldError("momentum", "a number in [0, 1)", self.momentum)


@dataclass(frozen=True)
class ProbeParams:
    """Probe mode: l2 grid {2^i, i = first..last} (chosen on the validation split), L-BFGS cap."""

    l2_exponents: tuple[int, int] = (-4, 10)
    max_iter: int = field(default=150, metadata=POSITIVE)

    def validate(self) -> None:
        if len(self.l2_exponents) != 2 or self.l2_exponents[0] > self.l2_exponents[1]:
            raise FieldError("l2_exponents", "[first, last] with first <= last", list(self.l2_exponents))

    def l2_grid(self) -> np.ndarray:
        return 2.0 ** np.arange(self.l2_exponents[0], self.l2_exponents[1] + 1)


@dataclass(frozen=True)
class ActiveLearningParams:
    """- `pool`, `validation`: dataset references (the test set is the task's `dataset`).
    - `budget`: {initial, max, batch} (spec: cifar10 20/200/5, cifar100 200/2000/50, imagenet
      2000/20000/500, places365 730/7300/182).
    - `acquisitions`: any of uniform, entropy, margin, msp, bald, density.
    - `selection`: topk (ties to the lower pool index) or power (Gumbel noise, beta 1).
    - `seeds`: one curve per seed (spec: 189, 827, 905, 964, 952).
    - `mode`: finetune or probe; `finetune:` / `probe:` their settings.
    """

    pool: DatasetRef
    validation: DatasetRef
    budget: BudgetParams
    acquisitions: tuple[Acquisition, ...] = ("uniform", "margin")
    selection: Literal["topk", "power"] = "topk"
    seeds: tuple[int, ...] = PAPER_SEEDS
    mode: Literal["finetune", "probe"] = "finetune"
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    probe: ProbeParams = field(default_factory=ProbeParams)

    def validate(self) -> None:
        if not self.acquisitions or len(set(self.acquisitions)) != len(self.acquisitions):
            raise FieldError("acquisitions", "a non-empty list of distinct acquisition functions", list(self.acquisitions))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise FieldError("seeds", "a non-empty list of distinct non-negative seeds", list(self.seeds))


@register_kind("active_learning")
class ActiveLearning(TaskKind):
    """Pool-based active learning with a fresh model per round (module docstring)."""

    Params = ActiveLearningParams
    metrics = ("accuracy", "nll", "ece", "area")
    summary = "active learning: test accuracy vs labels acquired from a pool (fine-tune or probe), six acquisitions"
    category = "adaptation"  # spec §7.5 (adaptation: few-shot and active learning)
    headline = (f"active_learning/*/{AREA}/accuracy",)
    figures = ("active_learning",)

    def declared_metric(self, selector: str) -> str:
        # `area` selects the normalised area under the accuracy curve: rows active_learning/<acq>/area/accuracy
        return f"active_learning/{SCORED_ACQUISITION}/{AREA}/accuracy" if selector == AREA else selector

    def score_exclusion(self, task: TaskSpec | None, metric: str, dataset: str) -> str:
        """Only the curve's area of the margin acquisition is scored (module docstring)."""
        parts = metric.split("/")
        if len(parts) != 4 or parts[0] != "active_learning":
            return ""
        if parts[2] != AREA:
            return "a point of the active-learning curve (its area is scored)"
        if parts[1] != SCORED_ACQUISITION:
            return f"the score takes the {SCORED_ACQUISITION} acquisition's area (the paper's radar); others are reported"
        return ""

    def validate(self, task: TaskSpec) -> None:
        p = task.params
        for path, ref in (("dataset", task.dataset), ("params.pool", p.pool), ("params.validation", p.validation)):
            check_dataset_ref(ref, path)
            if ref.classes is not None:
                raise FieldError(f"{path}.classes", "no class filter (active learning uses all classes)",
                                 list(ref.classes))
        k = dataset_num_classes(p.pool.name)
        if k is not None and p.budget.initial % k:
            raise FieldError("params.budget.initial", f"a multiple of the pool's {k} classes", p.budget.initial)

    def adapts(self, task: TaskSpec) -> bool:
        return task.params.mode == "finetune"

    def num_classes(self, task: TaskSpec) -> int | None:
        return None  # the head is replaced (fine-tune) or a probe is fitted: any model fits

    def needs(self, task: TaskSpec) -> list[Need]:
        p = task.params
        if p.mode == "finetune":
            return []  # the kind reads images itself and runs the adapted model
        return [Need("pool", p.pool, True), Need("validation", p.validation, True), Need("test", task.dataset, True)]

    def datasets(self, task: TaskSpec) -> list[tuple[str, str]]:
        p = task.params
        return list(dict.fromkeys((r.name, r.split) for r in (p.pool, p.validation, task.dataset)))

    def cost(self, task: TaskSpec) -> dict:
        """Work of a run, for `plexbench run --dry-run`: rounds per curve, curves, and (finetune)
        at most max_steps training steps of batch_size examples per round."""
        p = task.params
        rounds = len(range(p.budget.initial, p.budget.max + 1, p.budget.batch))
        curves = len(p.acquisitions) * len(p.seeds)
        out = {"curves": curves, "rounds": rounds}
        if p.mode == "finetune":
            out.update(max_steps=p.finetune.max_steps, batch_size=p.finetune.batch_size)
        return out

    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        p = task.params
        num_classes = dataset_num_classes(p.pool.name)
        if num_classes is None:
            raise PlexbenchError(f"active learning needs the class count of {p.pool.name}")
        learner, pool_labels = (_finetune_learner(task, ctx, num_classes) if p.mode == "finetune"
                                else _probe_learner(task, inputs, num_classes))
        curves, skipped = _run_curves(task, learner, pool_labels, num_classes, ctx)
        sizes = _budget(p).sizes()
        rows = result_rows(task, curves, sizes, num_classes, selected(task, self))
        doc = {"labels": sizes, "mode": p.mode, "selection": p.selection, "skipped": skipped,
               "acquisitions": {acq: {"seeds": list(p.seeds),
                                      **{m: [[r[m] for r in curves[acq][s]["rounds"]] for s in p.seeds]
                                         for m in ("accuracy", "nll", "ece")},
                                      "rounds": [[{k: v for k, v in r.items() if k not in ("accuracy", "nll", "ece")}
                                                  for r in curves[acq][s]["rounds"]] for s in p.seeds]}
                                for acq in curves}}
        return TaskResult(rows=rows, curves={"active_learning": jsonable(doc)},
                          info={"skipped": skipped, "mode": p.mode, "num_members": learner.num_members,
                                "pool_size": int(len(pool_labels))})


# ----------------------------------------------------------------------------- learners


def _budget(p: ActiveLearningParams):
    from plexbench.training.active_learning import Budget

    return Budget(p.budget.initial, p.budget.max, p.budget.batch)


def _probe_learner(task: TaskSpec, inputs: Mapping[str, Split], num_classes: int):
    from plexbench.training.active_learning import FrozenSplit, ProbeLearner

    for role in ("pool", "validation", "test"):
        if inputs[role].embeddings is None:
            raise PlexbenchError(f"active-learning task '{task.name}' (probe mode) needs pre-logits, "
                                 "which these predictions lack")
    splits = {r: FrozenSplit(np.asarray(inputs[r].embeddings), np.asarray(inputs[r].labels)) for r in inputs}
    p = task.params.probe
    learner = ProbeLearner(splits["pool"], splits["validation"], splits["test"], num_classes, p.l2_grid(),
                           max_iter=p.max_iter)
    return learner, splits["pool"].labels


def _finetune_learner(task: TaskSpec, ctx: EvalContext, num_classes: int):
    from plexbench.training.active_learning import FinetuneLearner
    from plexbench.training.loop import FinetuneConfig

    if ctx.model is None:
        raise PlexbenchError(f"active-learning task '{task.name}' fine-tunes the model, but no trainable model "
                             "was given (the runner provides one for plexbench ViT models)")
    p, f = task.params, task.params.finetune
    config = FinetuneConfig(optimizer="sgd", learning_rate=f.learning_rate, momentum=f.momentum, clip_norm=f.clip_norm,
                            batch_size=f.batch_size, max_steps=f.max_steps, sampling="repeat",
                            eval_every=f.eval_every, patience=f.patience, trainable=f.trainable)
    data = {role: _images(ctx, ref, ctx.model.preprocess)
            for role, ref in (("pool", p.pool), ("validation", p.validation), ("test", task.dataset))}
    learner = FinetuneLearner(ctx.model, data["pool"], data["validation"], data["test"], num_classes, config,
                              train_mc_samples=f.train_mc_samples, eval_batch_size=f.eval_batch_size)
    return learner, data["pool"].labels


def _images(ctx: EvalContext, ref: DatasetRef, model_preprocess: str | None):
    """The reference's examples (its limit and --limit applied), preprocessed by the reference's
    ops and then the model's (or the dataset's default) on use: in memory when plexbench.data can
    hold the split, else streamed (ImageNet, Places365; plexbench.training.evaluate.examples)."""
    from plexbench.data.registry import get_dataset
    from plexbench.training.evaluate import examples

    limits = [x for x in (ref.limit, ctx.limit) if x is not None]
    base = model_preprocess or get_dataset(ref.name).default_preprocess
    spec = f"{ref.preprocess}|{base}" if ref.preprocess else base
    return examples(ref.name, ref.split, spec, ctx.data_dir, min(limits) if limits else None,
                    load_arrays=ctx.load_arrays)


# ----------------------------------------------------------------------------- curves and rows


def _run_curves(task: TaskSpec, learner, pool_labels, num_classes: int, ctx: EvalContext):
    """Every (acquisition, seed) curve, resumed from and saved to ctx.state_path."""
    from plexbench import fileio, progress
    from plexbench.training.active_learning import SharedFirstRound, run_curve

    p = task.params
    budget = _budget(p)
    skipped = {}
    acquisitions = list(p.acquisitions)
    if "bald" in acquisitions and learner.num_members < 2:
        skipped["bald"] = f"not applicable: BALD needs an ensemble, this model has E = {learner.num_members}"
        acquisitions.remove("bald")
    runs = [(acq, seed) for seed in p.seeds for acq in acquisitions]  # a seed's curves share round 0
    learner = SharedFirstRound(learner)
    state = _read_state(ctx)
    curves: dict[str, dict[int, dict]] = {}
    total = len(runs) * len(budget.sizes())
    done = sum(len(state["curves"].get(f"{a}/{s}", {}).get("rounds", [])) for a, s in runs)
    with progress.bar(total, f"active learning {task.name}", unit="round") as bar:
        bar.update(done)
        for acq, seed in runs:
            key = f"{acq}/{seed}"

            def save(curve_state, key=key):
                state["curves"][key] = curve_state
                if ctx.state_path is not None:
                    fileio.write_json(ctx.state_path, state)

            curves.setdefault(acq, {})[seed] = run_curve(
                learner, pool_labels, num_classes, budget, acq, seed, selection=p.selection,
                state=state["curves"].get(key), save=save, on_round=lambda _: bar.update(1))
    return {acq: curves[acq] for acq in acquisitions}, skipped


def _read_state(ctx: EvalContext) -> dict:
    """The saved state when it belongs to this (task, model) input fingerprint, else a fresh one."""
    fresh = {"key": ctx.state_key, "curves": {}}
    if ctx.state_path is None or not ctx.state_path.is_file():
        return fresh
    try:
        state = json.loads(ctx.state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return fresh  # unreadable (cannot happen with atomic writes, but never trust a scratch file)
    return state if isinstance(state, dict) and state.get("key") == ctx.state_key and "curves" in state else fresh


def curve_area(sizes, accuracies) -> float:
    """Trapezoid area under accuracy vs labels divided by the label range (the accuracy itself for
    one size).

    >>> curve_area([10, 20, 30], [0.5, 0.7, 0.7])
    0.65
    """
    sizes, acc = np.asarray(sizes, np.float64), np.asarray(accuracies, np.float64)
    if sizes.shape[0] == 1:
        return float(acc[0])
    return float(np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(sizes)) / (sizes[-1] - sizes[0]))


def result_rows(task: TaskSpec, curves: dict, sizes: list[int], num_classes: int, metrics) -> list[MetricRow]:
    """Rows of the module docstring: mean over seeds, n = seeds, [min, max] as ci_low / ci_high."""
    ref = task.dataset
    rows = []

    def row(name, values):
        v = np.asarray(values, np.float64)
        rows.append(MetricRow(ref.label, ref.split, name, float(v.mean()), int(v.shape[0]), float(v.min()),
                              float(v.max()), num_classes=num_classes))

    for acq, per_seed in curves.items():
        seeds = list(per_seed)
        series = {m: np.array([[r[m] for r in per_seed[s]["rounds"]] for s in seeds]) for m in ("accuracy", "nll", "ece")}
        if "accuracy" in metrics:
            for i, n in enumerate(sizes):
                row(f"active_learning/{acq}/{n}/accuracy", series["accuracy"][:, i])
        for m in ("nll", "ece"):
            if m in metrics:
                row(f"active_learning/{acq}/{sizes[-1]}/{m}", series[m][:, -1])
        if "area" in metrics:
            row(f"active_learning/{acq}/{AREA}/accuracy", [curve_area(sizes, a) for a in series["accuracy"]])
    return rows
