"""The embedded zoo: small ViT / ViT-Plex models trained on Fashion-MNIST, shipped with plexbench.

Models (all share one trunk: 28x28 input after grey_to_rgb, 7x7 patches -> 4x4 grid, N = 17
tokens, D = 64, M = 128, H = 4, L = 4):
- `det-mini`: deterministic ViT, dense head, 10 classes.
- `plex-mini`: BatchEnsemble E = 3 on blocks 2 and 3 (the last two) + heteroscedastic head
  (R = 3 factors, T = 1, 16 MC samples while training, 100 at evaluation), 10 classes.
- `det-mini-fmnist6`, `plex-mini-fmnist6`: the same, trained on classes 0-5 only
  (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal); classes 6-9 (Shirt, Sneaker, Bag,
  Ankle boot) are held out as open-set / OOD data. Logit j is dataset label j.

Training (`train_zoo_model`, CLI `plexbench zoo train NAME`): the `train` role of fashion_mnist
(train[:98%]) filtered to the model's classes, preprocessed with `grey_to_rgb|value_range(-1,1)`;
AdamW (b1 0.9, b2 0.999, weight decay 0.05 on kernels only), peak learning rate 3e-3 after 300
linear warmup steps, cosine decay to 1e-5, global-norm clipping at 1, batch 256, 12 epochs (det)
or 10 epochs (plex), no augmentation. Initial weights: flax init under jit with PRNGKey(seed);
each epoch is a fresh permutation from numpy's default_rng(seed), the last partial batch
dropped; the heteroscedastic noise key of step t is fold_in(PRNGKey(seed + 1), t).
BatchEnsemble members see the same batch; the loss is the mean over members of each member's
cross-entropy (for the heteroscedastic head: -log of its MC-averaged probability). Everything
is seeded, so a run on CPU reproduces the shipped weights bit for bit on the same machine type
and library versions (XLA's CPU kernels are deterministic; another CPU type or library version
may round differently, and training then drifts to nearby but not identical weights).

Evaluation for the model card: the `test` role filtered to the model's classes; the
heteroscedastic head's key for example i is fold_in(PRNGKey(EVAL_SEED), i); accuracy, NLL and
ECE (15 bins) of the ensemble probabilities via plexbench.metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import numpy as np

from plexbench import fileio, progress
from plexbench.errors import PlexbenchError
from plexbench.models.config import ModelConfig, param_count
from plexbench.registry import unknown_name_message

EVAL_SEED = 0
PREPROCESS = "grey_to_rgb|value_range(-1,1)"
TRUNK = dict(image_size=28, patch_size=7, hidden_size=64, mlp_dim=128, num_heads=4, num_layers=4)
PLEX_EXTENSIONS = dict(ensemble_size=3, be_layers=(2, 3), head="heteroscedastic", num_factors=3,
                       temperature=1.0, num_mc_samples=100)
FMNIST6 = (0, 1, 2, 3, 4, 5)


@dataclasses.dataclass(frozen=True)
class ZooRecipe:
    """How one zoo model is built and trained (see the module docstring)."""

    name: str
    config: ModelConfig
    family: str
    description: str
    dataset: str = "fashion_mnist"
    classes: tuple[int, ...] | None = None  # None: all classes
    seed: int = 0
    epochs: int = 12
    batch_size: int = 256
    learning_rate: float = 3e-3
    end_learning_rate: float = 1e-5
    warmup_steps: int = 300
    weight_decay: float = 0.05
    train_mc_samples: int = 16

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        d["classes"] = list(self.classes) if self.classes else None
        return d


def _recipe(name: str, plex: bool, classes: tuple[int, ...] | None) -> ZooRecipe:
    k = len(classes) if classes else 10
    config = ModelConfig(**TRUNK, num_classes=k, **(PLEX_EXTENSIONS if plex else {}))
    what = "BatchEnsemble E=3 + heteroscedastic head" if plex else "deterministic ViT"
    data = "Fashion-MNIST classes 0-5 (6-9 held out)" if classes else "Fashion-MNIST, 10 classes"
    return ZooRecipe(name, config, "plex" if plex else "deterministic", f"zoo: tiny {what}, {data}",
                     classes=classes, epochs=10 if plex else 12)


RECIPES: dict[str, ZooRecipe] = {
    "plex-mini": _recipe("plex-mini", True, None),
    "det-mini": _recipe("det-mini", False, None),
    "plex-mini-fmnist6": _recipe("plex-mini-fmnist6", True, FMNIST6),
    "det-mini-fmnist6": _recipe("det-mini-fmnist6", False, FMNIST6),
}


def get_recipe(name: str) -> ZooRecipe:
    if name not in RECIPES:
        raise PlexbenchError(unknown_name_message("zoo model", name, list(RECIPES)))
    return RECIPES[name]


# ---------------------------------------------------------------------------- data


def load_split(recipe: ZooRecipe, role: str, data_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28, 1), labels int64 (N,), ids int64 (N,)) of a role, filtered to the
    recipe's classes (ids are the examples' indices in the unfiltered split)."""
    from plexbench.data.load import load_arrays

    arrays = load_arrays(recipe.dataset, role, data_dir)
    images, labels, ids = arrays["image"], arrays["label"], arrays["id"]
    if recipe.classes is not None:
        keep = np.isin(labels, recipe.classes)
        images, labels, ids = images[keep], labels[keep], ids[keep]
        # Logit j is dataset label classes[j] (identity for 0..5).
        labels = np.searchsorted(np.asarray(recipe.classes), labels)
    return images, labels.astype(np.int64), ids


