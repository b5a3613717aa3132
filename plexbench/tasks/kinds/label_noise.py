"""label_noise: finding wrong labels, and staying accurate when trained on them (spec §11).

Two protocols, chosen by `params.protocol`; both run every noise setting of `params.noise`
(`plexbench.data.noise`: symmetric, flip, asymmetric along a declared class map, or a dataset's
real noisy labels). A synthetic setting is drawn `params.repeats` times, with noise seeds
task.seed, task.seed + 1, ...; a real one once (its labels are fixed; cross-validation folds then
use task.seed).

**detection** - can the model's predictions find the wrong labels? The labelled set is the task's
`dataset`; its labels are corrupted, and every example needs probabilities from a predictor that
never trained on its (noisy) label:

- `scores: model`: the model's own predicted probabilities. Valid only where the model did not
  train on these examples (the embedded zoo: Fashion-MNIST `test`); the model's classes must be the
  dataset's;
- `scores: cross_validated_probe`: `folds`-fold cross-validated linear probes on the frozen
  pre-logits, trained on the NOISY labels of the other folds (folds stratified by noisy label,
  shuffled with the noise seed; per fold and member, features standardised with the training
  folds' mean and std + 1e-5, a multinomial logistic regression with C = 1 / l2, members'
  probabilities averaged). Any model fits: the probe replaces its head.

On those probabilities and the noisy labels: the quality scores self-confidence and normalised
margin (AUROC and AUPRC of the issue score 1 - quality against the true noisy mask), confident
learning's issue mask (precision, recall, F1 against the mask) and its estimated noise rate beside
the realised one (plexbench.metrics.label_noise).

**robustness** - how much does adapting on noisy labels cost? The model is adapted on the noisy
labels of `train` (the labelled set) and evaluated on the CLEAN labels of the task's `dataset` (the
test split): accuracy, NLL (exact, from the averaged probabilities clipped below at 1e-12 only to
stay finite) and ECE (15 bins). `adapt: probe` (default): a linear probe as above, per member, on
the frozen pre-logits. `adapt: finetune`: fine-tuning through plexbench.training (the pretrained
trunk with a fresh zero head, settings in `params.finetune`, FinetuneParams; the runner hands the
kind the trainable model). The same adaptation on the clean labels is the reference; the drops are
accuracy(clean-trained) - accuracy(noisy-trained), and NLL / ECE of noisy-trained minus
clean-trained.

Rows (dataset = the task dataset's label; num_classes = K of the label space: the model's classes
with `scores: model`, else the dataset's, as the probe's; few-shot rows do the same; `<p>` = `noise_detection` or `noise_robustness`, so the
two protocols never share a (metric, dataset) column). Per setting `s` (`symmetric_20`,
`asymmetric_40`, `real_aggre`: the type, then the rate in percent or the key): `<p>/<s>/<metric>`
for each metric of the protocol, the mean over the draws (n = the examples of the scored set); the
per-draw values are in the curves. Over all settings: `<p>/<metric>`, the mean of the settings'
values. The reliability score uses only these means of detection's self-confidence and
normalised-margin AUROC and confident learning's F1, and of robustness's accuracy, NLL and ECE;
the per-setting rows, the clean reference `noise_robustness/clean/<metric>`, the noise rates, the
drops, precision, recall and AUPRC (whose chance level is the noise rate) are shown, not scored. Detection rows are in the `uncertainty` category (ranking labels by how likely they are
wrong is an uncertainty judgement, as OOD detection is); robustness rows in `prediction` (clean
test accuracy and NLL after training on noise is robust generalisation, the paper's prediction
axis), except ECE, which stays `uncertainty` as everywhere else.

No bootstrap intervals: `bootstrap` must be 0; the spread over repeats is in the curves.
Curves: `label_noise` {protocol, settings: [{name, type, rate, key, realised_rate: [...],
metrics: {metric: [...]}}], clean: {metric: value} (robustness), roc: {setting: {score: {noisy:
[...], clean: [...], auroc}}} (detection, first draw: the sorted issue scores, at most `curve_points`
per side, and that draw's AUROC)}.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.tasks.kinds.base import (EvalContext, MetricRow, Need, Split, TaskKind, TaskResult, check_dataset_ref,
                                        dataset_num_classes, even_subsample, jsonable)
from plexbench.tasks.registry import register_kind
from plexbench.tasks.spec import POSITIVE, DatasetRef, FieldError, TaskSpec

# Metric-name prefix per protocol: a task's rows are keyed by (metric, dataset) in reports, so a
# detection and a robustness task on the same dataset must not share names.
PREFIX = {"detection": "noise_detection", "robustness": "noise_robustness"}
ECE_BINS = 15
NLL_FLOOR = 1e-12

DETECTION_SCORES = ("self_confidence", "normalized_margin")
DETECTION_METRICS = tuple(f"{s}/{m}" for s in DETECTION_SCORES for m in ("auroc", "auprc")) + (
    "confident_learning/issue_precision", "confident_learning/issue_recall", "confident_learning/issue_f1",
    "confident_learning/est_noise_rate", "noise_rate")
ROBUSTNESS_METRICS = ("accuracy", "nll", "ece", "accuracy_drop", "nll_increase", "ece_increase", "noise_rate")
# Rows of the average over settings that the reliability score uses (the rest is shown only).
SCORED = {"detection": ("self_confidence/auroc", "normalized_margin/auroc", "confident_learning/issue_f1"),
          "robustness": ("accuracy", "nll", "ece")}


@dataclass(frozen=True)
class NoiseSpec:
    """One noise setting: `type` (symmetric | flip | asymmetric | real), `rate` in (0, 1] for the
    synthetic types, `map` (asymmetric: a name of plexbench.data.noise.ASYMMETRIC_MAPS; default:
    the labelled dataset's name), `key` (real: a noisy label key of the dataset,
    plexbench.data.registry.NOISY_LABEL_KEYS)."""

    type: Literal["symmetric", "flip", "asymmetric", "real"]
    rate: float | None = None
    map: str | None = None
    key: str | None = None

    def validate(self) -> None:
        if self.type == "real":
            if self.key is None:
                raise FieldError("key", "a noisy label key for real noise (e.g. aggre)")
            if self.rate is not None or self.map is not None:
                raise FieldError("rate" if self.rate is not None else "map", "nothing for real noise (key only)")
            return
        if self.rate is None or not 0.0 < self.rate <= 1.0:
            raise FieldError("rate", "a number in (0, 1] for synthetic noise", self.rate)
        if self.key is not None:
            raise FieldError("key", "nothing for synthetic noise (key is for real noise)", self.key)
        if self.map is not None and self.type != "asymmetric":
            raise FieldError("map", "nothing: a class map is for asymmetric noise", self.map)

    @property
    def name(self) -> str:
        """`symmetric_20`, `asymmetric_40`, `flip_12.5`, `real_aggre`: one metric-name component."""
        return f"real_{self.key}" if self.type == "real" else f"{self.type}_{self.rate * 100:g}"


@dataclass(frozen=True)
class FinetuneParams:
    """Fine-tuning on the noisy labels through plexbench.training (`adapt: finetune`): the
    pretrained trunk with a fresh zero head of the dataset's K classes, `steps` updates of
    `optimizer` (sgd with `momentum`, or adamw) at `learning_rate` (`schedule` constant or
    warmup_cosine with `warmup_steps`), batches of `batch_size` (the labelled set repeated and
    shuffled with the noise seed), global-norm clip `clip_norm`, decoupled `weight_decay`;
    `trainable`: all parameters or the head only. Defaults: spec §6's fine-tuning settings
    (SGD, momentum 0.9, lr 0.01 constant, clip 1, batch 512, no weight decay). No early stopping:
    it would need validation labels, and clean ones are exactly what a noisy-label user lacks."""

    steps: int = field(default=500, metadata=POSITIVE)
    batch_size: int = field(default=512, metadata=POSITIVE)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    schedule: Literal["constant", "warmup_cosine"] = "constant"
    warmup_steps: int = 0
    clip_norm: float | None = 1.0
    weight_decay: float = 0.0
    trainable: Literal["all", "head"] = "all"

    def validate(self) -> None:
        if not self.learning_rate > 0:
            raise FieldError("learning_rate", "a positive number", self.learning_rate)
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise FieldError("clip_norm", "a positive number or null", self.clip_norm)
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise FieldError("warmup_steps" if self.warmup_steps < 0 else "weight_decay", "a non-negative number")

    def config(self, seed: int):
        from plexbench.training import FinetuneConfig

        return FinetuneConfig(optimizer=self.optimizer, learning_rate=self.learning_rate, momentum=self.momentum,
                              weight_decay=self.weight_decay, schedule=self.schedule, warmup_steps=self.warmup_steps,
                              clip_norm=self.clip_norm, batch_size=self.batch_size, max_steps=self.steps,
                              sampling="repeat", trainable=self.trainable, seed=seed, rng_seed=seed)


@dataclass(frozen=True)
class LabelNoiseParams:
    """- `protocol`: detection | robustness (module docstring).
    - `noise`: the settings (a list of NoiseSpec); `repeats`: draws per synthetic setting (seeds
      task.seed, task.seed + 1, ...; real noise is one fixed draw).
    - detection: `scores` (model | cross_validated_probe), `folds` (cross-validation folds, >= 2).
    - robustness: `train` (the labelled set the model adapts on; default: the task's dataset at
      split `train`); `adapt`: probe (on the frozen pre-logits) or finetune (through
      plexbench.training, settings in `finetune`, a FinetuneParams).
    - probes: `l2` (C = 1 / l2 of the logistic regression on standardised pre-logits).
    - `curve_points`: at most this many issue scores per side in the detection ROC curves.
    """

    protocol: Literal["detection", "robustness"]
    noise: tuple[NoiseSpec, ...]
    repeats: int = field(default=3, metadata=POSITIVE)
    scores: Literal["model", "cross_validated_probe"] = "model"
    folds: int = field(default=5, metadata=POSITIVE)
    train: DatasetRef | None = None
    adapt: Literal["probe", "finetune"] = "probe"
    finetune: FinetuneParams | None = None
    l2: float = 1.0
    curve_points: int = field(default=200, metadata=POSITIVE)

    def validate(self) -> None:
        if not self.noise:
            raise FieldError("noise", "a non-empty list of noise settings", [])
        names = [n.name for n in self.noise]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise FieldError(f"noise[{i}]", "distinct settings", name)
        if not self.l2 > 0:
            raise FieldError("l2", "a positive number", self.l2)
        if self.protocol == "detection":
            if self.train is not None:
                raise FieldError("train", "nothing for detection (the labelled set is the task's dataset)")
            if self.scores == "cross_validated_probe" and self.folds < 2:
                raise FieldError("folds", "at least 2 folds", self.folds)
        elif self.scores != "model":
            raise FieldError("scores", "nothing for robustness (it adapts the model instead)", self.scores)
        if self.adapt == "finetune" and self.protocol != "robustness":
            raise FieldError("adapt", "probe for detection (its cross-validated scores come from probes)", self.adapt)
        if self.finetune is not None and self.adapt != "finetune":
            raise FieldError("finetune", "nothing unless adapt: finetune")

    def finetuning(self) -> FinetuneParams:
        return self.finetune or FinetuneParams()

    def metrics(self) -> tuple[str, ...]:
        return DETECTION_METRICS if self.protocol == "detection" else ROBUSTNESS_METRICS


@register_kind("label_noise")
class LabelNoise(TaskKind):
    """Label-noise detection and robustness (spec §11); every rule is in the module docstring."""

    Params = LabelNoiseParams
    metrics = tuple(dict.fromkeys(DETECTION_METRICS + ROBUSTNESS_METRICS))
    summary = "wrong labels: detection (quality scores, confident learning) and robustness of a probe or fine-tuning on them"
    reads_data = True  # real noise reads the dataset's noisy label key
    category = None  # per row: see row_category
    headline = tuple(f"{PREFIX[p]}/{m}" for p in ("detection", "robustness") for m in SCORED[p])
    figures = ("label_noise_accuracy", "label_noise_roc")

    # ------------------------------------------------------------------ declaration

    def validate(self, task: TaskSpec) -> None:
        p = task.params
        if task.bootstrap:
            raise FieldError("bootstrap", "0: label_noise reports the spread over `repeats`, not intervals",
                             task.bootstrap)
        for ref, path in ((task.dataset, "dataset"), (p.train, "params.train")):
            if ref is not None and ref.classes is not None:
                raise FieldError(f"{path}.classes", "no class filter (noise is drawn over all the dataset's classes)")
        if p.train is not None:
            check_dataset_ref(p.train, "params.train")
        labelled = self.labelled_ref(task)
        for i, spec in enumerate(p.noise):
            self._check_setting(spec, labelled, f"params.noise[{i}]")
        for i, metric in enumerate(task.metrics or ()):
            if metric not in p.metrics():
                raise FieldError(f"metrics[{i}]", f"a metric of the {p.protocol} protocol: " + ", ".join(p.metrics()),
                                 metric)

    @staticmethod
    def _check_setting(spec: NoiseSpec, labelled: DatasetRef, path: str) -> None:
        from plexbench.data import noise as N
        from plexbench.data.registry import DATASETS, NOISY_LABEL_KEYS

        if spec.type == "real":
            keys = NOISY_LABEL_KEYS.get(labelled.name, {})
            if spec.key not in keys or f"{labelled.name}/{spec.key}" not in DATASETS:
                known = ", ".join(keys) or f"none: {labelled.name} has no noisy labels"
                raise FieldError(f"{path}.key", f"a noisy label key of {labelled.name} ({known})", spec.key)
            if labelled.split not in DATASETS.get(f"{labelled.name}/{spec.key}").splits:
                raise FieldError(f"{path}.key", f"a split with noisy labels; {labelled.name}/{spec.key} has "
                                 + ", ".join(DATASETS.get(f"{labelled.name}/{spec.key}").splits), labelled.split)
        elif spec.type == "asymmetric":
            name = spec.map or labelled.name
            if name not in N.ASYMMETRIC_MAPS:
                raise FieldError(f"{path}.map", "a declared class map: " + ", ".join(N.ASYMMETRIC_MAPS), name)
            k = dataset_num_classes(labelled.name)
            if k is not None and max(max(m) for m in N.ASYMMETRIC_MAPS[name].items()) >= k:
                raise FieldError(f"{path}.map", f"a map within the {k} classes of {labelled.name}", name)

    def labelled_ref(self, task: TaskSpec) -> DatasetRef:
        """The dataset whose labels are corrupted: the task's (detection) or `train` (robustness)."""
        p = task.params
        if p.protocol == "detection":
            return task.dataset
        return p.train or dataclasses.replace(task.dataset, split="train", alias=None)

    def needs(self, task: TaskSpec) -> list[Need]:
        p = task.params
        if p.protocol == "detection":
            return [Need("labelled", task.dataset, pre_logits=p.scores == "cross_validated_probe")]
        probe = p.adapt == "probe"
        return [Need("labelled", self.labelled_ref(task), pre_logits=probe),
                Need("eval", task.dataset, pre_logits=probe)]

    def adapts(self, task: TaskSpec) -> bool:
        return task.params.protocol == "robustness" and task.params.adapt == "finetune"

    def cost(self, task: TaskSpec) -> dict | None:
        p = task.params
        if not self.adapts(task):
            return None
        runs = 1 + sum(1 if s.type == "real" else p.repeats for s in p.noise)
        return {"curves": 1, "rounds": runs, "max_steps": p.finetuning().steps, "batch_size": p.finetuning().batch_size}

    def datasets(self, task: TaskSpec) -> list[tuple[str, str]]:
        labelled = self.labelled_ref(task)
        real = [(f"{labelled.name}/{s.key}", labelled.split) for s in task.params.noise if s.type == "real"]
        return list(dict.fromkeys(super().datasets(task) + real))

    def num_classes(self, task: TaskSpec) -> int | None:
        p = task.params
        if p.protocol == "detection" and p.scores == "model":
            return super().num_classes(task)
        return None  # a probe or a fresh head replaces the model's head: any model fits

    def row_category(self, task: TaskSpec | None, metric: str) -> str:
        """detection -> uncertainty; robustness -> prediction, except ECE rows (uncertainty).

        The protocol is read from the metric's prefix, so results converted from another format
        (no task at hand) get the same categories."""
        from plexbench.metrics.vocabulary import metric_info

        protocol = {v: k for k, v in PREFIX.items()}.get(metric.split("/", 1)[0])
        if protocol is None:  # not a name this kind writes
            return metric_info(metric).category
        if protocol == "detection" or metric_info(metric).name in ("ece", "ece_increase"):
            return "uncertainty"
        return "prediction"

    def score_exclusion(self, task: TaskSpec | None, metric: str, dataset: str) -> str:
        """Only the mean over settings of the protocol's SCORED metrics is scored."""
        parts = metric.split("/")
        protocol = {v: k for k, v in PREFIX.items()}.get(parts[0])
        if protocol is None:
            return ""
        rest = "/".join(parts[1:])
        if rest in SCORED[protocol]:
            return ""
        if len(parts) > 2 and parts[1] == "clean":
            return "the clean-label reference of the same adaptation"
        if rest not in (DETECTION_METRICS if protocol == "detection" else ROBUSTNESS_METRICS):
            return "a per-setting breakdown of the mean over settings"
        return ("shown beside the scored metrics (noise rates, drops, precision and recall, AUPRC whose chance "
                "level is the noise rate)")

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        import scipy.optimize  # noqa: F401 - loaded BEFORE the limit, which acts on loaded libraries only
        import sklearn.model_selection  # noqa: F401
        from threadpoolctl import threadpool_limits

        # One BLAS / OpenMP thread for the many small probe fits: threads competing on a busy
        # 2-core machine made a fit 50x slower in measurements (2 s instead of 0.03 s for
        # 2,000 x 64 features). Set once here: entering the limit costs about 9 ms.
        with threadpool_limits(limits=1):
            return self._evaluate(task, inputs, ctx)

    def _evaluate(self, task: TaskSpec, inputs: Mapping[str, Split], ctx: EvalContext) -> TaskResult:
        p = task.params
        labelled = inputs["labelled"]
        if (p.protocol == "robustness" and p.adapt == "probe") or p.scores == "cross_validated_probe":
            for split in inputs.values():
                if split.embeddings is None:
                    raise PlexbenchError(f"label_noise task '{task.name}' needs pre-logits, which these predictions lack")
        wanted = task.metrics or p.metrics()
        num_classes = self._label_space(task, labelled)
        clean_reference = adapter = None
        if p.protocol == "robustness":
            adapter = self._adapter(task, labelled, inputs["eval"], num_classes, ctx)
            clean_reference = adapter("clean", labelled.labels, task.seed)
        settings, roc = [], {}
        for spec in p.noise:
            runs = []
            for r in range(1 if spec.type == "real" else p.repeats):  # real noise is one fixed draw
                noisy = self._noisy_labels(spec, labelled, num_classes, task.seed + r, ctx)
                if p.protocol == "detection":
                    values, curves = detection_run(labelled, noisy, num_classes, p, task.seed + r)
                    if r == 0:
                        roc[spec.name] = curves
                else:
                    values = with_drops(adapter(f"{spec.name}/{task.seed + r}", noisy.labels, task.seed + r),
                                        clean_reference)
                values["noise_rate"] = noisy.realised_rate
                runs.append((noisy, values))
            settings.append((spec, runs))
        scored_set = labelled if p.protocol == "detection" else inputs["eval"]
        rows = self._rows(task, scored_set, settings, clean_reference, wanted, num_classes)
        curves = {"protocol": p.protocol, "settings": [_setting_curve(spec, runs) for spec, runs in settings]}
        if clean_reference is not None:
            curves["clean"] = clean_reference
        if roc:
            curves["roc"] = roc
        info = {"noise": [[noisy.describe() for noisy, _ in runs] for _, runs in settings],
                "num_classes": num_classes, "labelled": {"dataset": labelled.ref.label, "split": labelled.ref.split,
                                                         "n": labelled.n}}
        return TaskResult(rows=rows, curves={"label_noise": jsonable(curves)}, info=jsonable(info))

    def _adapter(self, task: TaskSpec, train: Split, test: Split, num_classes: int, ctx: EvalContext):
        """`adapt(run_name, train_labels, seed) -> robustness_metrics on the clean test labels`."""
        p = task.params
        if p.adapt == "probe":
            return lambda name, labels, seed: robustness_metrics(test, probe_probs(train, labels, test, num_classes,
                                                                                   p.l2))
        if ctx.model is None:
            raise PlexbenchError(f"label_noise task '{task.name}' fine-tunes the model, but no trainable model "
                                 "was handed to it")
        return FinetuneAdapter(ctx, p.finetuning(), train, test, num_classes)

    def _label_space(self, task: TaskSpec, labelled: Split) -> int:
        """K the noise is drawn over: the model's classes (scores: model) or the dataset's."""
        if task.params.protocol == "detection" and task.params.scores == "model":
            return int(labelled.log_probs.shape[1])
        k = dataset_num_classes(labelled.ref.name)
        return int(k) if k is not None else int(labelled.labels.max()) + 1

    def _noisy_labels(self, spec: NoiseSpec, labelled: Split, num_classes: int, seed: int, ctx: EvalContext):
        from plexbench.data import noise as N

        if spec.type == "real":
            name = f"{labelled.ref.name}/{spec.key}"
            noisy = ctx.rows_of(name, labelled.ref.split, "label", labelled.ids)
            if noisy is None:
                raise PlexbenchError(f"dataset {name} has no labels")
            return N.real(labelled.labels, np.asarray(noisy), num_classes, key=spec.key)
        class_map = (spec.map or labelled.ref.name) if spec.type == "asymmetric" else None
        return N.apply(spec.type, labelled.labels, num_classes, rate=spec.rate, seed=seed, class_map=class_map)

    def _rows(self, task, scored: Split, settings, clean_reference, wanted, num_classes: int) -> list[MetricRow]:
        """Per-setting means over repeats, the clean reference, and the means over settings."""
        label, split, n = scored.ref.label, scored.ref.split, scored.n
        prefix = PREFIX[task.params.protocol]
        rows = []
        per_setting: dict[str, list[float]] = {}
        for spec, runs in settings:
            for metric in wanted:
                value = _mean([values[metric] for _, values in runs])
                per_setting.setdefault(metric, []).append(value)
                rows.append(self._row(task, label, split, f"{prefix}/{spec.name}/{metric}", value, n, num_classes))
        if clean_reference is not None:
            for metric in ("accuracy", "nll", "ece"):
                if metric in wanted:
                    rows.append(self._row(task, label, split, f"{prefix}/clean/{metric}", clean_reference[metric], n,
                                          num_classes))
        for metric in wanted:
            rows.append(self._row(task, label, split, f"{prefix}/{metric}", _mean(per_setting[metric]), n, num_classes))
        return rows

    def _row(self, task, dataset, split, metric, value, n, num_classes) -> MetricRow:
        # num_classes: the label space the noise and the scores live in (a probe's classes, not
        # the model's head: the 1 - nll / ln K normalisation needs this K)
        return MetricRow(dataset, split, metric, float(value), int(n), num_classes=int(num_classes),
                         score_exclusion=self.score_exclusion(task, metric, dataset))


