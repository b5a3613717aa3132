"""Model handles: a forward function, lazily loaded parameters, and an identity for the store.

A `ModelHandle` is everything inference needs to know about a model:

- `apply_fn(params, images, rng) -> dict` following ARCHITECTURE.md: `images` float32 (B, H, W, 3),
  `rng` a `jax.random.PRNGKey`; returns `logits` (E, B, K), `pre_logits` (E, B, D) and
  `log_probs` (B, K). Only `logits` and `pre_logits` are used by inference (`log_probs` is derived from
  the logits by the metrics, spec §3).
- `params`: the parameter tree. Loading is deferred to the first access of `handle.params`, so a
  prediction-store hit never reads the checkpoint's arrays (it only hashes the file for the key).
- `identity`: a JSON-able dict that says which function and which weights these are; it is part of
  every prediction-store key. Registry models: `{"kind": "registry", "config": ..., "checkpoint_sha256": ...}`
  (the registry name is left out on purpose: two names with the same config and weights predict the
  same numbers). User callables: `{"kind": "callable", "spec": ..., "params_sha256": ...}`.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from plexbench import fileio
from plexbench.errors import PlexbenchError, shown
from plexbench.inference.store import EXTRA_OUTPUTS  # (E, B) outputs carried beside the logits

ApplyFn = Callable[[Any, Any, Any], dict]

# Where weights come from, said whenever a model has none (spec §1 lists the released files).
CHECKPOINT_HINT = ("pass --checkpoint PATH to `predict` or `model info`, --checkpoint NAME=PATH to `run`; the released Plex checkpoints are in gs://plex-paper/ (`gsutil cp gs://plex-paper/FILE.npz .`, see docs/checkpoints.md)")


class ModelHandle:
    """A model ready for inference; see the module docstring for the fields.

    Args:
        name: display name (registry name or callable spec).
        apply_fn: `apply_fn(params, images, rng) -> {"logits": (E,B,K), "pre_logits": (E,B,D), ...}`.
        params: the parameter tree, or None when `load_params` is given.
        preprocess: preprocessing spec string (plexbench.data.preprocess), or None to use the
            dataset's default.
        identity: JSON-able dict naming the function and weights (goes into store keys).
        num_members: E, or None when only known after a forward pass.
        num_classes: K, or None when only known after a forward pass.
        load_params: zero-argument callable returning the params, called at most once, on first use.
        uses_rng: whether the forward pass consumes `rng` (a heteroscedastic head does); None means
            "find out by tracing" (see engine.rng_is_used).
        per_example_keys: `apply_fn` also accepts `rng` as one raw key per example, uint32 (B, 2),
            and then draws example b's noise from rng[b] alone (plexbench's ViT does). Otherwise the
            engine gets the same independence from batching by running the model row by row.
        apply_fn_for_dtype: optional `dtype_name -> apply_fn` computing natively in that dtype with
            float32 params (plexbench's ViT: build(config, dtype=...)); without it the engine casts
            the floating params and the images to the compute dtype.
    """

    def __init__(
        self,
        name: str,
        apply_fn: ApplyFn,
        params: Any = None,
        preprocess: str | None = None,
        identity: dict | None = None,
        num_members: int | None = None,
        num_classes: int | None = None,
        *,
        load_params: Callable[[], Any] | None = None,
        uses_rng: bool | None = None,
        per_example_keys: bool = False,
        apply_fn_for_dtype: Callable[[str], ApplyFn] | None = None,
    ):
        if params is None and load_params is None:
            raise ValueError("ModelHandle needs params or load_params")
        self.name = name
        self.apply_fn = apply_fn
        self.preprocess = preprocess
        self.identity = dict(identity or {})
        self.num_members = num_members
        self.num_classes = num_classes
        self.uses_rng = uses_rng
        self.per_example_keys = per_example_keys
        self.apply_fn_for_dtype = apply_fn_for_dtype
        # Number of parameter scalars when known without loading them (e.g. from a config).
        self.num_params: int | None = None
        self._params = params
        self._load_params = load_params
        # Engines compiled for this handle, keyed by their options: a second dataset with the same
        # input shape reuses the compiled forward (see predict_many).
        self.engines: dict = {}

    @property
    def params(self) -> Any:
        """The parameter tree, loaded on first access."""
        if self._params is None:
            self._params = self._load_params()
            self._load_params = None
        return self._params

    @property
    def params_loaded(self) -> bool:
        return self._params is not None

    def __repr__(self) -> str:
        return f"ModelHandle({self.name!r}, E={self.num_members}, K={self.num_classes})"


def model_identity(handle: ModelHandle) -> dict:
    """Provenance of a handle: its identity plus `name` and `num_params` when known.

    `num_params` (total number of parameter scalars) comes from the config (registry models) or
    from the params when they are loaded; this function never loads a checkpoint.
    """
    out = {"name": handle.name, **handle.identity}
    if handle.num_params is not None:
        out["num_params"] = handle.num_params
    elif handle.params_loaded:
        out["num_params"] = count_params(handle.params)
    return out


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter tree (sum of leaf sizes)."""
    import jax

    return int(sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(params)))


