"""Task and suite YAML, parsed into frozen typed dataclasses before anything reads it.

A task file (`tasks/<name>.yaml`; the task's name is the file stem) holds:

    kind: calibration            # a registered task kind (plexbench.tasks.registry.KINDS)
    version: 1                   # bump when a change can move the task's numbers
    description: ...             # optional, one line
    dataset:                     # the evaluated (in-distribution) dataset reference
      name: fashion_mnist        # a name of plexbench.data.registry.DATASETS
      split: test                # a split role: train | validation | test
      classes: [0, 1, 2]         # optional: keep only examples whose label is listed
      preprocess: resize(28)     # optional: ops run on the raw uint8 images BEFORE the model's own preprocessing
      limit: 10000               # optional: only the first `limit` examples of the split (dataset order)
      alias: name_in_results     # optional: the name used in result rows (default: see DatasetRef.label)
    metrics: [ece, calib_auc]    # optional: a subset of the kind's metrics (default: all of them)
    params: {num_bins: 15}       # optional: the kind's protocol parameters (each kind declares a dataclass)
    bootstrap: 200               # optional: bootstrap resamples for ci_low/ci_high (0 = no intervals)
    seed: 0                      # optional: seed of the bootstrap and of any randomness of the protocol
    models: {num_classes: 6}     # optional: models it applies to ({num_classes: K}, {names: [...]} or a list)
    include: _base.yaml          # optional: one level of inclusion (see `merge_include`)

Unknown keys are errors. Every error is one line naming the file, the field and what was
expected, e.g. ``tasks/x.yaml: field 'dataset.split': expected one of 'train', 'validation',
'test', got 'tst'``.

A suite file (`tasks/suites/<name>.yaml`) holds `version`, `description` and `tasks` (a list of
task names).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from plexbench.errors import PlexbenchError

SPLIT_ROLES = ("train", "validation", "test")
SplitRole = Literal["train", "validation", "test"]


class FieldError(Exception):
    """A problem with one field; `path` is dotted relative to where parsing started."""

    def __init__(self, path: str, expected: str, got: Any = dataclasses.MISSING, unknown: bool = False,
                 missing: bool = False):
        super().__init__(path)
        self.path, self.expected, self.got, self.unknown, self.missing = path, expected, got, unknown, missing

    def nested(self, prefix: str) -> "FieldError":
        path = f"{prefix}.{self.path}" if self.path else prefix
        return FieldError(path, self.expected, self.got, self.unknown, self.missing)

    def message(self, file: str | Path) -> str:
        if self.unknown:
            return f"{file}: field '{self.path}': unknown field (expected one of: {self.expected})"
        if self.missing:
            return f"{file}: field '{self.path}': required field is missing (expected {self.expected})"
        got = "" if self.got is dataclasses.MISSING else f", got {_show(self.got)}"
        return f"{file}: field '{self.path}': expected {self.expected}{got}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def spec_error(file: str | Path, err: FieldError) -> PlexbenchError:
    return PlexbenchError(err.message(file))


def check(expect: str, predicate) -> dict:
    """Field metadata: a value must satisfy `predicate`; `expect` says what is expected."""
    return {"expect": expect, "check": predicate}


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


POSITIVE = check("a positive integer", _positive)
NON_NEGATIVE = check("a non-negative integer", _non_negative)


# --------------------------------------------------------------------------- generic parser

def parse(tp: Any, value: Any, path: str = "") -> Any:
    """Turn a YAML value into `tp` (a dataclass, Literal, tuple[X, ...], dict[str, X], Optional, scalar).

    Raises FieldError with the dotted field path on the first problem.
    """
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, value, path)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return parse(options[0], value, path)
        errors = []
        for option in options:
            try:
                return parse(option, value, path)
            except FieldError as e:
                errors.append(e)
        raise FieldError(path, " or ".join(e.expected for e in errors), value)
    if origin is Literal:
        if value not in args or isinstance(value, bool):
            raise FieldError(path, "one of " + ", ".join(repr(a) for a in args), value)
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise FieldError(path, f"a list of {_describe(args[0])}", value)
        return tuple(parse(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise FieldError(path, f"a mapping of names to {_describe(args[1])}", value)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise FieldError(path, "string keys", k)
            out[k] = parse(args[1], v, f"{path}.{k}" if path else k)
        return out
    return _parse_scalar(tp, value, path)


def _describe(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "mappings"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, str(tp))


def _describe_one(tp: Any) -> str:
    """What one value of type `tp` looks like, for messages: 'an integer', 'a list of strings'..."""
    if dataclasses.is_dataclass(tp):
        return f"a mapping with fields {', '.join(_yaml_fields(tp))}"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_one(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"a mapping of names to {_describe(args[1])}"
    return {int: "an integer", float: "a number", str: "a non-empty string", bool: "true or false"}.get(tp, str(tp))


def _parse_scalar(tp: Any, value: Any, path: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise FieldError(path, "true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise FieldError(path, "an integer", value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise FieldError(path, "a number", value)
    if tp is str:
        if isinstance(value, str) and value.strip():
            return value
        raise FieldError(path, "a non-empty string", value)
    if tp is Any:
        return value
    raise TypeError(f"unsupported field type {tp!r}")  # a bug in a dataclass declaration


def _parse_dataclass(cls: type, value: Any, path: str) -> Any:
    coerce = getattr(cls, "coerce_yaml", None)
    if coerce is not None:
        value = coerce(value)
    if not isinstance(value, dict):
        raise FieldError(path, f"a mapping with fields {', '.join(_yaml_fields(cls))}", value)
    hints = typing.get_type_hints(cls)
    known = _yaml_fields(cls)
    join = (lambda k: f"{path}.{k}") if path else (lambda k: k)
    for key in value:
        if key not in known:
            raise FieldError(join(str(key)), ", ".join(known), unknown=True)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("yaml") is False:
            continue
        if f.name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise FieldError(join(f.name), _describe_one(hints[f.name]), missing=True)
            continue
        parsed = parse(hints[f.name], value[f.name], join(f.name))
        _check_field(f, parsed, join(f.name))
        kwargs[f.name] = parsed
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except FieldError as e:
            raise (e.nested(path) if path else e) from None
    return obj


def _check_field(f: dataclasses.Field, parsed: Any, path: str) -> None:
    predicate = f.metadata.get("check")
    if predicate is None or parsed is None:
        return
    values = parsed if isinstance(parsed, tuple) else (parsed,)
    for v in values:
        if not predicate(v):
            raise FieldError(path, f.metadata["expect"], parsed)


def _yaml_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init and f.metadata.get("yaml") is not False]


def to_dict(obj: Any) -> Any:
    """A dataclass (or nested value) as plain JSON-able Python (tuples become lists, Paths strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.metadata.get("yaml") is not False}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------- shared pieces