# ----------------------------------------------------------------------------- the protocols


def detection_run(labelled: Split, noisy, num_classes: int, p: LabelNoiseParams, seed: int):
    """One noise draw of the detection protocol: metric -> value, and the ROC curve data."""
    from plexbench.metrics import label_noise as LN

    if p.scores == "model":
        probs = labelled.probs
    else:
        probs = cross_validated_probs(labelled, noisy.labels, num_classes, p.folds, seed, p.l2)
    values, curves = {}, {}
    for score in DETECTION_SCORES:
        quality = LN.QUALITY_SCORES[score](noisy.labels, probs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _undefined_warning())
            values[f"{score}/auroc"] = LN.label_issue_auroc(noisy.is_noisy, quality)
            values[f"{score}/auprc"] = LN.label_issue_auprc(noisy.is_noisy, quality)
        curves[score] = {"noisy": even_subsample(np.sort(1.0 - quality[noisy.is_noisy]), p.curve_points),
                         "clean": even_subsample(np.sort(1.0 - quality[~noisy.is_noisy]), p.curve_points),
                         "auroc": values[f"{score}/auroc"]}
    flagged = LN.find_label_issues(noisy.labels, probs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _undefined_warning())
        values["confident_learning/issue_precision"] = LN.issue_precision(noisy.is_noisy, flagged)
        values["confident_learning/issue_recall"] = LN.issue_recall(noisy.is_noisy, flagged)
        values["confident_learning/issue_f1"] = LN.issue_f1(noisy.is_noisy, flagged)
    values["confident_learning/est_noise_rate"] = LN.estimated_noise_rate(noisy.labels, probs)
    return values, curves


