"""The model registry: the released Plex ViT configs, their deterministic counterparts, S/32 and B/32
sizes, and the embedded zoo (small models trained on Fashion-MNIST, weights shipped in the package).

Names:
- `plex-vit-{s,b,l}32-i21k`: upstream Plex (ImageNet-21K pretraining): 224 px, K = 21843,
  BatchEnsemble E = 3 on the last three blocks, BatchEnsemble representation layer of width D
  (1024 for L/32) and BatchEnsemble head. `plex-vit-l32-i21k` is the released
  `plex_vit_large_imagenet21k.npz` exactly.
- `plex-vit-{s,b,l}32-imagenet`: fine-tuned Plex (ImageNet-1k): 384 px, K = 1000, same ensemble,
  no representation layer, heteroscedastic head R = 15, T = 1.25, 1000 MC samples.
  `plex-vit-l32-imagenet` is the released `plex_vit_large_imagenet21k_to_imagenet.npz` exactly.
- `det-vit-{s,b,l}32-{i21k,imagenet}`: the deterministic ViTs of the same sizes and resolutions
  (E = 1, plain representation layer for i21k, plain dense head).
- zoo: `plex-mini`, `det-mini` (10 Fashion-MNIST classes), `plex-mini-fmnist6`,
  `det-mini-fmnist6` (classes 0-5 only; 6-9 held out for open-set recognition). See zoo.py.
- T5-Plex (spec §9): `plex-t5-{small,large}-{mnli,nalue,toxicity}`, the six released T5X
  checkpoints' configurations: T5.1.1 small (d 512, 6 heads of 64, MLP 1024, 8 + 8 layers) or
  large (d 1024, 16 heads, MLP 2816, 24 + 24 layers), vocabulary 32128, BatchEnsemble E = 5 on
  the last decoder layer's MLP, SNGP head over the vocabulary (1024 random features,
  mean-field factor 1e-4), input length 512. MNLI and toxicity read target length 1 at
  `<extra_id_0>` (32099, class 0) and `<extra_id_1>` (32098, class 1); NaLUE reads 3 positions
  and its label tokens are not known to plexbench (empty: the layout is checked, it cannot run).
  Pass the T5X directory as --checkpoint and the T5 vocabulary with --vocab.
- language zoo: `t5-plex-mini`, `t5-det-mini`, tiny T5s trained on the embedded fortunes
  (zoo_t5.py), shipped as T5X directories.
Sizes (D, M, H, L): S/32 (384, 1536, 6, 12), B/32 (768, 3072, 12, 12), L/32 (1024, 4096, 16, 24).
The large released checkpoints are not shipped: pass `--checkpoint PATH` to use one.

Importing this module does not import JAX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from plexbench.models.config import ModelConfig, param_count
from plexbench.models.t5_config import T5Config
from plexbench.registry import Registry

ZOO_DIR = Path(__file__).resolve().parent / "zoo_weights"

# Spec §4. grey_to_rgb leaves 3-channel images unchanged, so it is safe on every dataset.
UPSTREAM_PREPROCESS = "resize_small(256)|central_crop(224)|grey_to_rgb|value_range(-1,1)"
FINETUNED_PREPROCESS = "resize(384)|grey_to_rgb|value_range(-1,1)"
ZOO_PREPROCESS = "grey_to_rgb|value_range(-1,1)"

SIZES = {  # D, M, H, L
    "s32": (384, 1536, 6, 12),
    "b32": (768, 3072, 12, 12),
    "l32": (1024, 4096, 16, 24),
}
PLEX_ENSEMBLE_SIZE = 3
PLEX_HET = dict(num_factors=15, temperature=1.25, num_mc_samples=1000)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    name; config (architecture: a ModelConfig, or a T5Config for T5 models); preprocess (spec
    string for plexbench.data.preprocess.parse, or for T5 models a text spec for
    plexbench.data.text.parse_text); checkpoint: shipped weights (zoo; a T5X directory for T5
    models) or None (released checkpoints: pass a path);
    description; family ("plex" or "deterministic"); trained_on: dataset the weights were
    trained on, if known; classes: the dataset labels the model predicts, in logit order
    (None = all of the dataset's classes; otherwise logit j is dataset label classes[j]).
    """

    name: str
    config: ModelConfig | T5Config
    preprocess: str
    checkpoint: Path | None
    description: str
    family: str = "plex"
    trained_on: str | None = None
    classes: tuple[int, ...] | None = field(default=None)

    @property
    def is_zoo(self) -> bool:
        return self.checkpoint is not None


MODELS: Registry[ModelEntry] = Registry("model")


def _add(entry: ModelEntry) -> None:
    MODELS.add(entry.name, entry)


def vit_config(size: str, *, image_size: int, num_classes: int, **extra) -> ModelConfig:
    """A /32 ViT config of `size` ('s32', 'b32', 'l32') with optional extensions."""
    d, m, h, layers = SIZES[size]
    return ModelConfig(image_size=image_size, patch_size=32, hidden_size=d, mlp_dim=m, num_heads=h,
                       num_layers=layers, num_classes=num_classes, **extra)


def _last_blocks(size: str, n: int = 3) -> tuple[int, ...]:
    layers = SIZES[size][3]
    return tuple(range(layers - n, layers))


