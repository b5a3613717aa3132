"""Run a model over a dataset split, through the prediction store.

    entry = predict(handle, "fashion_mnist", "test", batch_size=256)
    entry.logits (E, N, K), entry.pre_logits (E, N, D) | None, entry.labels (N,), entry.ids (N,)

`predict` looks the request up in the store first: a complete, intact entry is returned without
loading parameters, compiling or calling the model. Otherwise it computes only the chunks that are
missing or damaged (reading only their example ids from the data pipeline) and stores them one by
one, so an interrupted run resumes where it stopped.

Several processes (jax.distributed): every process calls `predict` with the same arguments; each
reads its own share of every batch; results are all-gathered to every process and process 0 alone
takes the entry lock and writes the store (engine module docstring). The store directory must be
shared by the processes (the non-zero processes return an entry reading the same directory).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from plexbench import OUTPUT_FORMAT_VERSION, paths, progress
from plexbench.errors import PlexbenchError
from plexbench.inference import store as st
from plexbench.inference.engine import DTYPES, engine_for
from plexbench.inference.handle import ModelHandle

BatchesFn = Callable[..., Iterable[dict]]


@dataclass(frozen=True)
class DataSource:
    """Where the examples come from.

    `batches(*, batch_size, start, stop, process_index, process_count)` yields dicts with `image`
    float32 (b, H, W, 3) (already preprocessed), or uint8 (b, H, W, 3) together with `image_table`
    float32 (256,) (the final `value_range` of the spec as a lookup table, applied on the device by
    the engine: 4x fewer bytes to transfer, the same float32 images bit for bit), `label` (b,),
    `id` int (b,), `mask` bool (b,),
    optionally `soft_label` float32 (b, K), covering example ids [start, stop) of the split, this
    process's share only. Every process must yield the same number of batches (padding batches
    with mask False where its share is shorter); `equal_steps` enforces it.
    `preprocess` (spec string) and `fingerprint` (content hash of the split) go into store keys.
    `input_shape`: (H, W, 3) of one preprocessed image when known beforehand (it sizes the batch
    check of `check_batch_size`), else None.
    Text sources yield `tokens` int32 (b, L) instead of `image`, and `tokenizer_sha256` (the
    vocabulary that made the tokens) goes into the store key too.
    """

    dataset: str
    split: str
    num_examples: int
    fingerprint: str
    preprocess: str
    batches: BatchesFn
    input_shape: tuple[int, ...] | None = None
    tokenizer_sha256: str | None = None


def tfds_source(dataset: str, split: str, *, preprocess: str | None, data_dir=None, prefetch: int = 2) -> DataSource:
    """A DataSource over a prepared TFDS dataset (plexbench.data); `preprocess` None = the dataset's default."""
    from plexbench.data import load, pipeline

    info, _ = load.locate(dataset, data_dir)  # unknown or unprepared dataset: one-line error
    if info.is_text:
        return text_source(dataset, split, preprocess=preprocess, data_dir=data_dir)
    data_dir = paths.data_dir(data_dir)
    spec = preprocess or info.default_preprocess
    n = load.num_examples(dataset, split, data_dir)

    def batches(*, batch_size, start, stop, process_index, process_count):
        return pipeline.batches(
            dataset, split, batch_size=batch_size, preprocess=spec, data_dir=data_dir,
            process_index=process_index, process_count=process_count, prefetch=prefetch,
            start=start, stop=stop, uint8_images=True)

    fingerprint = load.dataset_fingerprint(dataset, split, data_dir)
    return DataSource(dataset, split, n, fingerprint, spec, batches, _preprocessed_shape(info.image_shape, spec))


def _preprocessed_shape(image_shape, spec: str) -> tuple[int, ...] | None:
    """Shape of one image after `spec`, found by preprocessing a black image of the stored size
    (None when the stored size varies, e.g. ImageNet, and the spec does not fix it)."""
    from plexbench.data.preprocess import parse

    h, w, c = image_shape
    probe = [(h, w)] if h and w else [(300, 500), (500, 300)]  # two aspects: a fixed output size agrees
    try:
        shapes = {parse(spec)(np.zeros((1, ph, pw, c), np.uint8)).shape[1:] for ph, pw in probe}
    except Exception:  # noqa: BLE001 - a size estimate only; the real batches report any problem
        return None
    return shapes.pop() if len(shapes) == 1 else None


