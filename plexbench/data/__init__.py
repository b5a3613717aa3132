"""Datasets: the registry, preparing embedded datasets, loading, preprocessing, batching.

Submodules (import what you need; only `registry` is free of TensorFlow at import time, the others
import TensorFlow/TFDS lazily inside functions):

- `plexbench.data.registry`: `DatasetInfo`, `DATASETS`, `get_dataset`, `is_available`, `list_rows`.
- `plexbench.data.prepare`: `prepare(name, data_dir) -> bool`.
- `plexbench.data.load`: `load_arrays`, `num_examples`, `dataset_fingerprint`, `class_names`.
- `plexbench.data.preprocess`: `parse(spec)` -> callable on uint8 (B, H, W, C) batches.
- `plexbench.data.pipeline`: `batches(...)`, the deterministic, padded, prefetched iterator.
"""
