"""The embedded zoo: small ViT / ViT-Plex models trained on Fashion-MNIST, shipped with plexbench.

Models (all share one trunk: 28x28 input after grey_to_rgb, 7x7 patches -> 4x4 grid, N = 17
tokens, D = 64, M = 128, H = 4, L = 4):
- `det-mini`: deterministic ViT, dense head, 10 classes.
- `plex-mini`: BatchEnsemble E = 3 on blocks 2 and 3 (the last two) + heteroscedastic head
  (R = 3 factors, T = 1, 16 MC samples while training, 100 at evaluation), 10 classes.
- `det-mini-fmnist6`, `plex-mini-fmnist6`: the same, trained on classes 0-5 only
  (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal); classes 6-9 (Shirt, Sneaker, Bag,
  Ankle boot) are held out as open-set / OOD data. Logit j is dataset label j.

This module declares the models (`RECIPES`: config, classes, seed and training hyperparameters);
the models layer registers them from here without importing JAX. Training and the model-card
evaluation live in the training layer: `plexbench.training.zoo` (CLI `plexbench zoo train NAME`),
where the recipe is documented step by step.
"""

from __future__ import annotations

import dataclasses

from plexbench.errors import PlexbenchError
from plexbench.models.config import ModelConfig
from plexbench.registry import unknown_name_message

EVAL_SEED = 0
PREPROCESS = "grey_to_rgb|value_range(-1,1)"
TRUNK = dict(image_size=28, patch_size=7, hidden_size=64, mlp_dim=128, num_heads=4, num_layers=4)
PLEX_EXTENSIONS = dict(ensemble_size=3, be_layers=(2, 3), head="heteroscedastic", num_factors=3,
                       temperature=1.0, num_mc_samples=100)
FMNIST6 = (0, 1, 2, 3, 4, 5)


@dataclasses.dataclass(frozen=True)
class ZooRecipe:
    """How one zoo model is built and trained (plexbench.training.zoo documents the recipe)."""

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