def array_source(dataset: str, split: str, images: np.ndarray, labels: np.ndarray, *,
                 preprocess: str = "identity", fingerprint: str | None = None) -> DataSource:
    """A DataSource over in-memory float32 images (N, H, W, 3) (synthetic data, tests, benchmarks).

    The fingerprint defaults to the sha256 of the images' and labels' bytes. Ids are 0..N-1;
    process p of P reads the ids i of [start, stop) with (i - start) // b % P == p in batches of b
    (a round-robin over global batches), padding its last batch with masked rows.
    """
    from plexbench import fileio

    images = np.ascontiguousarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    if fingerprint is None:
        fingerprint = fileio.sha256_bytes(images.tobytes() + labels.tobytes())

    def batches(*, batch_size, start, stop, process_index, process_count):
        for first in range(start, stop, batch_size * process_count):
            lo = min(stop, first + process_index * batch_size)
            hi = min(stop, lo + batch_size)
            if hi > lo:  # slices, not copies: the engine reads them once
                yield {"image": images[lo:hi], "label": labels[lo:hi], "id": np.arange(lo, hi),
                       "mask": np.ones(hi - lo, bool)}

    return DataSource(dataset, split, len(images), fingerprint, preprocess, batches, tuple(images.shape[1:]))


def text_source(dataset: str, split: str, *, preprocess: str | None, data_dir=None) -> DataSource:
    """A DataSource of token batches over a prepared text dataset (plexbench.data.text).

    `preprocess`: a text spec such as `text_input|tokenize(fortunes,64)` (the T5 model's); the
    dataset's default (a template alone) cannot make tokens, so a spec is required.
    """
    from plexbench.data import text

    data_dir = paths.data_dir(data_dir)
    if not preprocess:
        raise PlexbenchError(f"text dataset '{dataset}' needs the model's text preprocessing "
                             "(e.g. text_input|tokenize(t5,512))")
    prep = text.parse_text(preprocess)
    n = len(text.load_texts(dataset, split, data_dir)["label"])

    def batches(*, batch_size, start, stop, process_index, process_count):
        return text.batches(dataset, split, batch_size=batch_size, preprocess=prep, data_dir=data_dir,
                            process_index=process_index, process_count=process_count, start=start, stop=stop)

    return DataSource(dataset, split, n, text.text_fingerprint(dataset, split, data_dir), preprocess, batches,
                      input_shape=(prep.length,), tokenizer_sha256=prep.tokenizer_sha256)


def token_source(dataset: str, split: str, tokens: np.ndarray, labels: np.ndarray, *,
                 preprocess: str = "tokens", fingerprint: str | None = None,
                 tokenizer_sha256: str | None = None) -> DataSource:
    """A DataSource over in-memory token ids int32 (N, L) (synthetic text, tests, benchmarks);
    batches like `array_source`, with `tokens` instead of `image`."""
    from plexbench import fileio

    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    labels = np.asarray(labels)
    if fingerprint is None:
        fingerprint = fileio.sha256_bytes(tokens.tobytes() + labels.tobytes())

    def batches(*, batch_size, start, stop, process_index, process_count):
        for first in range(start, stop, batch_size * process_count):
            lo = min(stop, first + process_index * batch_size)
            hi = min(stop, lo + batch_size)
            if hi > lo:
                yield {"tokens": tokens[lo:hi], "label": labels[lo:hi], "id": np.arange(lo, hi),
                       "mask": np.ones(hi - lo, bool)}

    return DataSource(dataset, split, len(tokens), fingerprint, preprocess, batches, input_shape=tuple(tokens.shape[1:]),
                      tokenizer_sha256=tokenizer_sha256)


