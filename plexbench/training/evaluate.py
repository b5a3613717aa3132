"""Forward passes inside training: validation metrics for early stopping, test and pool outputs.

Training evaluates parameters that change every few steps, so it cannot go through the
prediction store (whose entries are keyed by fixed weights); this evaluator is the store-free
counterpart of plexbench.inference.engine with the same rules: a jitted forward of fixed batch
shape (the last batch padded), rows sharded over the local devices' mesh, and the
heteroscedastic head's key for example id i equal to fold_in(PRNGKey(seed), i), so outputs do
not depend on batching.

    forward = Forward(apply_fn, batch_size=512)
    data = EvalData(images_uint8, labels, transform=parse(spec))   # preprocessed once if small
    out = forward(params, data)          # {"logits": (E, N, K), "pre_logits": (E, N, D)}
    accuracy(labels, out)                # top-1 accuracy of the ensemble probabilities
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.training.loop import local_mesh

# Inputs are preprocessed once and kept when they take at most this many bytes as float32.
PREPROCESS_ONCE_BYTES = 1 << 30


@dataclass
class EvalData:
    """Examples to evaluate: `inputs` (N, ...) (raw, `transform` applied per batch or once),
    `labels` int (N,), `ids` int (N,) (the examples' indices in their split: the noise keys)."""

    inputs: Any
    labels: np.ndarray
    ids: np.ndarray | None = None
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    _prepared: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self.labels = np.asarray(self.labels)
        self.ids = np.arange(len(self.labels), dtype=np.int64) if self.ids is None else np.asarray(self.ids, np.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Preprocessed float32 inputs of rows [lo, hi)."""
        if self.transform is None:
            return np.asarray(self.inputs[lo:hi], np.float32)
        if self._prepared is None and len(self) and self._fits():
            self._prepared = np.asarray(self.transform(self.inputs), np.float32)
        if self._prepared is not None:
            return self._prepared[lo:hi]
        return np.asarray(self.transform(self.inputs[lo:hi]), np.float32)

    def batches(self, batch_size: int):
        """(preprocessed inputs, ids) of consecutive chunks of at most `batch_size` rows, in order."""
        for lo in range(0, len(self), batch_size):
            hi = min(len(self), lo + batch_size)
            yield self.rows(lo, hi), self.ids[lo:hi]

    def take(self, index: np.ndarray) -> np.ndarray:
        """Preprocessed float32 inputs of rows `index` (from the kept preprocessed copy if any)."""
        index = np.asarray(index, np.int64)
        if self.transform is None:
            return np.asarray(self.inputs[index], np.float32)
        if self._prepared is None and len(self) and self._fits():
            self._prepared = np.asarray(self.transform(self.inputs), np.float32)
        if self._prepared is not None:
            return self._prepared[index]
        return np.asarray(self.transform(self.inputs[index]), np.float32)

    def _fits(self) -> bool:
        probe = np.asarray(self.transform(self.inputs[:1]), np.float32)
        return probe.nbytes * len(self) <= PREPROCESS_ONCE_BYTES


class StreamedData:
    """Examples of a split too large for memory, or with images of varying size (ImageNet,
    Places365), read through plexbench.data.pipeline and preprocessed image by image.

    Construction reads the split once for its labels (images shrunk to 2 x 2 right after
    decoding); `batches` streams it for a forward pass; `take(rows)` reads just those rows
    (consecutive ids read together) and keeps them preprocessed, so a labelled set that grows
    by a batch per round reads each new example once. Memory: the labels, plus the taken rows'
    preprocessed images (at most the largest labelled set).
    """

    def __init__(self, name: str, split: str, preprocess: str, data_dir=None, limit: int | None = None,
                 stream: bool | None = None, read_batch: int = 256):
        from plexbench.data import pipeline

        self.name, self.split, self.preprocess, self.data_dir, self.stream = name, split, preprocess, data_dir, stream
        self.read_batch = read_batch
        labels, ids = [], []
        for b in pipeline.batches(name, split, batch_size=read_batch, preprocess="resize(2)", data_dir=data_dir,
                                  stop=limit, stream=stream):
            labels.append(np.asarray(b["label"])[b["mask"]])
            ids.append(np.asarray(b["id"])[b["mask"]])
        self.labels = np.concatenate(labels).astype(np.int64)
        self.ids = np.concatenate(ids).astype(np.int64)
        self._taken: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _read(self, start: int, stop: int, batch_size: int):
        from plexbench.data import pipeline

        return pipeline.batches(self.name, self.split, batch_size=batch_size, preprocess=self.preprocess,
                                data_dir=self.data_dir, start=start, stop=stop, stream=self.stream)

    def batches(self, batch_size: int):
        for b in self._read(0, len(self), batch_size):
            mask = np.asarray(b["mask"])
            yield np.asarray(b["image"], np.float32)[mask], np.asarray(b["id"])[mask].astype(np.int64)

    def take(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, np.int64)
        new = np.unique(index[[int(i) not in self._taken for i in index]]) if len(index) else index
        # runs of consecutive rows (rows are ids 0..N-1 in dataset order) are read together
        runs = np.split(new, np.flatnonzero(np.diff(new) != 1) + 1) if len(new) else []
        for run in runs:
            for x, ids in _masked(self._read(int(run[0]), int(run[-1]) + 1, min(len(run), self.read_batch))):
                self._taken.update({int(i): xi for i, xi in zip(ids, x)})
        return np.stack([self._taken[int(i)] for i in index]).astype(np.float32)


def _masked(batches):
    for b in batches:
        mask = np.asarray(b["mask"])
        yield np.asarray(b["image"], np.float32)[mask], np.asarray(b["id"])[mask]


def examples(name: str, split: str, preprocess: str, data_dir=None, limit: int | None = None, load_arrays=None):
    """EvalData of the split in memory when plexbench.data.load can hold it (fixed image size, at most
    load.MAX_IN_MEMORY_BYTES), else StreamedData. `load_arrays(name, split, n)` reads arrays (an
    EvalContext's memoised reader; default plexbench.data.load.load_arrays)."""
    from plexbench.data import load
    from plexbench.data.preprocess import parse
    from plexbench.data.registry import get_dataset

    info = get_dataset(name)
    n = load.num_examples(name, split, data_dir)
    n = n if limit is None else min(n, limit)
    if any(d is None for d in info.image_shape) or n * int(np.prod(info.image_shape)) > load.MAX_IN_MEMORY_BYTES:
        return StreamedData(name, split, preprocess, data_dir, limit)
    if load_arrays is None:
        arrays = load.load_arrays(name, split if limit is None else load.split_range(name, split, data_dir).tfds_spec(0, n),
                                  data_dir)
    else:
        arrays = load_arrays(name, split, limit)
    return EvalData(arrays["image"], np.asarray(arrays["label"]).astype(np.int64), np.asarray(arrays["id"]),
                    parse(preprocess))


class Forward:
    """A jitted forward over EvalData in batches of `batch_size` rows (module docstring)."""

    def __init__(self, apply_fn: Callable, *, batch_size: int = 512, seed: int = 0, with_pre_logits: bool = True):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec as P

        self.mesh = local_mesh()
        devices = self.mesh.devices.size
        self.batch_size = -(-max(1, int(batch_size)) // devices) * devices
        self._rows = NamedSharding(self.mesh, P("data"))
        self.key = jax.random.PRNGKey(seed)
        self._run = _compiled_forward(apply_fn, with_pre_logits, self.mesh)

    def __call__(self, params, data) -> dict[str, np.ndarray | None]:
        """Outputs over EvalData or StreamedData, in row order."""
        import jax

        if len(data) == 0:
            raise PlexbenchError("nothing to evaluate")
        logits, pre = [], []
        for x, ids in data.batches(self.batch_size):
            n = x.shape[0]
            ids = np.asarray(ids).astype(np.uint32)
            pad = self.batch_size - n
            if pad:
                x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
                ids = np.concatenate([ids, np.repeat(ids[:1], pad)])
            out_logits, out_pre = self._run(params, jax.device_put(x, self._rows), jax.device_put(ids, self._rows),
                                            self.key)
            logits.append(np.asarray(out_logits)[:, :n])
            if out_pre is not None:
                pre.append(np.asarray(out_pre)[:, :n])
        return {"logits": np.concatenate(logits, axis=1), "pre_logits": np.concatenate(pre, axis=1) if pre else None}


_FORWARDS: dict = {}


def _compiled_forward(apply_fn: Callable, with_pre_logits: bool, mesh):
    """jit of (params, x, ids, key) -> (logits (E, B, K), pre_logits (E, B, D) | None), shared by
    every Forward over the same function and devices (one compile per task, not per round)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    cache_key = (apply_fn, with_pre_logits, tuple(mesh.devices.flat))
    if cache_key not in _FORWARDS:
        replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        members = NamedSharding(mesh, P(None, "data"))

        def run(params, x, ids, key):
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
            out = apply_fn(params, x, keys)
            pre = out.get("pre_logits") if with_pre_logits else None
            return out["logits"].astype("float32"), (None if pre is None else pre.astype("float32"))

        if len(_FORWARDS) >= 16:
            _FORWARDS.pop(next(iter(_FORWARDS)))
        _FORWARDS[cache_key] = jax.jit(run, in_shardings=(replicated, rows, rows, replicated),
                                       out_shardings=(members, members))
    return _FORWARDS[cache_key]


def member_probs(logits: np.ndarray) -> np.ndarray:
    """softmax over classes of member logits (E, N, K), float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def ensemble_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """accuracy, NLL (spec §5: true-class probability clipped at 1e-7) and ECE (15 bins) of the
    ensemble probabilities (mean of member softmaxes, spec §3) of member logits (E, N, K)."""
    from plexbench import metrics

    log_probs = metrics.ensemble_log_probs(logits)
    probs = np.exp(log_probs.astype(np.float64))
    probs /= probs.sum(axis=1, keepdims=True)
    return {"accuracy": metrics.accuracy(labels, probs), "nll": metrics.nll(labels, log_probs),
            "ece": metrics.ece(labels, probs, num_bins=15)}


def accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Top-1 accuracy of the ensemble probabilities of member logits (E, N, K) (ties: lowest class)."""
    return float(np.mean(member_probs(logits).mean(axis=0).argmax(axis=1) == np.asarray(labels)))
