"""The input pipeline: deterministic, padded, sharded, prefetched batches of one split.

`batches(...)` yields dicts of numpy arrays, each with exactly `batch_size` rows:
`image` float32 (B, H, W, C) after preprocessing, `label` int64 (B,), `id` int64 (B,),
`mask` bool (B,), plus `soft_label` float32 (B, K) where the dataset has one (with
`uint8_images=True`: `image` uint8 and `image_table` float32 (256,), see below).

Rules:
- Order: dataset order (see plexbench.data.load), ids ascending; the same call gives the same
  batches every time.
- Range: ids [start, stop) of the split; `stop` None or past the end means the end (as in Python
  slicing), so a resumed run reads only what it still needs.
- Processes: the range is cut into `process_count` contiguous shares; share p is ids
  [start + p * m // P, start + (p + 1) * m // P) with m = stop - start, so shares differ by at most
  one example, are disjoint, and concatenated in process order give the range in order.
  Every process yields the same number of batches, ceil(ceil(m / P) / batch_size), so jit steps
  across hosts stay in lockstep.
- Padding: rows past the end of a share have `mask` False, `label` and `id` -1, zero `image` and
  `soft_label`. No example is dropped or repeated.
- Sources: splits whose images have one fixed size and fit in memory are read once with
  `load.load_arrays` (cached); the others (ImageNet) stream through tf.data, reading only the
  share's range, so nothing is held beyond a few batches. `stream=True/False` forces a source.
- Preprocessing: on in-memory sources, plexbench's numpy ops (pieces of a batch on a thread pool).
  On streamed sources a spec runs as TensorFlow twins of the same ops inside tf.data, one image at
  a time, decoding and preprocessing `input_workers()` images in parallel (one per core this
  process may use), in order; bit-identical to the numpy ops (plexbench.data.preprocess), 2-3x
  cheaper per core on 500x375 JPEGs, and not capped at 8 threads (docs/performance.md).
  `tf_ops=False` keeps the numpy ops (images of varying size then preprocessed one at a time on
  the thread pool). A callable
  `preprocess` always runs as given, on numpy batches. Images of varying size need a spec that
  ends in one size.
- uint8 images (`uint8_images=True`): for a spec of resizes/crops that ends in `value_range(a,b)`,
  that last op is left to the consumer: `image` is the uint8 batch before it and
  `image_table` float32 (256,) its table, with image_table[image] bit-identical to the float32
  images (`preprocess.split_value_range`) on every row with `mask` True (padding rows are uint8
  0). The engine applies the table on the device, so the host neither computes nor moves float32
  images (4x fewer bytes). Other specs: no effect.
- Prefetch: a background thread prepares up to `prefetch` batches ahead (host-side decoding and
  preprocessing overlap device compute); an exception in it is raised in the consumer;
  `prefetch=0` runs in the caller's thread.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

from plexbench import paths
from plexbench.data import load
from plexbench.data.load import dataset_fingerprint, num_examples
from plexbench.data.preprocess import Preprocess, parse, split_value_range, tf_image_fn
from plexbench.data.registry import DatasetInfo
from plexbench.errors import PlexbenchError

__all__ = ["batches", "batches_per_process", "dataset_fingerprint", "input_workers", "num_examples", "shard_bounds"]

# Splits up to this many image bytes are read into memory unless stream=True.
IN_MEMORY_LIMIT = 1 << 30


def shard_bounds(start: int, stop: int, process_index: int, process_count: int) -> tuple[int, int]:
    """Ids [lo, hi) of process `process_index`'s contiguous share of [start, stop).

    Example: start 0, stop 10, 3 processes -> [0, 3), [3, 6), [6, 10).
    """
    m = stop - start
    return start + process_index * m // process_count, start + (process_index + 1) * m // process_count


def batches_per_process(start: int, stop: int, batch_size: int, process_count: int) -> int:
    """ceil(ceil(m / P) / B): the number of batches every process yields for [start, stop)."""
    return math.ceil(math.ceil((stop - start) / process_count) / batch_size)


def input_workers() -> int:
    """Cores this process may run on (its CPU affinity): the parallelism of host preprocessing."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def batches(name: str, split: str, *, batch_size: int, preprocess: str | Callable | None,
            data_dir=None, process_index: int = 0, process_count: int = 1, prefetch: int = 2,
            start: int = 0, stop: int | None = None, stream: bool | None = None,
            tf_ops: bool | None = None, uint8_images: bool = False) -> Iterator[dict]:
    """Batches of ids [start, stop) of `split` for this process (see the module docstring).

    `preprocess`: a spec string (`plexbench.data.preprocess.parse`), a callable on uint8 batches, or
    None for the dataset's `default_preprocess`. `tf_ops`: None or True run a spec's TensorFlow
    twins inside tf.data on streamed sources, False the numpy ops (in-memory sources always use
    numpy). `uint8_images`: see the module docstring. Raises PlexbenchError for bad arguments.
    """
    _check_args(batch_size, process_index, process_count, prefetch, start, stop)
    info, folder = load.locate(name, data_dir)
    rng = load.split_range(name, split, paths.data_dir(data_dir))
    stop = rng.size if stop is None else min(stop, rng.size)
    start = min(start, stop)
    lo, hi = shard_bounds(start, stop, process_index, process_count)
    total = batches_per_process(start, stop, batch_size, process_count)
    fn, table = _preprocess_fn(info, preprocess, uint8_images)
    use_stream = _should_stream(info, rng) if stream is None else stream
    tf_fn = tf_image_fn(fn) if use_stream and tf_ops is not False and isinstance(fn, Preprocess) else None
    if tf_fn is not None:
        def source(lo_, hi_, size):
            return _tf_stream_source(info, folder, rng, lo_, hi_, size, tf_fn, fn)

        prepare = _as_batch
    else:
        def source(lo_, hi_, size):
            return (_stream_source if use_stream else _memory_source)(info, folder, rng, split, data_dir, lo_, hi_, size)

        prepare = functools.partial(_preprocessed, fn=fn)

    def probe() -> dict:
        """A preprocessed one-example batch, for the shapes of padding when this share is empty."""
        return prepare(next(iter(source(start, start + 1, 1))))

    produce = _produce(source(lo, hi, batch_size), prepare, lo, hi, batch_size, total, probe, table)
    return _prefetched(produce, prefetch) if prefetch > 0 else produce


