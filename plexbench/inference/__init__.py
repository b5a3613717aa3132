"""Batched, data-parallel inference through a content-addressed prediction store.

    from plexbench.inference import handle_from_registry, predict
    entry = predict(handle_from_registry("plex-mini"), "fashion_mnist", "test")
    entry.logits (E, N, K); entry.pre_logits (E, N, D); entry.labels (N,); entry.ids (N,)

Text models (T5) read token batches of text datasets through the same engine and store
(`text_source`; `handle_from_t5_config`); an SNGP head's variance is `entry.extras["gp_variance"]`.

Modules: `handle` (ModelHandle, registry and user-callable models), `engine` (jit + sharding),
`store` (on-disk chunks and manifests), `predict` (the two together), `convert` (prediction files).
Importing this package does not import JAX; the functions import it when they need it.
"""

from __future__ import annotations

from plexbench.inference.handle import (
    ModelHandle,
    handle_from_callable,
    handle_from_registry,
    handle_from_t5_config,
    model_identity,
)
from plexbench.inference.predict import (
    DataSource,
    array_source,
    predict,
    predict_many,
    text_source,
    tfds_source,
    token_source,
)
from plexbench.inference.store import StoreEntry

__all__ = [
    "DataSource",
    "ModelHandle",
    "StoreEntry",
    "array_source",
    "handle_from_callable",
    "handle_from_registry",
    "handle_from_t5_config",
    "model_identity",
    "predict",
    "predict_many",
    "text_source",
    "tfds_source",
    "token_source",
]