def key_fields(handle: ModelHandle, source: DataSource, *, dtype: str, seed: int) -> dict:
    """What a store entry's content depends on (its key is the sha256 of this dict's JSON).

    Text sources add `tokenizer_sha256` (image entries keep the keys they always had).
    """
    extra = {"tokenizer_sha256": source.tokenizer_sha256} if source.tokenizer_sha256 else {}
    return {
        **extra,
        "model": handle.identity,
        "dataset": source.dataset,
        "split": source.split,
        "preprocess": source.preprocess,
        "dataset_fingerprint": source.fingerprint,
        "dtype": dtype,
        "seed": int(seed),
        "output_format_version": OUTPUT_FORMAT_VERSION,
    }


def predict(handle: ModelHandle, dataset: str, split: str, *, data_dir=None, store_dir=None,
            batch_size: int = 256, dtype: str = "float32", seed: int = 0, with_pre_logits: bool = True,
            chunk_size: int | None = None, source: DataSource | None = None,
            verbose: bool = True) -> st.StoreEntry:
    """Per-example outputs of `handle` on `dataset`/`split`, from the store or computed into it.

    Args:
        handle: the model (params are loaded only if something must be computed).
        dataset, split: registry dataset name and split (ignored when `source` is given).
        data_dir: TFDS data dir (paths.data_dir); store_dir: store root (paths.store_dir).
        batch_size: global batch, rounded up to a multiple of the device count.
        dtype: compute dtype, float32 or bfloat16 (part of the key; outputs are float32).
        seed: key of the heteroscedastic head's sampling, PRNGKey(seed) folded with each example
            id (part of the key, also for models that do not sample).
        with_pre_logits: store pre-logits (E, N, D) too. Not part of the key: an entry made
            without them is completed (its chunks recomputed) when they are asked for later.
        chunk_size: examples per store chunk for a new entry (default st.default_chunk_size);
            an existing entry keeps its own.
        source: a DataSource to read instead of the TFDS dataset (synthetic data).
        verbose: progress bar and the summary line on stderr.

    Returns the complete StoreEntry. Raises PlexbenchError for bad names, data or checkpoints,
    a corrupt manifest, a full disk.
    """
    if dtype not in DTYPES:
        raise PlexbenchError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    if int(batch_size) < 1:
        raise PlexbenchError(f"batch size must be >= 1 (got {batch_size})")
    started = time.perf_counter()
    if source is None:
        source = tfds_source(dataset, split, preprocess=handle.preprocess, data_dir=data_dir)
    batch_size = check_batch_size(batch_size, source)
    fields = key_fields(handle, source, dtype=dtype, seed=seed)
    key = st.entry_key(fields)
    path = st.entry_dir(paths.store_dir(store_dir), key)
    what = f"{handle.name} on {source.dataset}/{source.split}"

    manifest = st.read_manifest(path, key)
    if manifest is not None and manifest.get("complete") and not st.missing_chunks(path, manifest, with_pre_logits):
        _say(verbose, progress.summary_line(f"{what} (from the store)", source.num_examples, time.perf_counter() - started))
        return st.StoreEntry(path, manifest)

    process_index, process_count = _processes()
    run = _Run(handle, source, path, key, fields, dtype=dtype, seed=seed, batch_size=batch_size,
               with_pre_logits=with_pre_logits, chunk_size=chunk_size, verbose=verbose and process_index == 0,
               process_index=process_index, process_count=process_count)
    if process_index == 0:
        with st.entry_lock(path):
            manifest, computed = run.fill()
    else:
        manifest, computed = run.fill()
    if process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"plexbench predict {key}")
        manifest = st.read_manifest(path, key) if process_index else manifest
    seconds = time.perf_counter() - started
    label = what if computed == source.num_examples else f"{what} ({computed:,} computed, rest from the store)"
    _say(verbose and process_index == 0, progress.summary_line(label, source.num_examples, seconds))
    return st.StoreEntry(path, manifest)


# Batches of inputs alive at once during inference: the pipeline's current batch, its prefetch
# queue (2), the engine's device copy; outputs are small beside them. A deliberate overestimate.
BATCHES_IN_MEMORY = 4


