"""The ViT / ViT-Plex classifier as one Flax (linen) module (spec §2, §3).

Forward pass for images (B, S, S, 3) float32:
    patches -> `embedding` (P x P stride-P patch projection, kernel (P, P, 3, D)) -> (B, g*g, D)
    prepend `cls` -> add `Transformer/posembed_input/pos_embedding` -> blocks 0..L-1
    (member-major tiling to (E*B, N, D) right before the first BatchEnsemble block)
    -> `Transformer/encoder_norm` -> class token (E*B, D)
    -> optional `pre_logits` representation layer (then tanh) -> head -> logits (E*B, K).
Returned dict (all float32):
    logits (E, B, K): per-member logits (for the heteroscedastic head, log of the MC-averaged
        probabilities clipped at 1e-7),
    pre_logits (E, B, F): the class-token output of encoder_norm, or, with a representation
        layer, that layer's output before the tanh (as the upstream BatchEnsemble code
        records it),
    log_probs (B, K): ensemble log-probabilities, logsumexp_m(log_softmax(logits_m)) - log E,
    gp_variance (E, B): only with `head: sngp`, the GP predictive variance of each row (spec §12);
        the logits are then the mean-field logits with config.gp_mean_field_factor.
Deterministic models have E = 1. With `head: sngp` apply the module to
`plexbench.models.sngp.split_state(tree)` (the parameters plus the `gp_state` collection).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from plexbench.errors import PlexbenchError
from plexbench.models.config import ModelConfig
from plexbench.models.heads import HeteroscedasticHead
from plexbench.models.layers import BatchEnsembleDense, Dense, Dtype, EncoderBlock, LayerNorm
from plexbench.models.sngp import RandomFeatureGaussianProcess, mean_field_logits


class PatchEmbedding(nn.Module):
    """Non-overlapping P x P patches projected to D: the stride-P 'VALID' convolution.

    images (B, S, S, C) -> (B, g*g, D), patches in row-major (i, j) order;
    out[b, i*g + j] = sum_{u, v, c} x[b, i*P + u, j*P + v, c] * kernel[u, v, c] + bias.
    """

    hidden_size: int
    patch_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        b, s, _, c = images.shape
        p, g = self.patch_size, images.shape[1] // self.patch_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
                            (p, p, c, self.hidden_size), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.hidden_size,), jnp.float32)
        patches = images.reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * c)
        w = kernel.reshape(p * p * c, self.hidden_size)
        return jnp.matmul(patches.astype(self.dtype), w.astype(self.dtype)) + bias.astype(self.dtype)


class AddPositionEmbedding(nn.Module):
    """x (R, N, D) + pos_embedding (1, N, D)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:], jnp.float32)
        return x + pe.astype(self.dtype)


class Encoder(nn.Module):
    """Position embedding, L blocks (BatchEnsemble MLPs in `be_layers`), final LayerNorm."""

    config: ModelConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        x = AddPositionEmbedding(self.dtype, name="posembed_input")(x)
        for layer in range(c.num_layers):
            if layer == c.first_be_layer:
                # Member-major: rows m*B..(m+1)*B-1 are member m's copy of the batch.
                x = jnp.tile(x, (c.ensemble_size, 1, 1))
            ens = c.ensemble_size if layer in c.be_layers else 0
            x = EncoderBlock(c.num_heads, c.mlp_dim, ens, c.ensemble_attention and ens > 0, self.dtype,
                             name=f"encoderblock_{layer}")(x)
        return LayerNorm(self.dtype, name="encoder_norm")(x)