def _check_args(batch_size, process_index, process_count, prefetch, start, stop) -> None:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(batch_size) or batch_size < 1:
        raise PlexbenchError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not is_int(process_count) or process_count < 1:
        raise PlexbenchError(f"process_count must be a positive integer, got {process_count!r}")
    if not is_int(process_index) or not 0 <= process_index < process_count:
        raise PlexbenchError(f"process_index must be in [0, {process_count}), got {process_index!r}")
    if not is_int(prefetch) or prefetch < 0:
        raise PlexbenchError(f"prefetch must be an integer >= 0, got {prefetch!r}")
    if not is_int(start) or start < 0:
        raise PlexbenchError(f"start must be an integer >= 0, got {start!r}")
    if stop is not None and (not is_int(stop) or stop < start):
        raise PlexbenchError(f"stop must be None or an integer >= start ({start}), got {stop!r}")


def _preprocess_fn(info: DatasetInfo, preprocess, uint8_images: bool) -> tuple[Callable, np.ndarray | None]:
    """(the function the host runs, the value_range table left to the consumer or None)."""
    if preprocess is None or isinstance(preprocess, str):
        fn = parse(info.default_preprocess if preprocess is None else preprocess)
        split = split_value_range(fn) if uint8_images else None
        return (fn, None) if split is None else split
    if callable(preprocess):
        return preprocess, None
    raise PlexbenchError(f"preprocess must be a spec string, a callable or None, got {type(preprocess).__name__}")