def check_batch_size(batch_size: int, source: DataSource, available: int | None = None) -> int:
    """The batch size to use for `source`: `batch_size`, at most the split's example count.

    A batch larger than the split would only be padding (outputs do not depend on the batch
    size, so the store key does not change). Then, when the input shape is known, the memory of
    BATCHES_IN_MEMORY batches of float32 inputs must fit in `available` bytes (default
    `fileio.available_memory()`), else PlexbenchError saying which batch size fits. Example:
    batch 100,000,000 on Fashion-MNIST test (10,000 examples) -> 10,000; batch 4,096 of
    384x384x3 images -> 4 x 7.0 GiB, an error on a machine with 16 GiB free.
    """
    from plexbench import fileio

    batch_size = min(int(batch_size), max(1, int(source.num_examples)))
    if source.input_shape is None:
        return batch_size
    row = 4 * int(np.prod(source.input_shape))
    available = fileio.available_memory() if available is None else available
    need = BATCHES_IN_MEMORY * batch_size * row
    if available is not None and need > available:
        fits = max(1, available // (BATCHES_IN_MEMORY * row))
        fits = 2 ** int(np.log2(fits))
        raise PlexbenchError(
            f"batch size {batch_size:,} needs about {fileio.human_bytes(need)} for {BATCHES_IN_MEMORY} batches of "
            f"{'x'.join(map(str, source.input_shape))} float32 inputs, more than the {fileio.human_bytes(available)} "
            f"of memory available; use --batch-size {fits} or less")
    return batch_size


def predict_many(requests: Iterable[tuple[ModelHandle, str, str]], **options) -> list[st.StoreEntry]:
    """`predict` for each (handle, dataset, split), in order, with the same keyword options.

    Handles are reused as given: a handle's params are loaded once (on its first store miss) and its
    compiled forward is reused for every dataset with the same input shape; store hits cost no
    model work at all.
    """
    return [predict(handle, dataset, split, **options) for handle, dataset, split in requests]


def _say(verbose: bool, line: str) -> None:
    if verbose:
        progress.note(line)  # under `plexbench run`'s overall display: shown as its current work


def _processes() -> tuple[int, int]:
    """(process_index, process_count) of jax.distributed; (0, 1) when JAX is not even imported."""
    if "jax" not in sys.modules:
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


class _Run:
    """One predict call's work on a store miss: decide the missing chunks, compute, write them."""

    def __init__(self, handle, source, path, key, fields, *, dtype, seed, batch_size, with_pre_logits,
                 chunk_size, verbose, process_index, process_count):
        self.handle, self.source, self.path, self.key, self.fields = handle, source, Path(path), key, fields
        self.dtype, self.seed, self.batch_size = dtype, seed, batch_size
        self.with_pre_logits, self.chunk_size, self.verbose = with_pre_logits, chunk_size, verbose
        self.process_index, self.process_count = process_index, process_count

    def fill(self) -> tuple[dict, int]:
        """Compute every missing chunk. Returns (the complete manifest, number of examples computed)."""
        manifest = self._manifest()
        missing = st.missing_chunks(self.path, manifest, self.with_pre_logits) if manifest else []
        if self.process_count > 1:
            manifest, missing = self._agree(manifest, missing)
        if missing and self.process_index == 0:
            self._warn_damaged(manifest, missing)
        computed = self._compute(manifest, missing) if missing else 0
        if self.process_index == 0 and not manifest["complete"]:
            manifest["complete"] = True
            st.write_manifest(self.path, manifest)
        return manifest, computed

    def _manifest(self) -> dict | None:
        if self.process_index != 0:
            return None  # process 0 decides; see _agree
        manifest = st.read_manifest(self.path, self.key)
        n = self.source.num_examples
        if manifest is not None and manifest["num_examples"] != n:
            raise PlexbenchError(f"corrupt store entry: {self.path} holds {manifest['num_examples']} examples, the split has {n}; delete it to recompute")
        if manifest is None:
            if n < 1:
                raise PlexbenchError(f"{self.source.dataset}/{self.source.split} has no examples")
            size = self.chunk_size or st.default_chunk_size(self.handle.num_members, self.handle.num_classes)
            meta = {"model": self.handle.name, "dataset": self.source.dataset, "split": self.source.split}
            manifest = st.new_manifest(self.key, self.fields, num_examples=n, chunk_size=int(size), meta=meta)
        return manifest

    def _agree(self, manifest, missing):
        """Process 0's chunk size and missing list, broadcast to every process."""
        from jax.experimental import multihost_utils

        n = self.source.num_examples
        head = np.array([manifest["chunk_size"] if manifest else 0, len(missing)], np.int32)
        chunk_size, count = (int(v) for v in multihost_utils.broadcast_one_to_all(head))
        num_chunks = len(st.chunk_ranges(n, chunk_size))
        padded = np.full(num_chunks, -1, np.int32)
        padded[: len(missing)] = missing
        missing = [int(i) for i in multihost_utils.broadcast_one_to_all(padded)[:count]]
        if manifest is None:
            meta = {"model": self.handle.name, "dataset": self.source.dataset, "split": self.source.split}
            manifest = st.new_manifest(self.key, self.fields, num_examples=n, chunk_size=chunk_size, meta=meta)
        return manifest, missing

    def _warn_damaged(self, manifest, missing) -> None:
        damaged = [i for i in missing if manifest["chunks"][i] is not None
                   and not st.chunk_is_valid(self.path, manifest["chunks"][i], False)]
        if damaged:
            progress.warn(f"plexbench: {len(damaged)} damaged chunk(s) of {self.path} (checksum mismatch or unreadable); recomputing them")

    def _compute(self, manifest: dict, missing: list[int]) -> int:
        engine = engine_for(self.handle, dtype=self.dtype, seed=self.seed, with_pre_logits=self.with_pre_logits)
        local = engine.local_batch_size(self.batch_size)
        assembler = ChunkAssembler(self.path, manifest, missing, write=self.process_index == 0,
                                   with_pre_logits=self.with_pre_logits)
        total = assembler.total
        desc = f"predict {self.handle.name} {self.source.dataset}/{self.source.split}"
        with (progress.bar(total, desc, "ex") if self.verbose else _NoBar()) as bar:
            for start, stop in id_ranges(manifest, missing):
                stream = self.source.batches(batch_size=local, start=start, stop=stop,
                                             process_index=self.process_index, process_count=self.process_count)
                if self.process_count > 1:
                    stream = equal_steps(stream, steps_per_process(stop - start, local, self.process_count), local)
                for out in engine.run(stream, local):
                    bar.update(assembler.add(out))
        assembler.finish()
        return total


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def id_ranges(manifest: dict, indices: list[int]) -> list[tuple[int, int]]:
    """Merge the id ranges of chunk `indices` into maximal contiguous [start, stop) ranges."""
    ranges = st.chunk_ranges(manifest["num_examples"], manifest["chunk_size"])
    out: list[list[int]] = []
    for i in sorted(indices):
        start, stop = ranges[i]
        if out and out[-1][1] == start:
            out[-1][1] = stop
        else:
            out.append([start, stop])
    return [(a, b) for a, b in out]


def steps_per_process(num_ids: int, local_batch: int, process_count: int) -> int:
    """Steps every process runs for `num_ids` examples: ceil(ceil(n / P) / b).

    Any even split gives each process at most ceil(n / P) examples, so this many steps of b rows
    cover every share; a process with fewer batches feeds masked padding batches.
    """
    share = -(-num_ids // process_count)
    return -(-share // local_batch)


def equal_steps(stream: Iterable[dict], steps: int, size: int) -> Iterator[dict]:
    """Exactly `steps` batches: `stream`'s, then all-padding ones shaped like them.

    Every process must take part in every collective step. Raises if `stream` yields more.
    """
    from plexbench.inference.engine import empty_batch_like

    template = None
    count = 0
    for batch in stream:
        count += 1
        if count > steps:
            raise RuntimeError(f"data share larger than the {steps} steps computed for it")
        template = batch
        yield batch
    if count < steps and template is None:
        raise PlexbenchError("a process got no examples at all; use fewer processes than examples")
    for _ in range(steps - count):
        yield empty_batch_like(template, size)


class ChunkAssembler:
    """Collect rows by example id into the missing chunks; write each chunk when it is full.

    `add(out)` takes an engine result (global batch: id, mask, label, logits (E,G,K),
    pre_logits (E',G,D) | None, extras {name: (E',G)}) and returns the number of real (mask True)
    rows it held.
    """

    def __init__(self, path, manifest: dict, indices: list[int], *, write: bool, with_pre_logits: bool):
        self.path, self.manifest, self.write, self.with_pre = path, manifest, write, with_pre_logits
        self.size = manifest["chunk_size"]
        self.ranges = st.chunk_ranges(manifest["num_examples"], self.size)
        self.pending: dict[int, dict[str, Any] | None] = {i: None for i in indices}
        self.total = sum(self.ranges[i][1] - self.ranges[i][0] for i in indices)

    def add(self, out: dict) -> int:
        mask = out["mask"]
        ids = out["id"][mask]
        chunk_of = ids // self.size
        for c in np.unique(chunk_of):
            sel = np.flatnonzero(mask)[chunk_of == c]
            self._fill(int(c), out, sel)
        return int(mask.sum())

    def _fill(self, c: int, out: dict, rows: np.ndarray) -> None:
        if c not in self.pending:
            raise RuntimeError(f"pipeline returned example ids of chunk {c}, which was not requested")
        start, stop = self.ranges[c]
        buf = self.pending[c]
        if buf is None:
            buf = self.pending[c] = self._new_buffer(stop - start, out)
        pos = out["id"][rows] - start
        if buf["seen"][pos].any():
            raise RuntimeError(f"pipeline returned example id {int(out['id'][rows][buf['seen'][pos]][0])} twice")
        buf["seen"][pos] = True
        buf["logits"][:, pos] = out["logits"][:, rows]
        if buf.get("pre_logits") is not None:
            buf["pre_logits"][:, pos] = out["pre_logits"][:, rows]
        for name, value in out.get("extras", {}).items():
            buf[name][:, pos] = value[:, rows]
        buf["labels"][pos] = out["label"][rows]
        if "soft_labels" in buf:
            buf["soft_labels"][pos] = out["soft_label"][rows]
        if buf["seen"].all():
            self._flush(c, buf)

    def _new_buffer(self, n: int, out: dict) -> dict:
        e, _, k = out["logits"].shape
        buf = {
            "seen": np.zeros(n, bool),
            "logits": np.zeros((e, n, k), np.float32),
            "labels": np.zeros((n, *out["label"].shape[1:]), out["label"].dtype),
        }
        if "soft_label" in out:
            buf["soft_labels"] = np.zeros((n, out["soft_label"].shape[1]), np.float32)
        if self.with_pre and out.get("pre_logits") is not None:
            pre = out["pre_logits"]  # its own member count (a one-member readout keeps E embeddings)
            buf["pre_logits"] = np.zeros((pre.shape[0], n, pre.shape[2]), np.float32)
        for name, value in out.get("extras", {}).items():
            buf[name] = np.zeros((value.shape[0], n), np.float32)
        return buf

    def _flush(self, c: int, buf: dict) -> None:
        start, stop = self.ranges[c]
        arrays = {"logits": buf["logits"], "labels": buf["labels"], "ids": np.arange(start, stop, dtype=np.int64)}
        for name in ("pre_logits", "soft_labels", *st.EXTRA_OUTPUTS):
            if name in buf:
                arrays[name] = buf[name]
        if self.write:
            st.write_chunk(self.path, self.manifest, c, arrays, pre_logits_requested=self.with_pre)
        del self.pending[c]

    def finish(self) -> None:
        if self.pending:
            left = sorted(self.pending)
            raise RuntimeError(f"the data pipeline did not deliver every example of chunks {left}")