def _register_released_family() -> None:
    for size in SIZES:
        d = SIZES[size][0]
        be = dict(ensemble_size=PLEX_ENSEMBLE_SIZE, be_layers=_last_blocks(size))
        tag = size.upper().replace("32", "/32")
        released = " (the released checkpoint's layout)" if size == "l32" else ""
        _add(ModelEntry(
            f"plex-vit-{size}-i21k",
            vit_config(size, image_size=224, num_classes=21843, representation_size=d, head="batchensemble", **be),
            UPSTREAM_PREPROCESS, None,
            f"Plex ViT-{tag} upstream, ImageNet-21K, BatchEnsemble E=3{released}", "plex", "imagenet21k"))
        _add(ModelEntry(
            f"plex-vit-{size}-imagenet",
            vit_config(size, image_size=384, num_classes=1000, head="heteroscedastic", **be, **PLEX_HET),
            FINETUNED_PREPROCESS, None,
            f"Plex ViT-{tag} fine-tuned on ImageNet-1k, BE E=3 + heteroscedastic head{released}",
            "plex", "imagenet2012"))
        _add(ModelEntry(
            f"det-vit-{size}-i21k",
            vit_config(size, image_size=224, num_classes=21843, representation_size=d),
            UPSTREAM_PREPROCESS, None, f"deterministic ViT-{tag}, ImageNet-21K", "deterministic", "imagenet21k"))
        _add(ModelEntry(
            f"det-vit-{size}-imagenet",
            vit_config(size, image_size=384, num_classes=1000),
            FINETUNED_PREPROCESS, None, f"deterministic ViT-{tag} fine-tuned on ImageNet-1k", "deterministic",
            "imagenet2012"))


def _register_zoo() -> None:
    from plexbench.models.zoo import RECIPES

    for name, recipe in RECIPES.items():
        _add(ModelEntry(name, recipe.config, ZOO_PREPROCESS, ZOO_DIR / f"{name}.npz", recipe.description,
                        recipe.family, recipe.dataset, recipe.classes))


T5_SIZES = {  # d_model, heads, mlp_dim, layers (encoder = decoder); head_dim 64 (spec §9)
    "small": (512, 6, 1024, 8),
    "large": (1024, 16, 2816, 24),
}
T5_VOCAB_ROWS = 32128
T5_EXTRA_ID_0, T5_EXTRA_ID_1 = 32099, 32098  # 32000 pieces + 100 sentinels counted down
T5_TASKS = {  # task: (label tokens, target length, preprocessing, trained on, what)
    "mnli": ((T5_EXTRA_ID_0, T5_EXTRA_ID_1), 1, "mnli_input|tokenize(t5,512)", "glue/mnli",
             "MNLI (binary: <extra_id_1> entailment, <extra_id_0> not)"),
    "toxicity": ((T5_EXTRA_ID_0, T5_EXTRA_ID_1), 1, "text_input|tokenize(t5,512)", "wikipedia_toxicity_subtypes",
                 "Wikipedia toxicity (<extra_id_1> toxic iff toxicity >= 0.5)"),
    "nalue": ((), 3, "text_input|tokenize(t5,512)", "nalue", "NaLUE (vertical, domain, intent; label tokens unknown)"),
}
T5_PLEX = dict(ensemble_size=5, head="sngp", gp_hidden_features=1024, gp_mean_field_factor=1e-4)


def t5_config(size: str, task: str, **extra) -> T5Config:
    """The T5-Plex config of a released checkpoint: `size` small/large, `task` mnli/toxicity/nalue."""
    d, heads, mlp, layers = T5_SIZES[size]
    tokens, target_length = T5_TASKS[task][:2]
    return T5Config(vocab_size=T5_VOCAB_ROWS, d_model=d, num_heads=heads, head_dim=64, mlp_dim=mlp,
                    num_encoder_layers=layers, num_decoder_layers=layers, label_tokens=tokens,
                    target_length=target_length, input_length=512, **{**T5_PLEX, **extra})


def _register_t5_family() -> None:
    for size in T5_SIZES:
        for task, (_, _, prep, trained_on, what) in T5_TASKS.items():
            _add(ModelEntry(
                f"plex-t5-{size}-{task}", t5_config(size, task), prep, None,
                f"Plex T5.1.1-{size} fine-tuned on {what}, BE E=5 last decoder MLP + SNGP head "
                f"(the released plex_t5_{size}_c4_to_* layout)", "plex", trained_on))


def _register_t5_zoo() -> None:
    from plexbench.models.zoo_t5 import PREPROCESS, T5_RECIPES

    for name, recipe in T5_RECIPES.items():
        _add(ModelEntry(name, recipe.config, PREPROCESS, ZOO_DIR / name, recipe.description, recipe.family,
                        recipe.dataset))


def get_model(name: str) -> ModelEntry:
    """The entry called `name`; PlexbenchError with close matches if unknown."""
    return MODELS.get(name)


def list_rows(args=None) -> list[dict]:
    """Rows for `plexbench list models` (no JAX: sizes come from the analytic layout)."""
    rows = []
    for name, e in MODELS.items():
        c = e.config
        rows.append({
            "name": name,
            "family": e.family,
            "image": getattr(c, "image_size", "text"),
            "classes": c.num_classes,
            "members": c.ensemble_size,
            "head": c.head,
            "params": _millions(param_count(c)),
            "weights": ("shipped" if e.checkpoint.exists() else "missing") if e.checkpoint else "--checkpoint",
            "description": e.description,
        })
    return rows


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


_register_released_family()
_register_zoo()
_register_t5_family()
_register_t5_zoo()
