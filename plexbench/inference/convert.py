"""Store entries -> `plexbench.metrics.predictions.Predictions` and prediction files (format v1).

Prediction file format v1 (`plexbench score`, docs/prediction-format.md): a store entry maps onto
it one to one: `member_logits` = logits (E, N, K), `labels` = labels (N,) (or `soft_labels`
(N, K) when the dataset has them), `embeddings` = pre_logits (E, N, D) when stored, `ids` = ids.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def prediction_arrays(entry, soft_labels: bool | None = None) -> dict[str, np.ndarray]:
    """The format-v1 arrays of a StoreEntry.

    soft_labels: True = use the entry's soft labels (error if none), False = the integer labels,
    None = soft labels when the entry has them.
    """
    from plexbench.errors import PlexbenchError

    arrays = {"member_logits": entry.logits, "ids": entry.ids}
    use_soft = entry.soft_labels is not None if soft_labels is None else soft_labels
    if use_soft:
        if entry.soft_labels is None:
            raise PlexbenchError(f"store entry {entry.key[:12]} has no soft labels")
        arrays["soft_labels"] = entry.soft_labels
    else:
        arrays["labels"] = entry.labels
    if entry.pre_logits is not None:
        arrays["embeddings"] = entry.pre_logits
    return arrays


def write_prediction_file(entry, path: str | os.PathLike, soft_labels: bool | None = None) -> Path:
    """Write `entry` as a prediction file (v1) at `path`, atomically, with the metrics area's writer."""
    from plexbench.metrics.predictions import save_prediction_file

    return save_prediction_file(path, **prediction_arrays(entry, soft_labels))


def to_predictions(entry, soft_labels: bool | None = None):
    """`Predictions` for `entry`, exactly as `plexbench score` builds them from the exported file."""
    from plexbench.metrics.predictions import Predictions

    return Predictions.from_arrays(prediction_arrays(entry, soft_labels))
