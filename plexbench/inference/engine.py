"""The data-parallel forward pass: jit-compiled, sharded over every device of every process.

Layout. One 1-D `jax.sharding.Mesh` over all devices (ordered by process, then id) with axis
'data'. Parameters are replicated (`NamedSharding(mesh, P())`); a global batch of G rows is split
along 'data' (`P('data')`), G a multiple of the device count. Each process feeds its own
G / process_count rows (its share from data.pipeline) with `jax.make_array_from_process_local_data`;
process p's rows are rows [p*G/P, (p+1)*G/P) of the global batch. Outputs come back in that global
row order: with one process by `np.asarray`, with several by
`multihost_utils.process_allgather`, so every process holds the whole global batch (no shared file
system is needed to assemble results; process 0 alone writes the store).

Overlap. `run` keeps one step in flight: it dispatches step i+1 (JAX dispatch is asynchronous)
before it copies step i's results to the host, so host work (reading the next batch, writing a
store chunk) overlaps device compute; data.pipeline's prefetch thread overlaps decoding.

uint8 images. A batch that carries `image_table` float32 (256,) (plexbench.data.pipeline's
`uint8_images=True`) has uint8 images: they travel to the device as uint8 (4x fewer bytes than
float32) and the step looks each value up in the table there, giving the float32 images bit for bit.

Precision. `dtype` is the compute dtype; float32 runs trace with matmul precision "highest", so a GPU
does not silently use TF32. A handle with `apply_fn_for_dtype` (plexbench's ViT) gets a
module built for that dtype (float32 params, bfloat16 matmuls, float32 LayerNorm statistics);
any other model gets its floating params and the images cast to the dtype. Outputs are cast to
float32 on the device.

Randomness (heteroscedastic head, spec §3). A model that consumes its `rng` is run row by row under
`jax.vmap`, row r with key `fold_in(PRNGKey(seed), id_r)` where id_r is the example's index in its
split. Each example's MC noise then depends only on (seed, id), so outputs are the same for any
batch size, device count or process count, and for any start/stop of a resumed run. A model that
does not consume `rng` (found by tracing, see `rng_is_used`) runs on the whole batch at once.

Reduction order. Per-row results of a deterministic model can still differ in the last bits
between batch sizes, because XLA's CPU/GPU matmul kernels choose their blocking (and so their sum
order) from the matrix shapes; the differences are float32 rounding, ~1e-7 relative.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.inference.handle import EXTRA_OUTPUTS, ModelHandle, normalise_outputs

DTYPES = ("float32", "bfloat16")
# Per-row keys of an input batch that travel with the outputs (besides `mask`). A batch holds
# `image` float32 (B, H, W, 3) (or uint8 with TABLE_KEY) or, for text models, `tokens` int32 (B, L)
# (0 = padding).
ROW_KEYS = ("image", "tokens", "id", "label", "soft_label")
INPUT_KEYS = ("image", "tokens")
# Not per row: the value table of uint8 images (see the module docstring), kept as is by padding.
TABLE_KEY = "image_table"


# Jitted steps shared by engines with the same forward function, options and devices, so a
# second handle (or Engine) over the same apply_fn reuses the compiled program.
_STEPS: dict = {}
_MAX_STEPS = 32


def input_key(batch: dict) -> str:
    """The model input of a batch: `image`, else `tokens`."""
    for key in INPUT_KEYS:
        if key in batch:
            return key
    raise PlexbenchError(f"batch has no model input ({' or '.join(INPUT_KEYS)}); keys: {sorted(batch)}")


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= n (n >= 1)."""
    return -(-n // multiple) * multiple


def make_mesh():
    """1-D mesh over all devices of all processes, process-major, axis name 'data'."""
    import jax
    from jax.sharding import Mesh

    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), ("data",))


def rng_is_used(apply_fn, params, image_shape: tuple[int, ...], input_dtype=np.float32) -> bool:
    """Whether `apply_fn(params, images, rng)`'s outputs depend on `rng`, by tracing.

    Traces the function on one abstract row (no compile, no FLOPs) and walks the jaxpr backwards
    from its outputs, marking every input of an equation whose outputs are live. Nested jaxprs
    (jit, custom_jvp...) count as one equation, so the answer is conservative: True whenever the
    key reaches any equation that reaches an output.
    """
    import jax

    images = jax.ShapeDtypeStruct((1, *image_shape), input_dtype)
    key = jax.ShapeDtypeStruct((2,), np.uint32)
    params_abs = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    closed = jax.make_jaxpr(lambda p, x, k: normalise_outputs(apply_fn(p, x, k))["logits"])(params_abs, images, key)
    jaxpr = closed.jaxpr
    live = {id(v) for v in jaxpr.outvars if not _is_literal(v)}
    for eqn in reversed(jaxpr.eqns):
        if any(id(v) in live for v in eqn.outvars):
            live.update(id(v) for v in eqn.invars if not _is_literal(v))
    return id(jaxpr.invars[-1]) in live


