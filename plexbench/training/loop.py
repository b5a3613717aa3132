"""The fine-tuning loop: optax, jit, data-parallel over the local devices, gradient clipping,
constant or warmup-cosine learning rate, early stopping on a validation metric, and atomic
checkpoints from which a killed run resumes to bit-identical results.

    config = FinetuneConfig(optimizer="sgd", learning_rate=0.01, batch_size=512, max_steps=2000,
                            clip_norm=1.0, eval_every=5, patience=128, sampling="repeat")
    result = finetune(apply_fn, params, TrainData(images, labels, transform), config,
                      evaluate=validation_accuracy, checkpoint="run/finetune_state.npz")
    result.params          # the kept parameters (the best evaluated ones; the last without evaluation)

Step t = 0, 1, ... (everything a step reads is a function of the config, the data and t):

1. rows: the sampler's next `batch_size` row indices (`BatchSampler`, seeded by `config.seed`);
   x = data.transform(data.inputs[rows]) on the host (float32 (B, H, W, 3)), y = data.labels[rows];
2. key_t = fold_in(PRNGKey(config.rng_seed), t) (the heteroscedastic head's noise);
3. loss = loss_fn(apply_fn(params, x, key_t), y); default `member_cross_entropy`: the mean over
   members and rows of -log_softmax(logits_m)[y] (E, B, K logits);
4. grads -> [trainable mask] -> clip_by_global_norm(clip_norm) -> the optimizer at lr_t -> params.

Learning rate (`make_schedule`), with T = max_steps and w = min(warmup_steps, max(1, T // 2)):
`constant`: lr_t = lr. `warmup_cosine`: lr_t = lr * t / w for t < w, else
end + (lr - end) * (1 + cos(pi * (t - w) / (max(T, 2) - w))) / 2 (optax.warmup_cosine_decay_schedule;
the warmup is capped at half the run so that a shortened run still decays).

Early stopping (spec §6 for active learning; `eval_every` None turns it off): after update s
(s = t + 1 = updates done) with s % eval_every == 0 or s == max_steps, m = evaluate(params)
(higher is better). m >= best (ties go to the LATER step) makes s the best step and keeps
these parameters. The run stops after that evaluation when patience is set and
s - best_step >= patience, or at s == max_steps. Worked example: eval_every 5, patience 10,
validation accuracies 0.5, 0.7, 0.7, 0.6, 0.6 at s = 5..25: best_step 15 (the tie at 15 beats
10), and s = 25 is the first evaluation with 25 - 15 >= 10, so the run stops after 25 updates
and returns the parameters of update 15.

Data parallelism: one 1-D mesh over `jax.local_devices()` (axis 'data'); parameters and
optimizer state replicated, each batch split along its rows (batch_size must be a multiple of the
device count). The gradient is then the mean over the global batch, computed by XLA's
partitioner (an all-reduce); on one device the program is the plain single-device one.

Checkpoints (`checkpoint=path`): every `checkpoint_every` updates and at the end, one .npz
written atomically (plexbench.fileio) holding the parameters, the optimizer state, the kept
parameters, the sampler (its numpy bit-generator state and current permutation) and the
evaluation history. A run given an existing checkpoint restores it and continues: since every
step is a deterministic function of that state, the result equals the uninterrupted run's bit
for bit. The file also records a fingerprint of the config, the data and the initial
parameters; a checkpoint of another run is refused with a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from plexbench import fileio, progress
from plexbench.errors import PlexbenchError

CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides a fine-tuning run (see the module docstring).

    - `optimizer`: "sgd" (with `momentum`; 0 = plain SGD) or "adamw" (`b1`, `b2`, eps 1e-8).
    - `weight_decay`: decoupled weight decay on parameters named `kernel` only (0 = none).
    - `learning_rate`, `schedule` ("constant" | "warmup_cosine"), `warmup_steps`, `end_learning_rate`.
    - `clip_norm`: global gradient-norm clip (None = no clipping).
    - `batch_size`, `max_steps`; `sampling`: "epochs" (a fresh permutation per epoch, the last
      partial batch dropped) or "repeat" (the training set repeated and shuffled: fresh
      permutations concatenated and cut into batches, so a batch may hold an example more than
      once when the set is smaller than the batch).
    - `eval_every`, `patience`: early stopping (None = off).
    - `trainable`: "all", or "head" (only parameters under the top-level `head` /
      `batchensemble_head` are updated; the others stay as given).
    - `seed`: the sampler's numpy seed; `rng_seed`: the model's noise key PRNGKey(rng_seed).
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 0.0
    schedule: Literal["constant", "warmup_cosine"] = "constant"
    warmup_steps: int = 0
    end_learning_rate: float = 0.0
    clip_norm: float | None = 1.0
    batch_size: int = 512
    max_steps: int = 2000
    sampling: Literal["epochs", "repeat"] = "repeat"
    eval_every: int | None = None
    patience: int | None = None
    trainable: Literal["all", "head"] = "all"
    seed: int = 0
    rng_seed: int = 0

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise PlexbenchError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.schedule not in ("constant", "warmup_cosine"):
            raise PlexbenchError(f"schedule must be constant or warmup_cosine, got {self.schedule!r}")
        if self.sampling not in ("epochs", "repeat"):
            raise PlexbenchError(f"sampling must be epochs or repeat, got {self.sampling!r}")
        if self.trainable not in ("all", "head"):
            raise PlexbenchError(f"trainable must be all or head, got {self.trainable!r}")
        if self.batch_size < 1 or self.max_steps < 1:
            raise PlexbenchError(f"batch_size and max_steps must be >= 1 (got {self.batch_size}, {self.max_steps})")
        if self.eval_every is not None and self.eval_every < 1:
            raise PlexbenchError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.patience is not None and self.eval_every is None:
            raise PlexbenchError("patience needs eval_every (early stopping evaluates the validation metric)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainData:
    """Training examples: `inputs` (N, ...) indexable by an integer array, `labels` int (N,), and
    `transform`, applied on the host to each batch of inputs (e.g. the model's preprocessing,
    plexbench.data.preprocess.parse(spec), uint8 -> float32 (B, H, W, 3)); None = use as given."""

    inputs: Any
    labels: np.ndarray
    transform: Callable[[np.ndarray], np.ndarray] | None = None

    def __len__(self) -> int:
        return int(len(self.labels))

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.inputs[rows]
        x = self.transform(x) if self.transform is not None else x
        return np.asarray(x, dtype=np.float32), np.asarray(self.labels[rows])


@dataclass
class FinetuneResult:
    """What `finetune` returns. `params`: the kept parameters as a nested dict of float32 numpy
    arrays; `steps`: updates done; `best_step` / `best_metric`: the kept evaluation (None without
    evaluation); `evals`: [(step, metric), ...]; `stopped_early`: patience ended the run;
    `resumed_from`: the step the run restarted from (0 = fresh); `losses`: the training loss of
    each step of this call; `seconds`: wall time of this call."""

    params: dict
    steps: int
    best_step: int | None
    best_metric: float | None
    evals: list[tuple[int, float]]
    stopped_early: bool
    resumed_from: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- pieces


def make_schedule(config: FinetuneConfig, total_steps: int | None = None):
    """The learning rate as an optax schedule of the step count (module docstring formula).

    >>> s = make_schedule(FinetuneConfig(schedule="warmup_cosine", learning_rate=1.0, warmup_steps=2,
    ...                                  max_steps=6))
    >>> [round(float(s(t)), 4) for t in range(7)]
    [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 0.0]
    """
    import optax

    total = config.max_steps if total_steps is None else total_steps
    if config.schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, min(config.warmup_steps, max(1, total // 2)), max(total, 2),
        config.end_learning_rate)


def is_kernel(params):
    """Pytree of booleans: True at leaves named `kernel` (the weight-decay mask)."""
    import jax

    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


HEAD_NAMES = ("head", "batchensemble_head")


def is_head(params):
    """Pytree of labels: "train" under a top-level head module, "freeze" elsewhere."""
    import jax

    def label(path, _):
        return "train" if getattr(path[0], "key", None) in HEAD_NAMES else "freeze"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: FinetuneConfig, total_steps: int | None = None):
    """optax chain: clip_by_global_norm(clip_norm) -> sgd(momentum) | adamw(b1, b2, wd on kernels),
    at the learning rate of `make_schedule`; wrapped so only the head trains when
    trainable == "head"."""
    import optax

    schedule = make_schedule(config, total_steps)
    parts = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm is not None else []
    if config.optimizer == "adamw":
        parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                                 mask=is_kernel))
    else:
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay, mask=is_kernel))
        parts.append(optax.sgd(schedule, momentum=config.momentum or None))
    tx = optax.chain(*parts)
    if config.trainable == "head":
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, is_head)
    return tx


def member_cross_entropy(outputs, labels):
    """Mean over members and rows of -log_softmax(logits_m)[label]; logits (E, B, K), labels (B,).

    For the heteroscedastic head the logits are already log MC-averaged probabilities, so this is
    -log of each member's predictive probability of the label.
    """
    import jax
    import jax.numpy as jnp

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[None, :, None], axis=-1))


class BatchSampler:
    """Row indices of each training batch, from numpy's default_rng(seed).

    `epochs`: permutation after permutation of range(n), each cut into n // batch_size batches (the
    remainder dropped). `repeat`: permutations concatenated into one endless stream cut into
    batches, so batches cross epoch boundaries and a set smaller than the batch repeats inside it.
    Example (n = 3, batch 2, repeat): the stream p0[0] p0[1] | p0[2] p1[0] | p1[1] p1[2] | ...
    """

    def __init__(self, n: int, batch_size: int, seed: int, mode: str):
        if n < 1:
            raise PlexbenchError("no training examples")
        if mode == "epochs" and n < batch_size:
            raise PlexbenchError(f"{n} training examples, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.mode = int(n), int(batch_size), mode
        self.rng = np.random.default_rng(seed)
        self.perm = np.zeros(0, np.int64)
        self.pos = 0

    def next(self) -> np.ndarray:
        b = self.batch_size
        if self.mode == "epochs":
            if self.pos + b > self.perm.shape[0]:
                self.perm, self.pos = self.rng.permutation(self.n), 0
            rows = self.perm[self.pos:self.pos + b]
            self.pos += b
            return rows
        parts, need = [], b
        while need:
            if self.pos == self.perm.shape[0]:
                self.perm, self.pos = self.rng.permutation(self.n), 0
            take = min(need, self.perm.shape[0] - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            need -= take
        return np.concatenate(parts)

    def state(self) -> tuple[dict, np.ndarray]:
        return {"bit_generator": self.rng.bit_generator.state, "pos": self.pos}, self.perm

    def restore(self, meta: dict, perm: np.ndarray) -> None:
        self.rng.bit_generator.state = meta["bit_generator"]
        self.perm, self.pos = np.asarray(perm, np.int64), int(meta["pos"])


def local_mesh():
    """1-D mesh over this process's devices, axis 'data'."""
    import jax
    from jax.sharding import Mesh

    return Mesh(np.asarray(sorted(jax.local_devices(), key=lambda d: d.id)), ("data",))