def _should_stream(info: DatasetInfo, rng: load.SplitRange) -> bool:
    if any(d is None for d in info.image_shape):
        return True
    return rng.size * int(np.prod(info.image_shape)) > IN_MEMORY_LIMIT


# --------------------------------------------------------------------------- sources
# A source yields raw chunks: dicts with `image` uint8 (n, H, W, C) or a list of n images of
# varying size, `label` (n,), optional `soft_label` (n, K); chunks follow ids lo..hi-1 in order.

def _memory_source(info, folder, rng, split, data_dir, lo, hi, batch_size):
    arrays = load.load_arrays(info.name, split, data_dir)
    keys = [k for k in ("image", "label", "soft_label") if k in arrays]
    for s in range(lo, hi, batch_size):
        e = min(s + batch_size, hi)
        yield {k: arrays[k][s:e] for k in keys}


def _stream_source(info, folder, rng, split, data_dir, lo, hi, batch_size):
    if hi <= lo:
        return
    spec = rng.tfds_spec(lo, hi)
    if all(d is not None for d in info.image_shape):
        yield from load.iterate_numpy(info, folder, spec, batch_size)
        return
    pending: list[dict] = []
    for example in load.iterate_examples(info, folder, spec):
        pending.append(example)
        if len(pending) == batch_size:
            yield _stack_varying(pending)
            pending = []
    if pending:
        yield _stack_varying(pending)


def _stack_varying(examples: list[dict]) -> dict:
    out = {"image": [e["image"] for e in examples], "label": np.array([e["label"] for e in examples], np.int64)}
    if "soft_label" in examples[0]:
        out["soft_label"] = np.stack([e["soft_label"] for e in examples])
    return out


# Batches tf.data keeps ready beyond the one being assembled. The Python prefetch thread holds
# `prefetch` more, so the cores keep decoding while the consumer works; host memory stays a few
# batches (peak RSS growth measured by benchmarks/pipeline.py, docs/performance.md).
_TF_PREFETCH = 1


def _tf_stream_source(info, folder, rng, lo, hi, batch_size, tf_fn, pre: Preprocess):
    """Preprocessed chunks of ids [lo, hi): tf.data decodes and runs `tf_fn` on `input_workers()`
    images at a time, in order, and batches them; at most a few batches are held."""
    if hi <= lo:
        return
    import tensorflow as tf
    import tensorflow_datasets as tfds

    workers = input_workers()
    ds = load.read_dataset(info, folder, rng.tfds_spec(lo, hi))
    ds = ds.map(lambda ex: {**ex, "image": tf_fn(ex["image"])}, num_parallel_calls=workers, deterministic=True)
    if not ds.element_spec["image"].shape.is_fully_defined():
        raise PlexbenchError(f"preprocessing '{pre.spec}' does not give one image size on dataset '{info.name}' "
                             f"(images {ds.element_spec['image'].shape}); add resize(S) or resize_small(S)|central_crop(S)")
    options = tf.data.Options()
    options.threading.private_threadpool_size = workers
    options.threading.max_intra_op_parallelism = 1  # parallel over images, not inside one
    ds = ds.batch(batch_size).prefetch(_TF_PREFETCH).with_options(options)
    try:
        yield from tfds.as_numpy(ds)
    except tf.errors.InvalidArgumentError as e:
        first = (e.message.strip().splitlines() or [type(e).__name__])[0][:300]
        raise PlexbenchError(f"preprocessing '{pre.spec}' failed on dataset '{info.name}': {first}") from None


def _as_batch(chunk: dict) -> dict:
    """A chunk that is already preprocessed, with the dtypes of `_preprocessed`."""
    batch = {"image": chunk["image"], "label": np.asarray(chunk["label"], np.int64)}
    if "soft_label" in chunk:
        batch["soft_label"] = np.asarray(chunk["soft_label"], np.float32)
    return batch


