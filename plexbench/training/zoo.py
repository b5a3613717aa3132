"""Training the embedded zoo (plexbench.models.zoo declares the models) on the training layer.

Recipe (`train_zoo_model`, CLI `plexbench zoo train NAME`), one `plexbench.training.finetune` run:
the `train` role of fashion_mnist (train[:98%]) filtered to the model's classes (logit j is
dataset label classes[j]), preprocessed with `grey_to_rgb|value_range(-1,1)`; initial weights
from `plexbench.models.checkpoint.init_params(config, seed)` (Flax init under jit with
PRNGKey(seed)); AdamW (b1 0.9, b2 0.999, weight decay 0.05 on kernels only), peak learning rate
3e-3 after 300 linear warmup steps, cosine decay to 1e-5 (`schedule: warmup_cosine`),
global-norm clipping at 1, batch 256, `sampling: epochs` (each epoch a fresh permutation from
numpy's default_rng(seed), the last partial batch dropped), 12 epochs (det) or 10 (plex), no
augmentation, no early stopping. The heteroscedastic head's noise key at step t is
fold_in(PRNGKey(seed + 1), t) with 16 MC samples while training. BatchEnsemble members see the
same batch; the loss is the mean over members of each member's cross-entropy.

Determinism: every input of every step is seeded, so a run reproduces itself bit for bit on the
same machine type and library versions. XLA's CPU kernels pick instructions and blockings by
CPU model and thread count, so another machine may round differently in the last bits and
training then drifts to nearby, not identical, weights (the shipped cards record where they
were trained).

A run writes its state to `{out}/.{name}.train_state.npz` every 200 steps (atomically); a killed
`zoo train` started again resumes there and ends with the same weights as an uninterrupted one.
The state file is removed when the weights and card are written.

Model card evaluation: `plexbench.inference.predict` of the trained parameters on the `test` role
(a temporary prediction store; the heteroscedastic head's key for example i is
fold_in(PRNGKey(EVAL_SEED), i), 100 MC samples), the rows of the model's classes kept; accuracy,
NLL and ECE (15 bins) of the ensemble probabilities via plexbench.metrics.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from plexbench import fileio
from plexbench.models.config import param_count
from plexbench.models.zoo import EVAL_SEED, PREPROCESS, ZooRecipe, get_recipe
from plexbench.training.loop import FinetuneConfig, FinetuneResult, TrainData, finetune

CHECKPOINT_EVERY = 200


def load_split(recipe: ZooRecipe, role: str, data_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28, 1), labels int64 (N,), ids int64 (N,)) of a role, filtered to the
    recipe's classes; labels are logit positions, ids the examples' indices in the unfiltered split."""
    from plexbench.data.load import load_arrays

    arrays = load_arrays(recipe.dataset, role, data_dir)
    images, labels, ids = arrays["image"], arrays["label"], arrays["id"]
    if recipe.classes is not None:
        keep = np.isin(labels, recipe.classes)
        images, labels, ids = images[keep], labels[keep], ids[keep]
        labels = np.searchsorted(np.asarray(recipe.classes), labels)
    return images, labels.astype(np.int64), ids