@dataclass(frozen=True)
class DatasetRef:
    """One dataset split as a task sees it.

    - `name`: a dataset of plexbench.data.registry (families such as
      `fashion_mnist_corrupted/gaussian_noise_3` included).
    - `split`: a split role; plexbench.data maps it to the TFDS split (spec §8).
    - `classes`: keep only examples whose label is one of these. Labels are NOT renumbered, so a
      model trained on a class subset must use the dataset's ids 0..K-1 for its classes (the
      6-class Fashion-MNIST zoo models do: classes 0-5).
    - `preprocess`: preprocessing ops (plexbench.data.preprocess syntax, joined with `|`) applied to
      the raw uint8 images before the model's own preprocessing, e.g. `resize(28)` to feed 8x8
      digits to a 28x28 model. It is part of the prediction-store key.
    - `limit`: only the first `limit` examples of the split, in dataset order; applied BEFORE the
      class filter (so inference over the split prefix is shared by every class subset).
    - `alias`: the name used for this dataset in result rows and OOD metric names.
    """

    name: str
    split: SplitRole = "test"
    classes: tuple[int, ...] | None = field(default=None, metadata=check("class ids >= 0", _non_negative))
    preprocess: str | None = None
    limit: int | None = field(default=None, metadata=POSITIVE)
    alias: str | None = None

    def validate(self) -> None:
        if self.classes is not None:
            if not self.classes:
                raise FieldError("classes", "a non-empty list of class ids", list(self.classes))
            if len(set(self.classes)) != len(self.classes):
                raise FieldError("classes", "distinct class ids", list(self.classes))
        if self.alias is not None and "/" in self.alias:
            raise FieldError("alias", "a name without '/' (it becomes one component of metric names)", self.alias)

    @property
    def label(self) -> str:
        """Name in result rows: the alias, else the dataset name, plus `_classes_<ids>` under a class filter."""
        if self.alias:
            return self.alias
        if self.classes is None:
            return self.name
        return f"{self.name}_classes_{'_'.join(str(c) for c in self.classes)}"