# ---------------------------------------------------------------------------- training


def make_optimizer(recipe: ZooRecipe, total_steps: int):
    import jax
    import optax

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, recipe.learning_rate, min(recipe.warmup_steps, max(1, total_steps // 2)),
        max(total_steps, 2), recipe.end_learning_rate)
    kernels_only = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, weight_decay=recipe.weight_decay, mask=kernels_only))


def member_cross_entropy(logits, labels):
    """Mean over members and examples of -log_softmax(logits)[label]; logits (E, B, K), labels (B,)."""
    import jax
    import jax.numpy as jnp

    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[None, :, None], axis=-1))


def train_params(recipe: ZooRecipe, images: np.ndarray, labels: np.ndarray, *,
                 max_steps: int | None = None) -> tuple[dict, int]:
    """Train from the recipe's seed; returns (params as nested numpy dict, steps taken)."""
    import jax

    from plexbench.data.preprocess import parse
    from plexbench.models.checkpoint import flatten_params, unflatten_params

    prep = parse(PREPROCESS)
    bs = recipe.batch_size
    per_epoch = len(images) // bs
    if per_epoch == 0:
        raise PlexbenchError(f"zoo {recipe.name}: {len(images)} training examples, fewer than one batch of {bs}")
    total = recipe.epochs * per_epoch if max_steps is None else min(max_steps, recipe.epochs * per_epoch)
    params = _init(recipe.config, recipe.seed)
    opt, step = _compiled_step(recipe, total)
    state = opt.init(params)
    noise_key = jax.random.PRNGKey(recipe.seed + 1)
    order = np.random.default_rng(recipe.seed)
    done = 0
    with progress.bar(total, f"train {recipe.name}", unit="step") as bar:
        while done < total:
            perm = order.permutation(len(images))
            for b in range(per_epoch):
                if done == total:
                    break
                idx = perm[b * bs:(b + 1) * bs]
                params, state, _ = step(params, state, prep(images[idx]), labels[idx],
                                        jax.random.fold_in(noise_key, done))
                done += 1
                bar.update(1)
    return unflatten_params({k: np.asarray(v, np.float32) for k, v in flatten_params(params).items()}), done


def _init(config: ModelConfig, seed: int):
    """Initial parameters from PRNGKey(seed), computed under jit (the values differ in the last
    bits from op-by-op execution, so the compiled form is the one that reproduces the zoo)."""
    import jax

    return _compiled_init(config)(jax.random.PRNGKey(seed))


@functools.lru_cache(maxsize=8)
def _compiled_init(config: ModelConfig):
    import jax

    from plexbench.models.vit import build

    module = build(config, num_mc_samples=1)  # parameter values do not depend on S
    images = np.zeros((1, config.image_size, config.image_size, 3), np.float32)
    return jax.jit(lambda key: module.init(key, images, rng=jax.random.PRNGKey(0))["params"])