# --------------------------------------------------------------------------- batching

_PIECE = 8  # images per preprocessing task on the pool


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=input_workers(), thread_name_prefix="plexbench-pp")


def _apply(fn, images) -> np.ndarray:
    """Preprocess a chunk; a list of images of varying size is preprocessed one image at a time.

    plexbench's own ops (a `Preprocess`) are pure numpy, which releases the GIL in its loops, so
    pieces of the chunk run on a thread pool; other callables run once, in this thread.
    """
    parallel = isinstance(fn, Preprocess)
    # plexbench's ops give float32, or uint8 for a chain cut before its value_range; others: float32
    as_out = np.asarray if parallel else functools.partial(np.asarray, dtype=np.float32)
    if isinstance(images, np.ndarray):
        if not parallel or len(images) <= _PIECE:
            return as_out(fn(images))
        pieces = [images[i:i + _PIECE] for i in range(0, len(images), _PIECE)]
        return np.concatenate(list(_pool().map(fn, pieces)))
    one = lambda img: as_out(fn(img[None]))  # noqa: E731
    outs = list(_pool().map(one, images)) if parallel else [one(img) for img in images]
    shapes = {o.shape[1:] for o in outs}
    if len(shapes) > 1:
        name = getattr(fn, "spec", fn)
        raise PlexbenchError(f"preprocessing '{name}' gives images of different sizes {sorted(shapes)}; "
                             "add resize(S) or resize_small(S)|central_crop(S)")
    return np.concatenate(outs)


def _produce(chunks, prepare, lo: int, hi: int, batch_size: int, total: int, probe, table) -> Iterator[dict]:
    """Prepare (preprocess) and pad each chunk (ids lo, lo+1, ...); then all-padding batches up to
    `total`. Every batch carries `image_table` when `table` is not None."""
    done, next_id, template = 0, lo, None

    def finish(batch: dict, ids: np.ndarray) -> dict:
        out = _pad(batch, ids, batch_size)
        if table is not None:
            out["image_table"] = table
        return out

    for chunk in chunks:
        batch = prepare(chunk)
        n = len(batch["label"])
        yield finish(batch, np.arange(next_id, next_id + n, dtype=np.int64))
        done, next_id, template = done + 1, next_id + n, batch
    if next_id != hi or done > total:
        raise RuntimeError(f"pipeline read ids up to {next_id} in {done} batches, expected {hi} in {total}")
    if done < total:
        empty = {k: v[:0] for k, v in (template or probe()).items()}
        for _ in range(total - done):
            yield finish(empty, np.zeros(0, np.int64))


def _preprocessed(chunk: dict, fn) -> dict:
    batch = {"image": _apply(fn, chunk["image"]), "label": np.asarray(chunk["label"], np.int64)}
    if "soft_label" in chunk:
        batch["soft_label"] = np.asarray(chunk["soft_label"], np.float32)
    return batch


def _pad(batch: dict, ids: np.ndarray, batch_size: int) -> dict:
    """`batch` (n rows) padded to `batch_size` rows: image/soft_label 0, label/id -1, mask False."""
    n = len(ids)
    pad = batch_size - n

    def extend(v, fill):
        v = np.asarray(v)
        return np.concatenate([v, np.full((pad, *v.shape[1:]), fill, dtype=v.dtype)]) if pad else v

    out = {"image": extend(batch["image"], 0), "label": extend(batch["label"], -1),
           "id": extend(ids, -1), "mask": np.arange(batch_size) < n}
    if "soft_label" in batch:
        out["soft_label"] = extend(batch["soft_label"], 0)
    return out


# --------------------------------------------------------------------------- prefetch

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _prefetched(items: Iterator[dict], depth: int) -> Iterator[dict]:
    """Run `items` in a daemon thread, at most `depth` results ahead; re-raise its exceptions here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(_Failure(e))

    thread = threading.Thread(target=work, name="plexbench-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