def _is_literal(v) -> bool:
    return not hasattr(v, "aval") or type(v).__name__ == "Literal"


class Engine:
    """A compiled, sharded forward for one handle and one set of options.

    Args:
        handle: the model (its params are loaded here).
        dtype: compute dtype, "float32" or "bfloat16".
        seed: seed of the PRNG key the heteroscedastic head samples with.
        with_pre_logits: also return pre-logits (E, B, D).
    """

    def __init__(self, handle: ModelHandle, *, dtype: str = "float32", seed: int = 0, with_pre_logits: bool = True):
        import jax
        import jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P

        if dtype not in DTYPES:
            raise PlexbenchError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
        self.handle = handle
        self.dtype = dtype
        self.seed = int(seed)
        self.with_pre_logits = with_pre_logits
        self.mesh = make_mesh()
        self.num_devices = self.mesh.devices.size
        self.process_count = jax.process_count()
        self._replicated = NamedSharding(self.mesh, P())
        self._rows = NamedSharding(self.mesh, P("data"))
        self._member_rows = NamedSharding(self.mesh, P(None, "data"))
        compute = jnp.dtype(dtype)
        native = handle.apply_fn_for_dtype is not None
        self._apply_fn = handle.apply_fn if dtype == "float32" or not native else handle.apply_fn_for_dtype(dtype)
        # A module with its own compute dtype keeps float32 params; otherwise cast them here.
        cast_to = None if (native or dtype == "float32") else compute

        def cast(x):
            x = jnp.asarray(x)
            return x.astype(cast_to) if jnp.issubdtype(x.dtype, jnp.floating) else x

        params = handle.params if cast_to is None else jax.tree_util.tree_map(cast, handle.params)
        self.params = jax.device_put(params, self._replicated)
        self.key = jax.device_put(jax.random.PRNGKey(self.seed), self._replicated)
        self._input_dtype = compute if cast_to is not None else jnp.dtype("float32")
        self._uses_rng = handle.uses_rng
        self._steps: dict[bool, Any] = {}  # with_table -> compiled step
        self._table = None  # (host table, device copy) of uint8 batches

    # ------------------------------------------------------------------ compile
    def _build_step(self, image_shape: tuple[int, ...], with_table: bool = False, input_dtype=np.float32):
        """The jitted step(params, inputs, ids, key) (with_table: step(params, images, ids, key, table)
        on uint8 images); `input_dtype` int32 for token ids (they stay integers)."""
        import jax

        if self._uses_rng is None:
            traced = np.float32 if with_table else input_dtype
            self._uses_rng = rng_is_used(self._apply_fn, self.handle.params, image_shape, traced)
            self.handle.uses_rng = self._uses_rng
        cache_key = (self._apply_fn, self.dtype, self._uses_rng, self.handle.per_example_keys, str(self._input_dtype),
                     self.with_pre_logits, tuple(self.mesh.devices.flat), with_table, np.dtype(input_dtype).name)
        if cache_key not in _STEPS:
            if len(_STEPS) >= _MAX_STEPS:
                _STEPS.pop(next(iter(_STEPS)))  # oldest first
            _STEPS[cache_key] = self._jit_step(self._uses_rng, with_table)
        return _STEPS[cache_key]

    def _jit_step(self, uses_rng: bool, with_table: bool = False):
        import jax
        import jax.numpy as jnp

        forward = _forward_fn(self._apply_fn, uses_rng, self.handle.per_example_keys)
        input_dtype, with_pre = self._input_dtype, self.with_pre_logits
        # float32 means float32: without this, GPUs may run float32 matmuls in TF32 (10-bit mantissa).
        precision = "highest" if self.dtype == "float32" else None

        def step(params, images, ids, key, table=None):
            if table is not None:  # uint8 -> the float32 images, by lookup (exact)
                images = jnp.take(table, images.astype(jnp.int32), axis=0)
            # Token ids stay integers; images go to the compute dtype.
            x = images.astype(input_dtype) if jnp.issubdtype(images.dtype, jnp.floating) else images
            with jax.default_matmul_precision(precision):
                out = forward(params, x, ids, key)
            logits = out["logits"].astype("float32")
            extras = {k: out[k].astype("float32") for k in EXTRA_OUTPUTS if out.get(k) is not None}
            pre = out.get("pre_logits")
            if not with_pre or pre is None:
                return logits, None, extras
            return logits, pre.astype("float32"), extras

        shardings = (self._replicated, self._rows, self._rows, self._replicated)
        if with_table:
            shardings += (self._replicated,)
        else:
            step = _without_table(step)
        # every output is (E, rows, ...): members replicated, rows sharded
        return jax.jit(step, in_shardings=shardings, out_shardings=self._member_rows)

    def global_batch_size(self, batch_size: int) -> int:
        """`batch_size` rounded up to a multiple of the number of devices (over all processes)."""
        return round_up(max(1, int(batch_size)), self.num_devices)

    def local_batch_size(self, batch_size: int) -> int:
        """Rows this process feeds per step: global batch / process count."""
        return self.global_batch_size(batch_size) // self.process_count

    # ------------------------------------------------------------------ run
    def _dispatch(self, batch: dict):
        import jax

        table = batch.get(TABLE_KEY)
        with_table = table is not None
        key = input_key(batch)
        dtype = np.uint8 if with_table else np.float32 if key == "image" else np.int32
        images = np.asarray(batch[key], dtype=dtype)
        ids = np.asarray(batch["id"]).astype(np.int64)
        if ids.size and ids.max() >= 2**31:
            raise PlexbenchError(f"example id {int(ids.max())} does not fit the int32 PRNG fold-in")
        g_images = jax.make_array_from_process_local_data(self._rows, images)
        g_ids = jax.make_array_from_process_local_data(self._rows, ids.astype(np.int32))
        args = (self.params, g_images, g_ids, self.key)
        if with_table:
            args += (self._device_table(table),)
        if with_table in self._steps:
            return self._steps[with_table](*args)
        try:  # the first call traces and compiles: a model that cannot take these inputs fails here
            self._steps[with_table] = self._build_step(tuple(images.shape[1:]), with_table, images.dtype)
            return self._steps[with_table](*args)
        except _shape_errors() as e:
            self._steps.pop(with_table, None)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            what = "images" if key == "image" else "token ids"
            raise PlexbenchError(f"model '{self.handle.name}' cannot run on {what} of shape "
                                 f"{tuple(images.shape[1:])}: {first}") from None

    def _device_table(self, table):
        """The (256,) value table on the devices, sent once per distinct table."""
        import jax

        table = np.asarray(table, np.float32)
        if self._table is None or not np.array_equal(self._table[0], table):
            self._table = (table, jax.device_put(table, self._replicated))
        return self._table[1]

    def _to_host(self, batch: dict, out) -> dict:
        logits, pre, extras = out
        host = {
            "id": np.asarray(batch["id"]).astype(np.int64),
            "mask": np.asarray(batch["mask"]).astype(bool),
            "label": np.asarray(batch["label"]),
        }
        if "soft_label" in batch:
            host["soft_label"] = np.asarray(batch["soft_label"], np.float32)
        if self.process_count > 1:
            from jax.experimental import multihost_utils

            host = multihost_utils.process_allgather(host, tiled=True)
            host = {k: np.asarray(v) for k, v in host.items()}
            host["id"] = host["id"].astype(np.int64)
            logits = multihost_utils.process_allgather(logits, tiled=True)
            pre = None if pre is None else multihost_utils.process_allgather(pre, tiled=True)
            extras = {k: multihost_utils.process_allgather(v, tiled=True) for k, v in extras.items()}
        host["logits"] = np.asarray(logits, dtype=np.float32)
        host["pre_logits"] = None if pre is None else np.asarray(pre, dtype=np.float32)
        host["extras"] = {k: np.asarray(v, dtype=np.float32) for k, v in extras.items()}
        return host

    def run(self, batches: Iterable[dict], local_batch_size: int) -> Iterator[dict]:
        """Forward every batch; yield host results in batch order.

        Each input batch (this process's share) has `image` float32 (b, H, W, 3) (or uint8 with
        `image_table`) or `tokens` int32 (b, L), `id` (b,), `label` (b,), `mask` bool (b,),
        optionally `soft_label` (b, K), with b <= local_batch_size; shorter batches are padded with
        masked rows. Each output dict holds the GLOBAL batch: `id` int64 (G,), `mask` bool (G,),
        `label` (G,), [`soft_label` float32 (G, K)], `logits` float32 (E, G, K), `pre_logits`
        float32 (E', G, D) or None, `extras` {name: float32 (E', G)} (EXTRA_OUTPUTS the model
        returned, e.g. an SNGP head's `gp_variance`); rows with mask False are padding.
        """
        in_flight = None
        for batch in batches:
            batch = pad_batch(batch, local_batch_size)
            out = self._dispatch(batch)
            if in_flight is not None:
                yield self._to_host(*in_flight)  # fetch step i after dispatching step i+1
            in_flight = (batch, out)
        if in_flight is not None:
            yield self._to_host(*in_flight)


