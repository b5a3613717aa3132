"""Where a benchmarked model's predictions come from: inference, or prediction files.

- `InferenceModel`: a `plexbench.inference.ModelHandle` (a registry/zoo model, optionally with
  `--checkpoint NAME=PATH`, or a user callable `--model package.module:function`); predictions go
  through the prediction store, so each (model, dataset, split, preprocessing, example count) is
  inferred once and every later request, in this run or another, reads the store.
- `FileModel` (`--predictions NAME=DIR_OR_FILES`): prediction-format-v1 files, one per dataset
  split, named `<dataset>__<split>.npz` with `<split>` the split role (train, validation, test);
  a '/' in a dataset name is a sub-directory (`fashion_mnist_corrupted/gaussian_noise_3__test.npz`)
  or is written `--` (`fashion_mnist_corrupted--gaussian_noise_3__test.npz`).
  DIR_OR_FILES is a directory holding such files, or a comma-separated list of the files. Rows
  must be the split's examples in dataset order (ids 0..N-1; a file may hold only the first N).
  That order is checked: a file's `ids`, when present, must be 0..N-1 in order; and when the
  split is prepared (and fits in memory) the file's `labels` must equal the split's first N
  labels, which catches rows in another order also in files without ids.
  Preprocessing overrides of a task (e.g. digits resized to 28x28) are the file writer's business:
  the file is used as it is.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from plexbench import fileio
from plexbench.errors import PlexbenchError
from plexbench.inference.store import EXTRA_OUTPUTS
from plexbench.tasks.kinds.base import Split
from plexbench.tasks.spec import DatasetRef


@dataclasses.dataclass(frozen=True)
class Request:
    """One inference (or file read): the first `n` examples (None = all) of a split, with the
    preprocessing ops `prefix` run before the model's own; `pre_logits` asks for embeddings."""

    dataset: str
    split: str
    prefix: str | None
    n: int | None
    pre_logits: bool = False

    @property
    def key(self) -> tuple:
        return (self.dataset, self.split, self.prefix)


_MEMBER_AXIS_KEYS = ("member_logits", "member_probs")
# Per-member model outputs (E, N) besides the prediction-format arrays, passed through to the kinds
# as `Split.extras`: the store's EXTRA_OUTPUTS (an SNGP head's `gp_variance`).
EXTRA_KEYS = EXTRA_OUTPUTS


