"""Matmul FLOPs per example, counted analytically (FLOPs = 2 x multiply-accumulates).

Only matrix products are counted (patch projection, attention projections, q.k scores,
attention-weighted values, MLPs, representation layer, head, and the heteroscedastic head's
factor-noise products V @ eps_R over the S MC samples, the SNGP head's random features, output
layer and the two triangular solves of its variance, 2 R^2 multiply-adds per row; the Cholesky
factorisation is once per batch, not per example, and not counted); elementwise work (LayerNorm, GELU,
softmax, BatchEnsemble fast-weight scalings, noise generation) is not. Costs are per input
example and include every ensemble member: the blocks from the first BatchEnsemble block on,
and everything after the encoder, run on E rows per example.

Notation as in the spec: N = 1 + g^2 tokens, D, M, H, Dh = D/H, L, E, F (head input width),
K, R, S. Per block and row: q/k/v/out projections 4 * 2*N*D*D; scores and weighted values
2 * 2*N*N*D; MLP 2 * 2*N*D*M.
"""

from __future__ import annotations

from plexbench.models.config import ModelConfig


def flops_per_example(c: ModelConfig) -> dict[str, int]:
    """Breakdown of matmul FLOPs for one example: {component: flops, ..., 'total': sum}.

    A T5 config (plexbench.models.t5_config.T5Config) is counted by `t5_flops_per_example`.
    """
    if c.architecture == "t5":
        return t5_flops_per_example(c)
    n, d, m, e = c.num_tokens, c.hidden_size, c.mlp_dim, c.ensemble_size
    rows = [e if (c.first_be_layer is not None and layer >= c.first_be_layer) else 1
            for layer in range(c.num_layers)]
    out = {
        "embedding": 2 * (c.grid_size**2) * (c.patch_size**2 * 3) * d,
        "attention_projections": sum(r * 4 * 2 * n * d * d for r in rows),
        "attention_scores_values": sum(r * 2 * 2 * n * n * d for r in rows),
        "mlp": sum(r * 2 * 2 * n * d * m for r in rows),
        "representation": 2 * e * d * c.representation_size if c.representation_size else 0,
    }
    out.update(_head_flops(c))
    out["total"] = sum(out.values())
    return out


def _head_flops(c: ModelConfig) -> dict[str, int]:
    e, f, k, r = c.ensemble_size, c.feature_size, c.num_classes, c.num_factors
    if c.head in ("dense", "batchensemble"):
        return {"head": 2 * e * f * k, "mc_sampling": 0}
    if c.head == "sngp":
        r = c.gp_hidden_features
        return {"head": 2 * e * f * r + 2 * e * r * k, "gp_variance": 2 * 2 * e * r * r}
    layers = 2  # loc and diag
    if c.parameter_efficient:
        layers += 1  # scale_layer_heteroscedastic (F -> K)
        head = layers * 2 * e * f * k
        mc = 2 * e * c.num_mc_samples * r * k  # eps_R @ W_hom per sample
    else:
        head = layers * 2 * e * f * k + 2 * e * f * k * r  # + scale_layer (F -> K*R)
        mc = 2 * e * c.num_mc_samples * k * r  # V @ eps_R per sample
    return {"head": head, "mc_sampling": mc}


def t5_flops_per_example(c, input_length: int | None = None) -> dict[str, int]:
    """Matmul FLOPs of one T5 (-Plex) example with L = input_length (default c.input_length)
    encoder tokens and T = c.target_length decoder positions, as plexbench computes it.

    With d, I = H * Dh, M, layers Le / Ld, E members, C label tokens, R random features:
    encoder per layer: projections 8 L d I, scores and values 4 L^2 I, gated MLP 6 L d M;
    decoder per layer: self-attention 8 T d I + 4 T^2 I, cross-attention 4 T d I (q, out) +
    4 L d I (k, v on the encoder output) + 4 T L I, MLP 6 T d M (x E in the last layer);
    head on E rows: SNGP random features 2 T d R, output 2 T R C (only the label-token columns
    are computed), variance 4 T R^2; dense 2 T d C. The embedding lookup is a gather (0).
    """
    L = c.input_length if input_length is None else int(input_length)
    t, d, m, e = c.target_length, c.d_model, c.mlp_dim, c.ensemble_size
    inner = c.num_heads * c.head_dim
    k = max(1, c.num_classes)
    out = {
        "encoder_attention": c.num_encoder_layers * (8 * L * d * inner + 4 * L * L * inner),
        "encoder_mlp": c.num_encoder_layers * 6 * L * d * m,
        "decoder_attention": c.num_decoder_layers * (8 * t * d * inner + 4 * t * t * inner + 4 * t * d * inner
                                                     + 4 * L * d * inner + 4 * t * L * inner),
        "decoder_mlp": (c.num_decoder_layers - 1 + e) * 6 * t * d * m,
    }
    if c.head == "sngp":
        r = c.gp_hidden_features
        out["head"] = e * (2 * t * d * r + 2 * t * r * k)
        out["gp_variance"] = e * 4 * t * r * r
    else:
        out["head"] = e * 2 * t * d * k
    out["total"] = sum(out.values())
    return out
