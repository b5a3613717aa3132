"""The training layer (above models, beside inference): one fine-tuning loop and one linear-probe
module, shared by the zoo trainer and by the task kinds that adapt a model.

    from plexbench.training import FinetuneConfig, TrainData, finetune, fit_probe, TrainableModel

- `finetune(apply_fn, params, TrainData(inputs, labels, transform), FinetuneConfig(...), evaluate=...,
  checkpoint=path)` -> FinetuneResult (loop.py: optax, jit, data-parallel over the local devices,
  clipping, constant / warmup-cosine schedule, early stopping, atomic resumable checkpoints);
- `fit_probe(features (E, n, D), labels, num_classes, l2s, kind="logistic"|"closed_form")` ->
  EnsembleProbe, `.predict(features (E, N, D))` -> (L, N, C) (probe.py: spec §6 few-shot rules);
- `TrainableModel` (model.py): what the runner hands a kind that adapts a model;
- zoo.py: the embedded zoo's trainer; active_learning.py / acquisition.py: spec §6 active learning.

docs/training.md describes the API with examples. Importing this package does not import JAX.
"""

from __future__ import annotations

from plexbench.training.loop import (FinetuneConfig, FinetuneResult, TrainData, finetune, make_optimizer,
                                     make_schedule, member_cross_entropy)
from plexbench.training.model import TrainableModel
from plexbench.training.probe import EnsembleProbe, LinearModel, closed_form_path, fit_probe, logistic_path, standardise

__all__ = [
    "EnsembleProbe",
    "FinetuneConfig",
    "FinetuneResult",
    "LinearModel",
    "TrainData",
    "TrainableModel",
    "closed_form_path",
    "finetune",
    "fit_probe",
    "logistic_path",
    "make_optimizer",
    "make_schedule",
    "member_cross_entropy",
    "standardise",
]