def robustness_metrics(test: Split, probs: np.ndarray) -> dict[str, float]:
    """accuracy, NLL and ECE (15 bins) of `probs` (N, K) against the clean test labels."""
    from plexbench import metrics as M

    return {"accuracy": M.accuracy(test.labels, probs),
            "nll": M.nll(test.labels, np.log(np.maximum(probs, NLL_FLOOR))),
            "ece": M.ece(test.labels, probs, num_bins=ECE_BINS)}


def with_drops(values: dict[str, float], clean: dict[str, float]) -> dict[str, float]:
    """Adds accuracy_drop = clean - noisy, nll_increase and ece_increase = noisy - clean."""
    return {**values, "accuracy_drop": clean["accuracy"] - values["accuracy"],
            "nll_increase": values["nll"] - clean["nll"], "ece_increase": values["ece"] - clean["ece"]}


def cross_validated_probs(labelled: Split, labels: np.ndarray, num_classes: int, folds: int, seed: int,
                          l2: float) -> np.ndarray:
    """Out-of-fold probabilities (N, K) of probes trained on `labels` of the other folds."""
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((labelled.n, num_classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class with fewer examples than folds
        parts = list(splitter.split(np.zeros(labelled.n), labels))
    for train_rows, held_out in parts:
        probs[held_out] = _member_average(labelled.embeddings[:, train_rows], labels[train_rows],
                                          labelled.embeddings[:, held_out], num_classes, l2)
    return probs


def probe_probs(train: Split, labels: np.ndarray, test: Split, num_classes: int, l2: float) -> np.ndarray:
    """Probabilities (N_test, K) of probes fitted on `train`'s pre-logits with `labels`."""
    return _member_average(train.embeddings, labels, test.embeddings, num_classes, l2)


def _member_average(x_train: np.ndarray, y: np.ndarray, x_test: np.ndarray, num_classes: int, l2: float) -> np.ndarray:
    """Members' averaged probabilities (N, K) of plexbench.training's logistic probe (spec §6 rules:
    per member standardised, C = 1 / l2, 150 lbfgs iterations) fitted on (E, n, D) features.

    The probe is fitted over the classes present in `y` (a fold or a noisy set may lack one); the
    others get probability 0."""
    from plexbench.training import fit_probe

    classes = np.unique(y)
    probs = np.zeros((np.shape(x_test)[1], num_classes))
    if classes.shape[0] == 1:
        probs[:, classes[0]] = 1.0
        return probs
    probe = fit_probe(x_train, np.searchsorted(classes, y), int(classes.shape[0]), [l2])
    probs[:, classes] = probe.predict(x_test)[0]
    return probs


class FinetuneAdapter:
    """Robustness by fine-tuning (`adapt: finetune`): each call fine-tunes the pretrained model with
    a fresh zero head on the training images with the given labels (plexbench.training.finetune,
    seeded with the noise seed) and returns `robustness_metrics` of the ensemble probabilities (mean
    of the members' softmax) on the clean test labels. Finished runs' metrics are kept in the kind's state file (ctx.state_path,
    tagged with ctx.state_key) and a run in progress in a checkpoint beside it, so an interrupted
    task resumes where it stopped."""

    def __init__(self, ctx: EvalContext, settings: FinetuneParams, train: Split, test: Split, num_classes: int):
        self.ctx, self.settings, self.num_classes = ctx, settings, num_classes
        self.model = ctx.model
        self.train_images = self._images(train)
        self.test_images = self._images(test)
        self.test = test
        self.done = self._read_state()

    def _images(self, split: Split):
        """(uint8 images of the split's rows, the model's preprocessing with the reference's prefix)."""
        from plexbench.data.preprocess import parse
        from plexbench.data.registry import get_dataset

        arrays = self.ctx.load_arrays(split.ref.name, split.ref.split, int(split.ids.max()) + 1)
        spec = self.model.preprocess or get_dataset(split.ref.name).default_preprocess
        if split.ref.preprocess:
            spec = f"{split.ref.preprocess}|{spec}"
        return np.asarray(arrays["image"])[split.ids], parse(spec)

    def __call__(self, name: str, labels: np.ndarray, seed: int) -> dict[str, float]:
        if name in self.done:
            return dict(self.done[name])
        from plexbench.training import TrainData, finetune
        from plexbench.training.evaluate import EvalData, Forward, member_probs

        apply = self.model.apply_fn(self.num_classes)
        images, transform = self.train_images
        checkpoint = None
        if self.ctx.state_path is not None:
            checkpoint = self.ctx.state_path.with_name(self.ctx.state_path.name + ".run.npz")
        result = finetune(apply, self.model.with_zero_head(self.num_classes, seed),
                          TrainData(images, np.asarray(labels), transform), self.settings.config(seed),
                          checkpoint=checkpoint, identity={"run": name, "state": self.ctx.state_key},
                          desc=f"fine-tune {name}")
        test_images, test_transform = self.test_images
        logits = Forward(apply, batch_size=self.settings.batch_size)(
            result.params, EvalData(test_images, self.test.labels, self.test.ids, test_transform))["logits"]
        self.done[name] = robustness_metrics(self.test, member_probs(logits).mean(axis=0))
        self._write_state()
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        return dict(self.done[name])

    def _read_state(self) -> dict:
        import json

        path = self.ctx.state_path
        if path is None or not path.is_file():
            return {}
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return dict(doc.get("runs", {})) if doc.get("key") == self.ctx.state_key else {}

    def _write_state(self) -> None:
        from plexbench import fileio

        if self.ctx.state_path is not None:
            fileio.write_json(self.ctx.state_path, {"key": self.ctx.state_key, "runs": self.done})


# ----------------------------------------------------------------------------- helpers


def _setting_curve(spec: NoiseSpec, runs) -> dict:
    return {"name": spec.name, "type": spec.type, "rate": spec.rate, "key": spec.key,
            "realised_rate": [noisy.realised_rate for noisy, _ in runs],
            "metrics": {m: [values[m] for _, values in runs] for m in runs[0][1]}}


def _mean(values) -> float:
    """Plain mean: an undefined value (NaN, e.g. precision with nothing flagged) stays visible."""
    return float(np.mean(values)) if len(values) else math.nan


def _undefined_warning():
    from plexbench.metrics import UndefinedMetricWarning

    return UndefinedMetricWarning