def _without_table(step):
    """step(params, images, ids, key): the four-argument form (float32 images)."""

    def four(params, images, ids, key):
        return step(params, images, ids, key)

    return four


def _shape_errors() -> tuple[type, ...]:
    """Exceptions a model raises when inputs and parameters do not fit (JAX shape errors, Flax's)."""
    try:
        from flax.errors import FlaxError
    except ImportError:  # pragma: no cover - flax is a dependency
        return (TypeError, ValueError)
    return (TypeError, ValueError, FlaxError)


def _forward_fn(apply_fn, uses_rng: bool, per_example_keys: bool):
    """forward(params, images, ids, key) -> dict with logits (E, B, K), pre_logits (E, B, D) | None.

    - rng unused: one call on the whole batch (the key is passed and ignored);
    - rng used, apply_fn takes per-example keys: one call with keys[b] = fold_in(key, ids[b]);
    - rng used otherwise: `vmap` over rows, row b run alone with key fold_in(key, ids[b]).
    """
    import jax
    import jax.numpy as jnp

    def whole_batch(params, images, ids, key):
        return normalise_outputs(apply_fn(params, images, key))

    def per_example(params, images, ids, key):
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)  # raw uint32 (B, 2)
        return normalise_outputs(apply_fn(params, images, keys))

    def row_by_row(params, images, ids, key):
        def one(image, example_id):
            out = normalise_outputs(apply_fn(params, image[None], jax.random.fold_in(key, example_id)))
            return {k: (None if v is None else v[:, 0]) for k, v in out.items()}

        out = jax.vmap(one)(images, ids)  # leaves (B, E, ...) -> (E, B, ...)
        return {k: (None if v is None else jnp.swapaxes(v, 0, 1)) for k, v in out.items()}

    if not uses_rng:
        return whole_batch
    return per_example if per_example_keys else row_by_row