# ----------------------------------------------------------------------------- the loop


def finetune(apply_fn: Callable, params: Any, data: TrainData, config: FinetuneConfig, *,
             evaluate: Callable[[Any], float] | None = None, checkpoint: str | Path | None = None,
             checkpoint_every: int = 100, loss_fn: Callable = member_cross_entropy,
             callback: Callable[[int, float], None] | None = None, identity: Any = None,
             desc: str = "fine-tune") -> FinetuneResult:
    """Fine-tune `params` on `data` (module docstring: steps, early stopping, checkpoints).

    Args:
        apply_fn: `apply_fn(params, images, rng) -> {"logits": (E, B, K), ...}` (ARCHITECTURE.md).
        params: the starting parameters (nested mapping of arrays).
        data: the training examples; config: the run's settings.
        evaluate: `evaluate(params) -> float`, higher is better; needed when config.eval_every is set.
        checkpoint: path of the resumable state (.npz), or None.
        checkpoint_every: updates between checkpoints.
        loss_fn: `loss_fn(outputs, labels) -> scalar`.
        callback: called as callback(step, loss) after each update (step = updates done; loss a
            device scalar, `float(loss)` waits for it); an exception raised there ends the run
            like a kill would.
        identity: JSON-able facts that tell this run apart from others sharing the config and
            data (part of the checkpoint fingerprint).

    Returns a FinetuneResult.
    """
    if config.eval_every is not None and evaluate is None:
        raise PlexbenchError("early stopping needs an evaluate function")
    started = time.perf_counter()
    run = _Run(apply_fn, params, data, config, loss_fn)
    state = run.fresh_state()
    path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = _fingerprint(config, data, params, identity) if path is not None else ""
    if path is not None and path.exists():
        state = run.restore(path, fingerprint)
    resumed_from = state.step
    losses = []
    with progress.bar(config.max_steps, desc, unit="step") as bar:
        bar.update(state.step)
        while not state.done:
            loss = run.step(state)
            losses.append(loss)
            bar.update(1)
            if config.eval_every is not None and (state.step % config.eval_every == 0
                                                  or state.step == config.max_steps):
                run.record_eval(state, float(evaluate(state.params)))
            state.done = state.step >= config.max_steps or state.stopped_early
            if path is not None and (state.done or state.step % checkpoint_every == 0):
                run.save(path, state, fingerprint)
            if callback is not None:
                callback(state.step, loss)
    kept = state.best_params if state.best_params is not None else state.params
    return FinetuneResult(_to_numpy(kept), state.step, state.best_step, state.best_metric, list(state.evals),
                          state.stopped_early, resumed_from, [float(v) for v in losses],
                          time.perf_counter() - started)