def params_sha256(params: Any) -> str:
    """sha256 over (path, dtype, shape, bytes) of every leaf, in sorted path order.

    Independent of dict insertion order; two trees with equal arrays under equal paths hash equal.
    """
    import hashlib

    import jax

    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype.str}|{arr.shape}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------- registry


def handle_from_registry(name: str, checkpoint: str | Path | None = None, *, readout: str = "average",
                         vocab: str | Path | None = None) -> ModelHandle:
    """A handle for a registered model (plexbench.models.registry), weights loaded lazily.

    The checkpoint is `checkpoint` if given, else the registry entry's (zoo) checkpoint. Its sha256
    is computed here (it is part of the identity and so of the store key); its arrays are read and
    validated against the config only when `handle.params` is first used. A missing checkpoint
    raises PlexbenchError.

    T5 models (their checkpoint is a T5X directory): `readout` "average" (member logits, metrics
    average probabilities) or "paper" (spec §9's quirk, see handle_from_t5_config); `vocab` the
    official T5 SentencePiece file for models whose preprocessing names the `t5` vocabulary.
    """
    from plexbench.models import checkpoint as ckpt_lib
    from plexbench.models.registry import get_model

    entry = get_model(name)
    if entry.config.architecture == "t5":
        return _t5_from_registry(entry, checkpoint, readout, vocab)
    path = Path(checkpoint) if checkpoint is not None else entry.checkpoint
    if path is None:
        raise PlexbenchError(f"model '{name}' has no bundled weights; " + CHECKPOINT_HINT)
    path = Path(path).expanduser()
    if not path.is_file():
        if checkpoint is None:
            raise PlexbenchError(f"the weights of model '{name}' are missing: {path}; " + CHECKPOINT_HINT)
        raise PlexbenchError(f"checkpoint not found: {path}")
    config = entry.config
    identity = {"kind": "registry", "config": config.to_dict(), "checkpoint_sha256": fileio.sha256_file(path)}
    return handle_from_config(config, name=name, preprocess=entry.preprocess, identity=identity,
                              load_params=lambda: ckpt_lib.load_params(config, path))


def _t5_from_registry(entry, checkpoint, readout: str, vocab) -> ModelHandle:
    from plexbench.models.t5x_checkpoint import directory_sha256, is_t5x_directory, load_t5x_params
    from plexbench.models.tokenizer import register_vocab_file

    if vocab is not None:
        register_vocab_file("t5", vocab)
    path = Path(checkpoint).expanduser() if checkpoint is not None else entry.checkpoint
    if path is None:
        raise PlexbenchError(f"model '{entry.name}' has no bundled weights; pass --checkpoint DIR (a T5X checkpoint directory)")
    if not is_t5x_directory(path):
        raise PlexbenchError(f"not a T5X checkpoint directory (no file 'checkpoint' in it): {path}")
    config = entry.config
    identity = {"kind": "registry", "config": config.to_dict(), "checkpoint_sha256": directory_sha256(path)}
    return handle_from_t5_config(config, name=entry.name, preprocess=entry.preprocess, identity=identity,
                                 load_params=lambda: load_t5x_params(config, path), readout=readout)


