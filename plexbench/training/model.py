"""The trainable model handle: what a task kind that ADAPTS a model receives from the runner.

    model = TrainableModel.from_handle(handle, config)      # plexbench.tasks.sources does this
    params = model.with_zero_head(num_classes=10)           # pretrained trunk, fresh zero head
    apply = model.apply_fn(num_classes=10)                  # apply(params, images, rng) -> dict
    result = finetune(apply, params, data, FinetuneConfig(...))

A `TrainableModel` is a plexbench ViT(-Plex) (`config`, a plexbench.models.ModelConfig), its
pretrained parameters (loaded on first use, shared with inference), its preprocessing spec and
its identity (config and checkpoint hash, as in the prediction store). Models given only as
prediction files, or as user callables without a config, have no TrainableModel: a kind that
adapts then skips them with a named reason.

Fresh head (spec §6, "fresh head (kernel and bias zero)"): the parameters under the top-level
head module (`head`, or `batchensemble_head` for upstream models) are replaced by those of a
head for `num_classes` classes in which every `kernel` and `bias` is zero; other head leaves
(BatchEnsemble fast weights `fast_weight_alpha` / `fast_weight_gamma`, random signs) come from
the module's initialiser with PRNGKey(seed). Everything below the head (the trunk and an
upstream `pre_logits` representation layer) is the pretrained one. With a zero head every
member predicts the uniform distribution, for the dense and the heteroscedastic head alike.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from plexbench.training.loop import HEAD_NAMES


class TrainableModel:
    """A plexbench ViT with its pretrained parameters (see the module docstring).

    Args:
        name: display name; config: plexbench.models.ModelConfig of the pretrained model;
        preprocess: preprocessing spec string (None = the dataset's default);
        identity: JSON-able dict naming the function and weights;
        params / load_params: the pretrained parameters, or a zero-argument loader called once.
    """

    def __init__(self, name: str, config, *, preprocess: str | None, identity: dict,
                 params: Any = None, load_params: Callable[[], Any] | None = None):
        if params is None and load_params is None:
            raise ValueError("TrainableModel needs params or load_params")
        self.name, self.config, self.preprocess, self.identity = name, config, preprocess, dict(identity)
        self._params, self._load = params, load_params

    @classmethod
    def from_handle(cls, handle, config) -> "TrainableModel":
        """From an inference ModelHandle of a registry model (shares its lazily loaded params)."""
        return cls(handle.name, config, preprocess=handle.preprocess, identity=handle.identity,
                   load_params=lambda: handle.params)

    @property
    def pretrained(self) -> Any:
        """The pretrained parameter tree (loaded on first access)."""
        if self._params is None:
            self._params, self._load = self._load(), None
        return self._params

    @property
    def num_members(self) -> int:
        return int(self.config.ensemble_size)

    def config_for(self, num_classes: int | None = None):
        """The config with `num_classes` classes (the head's size), or unchanged."""
        if num_classes is None or num_classes == self.config.num_classes:
            return self.config
        return dataclasses.replace(self.config, num_classes=int(num_classes))

    def apply_fn(self, num_classes: int | None = None, *, num_mc_samples: int | None = None,
                 dtype: str = "float32") -> Callable:
        """`apply(params, images, rng) -> {"logits" (E,B,K), "pre_logits" (E,B,D), "log_probs" (B,K)}`
        for a head of `num_classes` classes; `num_mc_samples` overrides the heteroscedastic head's
        sample count (fewer while training). One function object per (config, options) in the
        process, so jitted programs built on it are reused."""
        return _apply_fn(self.config_for(num_classes), num_mc_samples, dtype)

    def with_zero_head(self, num_classes: int, seed: int = 0) -> dict:
        """Pretrained trunk + a fresh head for `num_classes` classes (module docstring)."""
        head = zero_head(self.config_for(num_classes), seed)
        params = {k: v for k, v in self.pretrained.items() if k not in HEAD_NAMES}
        params.update(head)
        return params


@functools.lru_cache(maxsize=32)
def _apply_fn(config, num_mc_samples: int | None, dtype: str) -> Callable:
    """One apply function per (config, options), shared by every TrainableModel: the training
    loop's and the evaluator's compiled programs are cached per function, so models with the same
    architecture (zoo runs, active-learning rounds) compile once."""
    from plexbench.models import build

    module = build(config, dtype=dtype, num_mc_samples=num_mc_samples)

    def apply(params, images, rng):
        return module.apply({"params": params}, images, rng=rng)

    return apply


def zero_head(config, seed: int = 0) -> dict:
    """{head module name: subtree} of a freshly initialised head with kernels and biases zeroed
    (numpy float32)."""
    import jax

    init = _head_init(config)
    tree = jax.tree_util.tree_map_with_path(
        lambda path, x: np.zeros(x.shape, np.float32) if getattr(path[-1], "key", None) in ("kernel", "bias")
        else np.asarray(x, np.float32), init(jax.random.PRNGKey(seed)))
    return dict(tree)


@functools.lru_cache(maxsize=8)
def _head_init(config):
    """Jitted initialiser returning only the head's parameters (XLA drops the unused trunk)."""
    import jax
    import jax.numpy as jnp

    from plexbench.models import build

    module = build(config, num_mc_samples=1)
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)

    def init(key):
        params = module.init(key, images, rng=jax.random.PRNGKey(0))["params"]
        return {k: v for k, v in params.items() if k in HEAD_NAMES}

    return jax.jit(init)