@functools.lru_cache(maxsize=8)
def _compiled_step(recipe: ZooRecipe, total_steps: int):
    """(optimizer, jitted train step) for a recipe; cached so a second run does not recompile."""
    import jax
    import optax

    from plexbench.models.vit import build

    model = build(recipe.config, num_mc_samples=recipe.train_mc_samples)
    opt = make_optimizer(recipe, total_steps)

    def loss_fn(params, x, y, key):
        return member_cross_entropy(model.apply({"params": params}, x, rng=key)["logits"], y)

    @jax.jit
    def step(params, state, x, y, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return opt, step


# ---------------------------------------------------------------------------- evaluation


def predict_log_probs(config: ModelConfig, params, images: np.ndarray, ids: np.ndarray, *,
                      batch_size: int = 1000, seed: int = EVAL_SEED) -> np.ndarray:
    """Ensemble log-probabilities (N, K) float32 of uint8 images (N, 28, 28, 1); the
    heteroscedastic key of example i is fold_in(PRNGKey(seed), ids[i])."""
    from plexbench.data.preprocess import parse

    run = _compiled_eval(config, seed)
    prep = parse(PREPROCESS)
    out = []
    for lo in range(0, len(images), batch_size):
        x, i = images[lo:lo + batch_size], ids[lo:lo + batch_size].astype(np.uint32)
        pad = batch_size - len(x)  # one compiled shape: pad the last batch, drop the padding after
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            i = np.concatenate([i, np.zeros(pad, np.uint32)])
        out.append(np.asarray(run(params, prep(x), i))[:batch_size - pad])
    return np.concatenate(out)


@functools.lru_cache(maxsize=8)
def _compiled_eval(config: ModelConfig, seed: int):
    import jax

    from plexbench.models.vit import build

    module = build(config)
    base = jax.random.PRNGKey(seed)

    @jax.jit
    def run(params, x, batch_ids):
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(batch_ids)
        return module.apply({"params": params}, x, rng=keys)["log_probs"]

    return run


def card_metrics(labels: np.ndarray, log_probs: np.ndarray) -> dict[str, float]:
    from plexbench import metrics

    probs = np.exp(log_probs.astype(np.float64))
    probs /= probs.sum(axis=1, keepdims=True)
    return {"accuracy": metrics.accuracy(labels, probs), "nll": metrics.nll(labels, log_probs),
            "ece": metrics.ece(labels, probs, num_bins=15)}


# ---------------------------------------------------------------------------- the whole job


def train_zoo_model(name: str, data_dir=None, out_dir=None, *, max_steps: int | None = None) -> dict:
    """Train zoo model `name`, write `{out_dir}/{name}.npz` (official layout) and `{name}.json`
    (model card); return the card. max_steps shortens training (smoke runs; recorded in the card)."""
    from plexbench import paths
    from plexbench.models.checkpoint import save_params
    from plexbench.models.flops import flops_per_example
    from plexbench.provenance import provenance

    recipe = get_recipe(name)
    out_dir = Path(out_dir) if out_dir else paths.cache_root() / "zoo_weights"
    data_dir = paths.data_dir(data_dir)
    images, labels, _ = load_split(recipe, "train", data_dir)
    start = time.perf_counter()
    params, steps = train_params(recipe, images, labels, max_steps=max_steps)
    wall = time.perf_counter() - start
    test_images, test_labels, test_ids = load_split(recipe, "test", data_dir)
    log_probs = predict_log_probs(recipe.config, params, test_images, test_ids)
    ckpt = out_dir / f"{name}.npz"
    save_params(ckpt, params)
    card = {
        "name": name,
        "description": recipe.description,
        "family": recipe.family,
        "config": recipe.config.to_dict(),
        "preprocess": PREPROCESS,
        "param_count": param_count(recipe.config),
        "flops_per_example": flops_per_example(recipe.config)["total"],
        "data": {"dataset": recipe.dataset, "train_role": "train", "num_train": int(len(labels)),
                 "test_role": "test", "num_test": int(len(test_labels)),
                 "classes": list(recipe.classes) if recipe.classes else list(range(recipe.config.num_classes))},
        "training": {**recipe.to_dict(), "steps": steps, "max_steps": max_steps, "wall_time_s": round(wall, 1)},
        "test": {**card_metrics(test_labels, log_probs), "eval_seed": EVAL_SEED,
                 "mc_samples": recipe.config.num_mc_samples if recipe.config.head == "heteroscedastic" else None},
        "checkpoint": {"file": ckpt.name, "sha256": fileio.sha256_file(ckpt), "bytes": ckpt.stat().st_size},
        "provenance": provenance(),
    }
    del card["training"]["config"]  # already at the top level
    fileio.write_json(out_dir / f"{name}.json", card)
    return card