def finetune_config(recipe: ZooRecipe, num_train: int, max_steps: int | None = None) -> FinetuneConfig:
    """The recipe as a FinetuneConfig: epochs * (num_train // batch) steps, or `max_steps` if fewer."""
    total = recipe.epochs * (num_train // recipe.batch_size)
    if max_steps is not None:
        total = min(total, max_steps)
    return FinetuneConfig(optimizer="adamw", learning_rate=recipe.learning_rate, b1=0.9, b2=0.999,
                          weight_decay=recipe.weight_decay, schedule="warmup_cosine",
                          warmup_steps=recipe.warmup_steps, end_learning_rate=recipe.end_learning_rate,
                          clip_norm=1.0, batch_size=recipe.batch_size, max_steps=max(total, 1), sampling="epochs",
                          seed=recipe.seed, rng_seed=recipe.seed + 1)


def train_params(recipe: ZooRecipe, images: np.ndarray, labels: np.ndarray, *, max_steps: int | None = None,
                 checkpoint: str | Path | None = None, callback=None) -> FinetuneResult:
    """Train from the recipe's seed (module docstring); returns the FinetuneResult."""
    from plexbench.data.preprocess import parse
    from plexbench.models.checkpoint import init_params
    from plexbench.training.model import TrainableModel

    config = finetune_config(recipe, len(labels), max_steps)
    model = TrainableModel(recipe.name, recipe.config, preprocess=PREPROCESS, identity={"zoo": recipe.name},
                           load_params=lambda: init_params(recipe.config, recipe.seed))
    return finetune(model.apply_fn(num_mc_samples=recipe.train_mc_samples), model.pretrained,
                    TrainData(images, labels, parse(PREPROCESS)), config, checkpoint=checkpoint,
                    checkpoint_every=CHECKPOINT_EVERY, callback=callback, identity={"zoo": recipe.to_dict()},
                    desc=f"train {recipe.name}")


def evaluate_card(recipe: ZooRecipe, params, data_dir) -> tuple[dict[str, float], int]:
    """Test metrics of the model card through plexbench.inference.predict (module docstring);
    returns (metrics, number of test examples of the model's classes)."""
    from plexbench.inference import predict
    from plexbench.inference.handle import handle_from_config
    from plexbench.metrics import ensemble_log_probs

    handle = handle_from_config(recipe.config, params, name=recipe.name, preprocess=PREPROCESS)
    with tempfile.TemporaryDirectory(prefix="plexbench-zoo-") as store:
        entry = predict(handle, recipe.dataset, "test", data_dir=data_dir, store_dir=store, batch_size=1000,
                        seed=EVAL_SEED, with_pre_logits=False, verbose=False)
        logits, labels = np.array(entry.logits), np.array(entry.labels).astype(np.int64)
    if recipe.classes is not None:
        keep = np.isin(labels, recipe.classes)
        logits, labels = logits[:, keep], np.searchsorted(np.asarray(recipe.classes), labels[keep])
    return card_metrics(labels, ensemble_log_probs(logits)), int(labels.shape[0])


def card_metrics(labels: np.ndarray, log_probs: np.ndarray) -> dict[str, float]:
    """accuracy, NLL and ECE (15 bins) of ensemble log-probabilities (N, K)."""
    from plexbench import metrics

    probs = np.exp(log_probs.astype(np.float64))
    probs /= probs.sum(axis=1, keepdims=True)
    return {"accuracy": metrics.accuracy(labels, probs), "nll": metrics.nll(labels, log_probs),
            "ece": metrics.ece(labels, probs, num_bins=15)}


def train_zoo_model(name: str, data_dir=None, out_dir=None, *, max_steps: int | None = None,
                    callback=None) -> dict:
    """Train zoo model `name`, write `{out_dir}/{name}.npz` (official layout) and `{name}.json`
    (model card); return the card. max_steps shortens training (smoke runs; recorded in the card).
    `callback(step, loss)` runs after each step (an exception there interrupts the run, which a
    later call resumes)."""
    from plexbench import paths
    from plexbench.models.checkpoint import save_params
    from plexbench.models.flops import flops_per_example
    from plexbench.provenance import provenance

    recipe = get_recipe(name)
    out_dir = Path(out_dir) if out_dir else paths.cache_root() / "zoo_weights"
    data_dir = paths.data_dir(data_dir)
    images, labels, _ = load_split(recipe, "train", data_dir)
    state = out_dir / f".{name}.train_state.npz"
    start = time.perf_counter()
    result = train_params(recipe, images, labels, max_steps=max_steps, checkpoint=state, callback=callback)
    wall = time.perf_counter() - start
    test, num_test = evaluate_card(recipe, result.params, data_dir)
    ckpt = out_dir / f"{name}.npz"
    save_params(ckpt, result.params)
    card = {
        "name": name,
        "description": recipe.description,
        "family": recipe.family,
        "config": recipe.config.to_dict(),
        "preprocess": PREPROCESS,
        "param_count": param_count(recipe.config),
        "flops_per_example": flops_per_example(recipe.config)["total"],
        "data": {"dataset": recipe.dataset, "train_role": "train", "num_train": int(len(labels)),
                 "test_role": "test", "num_test": num_test,
                 "classes": list(recipe.classes) if recipe.classes else list(range(recipe.config.num_classes))},
        "training": {**recipe.to_dict(), "steps": result.steps, "max_steps": max_steps, "wall_time_s": round(wall, 1),
                     "resumed_from_step": result.resumed_from or None},
        "test": {**test, "eval_seed": EVAL_SEED,
                 "mc_samples": recipe.config.num_mc_samples if recipe.config.head == "heteroscedastic" else None},
        "checkpoint": {"file": ckpt.name, "sha256": fileio.sha256_file(ckpt), "bytes": ckpt.stat().st_size},
        "provenance": provenance(),
    }
    del card["training"]["config"]  # already at the top level
    fileio.write_json(out_dir / f"{name}.json", card)
    state.unlink(missing_ok=True)
    return card
