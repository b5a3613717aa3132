"""Text datasets: reading TFDS text features, text preprocessing specs, and token batches.

A text preprocessing spec joins ops with `|` like the image ops (plexbench.data.preprocess):
one template op that builds the model input string from an example, then `tokenize(VOCAB,L)`:

- `text_input`: the dataset's one text feature as it is (fortunes, CLINC150, toxicity: the spec
  gives no template for NaLUE or toxicity; plexbench feeds the raw text and says so here).
- `mnli_input`: "mnli hypothesis: {hypothesis} premise: {premise}", the T5 codebase's GLUE
  format for MNLI (as in the T5 paper's examples).
- `tokenize(VOCAB,L)`: SentencePiece ids with T5's conventions (plexbench.models.tokenizer):
  pieces truncated to L - 1, EOS (1), padding (0) to L -> int32 (N, L).
Example: `text_input|tokenize(fortunes,64)`.

Labels (DatasetInfo.text.label_rule): "class" keeps the integer label, "map:1,0,0" maps raw
label i to the i-th value, "threshold:t" gives 1 iff the (float) value >= t.

`batches(...)` yields dicts with `tokens` int32 (B, L), `label` int64 (B,), `id` int64 (B,),
`mask` bool (B,), following the image pipeline's rules (plexbench.data.pipeline): dataset order,
ids [start, stop), contiguous per-process shares, the same number of batches on every process,
padding rows with tokens 0, label and id -1, mask False.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from plexbench import fileio, paths
from plexbench.data import load
from plexbench.data.registry import DatasetInfo, get_dataset
from plexbench.errors import PlexbenchError
from plexbench.registry import Registry

Template = Callable[[dict, DatasetInfo], str]
TEXT_OPS: Registry[Callable[..., object]] = Registry("text preprocessing op")
_TOKEN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?$")


# --------------------------------------------------------------------------- ops


@dataclass(frozen=True)
class _Tokenize:
    vocab: str
    length: int

    @property
    def tokenizer(self):
        from plexbench.models.tokenizer import get_tokenizer

        return get_tokenizer(self.vocab)


@TEXT_OPS.register("text_input")
def make_text_input(*args) -> Template:
    _no_args("text_input", args)

    def template(example: dict, info: DatasetInfo) -> str:
        features = info.text.features
        if len(features) != 1:
            raise PlexbenchError(f"text_input reads one text feature; dataset '{info.name}' has {list(features)} "
                                 "(use its own template, e.g. mnli_input)")
        return example[features[0]]

    return template


@TEXT_OPS.register("mnli_input")
def make_mnli_input(*args) -> Template:
    _no_args("mnli_input", args)

    def template(example: dict, info: DatasetInfo) -> str:
        missing = {"premise", "hypothesis"} - set(example)
        if missing:
            raise PlexbenchError(f"mnli_input needs premise and hypothesis; dataset '{info.name}' lacks {sorted(missing)}")
        return f"mnli hypothesis: {example['hypothesis']} premise: {example['premise']}"

    return template


@TEXT_OPS.register("tokenize")
def make_tokenize(*args) -> _Tokenize:
    if len(args) != 2 or not args[1].isdigit():
        raise PlexbenchError(f"tokenize takes (VOCAB,LENGTH), e.g. tokenize(t5,512); got tokenize({','.join(args)})")
    return _Tokenize(args[0], int(args[1]))


def _no_args(name: str, args) -> None:
    if args:
        raise PlexbenchError(f"text op {name} takes no arguments, got {name}({','.join(args)})")


@dataclass(frozen=True)
class TextPreprocess:
    """A parsed text spec: `template` then `tokenize` (module docstring)."""

    spec: str
    template: Template
    tokenize: _Tokenize

    @property
    def length(self) -> int:
        return self.tokenize.length

    @property
    def tokenizer_sha256(self) -> str:
        return self.tokenize.tokenizer.sha256

    def strings(self, examples: list[dict], info: DatasetInfo) -> list[str]:
        return [self.template(e, info) for e in examples]

    def __call__(self, examples: list[dict], info: DatasetInfo) -> np.ndarray:
        """int32 (N, L) token ids of the examples (dicts of their text features)."""
        return self.tokenize.tokenizer.encode_batch(self.strings(examples, info), self.length)


def parse_text(spec: str) -> TextPreprocess:
    """Parse `template|tokenize(VOCAB,L)`; one-line PlexbenchError for anything else."""
    if not isinstance(spec, str):
        raise PlexbenchError(f"text preprocessing spec must be a string, got {type(spec).__name__}")
    ops = []
    for token in (t.strip() for t in spec.split("|")):
        m = _TOKEN.match(token)
        if m is None:
            raise PlexbenchError(f"cannot parse text op '{token}' in '{spec}'")
        args = [a.strip() for a in m.group(2).split(",")] if m.group(2) and m.group(2).strip() else []
        ops.append(TEXT_OPS.get(m.group(1))(*args))
    if len(ops) != 2 or isinstance(ops[0], _Tokenize) or not isinstance(ops[1], _Tokenize):
        raise PlexbenchError(f"text preprocessing '{spec}' must be one template op then tokenize(VOCAB,LENGTH), "
                             f"e.g. text_input|tokenize(t5,512) (template ops: "
                             f"{', '.join(n for n in TEXT_OPS.names() if n != 'tokenize')})")
    return TextPreprocess(spec, ops[0], ops[1])


# --------------------------------------------------------------------------- reading


def _check_text(info: DatasetInfo) -> None:
    if not info.is_text:
        raise PlexbenchError(f"dataset '{info.name}' is an image dataset, not a text dataset")


def apply_label_rule(raw: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Raw label values (N,) -> classes int64 (N,) by the entry's rule (module docstring)."""
    rule = info.text.label_rule
    if rule == "class":
        return np.asarray(raw).astype(np.int64)
    kind, _, arg = rule.partition(":")
    if kind == "map":
        table = np.array([int(v) for v in arg.split(",")], np.int64)
        return table[np.asarray(raw).astype(np.int64)]
    if kind == "threshold":
        return (np.asarray(raw, np.float64) >= float(arg)).astype(np.int64)
    raise ValueError(f"{info.name}: unknown label rule {rule!r}")