@dataclass(frozen=True)
class ModelFilter:
    """Which models a task applies to: all listed conditions must hold.

    YAML: `{num_classes: 6}`, `{names: [a, b]}`, or a plain list of names (shorthand for `names`).
    """

    names: tuple[str, ...] | None = None
    num_classes: int | None = field(default=None, metadata=POSITIVE)

    @classmethod
    def coerce_yaml(cls, value: Any) -> Any:
        return {"names": value} if isinstance(value, list) else value

    def validate(self) -> None:
        if self.names is None and self.num_classes is None:
            raise FieldError("", "at least one of names, num_classes", {})
        if self.names is not None and not self.names:
            raise FieldError("names", "a non-empty list of model names", [])

    def accepts(self, model_name: str, num_classes: int) -> bool:
        if self.names is not None and model_name not in self.names:
            return False
        return self.num_classes is None or self.num_classes == num_classes

    def describe(self) -> str:
        parts = []
        if self.names is not None:
            parts.append("names " + ", ".join(self.names))
        if self.num_classes is not None:
            parts.append(f"num_classes {self.num_classes}")
        return " and ".join(parts)


@dataclass(frozen=True)
class NoParams:
    """Protocol parameters of a kind that has none."""


@dataclass(frozen=True)
class TaskSpec:
    """One task instance, read from `tasks/<name>.yaml` (see the module docstring)."""

    kind: str
    version: int = field(metadata=POSITIVE)
    dataset: DatasetRef
    description: str = ""
    metrics: tuple[str, ...] | None = None
    params: Any = None  # the kind's params dataclass; parsed by plexbench.tasks.registry
    bootstrap: int = field(default=0, metadata=NON_NEGATIVE)
    seed: int = field(default=0, metadata=NON_NEGATIVE)
    models: ModelFilter | None = None
    name: str = field(default="", metadata={"yaml": False})
    path: Path | None = field(default=None, metadata={"yaml": False}, compare=False)

    def to_dict(self) -> dict:
        """The task as plain data (name included, path excluded): what identifies its numbers."""
        out = to_dict(self)
        out["name"] = self.name
        return out


@dataclass(frozen=True)
class SuiteSpec:
    """A suite, read from `tasks/suites/<name>.yaml`: the tasks it runs, in order."""

    version: int = field(metadata=POSITIVE)
    tasks: tuple[str, ...]
    description: str = ""
    name: str = field(default="", metadata={"yaml": False})
    path: Path | None = field(default=None, metadata={"yaml": False}, compare=False)

    def validate(self) -> None:
        if not self.tasks:
            raise FieldError("tasks", "a non-empty list of task names", [])
        seen = set()
        for i, t in enumerate(self.tasks):
            if t in seen:
                raise FieldError(f"tasks[{i}]", "each task listed once", t)
            seen.add(t)


def merge_include(base: Mapping, override: Mapping) -> dict:
    """`override` on top of `base`: mappings merge key by key (recursively), anything else is replaced.

    Lists are replaced whole (never concatenated), so a variant can shorten a list.
    """
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_include(out[key], value)
        else:
            out[key] = value
    return out