class VisionTransformer(nn.Module):
    """ViT(-Plex) classifier; see the module docstring for the forward pass and outputs.

    Runtime options (not part of the architecture, so not in ModelConfig):
    dtype: compute dtype (float32 or bfloat16); parameters stay float32; outputs are float32.
    mc_chunk_size: heteroscedastic MC samples per chunk (None: automatic, see heads).
    num_mc_samples: override config.num_mc_samples (e.g. fewer samples while training).
    """

    config: ModelConfig
    dtype: Dtype = jnp.float32
    mc_chunk_size: int | None = None
    num_mc_samples: int | None = None

    @nn.compact
    def __call__(self, images, rng=None):
        c = self.config
        _check_images(images, c)
        batch = images.shape[0]
        x = PatchEmbedding(c.hidden_size, c.patch_size, self.dtype, name="embedding")(images)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c.hidden_size), jnp.float32)
        x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (batch, 1, 1)), x], axis=1)
        x = Encoder(c, self.dtype, name="Transformer")(x)[:, 0]  # (E*B, D)
        pre_logits, features = self._representation(x)
        e = c.ensemble_size
        extra = {}
        if c.head == "sngp":
            gp = RandomFeatureGaussianProcess(c.num_classes, c.gp_hidden_features, c.gp_normalize_input,
                                              dtype=self.dtype, name="head")
            logits, variance = gp(features)
            logits = mean_field_logits(logits, variance, c.gp_mean_field_factor)
            extra["gp_variance"] = variance.reshape(e, batch)
        else:
            logits = self._head(features, rng, batch).astype(jnp.float32)
        logits = logits.reshape(e, batch, c.num_classes)
        log_probs = jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0) - math.log(e)
        return {
            "logits": logits,
            "pre_logits": pre_logits.astype(jnp.float32).reshape(e, batch, -1),
            "log_probs": log_probs,
            **extra,
        }

    def _representation(self, x):
        """Returns (pre_logits, features for the head)."""
        c = self.config
        if c.representation_size is None:
            return x, x
        if c.ensemble_size > 1:
            layer = BatchEnsembleDense(c.representation_size, c.ensemble_size, self.dtype, name="pre_logits")
        else:
            layer = Dense(c.representation_size, self.dtype, name="pre_logits")
        pre = layer(x)
        return pre, jnp.tanh(pre)

    def _head(self, x, rng, batch):
        c = self.config
        if c.head == "dense":
            return Dense(c.num_classes, self.dtype, name="head")(x)
        if c.head == "batchensemble":
            return BatchEnsembleDense(c.num_classes, c.ensemble_size, self.dtype, name="batchensemble_head")(x)
        if rng is None:
            raise PlexbenchError("the heteroscedastic head samples noise: pass rng=jax.random.PRNGKey(seed)")
        head = HeteroscedasticHead(
            c.num_classes, c.num_factors, c.temperature, self.num_mc_samples or c.num_mc_samples,
            c.parameter_efficient, self.mc_chunk_size, self.dtype, name="head")
        return head(x, row_keys(rng, batch, c.ensemble_size))


def row_keys(rng, batch: int, ens_size: int):
    """Typed PRNG keys (E*B,) for the heteroscedastic head's rows, member-major.

    rng: one key (typed scalar key, or raw uint32 (2,) as from jax.random.PRNGKey) or one key per
    example (typed (B,) or raw (B, 2)). Example b's key is rng[b] when per-example keys are given,
    else fold_in(rng, b); the row of member m of example b gets fold_in(key_b, m). Passing
    per-example keys (e.g. fold_in(seed_key, example_id)) makes predictions independent of how
    the data are batched.
    """
    keys = rng if jnp.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(
        jnp.asarray(rng, jnp.uint32))
    if keys.ndim == 0:
        keys = jax.vmap(lambda b: jax.random.fold_in(keys, b))(jnp.arange(batch, dtype=jnp.uint32))
    elif keys.shape != (batch,):
        raise PlexbenchError(f"rng holds {keys.shape[0]} per-example keys for a batch of {batch}")
    per_member = jax.vmap(lambda m: jax.vmap(lambda k: jax.random.fold_in(k, m))(keys))
    return per_member(jnp.arange(ens_size, dtype=jnp.uint32)).reshape(ens_size * batch)


def _check_images(images, c: ModelConfig) -> None:
    want = (c.image_size, c.image_size, 3)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise PlexbenchError(
            f"model expects images of shape (B, {want[0]}, {want[1]}, 3), got {tuple(images.shape)}; "
            "check the preprocess spec")


def build(config: ModelConfig, *, dtype: str | Dtype = "float32", mc_chunk_size: int | None = None,
          num_mc_samples: int | None = None) -> VisionTransformer:
    """The Flax module for `config`; call `module.apply({"params": params}, images, rng=key)`."""
    dt = jnp.dtype(dtype)
    if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise PlexbenchError(f"dtype must be float32 or bfloat16, got {dtype}")
    return VisionTransformer(config, dt, mc_chunk_size, num_mc_samples)