def pad_batch(batch: dict, size: int) -> dict:
    """`image` or `tokens`, `id`, `label`, `mask` (and `soft_label`) of `batch`, padded to `size` rows.

    Padding repeats row 0 with mask False. A batch with no `mask` gets an all-True one first;
    `image_table` is kept as it is; other keys are dropped. Raises if the batch is larger than `size`.
    """
    n = len(batch["id"])
    if n > size:
        raise PlexbenchError(f"batch of {n} rows is larger than the expected {size}")
    out = {k: batch[k] for k in ROW_KEYS if k in batch}
    out["mask"] = np.asarray(batch.get("mask", np.ones(n, bool)), dtype=bool)
    if n == size:
        return _with_table(out, batch)
    if n == 0:
        raise PlexbenchError("empty batch")
    for k in list(out):
        v = np.asarray(out[k])
        filler = np.repeat(v[:1], size - n, axis=0)
        if k == "mask":
            filler[:] = False
        out[k] = np.concatenate([v, filler], axis=0)
    return _with_table(out, batch)


def _with_table(out: dict, batch: dict) -> dict:
    if TABLE_KEY in batch:
        out[TABLE_KEY] = batch[TABLE_KEY]
    return out


def engine_for(handle: ModelHandle, *, dtype: str, seed: int, with_pre_logits: bool) -> Engine:
    """The handle's cached Engine for these options (compiled once, reused across datasets)."""
    key = (dtype, int(seed), bool(with_pre_logits))
    if key not in handle.engines:
        handle.engines[key] = Engine(handle, dtype=dtype, seed=seed, with_pre_logits=with_pre_logits)
    return handle.engines[key]


def empty_batch_like(batch: dict[str, Any], size: int) -> dict:
    """A batch of `size` padding rows shaped like `batch` (all mask False).

    Fed by a process whose share ran out while others still have batches, so every process
    takes part in every collective step.
    """
    out = {}
    for k in [k for k in ROW_KEYS if k in batch]:
        v = np.asarray(batch[k])
        out[k] = np.repeat(v[:1], size, axis=0)
    out["mask"] = np.zeros(size, dtype=bool)
    return _with_table(out, batch)
