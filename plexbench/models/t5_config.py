"""T5-Plex configuration and its T5X parameter layout, computed without JAX (spec §9).

`T5Config` holds the architecture of a T5.1.1 encoder-decoder classifier with the Plex
extensions (BatchEnsemble on the last decoder layer's MLP, SNGP head) plus its label-token
readout. `t5_param_shapes(config)` is the flat layout of the parameter tree under `target/` of
a T5X checkpoint ('/'-joined keys -> shapes, sorted); the Flax model in `plexbench.models.t5`
creates the same tree (merged with its `gp_state` collection, see plexbench.models.sngp; a test
checks this with `jax.eval_shape`), and the T5X reader validates directories against it.

Layout (d = d_model, H heads of Dh, M = mlp_dim, V = vocab_size, R = gp_hidden_features, E):
    token_embedder/embedding (V, d)                       shared by encoder and decoder inputs
    encoder/relpos_bias/rel_embedding (H, buckets)        and decoder/relpos_bias/rel_embedding
    encoder/layers_{i}/pre_attention_layer_norm/scale (d)
    encoder/layers_{i}/attention/{query,key,value}/kernel (d, H*Dh), .../out/kernel (H*Dh, d)
    encoder/layers_{i}/pre_mlp_layer_norm/scale (d)
    encoder/layers_{i}/mlp/{wi_0,wi_1}/kernel (d, M), .../mlp/wo/kernel (M, d)
    encoder/encoder_norm/scale (d)
    decoder/layers_{i}/{pre_self_attention_layer_norm, pre_cross_attention_layer_norm,
        pre_mlp_layer_norm}/scale, self_attention/*, encoder_decoder_attention/*, mlp/*
    the last decoder layer with E > 1: mlp/{wi_0,wi_1}/fast_weight_alpha (E, d),
        fast_weight_gamma (E, M); mlp/wo/fast_weight_alpha (E, M), fast_weight_gamma (E, d)
    decoder/decoder_norm/scale (d)
    head "sngp":  decoder/gp_head/output_layer/{kernel (R, V), bias (V)},
                  decoder/gp_head_state/random_features/hidden_layer/{kernel (d, R), bias (R)},
                  decoder/gp_head_state/laplace_covariance/covmat_layer/precision_matrix (R, R),
                  decoder/gp_head_state/step ()
    head "dense": decoder/logits_dense/kernel (d, V) (+ fast_weight_alpha (E, d),
                  fast_weight_gamma (E, V) when E > 1: a BatchEnsemble layer without bias)

Readout (spec §9): `label_tokens` are the vocabulary ids of the C classes, class k first; the
classifier reads the teacher-forced decoder logits at these ids, (B, target_length, C).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from plexbench.models.config import gp_shapes

T5_HEADS = ("sngp", "dense")
PAD_ID = 0  # also the decoder's start token (T5 shifts targets right with 0)
EOS_ID = 1


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Architecture and readout of a T5.1.1 (-Plex) classifier; see the module docstring.

    vocab_size V: embedding rows (32128 for the T5 vocabulary: 32000 pieces + 100 sentinels,
    padded to a multiple of 128). d_model, num_heads H, head_dim Dh (64 in every T5.1.1 size),
    mlp_dim M, num_encoder_layers, num_decoder_layers. Relative position buckets and max
    distance (32, 128). ensemble_size E: BatchEnsemble members of the last decoder layer's MLP
    (1 = deterministic). head: "sngp" (GP layer over the vocabulary, spec §12) or "dense"
    (`logits_dense`). gp_*: random features R, input normalisation, mean-field factor lambda
    (applied at inference; < 0 = raw logits). label_tokens: vocabulary ids of the C classes
    (empty when unknown, e.g. NaLUE: the layout is defined, the readout refuses to run).
    target_length T: decoder positions read (1 for MNLI / toxicity, 3 for NaLUE).
    input_length: encoder tokens (inputs are truncated / padded to it).
    """

    architecture: ClassVar[str] = "t5"

    vocab_size: int
    d_model: int
    num_heads: int
    mlp_dim: int
    num_encoder_layers: int
    num_decoder_layers: int
    label_tokens: tuple[int, ...]
    head_dim: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    ensemble_size: int = 1
    head: str = "sngp"
    gp_hidden_features: int = 1024
    gp_normalize_input: bool = True
    gp_mean_field_factor: float = 1e-4
    target_length: int = 1
    input_length: int = 512

    def __post_init__(self):
        object.__setattr__(self, "label_tokens", tuple(int(t) for t in self.label_tokens))
        problems = _problems(self)
        if problems:
            raise ValueError("invalid T5Config: " + "; ".join(problems))

    @property
    def num_classes(self) -> int:
        """C: the number of label tokens."""
        return len(self.label_tokens)

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def pre_logits_size(self) -> int:
        """Width of the decoder hidden state returned as pre-logits (d_model)."""
        return self.d_model

    def to_dict(self) -> dict[str, Any]:
        d = {"architecture": "t5.1.1", **dataclasses.asdict(self)}
        d["label_tokens"] = list(self.label_tokens)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "T5Config":
        d = dict(d)
        d.pop("architecture", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown T5Config fields: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "T5Config":
        return dataclasses.replace(self, **changes)


def _problems(c: T5Config) -> list[str]:
    p = []
    for name in ("vocab_size", "d_model", "num_heads", "mlp_dim", "num_encoder_layers", "num_decoder_layers",
                 "head_dim", "relative_attention_num_buckets", "relative_attention_max_distance",
                 "ensemble_size", "gp_hidden_features", "target_length", "input_length"):
        if int(getattr(c, name)) < 1:
            p.append(f"{name} must be >= 1 (got {getattr(c, name)})")
    if c.head not in T5_HEADS:
        p.append(f"head must be one of {', '.join(T5_HEADS)} (got {c.head!r})")
    bad = [t for t in c.label_tokens if not 0 <= t < c.vocab_size]
    if bad:
        p.append(f"label_tokens {bad} outside the vocabulary [0, {c.vocab_size})")
    if len(set(c.label_tokens)) != len(c.label_tokens):
        p.append("label_tokens must be distinct")
    if c.relative_attention_num_buckets % 2:
        p.append("relative_attention_num_buckets must be even (the encoder halves it per direction)")
    if not math.isfinite(c.gp_mean_field_factor):
        p.append("gp_mean_field_factor must be finite")
    return p


# ---------------------------------------------------------------------------- layout


def _kernel(prefix: str, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}/kernel": (n_in, n_out)}


def _attention(prefix: str, c: T5Config) -> dict[str, tuple[int, ...]]:
    inner = c.num_heads * c.head_dim
    out = {}
    for name in ("query", "key", "value"):
        out.update(_kernel(f"{prefix}/{name}", c.d_model, inner))
    out.update(_kernel(f"{prefix}/out", inner, c.d_model))
    return out


def _mlp(prefix: str, c: T5Config, ensemble: bool) -> dict[str, tuple[int, ...]]:
    d, m, e = c.d_model, c.mlp_dim, c.ensemble_size
    out = {}
    for name, n_in, n_out in (("wi_0", d, m), ("wi_1", d, m), ("wo", m, d)):
        out.update(_kernel(f"{prefix}/{name}", n_in, n_out))
        if ensemble:
            out[f"{prefix}/{name}/fast_weight_alpha"] = (e, n_in)
            out[f"{prefix}/{name}/fast_weight_gamma"] = (e, n_out)
    return out


def _norm(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}/scale": (d,)}


def t5_param_shapes(c: T5Config) -> dict[str, tuple[int, ...]]:
    """Flat T5X layout of `target/` ('/'-joined key -> shape, keys sorted); module docstring."""
    d, h, buckets = c.d_model, c.num_heads, c.relative_attention_num_buckets
    out: dict[str, tuple[int, ...]] = {
        "token_embedder/embedding": (c.vocab_size, d),
        "encoder/relpos_bias/rel_embedding": (h, buckets),
        "decoder/relpos_bias/rel_embedding": (h, buckets),
        **_norm("encoder/encoder_norm", d),
        **_norm("decoder/decoder_norm", d),
    }
    for i in range(c.num_encoder_layers):
        pre = f"encoder/layers_{i}"
        out.update(_norm(f"{pre}/pre_attention_layer_norm", d))
        out.update(_attention(f"{pre}/attention", c))
        out.update(_norm(f"{pre}/pre_mlp_layer_norm", d))
        out.update(_mlp(f"{pre}/mlp", c, False))
    last = c.num_decoder_layers - 1
    for i in range(c.num_decoder_layers):
        pre = f"decoder/layers_{i}"
        for norm in ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm", "pre_mlp_layer_norm"):
            out.update(_norm(f"{pre}/{norm}", d))
        out.update(_attention(f"{pre}/self_attention", c))
        out.update(_attention(f"{pre}/encoder_decoder_attention", c))
        out.update(_mlp(f"{pre}/mlp", c, i == last and c.ensemble_size > 1))
    if c.head == "sngp":
        out.update(gp_shapes("decoder/gp_head", d, c.vocab_size, c.gp_hidden_features))
    else:
        out.update(_kernel("decoder/logits_dense", d, c.vocab_size))
        if c.ensemble_size > 1:
            out["decoder/logits_dense/fast_weight_alpha"] = (c.ensemble_size, d)
            out["decoder/logits_dense/fast_weight_gamma"] = (c.ensemble_size, c.vocab_size)
    return dict(sorted(out.items()))


def t5_param_count(c: T5Config) -> int:
    return sum(math.prod(s) for s in t5_param_shapes(c).values())
