"""ViT / ViT-Plex models: configs, Flax modules, checkpoints, the model registry and the zoo.

Importing this package is cheap (no JAX): `build` imports the Flax modules when called.

    from plexbench.models import build, get_model
    entry = get_model("plex-mini")
    module = build(entry.config)                       # flax.linen.Module
    out = module.apply({"params": params}, images, rng=jax.random.PRNGKey(0))
    out["logits"] (E, B, K), out["pre_logits"] (E, B, F), out["log_probs"] (B, K)
"""

from __future__ import annotations

from plexbench.models.config import ModelConfig, param_count, param_shapes


def build(config: ModelConfig, *, dtype="float32", mc_chunk_size: int | None = None,
          num_mc_samples: int | None = None):
    """The flax.linen.Module for `config` (see plexbench.models.vit.build for the options)."""
    from plexbench.models.vit import build as _build

    return _build(config, dtype=dtype, mc_chunk_size=mc_chunk_size, num_mc_samples=num_mc_samples)


def get_model(name: str):
    """The registry entry (ModelEntry) called `name`; PlexbenchError if unknown."""
    from plexbench.models.registry import get_model as _get

    return _get(name)


__all__ = ["ModelConfig", "build", "get_model", "param_count", "param_shapes"]