def handle_from_t5_config(config, params: Any = None, *, name: str = "t5", preprocess: str | None = None,
                          identity: dict | None = None, load_params: Callable[[], Any] | None = None,
                          readout: str = "average") -> ModelHandle:
    """A handle for plexbench's T5(-Plex) classifier (plexbench.models.t5) with `config` (a T5Config).

    apply_fn(params, tokens int32 (B, L), rng) returns, for target length 1:
    `logits` (E, B, C) the member's mean-field label-token logits (readout "average": metrics
    average the members' probabilities, spec §3) or, with readout "paper", ONE row
    (1, B, C) = logsumexp_m(logits_m) - log E (the reference code's ensemble of raw logits,
    spec §9; its softmax is the paper's ensemble probability); `pre_logits` (E, B, d) the final
    decoder hidden state (Mahalanobis embedding); `gp_variance` (E, B) for an SNGP head.
    `params` is the tree with the GP state as `decoder/gp_head_state` (as the T5X reader gives it).
    """
    from plexbench.models.t5 import READOUTS

    if readout not in READOUTS:
        raise PlexbenchError(f"unknown readout '{readout}' (choose from {', '.join(READOUTS)})")
    if config.target_length != 1:
        raise PlexbenchError(f"model '{name}' reads {config.target_length} target positions (NaLUE); the prediction "
                             "store holds one (E, N, K) readout, so only target length 1 runs through inference")
    apply_fns: dict[str, ApplyFn] = {}

    def apply_fn_for_dtype(dtype: str) -> ApplyFn:
        if dtype not in apply_fns:
            modules = []

            def apply_fn(params, tokens, rng):
                import math

                import jax

                from plexbench.models.sngp import split_state
                from plexbench.models.t5 import build_t5

                del rng  # deterministic
                if not modules:
                    modules.append(build_t5(config, dtype=dtype))
                out = modules[0].apply(split_state(params), tokens)
                logits = out["logits"][:, :, 0]
                if readout == "paper":
                    logits = (jax.nn.logsumexp(logits, axis=0) - math.log(logits.shape[0]))[None]
                result = {"logits": logits, "pre_logits": out["hidden"][:, :, 0]}
                if "gp_variance" in out:
                    result["gp_variance"] = out["gp_variance"][:, :, 0]
                return result

            apply_fns[dtype] = apply_fn
        return apply_fns[dtype]

    if identity is None:
        if params is None:
            raise ValueError("handle_from_t5_config needs params to compute an identity")
        identity = {"kind": "config", "config": config.to_dict(), "params_sha256": params_sha256(params)}
    if readout != "average":
        identity = {**identity, "readout": readout}  # a different output, a different store key
    handle = ModelHandle(name, apply_fn_for_dtype("float32"), params=params, preprocess=preprocess,
                         identity=identity, num_members=1 if readout == "paper" else config.ensemble_size,
                         num_classes=config.num_classes, load_params=load_params, uses_rng=False,
                         apply_fn_for_dtype=apply_fn_for_dtype)
    from plexbench.models.config import param_count

    handle.num_params = param_count(config)
    return handle


def handle_from_config(config, params: Any = None, *, name: str = "vit", preprocess: str | None = None,
                       identity: dict | None = None, load_params: Callable[[], Any] | None = None) -> ModelHandle:
    """A handle for plexbench's ViT(-Plex) with `config` (plexbench.models.ModelConfig); a T5
    config is handed to `handle_from_t5_config`.

    Give `params` (e.g. from models.checkpoint.init_params or a training loop) or `load_params`.
    `identity` defaults to {"kind": "config", "config": ..., "params_sha256": ...} (hashing the
    params, so it needs `params`).
    """
    if getattr(config, "architecture", "vit") == "t5":
        return handle_from_t5_config(config, params, name=name, preprocess=preprocess, identity=identity,
                                     load_params=load_params)
    apply_fns: dict[str, ApplyFn] = {}

    def apply_fn_for_dtype(dtype: str) -> ApplyFn:
        # One function object per dtype (compiled programs are cached per function), and the
        # Flax module is built on the first call, so a store hit never imports JAX or Flax.
        if dtype not in apply_fns:
            modules = []

            def apply_fn(params, images, rng):
                if not modules:
                    from plexbench.models import build

                    modules.append(build(config, dtype=dtype))
                from plexbench.models.sngp import split_state

                # An SNGP head keeps its state beside the parameters (a `head_state` subtree).
                return modules[0].apply(split_state(params), images, rng=rng)

            apply_fns[dtype] = apply_fn
        return apply_fns[dtype]

    if identity is None:
        if params is None:
            raise ValueError("handle_from_config needs params to compute an identity")
        identity = {"kind": "config", "config": config.to_dict(), "params_sha256": params_sha256(params)}
    handle = ModelHandle(
        name,
        apply_fn_for_dtype("float32"),
        params=params,
        preprocess=preprocess,
        identity=identity,
        num_members=_config_num_members(config),
        num_classes=getattr(config, "num_classes", None),
        load_params=load_params,
        uses_rng=_config_uses_rng(config),
        per_example_keys=True,  # plexbench.models.vit.row_keys accepts (B, 2) raw keys
        apply_fn_for_dtype=apply_fn_for_dtype,
    )
    from plexbench.models.config import param_count

    handle.num_params = param_count(config)
    return handle