def load_texts(name: str, split: str, data_dir=None) -> dict:
    """The whole split in memory: `texts` {feature: list[str]}, `label` int64 (N,) (after the
    label rule), `id` int64 (N,) = 0..N-1 in dataset order, and `groups` float32 (N, G) for
    datasets with group features. Cached per process (read-only arrays)."""
    info, folder = load.locate(name, data_dir)
    _check_text(info)
    rng = load.split_range(name, split, paths.data_dir(data_dir))
    return _load(info.name, str(folder), rng.tfds_spec())


@functools.lru_cache(maxsize=4)
def _load(name: str, folder: str, spec: str) -> dict:
    import tensorflow_datasets as tfds

    info = get_dataset(name)
    builder = load._builder_at(folder)
    wanted = list(info.text.features) + [info.label_key] + list(info.text.group_features)
    missing = sorted(set(wanted) - set(builder.info.features.keys()))
    if missing:
        raise PlexbenchError(f"dataset '{name}' in {folder} lacks the feature(s) {missing}")
    ds = builder.as_dataset(split=spec, shuffle_files=False,
                            read_config=tfds.ReadConfig(interleave_cycle_length=1, add_tfds_id=False))
    ds = ds.map(lambda e: {k: e[k] for k in wanted})
    texts = {f: [] for f in info.text.features}
    raw, groups = [], []
    for example in tfds.as_numpy(ds.batch(1024)):
        for f in info.text.features:
            texts[f].extend(v.decode("utf-8") for v in example[f])
        raw.append(example[info.label_key])
        if info.text.group_features:
            groups.append(np.stack([example[g] for g in info.text.group_features], axis=1).astype(np.float32))
    out = {"texts": texts,
           "label": apply_label_rule(np.concatenate(raw) if raw else np.zeros(0), info),
           "id": np.arange(sum(len(r) for r in raw), dtype=np.int64)}
    if info.text.group_features:
        out["groups"] = np.concatenate(groups) if groups else np.zeros((0, len(info.text.group_features)), np.float32)
    for k in ("label", "id", "groups"):
        if k in out:
            out[k].setflags(write=False)
    return out