def take_rows(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `index` of prediction-format arrays (member arrays and 3-D embeddings along axis 1).

    Scalars (0-d arrays such as `format_version`, written by `plexbench predict --out`) have no
    rows and are kept as they are."""
    out = {}
    for key, value in arrays.items():
        if np.ndim(value) == 0:
            out[key] = value
            continue
        axis = 1 if key in _MEMBER_AXIS_KEYS + EXTRA_KEYS or (key == "embeddings" and value.ndim == 3) else 0
        out[key] = np.take(value, index, axis=axis)
    return out


def check_row_order(where: str, ids: np.ndarray | None, labels: np.ndarray | None = None,
                    split_labels: np.ndarray | None = None) -> None:
    """Raise PlexbenchError unless the rows are the split's examples in dataset order.

    `ids` (when given) must be 0..N-1 in order; `labels` (when `split_labels`, the split's labels
    in dataset order, are given too) must equal split_labels[:N]. Example: ids [0, 2, 1] -> "row 1
    has id 2"; labels [3, 1] against a split starting [1, 3] -> "2 of 2 rows have another label".
    """
    order = "rows must be the split's examples in dataset order (ids 0..N-1); sort the file by example id"
    if ids is not None:
        ids = np.asarray(ids).reshape(-1)
        wrong = np.flatnonzero(ids != np.arange(len(ids)))
        if len(wrong):
            i = int(wrong[0])
            raise PlexbenchError(f"{where}: row {i} has id {ids[i]}; {order}")
    if labels is not None and split_labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) > len(split_labels):
            raise PlexbenchError(f"{where}: {len(labels):,} rows, the split has {len(split_labels):,} examples")
        differ = np.flatnonzero(labels != np.asarray(split_labels)[:len(labels)])
        if len(differ):
            i = int(differ[0])
            raise PlexbenchError(f"{where}: {len(differ):,} of {len(labels):,} rows have another label than the "
                                 f"split's example at that position (first: row {i}, label {labels[i]}, the split's "
                                 f"{split_labels[i]}); {order}")


def split_from_arrays(ref: DatasetRef, arrays: dict[str, np.ndarray], n: int | None) -> Split:
    """A Split of `ref` from prediction-format-v1 arrays of its split (`labels` required; `ids`
    default 0..N-1): the first `n` rows (`ref.limit` applies too), then the class filter, then
    validation into `plexbench.metrics.predictions.Predictions`. `EXTRA_KEYS` arrays (E, N) among
    them (an InferenceModel's SNGP variance) become the Split's `extras`, cut the same way.

    Labels are kept apart from the Predictions (built without targets): OOD data may carry labels
    outside the model's classes (open-set: classes 6-9 for a 6-class model).
    """
    from plexbench.metrics.predictions import Predictions

    if "labels" not in arrays:
        raise PlexbenchError(f"predictions for {ref.name}/{ref.split} have no labels")
    total = len(arrays["labels"])
    arrays = dict(arrays)
    arrays.pop("format_version", None)
    if "ids" in arrays:
        check_row_order(f"predictions for {ref.name}/{ref.split}", arrays["ids"])
    arrays.setdefault("ids", np.arange(total, dtype=np.int64))
    stop = _min_limit(n, ref.limit)
    if stop is not None and stop < total:
        arrays = take_rows(arrays, np.arange(stop))
    if ref.classes is not None:
        arrays = take_rows(arrays, np.flatnonzero(np.isin(arrays["labels"], ref.classes)))
        if len(arrays["labels"]) == 0:
            raise PlexbenchError(f"{ref.name}/{ref.split} has no example of classes {list(ref.classes)}")
    labels = np.asarray(arrays.pop("labels")).astype(np.int64)
    ids = np.asarray(arrays["ids"]).astype(np.int64)
    arrays.pop("soft_labels", None)
    extras = {key: np.asarray(arrays.pop(key)) for key in EXTRA_KEYS if key in arrays}
    preds = Predictions.from_arrays(arrays, require_labels=False)
    return Split(ref, labels, preds.log_probs, ids, preds.logits, preds.embeddings, extras=extras)


def _min_limit(*limits: int | None) -> int | None:
    given = [x for x in limits if x is not None]
    return min(given) if given else None


def config_modality(config) -> str | None:
    """What a registry model reads: "text" for a T5 config (plexbench.models.t5_config.T5Config),
    "image" for a ViT config (plexbench.models.config.ModelConfig), None for no config."""
    if config is None:
        return None
    from plexbench.models.t5_config import T5Config

    return "text" if isinstance(config, T5Config) else "image"


def modality_mismatch(model: str, reads: str | None, dataset: str) -> str | None:
    """Why a model reading `reads` ("text" / "image" / None = unknown) cannot be run on `dataset`
    (it holds the other modality: plexbench.results_schema.dataset_modality), or None.

    E.g. t5-plex-mini (6 classes, like the 6-class Fashion-MNIST models) on fashion_mnist:
    "model t5-plex-mini reads text; dataset fashion_mnist holds images"."""
    from plexbench.results_schema import dataset_modality

    holds = dataset_modality(dataset)
    if reads is None or not holds or reads == holds:
        return None
    return f"model {model} reads {_NOUNS.get(reads, reads)}; dataset {dataset} holds {_NOUNS.get(holds, holds)}"


_NOUNS = {"image": "images", "text": "text"}


class ModelSource(abc.ABC):
    """Base: a named model whose predictions on dataset splits can be had."""

    name: str
    kind: str

    def num_classes(self) -> int | None:
        """K when known without running anything, else None."""
        return None

    @abc.abstractmethod
    def identity(self) -> dict:
        """What determines the model's outputs (part of every result's cache key)."""

    @abc.abstractmethod
    def predictions(self, request: Request, *, options) -> dict[str, np.ndarray]:
        """Prediction-format-v1 arrays (`labels` included) of the request's split, at least its first n rows."""

    def missing(self, request: Request) -> str | None:
        """Why the request cannot be served (None if it can) without computing anything."""
        return None

    def input_modality(self) -> str | None:
        """What the model reads ("image" / "text"), None when unknown (then any dataset is tried)."""
        return None

    def trainable(self):
        """The plexbench.training.TrainableModel handed to kinds that adapt the model (the
        contract in plexbench.tasks.kinds.base), or None when this model cannot be trained."""
        return None

    def untrainable_reason(self) -> str:
        """Why `trainable()` is None, for the skip message."""
        return f"a model given as {self.kind} cannot be trained"

    def info(self) -> dict:
        """run.json facts: source, identity, num_params, flops_per_example (None when unknown)."""
        return {"source": self.kind, "identity": self.identity()}


class InferenceModel(ModelSource):
    """Predictions computed through `plexbench.inference.predict` (and its store)."""

    def __init__(self, handle, kind: str, config=None):
        self.handle, self.name, self.kind, self.config = handle, handle.name, kind, config
        self._cost: dict | None = None
        self._first: tuple[Request, Any] | None = None  # the first inference: its input shape gives the FLOPs
        self._trainable = None

    def num_classes(self) -> int | None:
        return self.handle.num_classes

    def identity(self) -> dict:
        return dict(self.handle.identity)

    def input_modality(self) -> str | None:
        """What the model reads (`config_modality`); None for a user callable (any dataset is tried)."""
        return config_modality(self.config)

    def missing(self, request: Request) -> str | None:
        """A dataset of the other modality cannot be served (`modality_mismatch`); the runner skips
        the task with this reason before any inference."""
        return modality_mismatch(self.name, self.input_modality(), request.dataset)

    def trainable(self):
        """A TrainableModel sharing the handle's lazily loaded parameters; None without a
        plexbench ViT config (user callables: their module cannot be given a fresh head)."""
        if self.config is None:
            return None
        if self._trainable is None:
            from plexbench.training.model import TrainableModel

            self._trainable = TrainableModel.from_handle(self.handle, self.config)
        return self._trainable

    def untrainable_reason(self) -> str:
        return "a model given as a callable cannot be trained (adapting needs a plexbench ViT config)"

    def preprocess_for(self, dataset: str, prefix: str | None) -> str:
        """The preprocessing spec of an inference: `prefix|<model's, else the dataset's default>`."""
        from plexbench.data.registry import get_dataset

        base = self.handle.preprocess or get_dataset(dataset).default_preprocess
        return f"{prefix}|{base}" if prefix else base

    def predictions(self, request: Request, *, options):
        from plexbench.inference import predict, tfds_source

        source = tfds_source(request.dataset, request.split, data_dir=options.data_dir,
                             preprocess=self.preprocess_for(request.dataset, request.prefix))
        if request.n is not None and request.n < source.num_examples:
            # The first n examples only: a store entry of its own (the fingerprint says so).
            source = dataclasses.replace(source, num_examples=request.n,
                                         fingerprint=f"{source.fingerprint}|first:{request.n}")
        entry = predict(self.handle, request.dataset, request.split, data_dir=options.data_dir,
                        store_dir=options.store_dir, batch_size=options.batch_size, dtype=options.dtype,
                        seed=options.seed, with_pre_logits=request.pre_logits, source=source,
                        verbose=options.verbose)
        if self.handle.num_classes is None:
            self.handle.num_classes = int(entry.logits.shape[-1])
        if self.handle.num_members is None:
            self.handle.num_members = int(entry.logits.shape[0])
        if self._first is None:
            self._first = (request, options.data_dir)
        from plexbench.inference.convert import prediction_arrays

        extras = {key: value for key, value in entry.extras.items() if key in EXTRA_KEYS}
        return {**prediction_arrays(entry), "ids": entry.ids, **extras}

    def info(self, store_dir=None, known: dict | None = None) -> dict:
        out = super().info()
        out.update({"num_classes": self.handle.num_classes, "num_members": self.handle.num_members,
                    "preprocess": self.handle.preprocess})
        out.update(self.cost(store_dir, known))
        return out

    def cost(self, store_dir=None, known: dict | None = None) -> dict:
        """num_params (sum of parameter sizes) and flops_per_example, with `flops_method`:
        for registry models (a `config`) the analytic matmul count of plexbench.models.flops; for
        other models XLA's cost analysis of the jitted forward pass on one example of the first
        dataset inferred in this run. None when unavailable, with `cost_error` saying why.

        Measuring loads the parameters and traces the model once, so the numbers are kept in
        `<store>/_model_costs/<sha256>.json`, keyed by the model identity and the input it was
        measured on: a rerun reads them and never touches the model. `known`: numbers recorded
        earlier for this same identity (a previous run.json), used when nothing else is cached.
        """
        if self._cost is not None:
            return dict(self._cost)
        if known and known.get("num_params") is not None and self._cost_cache_path(store_dir) is None:
            self._cost = {k: known.get(k) for k in ("num_params", "flops_per_example", "flops_method")}
            return dict(self._cost)
        cache = self._cost_cache_path(store_dir)
        if cache is not None and cache.is_file():
            try:
                self._cost = json.loads(cache.read_text(encoding="utf-8"))
                return dict(self._cost)
            except (OSError, ValueError):
                pass  # unreadable: measure again
        self._cost = {"num_params": None, "flops_per_example": None}
        try:
            from plexbench.inference.handle import count_params

            self._cost["num_params"] = count_params(self.handle.params)
            if self.config is not None:
                from plexbench.models.flops import flops_per_example

                self._cost["flops_per_example"] = float(flops_per_example(self.config)["total"])
                self._cost["flops_method"] = "analytic matmul count (plexbench.models.flops)"
            elif self._first is not None:
                self._cost["flops_per_example"] = _flops_per_example(self, *self._first)
                self._cost["flops_method"] = "XLA cost analysis of the jitted forward pass"
        except PlexbenchError:
            raise
        except Exception as e:  # noqa: BLE001 - cost analysis is best effort; say why it is missing
            self._cost["cost_error"] = f"{type(e).__name__}: {e}"
        if cache is not None and "cost_error" not in self._cost:
            fileio.write_json(cache, self._cost)
        return dict(self._cost)

    def _cost_cache_path(self, store_dir) -> Path | None:
        """Cache file of the cost numbers: keyed by identity (analytic FLOPs), plus the measured
        input for XLA's cost analysis (None before the first inference of the run)."""
        from plexbench import paths

        fields = {"identity": self.identity(), "method": "analytic" if self.config is not None else "xla"}
        if self.config is None:
            if self._first is None:
                return None
            request, _ = self._first
            fields.update(dataset=request.dataset, split=request.split,
                          preprocess=self.preprocess_for(request.dataset, request.prefix))
        return paths.store_dir(store_dir) / "_model_costs" / f"{fileio.sha256_json(fields)}.json"


def _flops_per_example(model: InferenceModel, request: Request, data_dir) -> float | None:
    import jax
    import jax.numpy as jnp

    from plexbench.data import pipeline

    spec = model.preprocess_for(request.dataset, request.prefix)
    batch = next(iter(pipeline.batches(request.dataset, request.split, batch_size=1, preprocess=spec,
                                       data_dir=data_dir, start=0, stop=1)))
    x = jnp.asarray(batch["image"][:1], jnp.float32)
    fn = jax.jit(lambda p, images: model.handle.apply_fn(p, images, jax.random.PRNGKey(0)))
    analysis = fn.lower(model.handle.params, x).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return None if flops is None or not math.isfinite(flops) or flops <= 0 else float(flops)


class FileModel(ModelSource):
    """Predictions read from prediction-format-v1 files (module docstring)."""

    kind = "predictions"

    def __init__(self, name: str, location: str):
        self.name = name
        self.files = _prediction_files(name, location)
        self._loaded: dict[Path, Any] = {}
        self._order_checked: set[Path] = set()
        self._identity: dict | None = None

    @staticmethod
    def file_name(dataset: str, split: str) -> str:
        return f"{dataset}__{split}.npz"

    def _path(self, request: Request) -> Path | None:
        return self.files.get(self.file_name(request.dataset, request.split))

    def missing(self, request: Request) -> str | None:
        if self._path(request) is None:
            return f"no prediction file {self.file_name(request.dataset, request.split)} for model {self.name}"
        return None

    def num_classes(self) -> int | None:
        if not self.files:
            return None
        arrays = self._load(sorted(self.files.values())[0])
        for key in ("member_logits", "member_probs", "logits", "probs"):
            if key in arrays:
                return int(arrays[key].shape[-1])
        return None

    def identity(self) -> dict:
        if self._identity is None:
            self._identity = {"kind": "predictions",
                              "files_sha256": {rel: fileio.sha256_file(p) for rel, p in sorted(self.files.items())}}
        return dict(self._identity)

    def _load(self, path: Path) -> dict[str, np.ndarray]:
        """The file's arrays, validated as format v1 (labels are checked against K in the tasks)."""
        if path not in self._loaded:
            from plexbench.metrics.predictions import Predictions

            arrays = fileio.load_npz(path, what="prediction file")
            if "labels" not in arrays:
                raise PlexbenchError(f"prediction file {path} has no 'labels' (N,); tasks need the true labels")
            body = {k: v for k, v in arrays.items() if k not in ("labels", "soft_labels")}
            try:
                Predictions.from_arrays(body, require_labels=False)
            except PlexbenchError as e:
                raise PlexbenchError(f"prediction file {path}: {e}") from None
            self._loaded[path] = arrays
        return self._loaded[path]

    def predictions(self, request: Request, *, options):
        path = self._path(request)
        if path is None:
            raise PlexbenchError(self.missing(request))
        arrays = self._load(path)
        if path not in self._order_checked:
            check_row_order(f"prediction file {path}", arrays.get("ids"), arrays["labels"],
                            _split_labels(request.dataset, request.split, options.data_dir))
            self._order_checked.add(path)
        return arrays

    def info(self) -> dict:
        out = super().info()
        out.update({"num_classes": self.num_classes(), "num_params": None, "flops_per_example": None})
        return out


def _split_labels(dataset: str, split: str, data_dir) -> np.ndarray | None:
    """The split's labels in dataset order, or None when it is not prepared or too large to load
    (then only `ids` can show the row order)."""
    from plexbench.data import registry as D
    from plexbench.data.load import load_arrays

    if dataset not in D.DATASETS or not D.is_available(dataset, data_dir):
        return None
    try:
        return load_arrays(dataset, split, data_dir)["label"]
    except PlexbenchError:
        return None


def _prediction_files(name: str, location: str) -> dict[str, Path]:
    """'<dataset>__<split>.npz' (relative path) -> file, from a directory or a comma-separated file list."""
    parts = [p for p in location.split(",") if p]
    if len(parts) == 1 and Path(parts[0]).expanduser().is_dir():
        root = Path(parts[0]).expanduser()
        files = {_dataset_key(str(p.relative_to(root))): p for p in sorted(root.rglob("*__*.npz"))}
        if not files:
            raise PlexbenchError(f"--predictions {name}={location}: no <dataset>__<split>.npz files in that directory")
        return files
    out = {}
    for part in parts:
        path = Path(part).expanduser()
        if not path.is_file():
            raise PlexbenchError(f"--predictions {name}: file not found: {path}")
        if "__" not in path.name or path.suffix != ".npz":
            raise PlexbenchError(f"--predictions {name}: {path.name} is not named <dataset>__<split>.npz")
        out[_dataset_key(path.name)] = path
    return out


def _dataset_key(relative: str) -> str:
    """File name -> lookup key: '--' stands for '/' (TFDS names never hold '--')."""
    return relative.replace("--", "/")
