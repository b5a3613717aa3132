"""Model configuration and the official parameter layout, computed without JAX.

`ModelConfig` holds every architecture field of a ViT / ViT-Plex model. `param_shapes(config)`
gives the flat parameter layout ('/'-joined keys -> shapes) exactly as the released checkpoints
store it (spec §2); the Flax modules in `plexbench.models.vit` create the same tree (a test
checks this with `jax.eval_shape`), and checkpoint validation compares files against it.

Head kinds (field `head`):
- ``"dense"``: plain ``head/{kernel (F, K), bias (K)}`` (deterministic ViT), shared by all rows.
- ``"batchensemble"``: ``batchensemble_head`` BatchEnsemble dense with E members (upstream Plex).
- ``"heteroscedastic"``: MC-softmax heteroscedastic head ``head/...`` built with ensemble size 1
  and shared by all members (fine-tuned Plex).
- ``"sngp"``: the SNGP random-feature Gaussian-process layer of spec §12 (plexbench.models.sngp),
  shared by all members: ``head/output_layer/{kernel (R, K), bias (K)}`` and its state
  ``head_state/random_features/hidden_layer/{kernel (F, R), bias (R)}``,
  ``head_state/laplace_covariance/covmat_layer/precision_matrix (R, R)``, ``head_state/step ()``
  (R = gp_hidden_features). The logits are the mean-field logits with gp_mean_field_factor; the
  forward pass also returns the GP variance. The released Plex ViTs have no such head (the spec
  names none): the layout mirrors T5-Plex's ``gp_head`` / ``gp_head_state``.

F is ``representation_size`` when set (a ``pre_logits`` layer followed by tanh: a BatchEnsemble
dense when E > 1, a plain dense otherwise), else the hidden size D.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

HEADS = ("dense", "batchensemble", "heteroscedastic", "sngp")
# Fields that only a `head: sngp` config shows in to_dict (older configs keep their identities).
GP_FIELDS = ("gp_hidden_features", "gp_normalize_input", "gp_mean_field_factor")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """All architecture fields of a ViT(-Plex) classifier.

    image_size: square input side S in pixels; patch_size P must divide it (grid g = S / P).
    hidden_size D, mlp_dim M, num_heads H (D % H == 0, Dh = D / H), num_layers L.
    num_classes K. ensemble_size E (1 = deterministic). be_layers: encoder blocks (0-based) whose
    MLP is BatchEnsemble; the batch is tiled E times (member-major) right before the first one.
    ensemble_attention: also make the attention projections of those blocks BatchEnsemble.
    representation_size: optional pre_logits layer width. head: one of HEADS.
    Heteroscedastic head: num_factors R >= 0 (0 = diagonal only), temperature T > 0,
    num_mc_samples S >= 1, parameter_efficient (needs R >= 1).
    SNGP head: gp_hidden_features R (random features, 1024 as in T5-Plex), gp_normalize_input,
    gp_mean_field_factor lambda (1e-4 as in T5-Plex; < 0 = raw logits).
    """

    architecture: ClassVar[str] = "vit"

    image_size: int
    patch_size: int
    hidden_size: int
    mlp_dim: int
    num_heads: int
    num_layers: int
    num_classes: int
    ensemble_size: int = 1
    be_layers: tuple[int, ...] = ()
    ensemble_attention: bool = False
    representation_size: int | None = None
    head: str = "dense"
    num_factors: int = 0
    temperature: float = 1.0
    num_mc_samples: int = 1000
    parameter_efficient: bool = False
    gp_hidden_features: int = 1024
    gp_normalize_input: bool = True
    gp_mean_field_factor: float = 1e-4

    def __post_init__(self):
        object.__setattr__(self, "be_layers", tuple(int(i) for i in self.be_layers))
        problems = _config_problems(self)
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """N = 1 + g^2 (class token + patches)."""
        return 1 + self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def first_be_layer(self) -> int | None:
        return min(self.be_layers) if self.be_layers else None

    @property
    def feature_size(self) -> int:
        """Width F of the vector the head sees (representation_size or D)."""
        return self.representation_size or self.hidden_size

    @property
    def pre_logits_size(self) -> int:
        """Width of `pre_logits` returned by the forward pass (same as feature_size)."""
        return self.feature_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["be_layers"] = list(self.be_layers)
        if self.head != "sngp":
            for name in GP_FIELDS:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        return cls(**{k: (tuple(v) if k == "be_layers" else v) for k, v in d.items()})

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _config_problems(c: ModelConfig) -> list[str]:
    p = []
    for name in ("image_size", "patch_size", "hidden_size", "mlp_dim", "num_heads", "num_layers",
                 "num_classes", "ensemble_size", "num_mc_samples"):
        if int(getattr(c, name)) < 1:
            p.append(f"{name} must be >= 1 (got {getattr(c, name)})")
    if p:
        return p
    if c.image_size % c.patch_size:
        p.append(f"patch_size {c.patch_size} does not divide image_size {c.image_size}")
    if c.hidden_size % c.num_heads:
        p.append(f"num_heads {c.num_heads} does not divide hidden_size {c.hidden_size}")
    bad = [i for i in c.be_layers if not 0 <= i < c.num_layers]
    if bad or len(set(c.be_layers)) != len(c.be_layers):
        p.append(f"be_layers {list(c.be_layers)} must be distinct block indices in [0, {c.num_layers})")
    if c.ensemble_size > 1 and not c.be_layers:
        p.append("ensemble_size > 1 needs at least one BatchEnsemble layer (be_layers)")
    if c.ensemble_size == 1 and (c.be_layers or c.ensemble_attention):
        p.append("be_layers / ensemble_attention need ensemble_size > 1")
    if c.head not in HEADS:
        p.append(f"head must be one of {', '.join(HEADS)} (got {c.head!r})")
    if c.representation_size is not None and c.representation_size < 1:
        p.append("representation_size must be >= 1 or None")
    if c.num_factors < 0:
        p.append("num_factors must be >= 0")
    if not (c.temperature > 0 and math.isfinite(c.temperature)):
        p.append("temperature must be a positive number")
    if c.parameter_efficient and c.num_factors < 1:
        p.append("parameter_efficient needs num_factors >= 1")
    if c.gp_hidden_features < 1:
        p.append("gp_hidden_features must be >= 1")
    return p


# ---------------------------------------------------------------------------- layout


def _dense(prefix: str, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}/kernel": (n_in, n_out), f"{prefix}/bias": (n_out,)}


def _be_dense(prefix: str, n_in: int, n_out: int, ens: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}/kernel": (n_in, n_out),
        f"{prefix}/fast_weight_alpha": (ens, n_in),
        f"{prefix}/fast_weight_gamma": (ens, n_out),
        f"{prefix}/bias": (ens, n_out),
    }


def _layer_norm(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}/scale": (d,), f"{prefix}/bias": (d,)}


def _block_shapes(c: ModelConfig, layer: int) -> dict[str, tuple[int, ...]]:
    D, M, H, Dh, E = c.hidden_size, c.mlp_dim, c.num_heads, c.head_dim, c.ensemble_size
    pre = f"Transformer/encoderblock_{layer}"
    is_be = layer in c.be_layers
    out = {**_layer_norm(f"{pre}/LayerNorm_0", D), **_layer_norm(f"{pre}/LayerNorm_2", D)}
    att = f"{pre}/MultiHeadDotProductAttention_1"
    if is_be and c.ensemble_attention:
        for name in ("query", "key", "value"):
            out.update(_be_dense(f"{att}/{name}", D, H * Dh, E))
        out.update(_be_dense(f"{att}/out", H * Dh, D, E))
    else:
        for name in ("query", "key", "value"):
            out[f"{att}/{name}/kernel"] = (D, H, Dh)
            out[f"{att}/{name}/bias"] = (H, Dh)
        out[f"{att}/out/kernel"] = (H, Dh, D)
        out[f"{att}/out/bias"] = (D,)
    mlp = f"{pre}/MlpBlock_3"
    if is_be:
        out.update(_be_dense(f"{mlp}/Dense_0", D, M, E))
        out.update(_be_dense(f"{mlp}/Dense_1", M, D, E))
    else:
        out.update(_dense(f"{mlp}/Dense_0", D, M))
        out.update(_dense(f"{mlp}/Dense_1", M, D))
    return out


def _head_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    F, K, R, E = c.feature_size, c.num_classes, c.num_factors, c.ensemble_size
    if c.head == "dense":
        return _dense("head", F, K)
    if c.head == "batchensemble":
        return _be_dense("batchensemble_head", F, K, E)
    if c.head == "sngp":
        return gp_shapes("head", F, K, c.gp_hidden_features)
    out = {**_be_dense("head/loc_layer", F, K, 1), **_be_dense("head/diag_layer", F, K, 1)}
    if c.parameter_efficient:
        out.update(_be_dense("head/scale_layer_homoscedastic", R, K, 1))
        out.update(_be_dense("head/scale_layer_heteroscedastic", F, K, 1))
    elif R > 0:
        out.update(_be_dense("head/scale_layer", F, K * R, 1))
    return out


def gp_shapes(prefix: str, n_in: int, n_out: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """The SNGP layer at `prefix` with its state at `prefix`_state (spec §12; plexbench.models.sngp)."""
    state = f"{prefix}_state"
    return {
        f"{prefix}/output_layer/kernel": (hidden, n_out),
        f"{prefix}/output_layer/bias": (n_out,),
        f"{state}/random_features/hidden_layer/kernel": (n_in, hidden),
        f"{state}/random_features/hidden_layer/bias": (hidden,),
        f"{state}/laplace_covariance/covmat_layer/precision_matrix": (hidden, hidden),
        f"{state}/step": (),
    }


def param_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Flat official layout: '/'-joined parameter key -> shape, keys sorted (spec §2).

    A T5 config (plexbench.models.t5_config.T5Config) gives its T5X layout (spec §9).
    """
    if c.architecture == "t5":
        from plexbench.models.t5_config import t5_param_shapes

        return t5_param_shapes(c)
    D, P = c.hidden_size, c.patch_size
    out: dict[str, tuple[int, ...]] = {
        "embedding/kernel": (P, P, 3, D),
        "embedding/bias": (D,),
        "cls": (1, 1, D),
        "Transformer/posembed_input/pos_embedding": (1, c.num_tokens, D),
        **_layer_norm("Transformer/encoder_norm", D),
    }
    for layer in range(c.num_layers):
        out.update(_block_shapes(c, layer))
    if c.representation_size is not None:
        if c.ensemble_size > 1:
            out.update(_be_dense("pre_logits", D, c.representation_size, c.ensemble_size))
        else:
            out.update(_dense("pre_logits", D, c.representation_size))
    out.update(_head_shapes(c))
    return dict(sorted(out.items()))


def param_count(c: ModelConfig) -> int:
    """Total number of parameters (sum over param_shapes)."""
    return sum(math.prod(s) for s in param_shapes(c).values())