def text_fingerprint(name: str, split: str, data_dir=None) -> str:
    """sha256 of what a split holds: name, TFDS full name, absolute range, features.json and the
    sha256 of its texts (UTF-8, NUL-separated, per feature) and classes."""
    import json

    info, folder = load.locate(name, data_dir)
    rng = load.split_range(name, split, paths.data_dir(data_dir))
    data = load_texts(name, split, data_dir)
    content = {f: fileio.sha256_bytes("\0".join(v).encode("utf-8")) for f, v in sorted(data["texts"].items())}
    content["label"] = fileio.sha256_bytes(np.ascontiguousarray(data["label"]).tobytes())
    return fileio.sha256_json({"dataset": info.name, "tfds": load._builder_at(str(folder)).info.full_name,
                               "range": rng.tfds_spec(), "features": json.loads((folder / "features.json").read_text()),
                               "content": content, "label_rule": info.text.label_rule})


# --------------------------------------------------------------------------- batches


def batches(name: str, split: str, *, batch_size: int, preprocess: str | TextPreprocess, data_dir=None,
            process_index: int = 0, process_count: int = 1, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """Token batches of ids [start, stop) of `split` for this process (module docstring)."""
    from plexbench.data.pipeline import batches_per_process, shard_bounds

    _check_batch_args(batch_size, process_index, process_count, start, stop)
    info = get_dataset(name)
    _check_text(info)
    prep = parse_text(preprocess) if isinstance(preprocess, str) else preprocess
    data = load_texts(name, split, data_dir)
    n = len(data["label"])
    stop = n if stop is None else min(stop, n)
    start = min(start, stop)
    lo, hi = shard_bounds(start, stop, process_index, process_count)
    total = batches_per_process(start, stop, batch_size, process_count)
    features = list(data["texts"])
    for b in range(total):
        first, last = min(hi, lo + b * batch_size), min(hi, lo + (b + 1) * batch_size)
        examples = [{f: data["texts"][f][i] for f in features} for i in range(first, last)]
        tokens = prep(examples, info) if examples else np.zeros((0, prep.length), np.int32)
        yield _pad(tokens, data["label"][first:last], np.arange(first, last, dtype=np.int64), batch_size)


def _check_batch_args(batch_size, process_index, process_count, start, stop) -> None:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(batch_size) or batch_size < 1:
        raise PlexbenchError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not is_int(process_count) or process_count < 1 or not is_int(process_index) or not 0 <= process_index < process_count:
        raise PlexbenchError(f"process_index must be in [0, process_count), got {process_index!r} of {process_count!r}")
    if not is_int(start) or start < 0 or (stop is not None and (not is_int(stop) or stop < start)):
        raise PlexbenchError(f"need 0 <= start <= stop, got start {start!r}, stop {stop!r}")


def _pad(tokens: np.ndarray, labels: np.ndarray, ids: np.ndarray, size: int) -> dict:
    n, pad = len(ids), size - len(ids)
    return {
        "tokens": np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), np.int32)]) if pad else tokens,
        "label": np.concatenate([labels, np.full(pad, -1, np.int64)]) if pad else np.asarray(labels, np.int64),
        "id": np.concatenate([ids, np.full(pad, -1, np.int64)]) if pad else ids,
        "mask": np.arange(size) < n,
    }