def _config_num_members(config) -> int | None:
    for field in ("ensemble_size", "num_members"):
        value = getattr(config, field, None)
        if value is not None:
            return int(value)
    return None


def _config_uses_rng(config) -> bool | None:
    """True when the config has a heteroscedastic head; None (find out by tracing) if unknown."""
    head = getattr(config, "head", None)
    if isinstance(head, str):
        return "hetero" in head
    return None


# --------------------------------------------------------------------------------------- callables


def handle_from_callable(spec: str) -> ModelHandle:
    """A handle for a user model given as "package.module:function".

    The function is called with no arguments and returns `(flax_module, params)` or
    `(flax_module, params, info)` with `info` a dict that may hold `preprocess` (spec string),
    `name`. The module is called as `module.apply({"params": params}, images, rng=rng)` when its
    `__call__` takes an `rng` argument, else `module.apply({"params": params}, images)`. It must
    return either the ARCHITECTURE.md dict (`logits` (E,B,K), `pre_logits` (E,B,D)) or plain logits
    (B, K), which are wrapped as one member (E = 1) with no pre-logits.

    Identity: the spec string and the sha256 of the params (params_sha256).
    """
    fn = _import_callable(spec)
    try:
        made = fn()
    except PlexbenchError:
        raise
    except Exception as e:  # the user's code failed: say where, in one line
        raise PlexbenchError(f"--model {spec}: calling it raised {type(e).__name__}: {e}") from None
    if not isinstance(made, tuple) or len(made) not in (2, 3):
        raise PlexbenchError(f"--model {spec} must return (flax_module, params) or (flax_module, params, info)")
    module, params = made[0], made[1]
    info = dict(made[2]) if len(made) == 3 else {}
    if not hasattr(module, "apply"):
        raise PlexbenchError(f"--model {spec}: first returned value is not a Flax module (no .apply)")
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]  # accept the variables dict as well
    apply_fn = wrap_module_apply(module)
    return ModelHandle(
        info.get("name", spec),
        apply_fn,
        params=params,
        preprocess=info.get("preprocess"),
        identity={"kind": "callable", "spec": spec, "params_sha256": params_sha256(params)},
        num_members=None,
        num_classes=None,
    )


def _import_callable(spec: str) -> Callable:
    if spec.count(":") != 1:
        raise PlexbenchError(f"--model {shown(spec)} is not a registered model nor of the form package.module:function")
    module_name, attr = spec.split(":")
    # A module beside the working directory is found like `python -m` would find it.
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PlexbenchError(f"--model {shown(spec)}: cannot import module {shown(module_name)} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise PlexbenchError(f"--model {shown(spec)}: module {shown(module_name)} has no callable {shown(attr)}")
    return fn


def wrap_module_apply(module) -> ApplyFn:
    """apply_fn for a Flax module, normalising plain (B, K) logits to the dict convention."""
    takes_rng = "rng" in inspect.signature(module.__call__).parameters

    def apply_fn(params, images, rng):
        if takes_rng:
            out = module.apply({"params": params}, images, rng=rng)
        else:
            out = module.apply({"params": params}, images)
        return normalise_outputs(out)

    return apply_fn


def normalise_outputs(out) -> dict:
    """Accept the ARCHITECTURE.md dict or plain logits (B, K) -> dict with logits (E, B, K).

    Plain logits become one member: logits[None]; pre_logits is then None. EXTRA_OUTPUTS present
    in a dict are kept, as (E, B) (a (B,) array becomes one member).
    """
    if isinstance(out, dict):
        if "logits" not in out:
            raise PlexbenchError(f"model output dict has no 'logits' (keys: {sorted(out)})")
        logits = out["logits"]
        extras = {k: (out[k] if out[k].ndim == 2 else out[k][None]) for k in EXTRA_OUTPUTS if out.get(k) is not None}
        if logits.ndim == 2:  # a dict with (B, K) logits: one member
            pre = out.get("pre_logits")
            return {"logits": logits[None], "pre_logits": None if pre is None else (pre if pre.ndim == 3 else pre[None]),
                    **extras}
        if logits.ndim != 3:
            raise PlexbenchError(f"model logits must be (E, B, K) or (B, K), got shape {tuple(logits.shape)}")
        return {"logits": logits, "pre_logits": out.get("pre_logits"), **extras}
    if getattr(out, "ndim", None) == 2:
        return {"logits": out[None], "pre_logits": None}
    raise PlexbenchError(f"model must return a dict or (B, K) logits, got {type(out).__name__}")
