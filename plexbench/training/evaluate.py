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

    def __call__(self, params, data: EvalData) -> dict[str, np.ndarray | None]:
        import jax

        n = len(data)
        if n == 0:
            raise PlexbenchError("nothing to evaluate")
        logits, pre = [], []
        for lo in range(0, n, self.batch_size):
            hi = min(n, lo + self.batch_size)
            x, ids = data.rows(lo, hi), data.ids[lo:hi].astype(np.uint32)
            pad = self.batch_size - (hi - lo)
            if pad:
                x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
                ids = np.concatenate([ids, np.repeat(ids[:1], pad)])
            out_logits, out_pre = self._run(params, jax.device_put(x, self._rows), jax.device_put(ids, self._rows),
                                            self.key)
            logits.append(np.asarray(out_logits)[:, :hi - lo])
            if out_pre is not None:
                pre.append(np.asarray(out_pre)[:, :hi - lo])
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