@dataclass
class _State:
    params: Any
    opt_state: Any
    step: int
    sampler: BatchSampler
    best_params: Any = None
    best_step: int | None = None
    best_metric: float | None = None
    evals: list = field(default_factory=list)
    stopped_early: bool = False
    done: bool = False


class _Run:
    """The compiled step and the (de)serialisation of one run's state."""

    def __init__(self, apply_fn, params, data: TrainData, config: FinetuneConfig, loss_fn):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec as P

        self.config, self.data = config, data
        self.mesh = local_mesh()
        devices = self.mesh.devices.size
        if config.batch_size % devices:
            raise PlexbenchError(f"batch size {config.batch_size} is not a multiple of the {devices} local devices")
        self.replicated = NamedSharding(self.mesh, P())
        self.rows = NamedSharding(self.mesh, P("data"))
        self.opt, self._init, self._step = _compiled_step(apply_fn, config, loss_fn, self.mesh)
        self.params0 = jax.device_put(params, self.replicated)
        self.base_key = jax.device_put(jax.random.PRNGKey(config.rng_seed), self.replicated)

    def fresh_state(self) -> _State:
        sampler = BatchSampler(len(self.data), self.config.batch_size, self.config.seed, self.config.sampling)
        return _State(self.params0, self._init(self.params0), 0, sampler)

    def step(self, state: _State):
        """One update; returns the loss as a device scalar (not waited for: dispatch is
        asynchronous, so the host prepares the next batch while the device computes)."""
        import jax

        x, y = self.data.batch(state.sampler.next())
        x = jax.device_put(x, self.rows)
        y = jax.device_put(y.astype(np.int32), self.rows)
        state.params, state.opt_state, loss = self._step(state.params, state.opt_state, x, y, self.base_key,
                                                         np.uint32(state.step))
        state.step += 1
        return loss

    def record_eval(self, state: _State, metric: float) -> None:
        c = self.config
        state.evals.append((state.step, metric))
        if state.best_metric is None or metric >= state.best_metric:  # ties go to the later step
            state.best_metric, state.best_step, state.best_params = metric, state.step, state.params
        if c.patience is not None and state.step - state.best_step >= c.patience:
            state.stopped_early = state.step < c.max_steps

    # -- checkpoints
    def save(self, path: Path, state: _State, fingerprint: str) -> None:
        import jax

        from plexbench.models.checkpoint import flatten_params

        arrays = {f"params/{k}": v for k, v in flatten_params(_to_numpy(state.params)).items()}
        if state.best_params is not None and state.best_params is not state.params:
            arrays.update({f"best/{k}": v for k, v in flatten_params(_to_numpy(state.best_params)).items()})
        for i, leaf in enumerate(jax.tree_util.tree_leaves(state.opt_state)):
            arrays[f"opt/{i:05d}"] = np.asarray(leaf)
        sampler_meta, perm = state.sampler.state()
        arrays["sampler/perm"] = perm
        meta = {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "step": state.step,
                "best_step": state.best_step, "best_metric": state.best_metric,
                "best_is_current": state.best_params is not None and state.best_params is state.params,
                "evals": state.evals, "stopped_early": state.stopped_early, "done": state.done,
                "sampler": sampler_meta}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        fileio.save_npz(path, arrays)

    def restore(self, path: Path, fingerprint: str) -> _State:
        import jax

        from plexbench.models.checkpoint import unflatten_params

        arrays = fileio.load_npz(path, what="training checkpoint")
        try:
            meta = json.loads(bytes(arrays["meta"]).decode())
        except (KeyError, ValueError):
            raise PlexbenchError(f"{path} is not a plexbench training checkpoint; delete it to start over") from None
        if meta.get("format") != CHECKPOINT_FORMAT or meta.get("fingerprint") != fingerprint:
            raise PlexbenchError(f"training checkpoint {path} belongs to another run (other config, data or "
                                 "initial parameters); delete it to start over")

        def tree(prefix):
            return unflatten_params({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})

        state = self.fresh_state()
        state.params = jax.device_put(tree("params/"), self.replicated)
        leaves = [arrays[k] for k in sorted(k for k in arrays if k.startswith("opt/"))]
        treedef = jax.tree_util.tree_structure(state.opt_state)
        state.opt_state = jax.device_put(jax.tree_util.tree_unflatten(treedef, leaves), self.replicated)
        state.step = int(meta["step"])
        state.sampler.restore(meta["sampler"], arrays["sampler/perm"])
        state.best_step, state.best_metric = meta["best_step"], meta["best_metric"]
        if meta["best_is_current"]:
            state.best_params = state.params
        elif any(k.startswith("best/") for k in arrays):
            state.best_params = jax.device_put(tree("best/"), self.replicated)
        state.evals = [tuple(e) for e in meta["evals"]]
        state.stopped_early, state.done = bool(meta["stopped_early"]), bool(meta["done"])
        return state


# Compiled updates shared by runs with the same model function, optimizer settings, loss and
# devices (active learning fine-tunes once per round: it compiles once per task).
_STEPS: dict = {}
_MAX_STEPS = 16
_OPTIMIZER_FIELDS = ("optimizer", "learning_rate", "momentum", "b1", "b2", "weight_decay", "schedule",
                     "warmup_steps", "end_learning_rate", "clip_norm", "max_steps", "trainable")


def _compiled_step(apply_fn, config: FinetuneConfig, loss_fn, mesh):
    """(optimizer, jitted optimizer init, jitted update (params, opt_state, x, y, base_key, t) ->
    (params, opt_state, loss)). The init is jitted too: run op by op it compiles one small
    program per parameter shape."""
    import jax
    import optax
    from jax.sharding import NamedSharding, PartitionSpec as P

    fields = [f for f in _OPTIMIZER_FIELDS if f != "max_steps" or config.schedule != "constant"]  # the schedule's length
    key = (apply_fn, tuple((f, getattr(config, f)) for f in fields), loss_fn, tuple(mesh.devices.flat))
    if key in _STEPS:
        return _STEPS[key]
    opt = make_optimizer(config)
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def objective(params, x, y, rng):
        return loss_fn(apply_fn(params, x, rng), y)

    def step(params, opt_state, x, y, base_key, t):
        loss, grads = jax.value_and_grad(objective)(params, x, y, jax.random.fold_in(base_key, t))
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    compiled = jax.jit(step, in_shardings=(replicated, replicated, rows, rows, replicated, replicated),
                       out_shardings=(replicated, replicated, replicated))
    init = jax.jit(opt.init, in_shardings=(replicated,), out_shardings=replicated)
    if len(_STEPS) >= _MAX_STEPS:
        _STEPS.pop(next(iter(_STEPS)))
    _STEPS[key] = (opt, init, compiled)
    return opt, init, compiled


def _to_numpy(params) -> dict:
    """Nested dict of float32 (or the leaf's own dtype when not floating) numpy arrays."""
    import jax

    def leaf(x):
        a = np.asarray(x)
        return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a

    return jax.tree_util.tree_map(leaf, params)


def _fingerprint(config: FinetuneConfig, data: TrainData, params, identity) -> str:
    """sha256 of the config, the training labels, the data's shape and the initial parameters."""
    from plexbench.inference.handle import params_sha256

    return fileio.sha256_json({"config": config.to_dict(), "n": len(data),
                               "labels": fileio.sha256_bytes(np.ascontiguousarray(data.labels).tobytes()),
                               "inputs_shape": list(np.shape(data.inputs)), "params": params_sha256(params),
                               "identity": identity})
