"""Output heads: deterministic dense, BatchEnsemble, and the heteroscedastic MC-softmax head.

Heteroscedastic head (Collier et al. 2021; spec §3), per row x (F,):
    mu = loc(x) (K,); d = softplus(diag(x)) + 1e-3 (K,)
    full variant:  V = reshape(scale(x), (K, R)); factor noise = V @ eps_R
    parameter-efficient variant: factor noise = hom(eps_R) * het(x), where
        hom is a (R -> K) layer applied to the standard normals and het a (F -> K) layer on x
    for s = 1..S: noise_s = factor noise(eps_R,s) + d * eps_s
        (eps_s is ONE scalar per (row, sample), broadcast over the K classes; eps_R,s ~ N(0, I_R))
    p = (1/S) sum_s softmax((mu + noise_s) / T);  logits = log(max(p, 1e-7))
With R = 0 only the diagonal term remains. All layers are one-member BatchEnsemble dense layers
(`loc_layer`, `diag_layer`, `scale_layer` or `scale_layer_homoscedastic` /
`scale_layer_heteroscedastic`), so one head is shared by every ensemble member's rows.

Randomness (documented so a test, or anyone, can reproduce it): each row n has a key k_n
(see `plexbench.models.vit.row_keys`); sample s of row n uses
    z = jax.random.normal(jax.random.fold_in(k_n, s), (1 + R,), float32)
    eps_s = z[0], eps_R,s = z[1:].
A row's draws therefore depend only on its key and the sample index, never on the batch size,
the row's position in the batch, or the chunking below.

Memory: S samples of (N, K) logits would need S*N*K floats at once (1000 x 96 x 1000 = 384 MB for
the released head at batch 32). The samples are taken in chunks of C with `lax.scan`, keeping one
(C, N, K) block and the running (N, K) sum of probabilities; C defaults to the largest value with
C*N*K <= 2**22 (16 MiB of float32). The result does not depend on C beyond float rounding.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from plexbench.models.layers import BatchEnsembleDense, Dtype, fold_single_member, sign_init

MIN_SCALE = 1e-3
PROB_FLOOR = 1e-7
CHUNK_ELEMENTS = 2**22


def default_chunk_size(num_samples: int, rows: int, num_classes: int) -> int:
    """Largest C <= num_samples with C * rows * num_classes <= 2**22 (at least 1)."""
    return int(max(1, min(num_samples, CHUNK_ELEMENTS // max(1, rows * num_classes))))


def standard_normal_draws(keys, sample_ids, num_factors: int):
    """The head's noise: z[c, n] = normal(fold_in(keys[n], sample_ids[c]), (1 + R,)).

    keys: typed PRNG key array (N,); sample_ids int32 (C,). Returns float32 (C, N, 1 + R).
    """

    def one(key, s):
        return jax.random.normal(jax.random.fold_in(key, s), (1 + num_factors,), jnp.float32)

    per_row = jax.vmap(one, in_axes=(0, None))  # over rows
    return jax.vmap(per_row, in_axes=(None, 0))(keys, sample_ids)


def mc_softmax_mean(mu, diag_scale, factor_noise: Callable | None, draws: Callable, *,
                    num_samples: int, temperature: float, chunk_size: int | None = None):
    """p = (1/S) sum_s softmax((mu + factor_noise(eps_R,s) + d * eps_s) / T), in chunks.

    mu, diag_scale: float32 (N, K). factor_noise: maps eps_R (C, N, R) -> (C, N, K), or None
    for the diagonal-only head. draws: maps sample ids int32 (C,) -> z float32 (C, N, 1 + R)
    (`standard_normal_draws` in the model; tests may inject fixed noise). Returns p (N, K).
    """
    n, k = mu.shape
    chunk = chunk_size or default_chunk_size(num_samples, n, k)
    chunk = min(chunk, num_samples)

    def chunk_sum(sample_ids):
        z = draws(sample_ids)
        noise = diag_scale[None] * z[..., :1]
        if factor_noise is not None:
            noise = noise + factor_noise(z[..., 1:])
        return jnp.sum(jax.nn.softmax((mu[None] + noise) / temperature, axis=-1), axis=0)

    n_full, rest = divmod(num_samples, chunk)
    total = jnp.zeros((n, k), jnp.float32)
    if n_full:
        ids = jnp.arange(n_full * chunk, dtype=jnp.int32).reshape(n_full, chunk)
        total, _ = jax.lax.scan(lambda acc, i: (acc + chunk_sum(i), None), total, ids)
    if rest:
        total = total + chunk_sum(jnp.arange(n_full * chunk, num_samples, dtype=jnp.int32))
    return total / num_samples


class BatchEnsembleParams(nn.Module):
    """Only the parameters of a BatchEnsemble dense layer (same names and shapes as
    BatchEnsembleDense), for layers that are applied inside `lax.scan` as plain arrays."""

    features: int
    ens_size: int

    @nn.compact
    def __call__(self, n_in: int):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (n_in, self.features), jnp.float32)
        alpha = self.param("fast_weight_alpha", sign_init, (self.ens_size, n_in), jnp.float32)
        gamma = self.param("fast_weight_gamma", sign_init, (self.ens_size, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.ens_size, self.features), jnp.float32)
        return kernel, alpha, gamma, bias


class HeteroscedasticHead(nn.Module):
    """MC-softmax heteroscedastic head (see module docstring).

    __call__(x (N, F), keys typed PRNG keys (N,)) -> logits float32 (N, K) = log(clip(p, 1e-7)).
    """

    num_classes: int
    num_factors: int
    temperature: float
    num_mc_samples: int
    parameter_efficient: bool = False
    mc_chunk_size: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, keys):
        K, R = self.num_classes, self.num_factors
        dense = lambda n, name: BatchEnsembleDense(n, 1, self.dtype, name=name)  # noqa: E731
        mu = dense(K, "loc_layer")(x).astype(jnp.float32)
        diag = jax.nn.softplus(dense(K, "diag_layer")(x).astype(jnp.float32)) + MIN_SCALE
        factor_noise = None
        if self.parameter_efficient:
            hom_w, hom_b = fold_single_member(*BatchEnsembleParams(K, 1, name="scale_layer_homoscedastic")(R))
            het = dense(K, "scale_layer_heteroscedastic")(x).astype(jnp.float32)

            def factor_noise(eps_r):  # (C, N, R) -> (C, N, K)
                return (jnp.einsum("cnr,rk->cnk", eps_r, hom_w) + hom_b) * het[None]
        elif R > 0:
            v = dense(K * R, "scale_layer")(x).astype(jnp.float32).reshape(x.shape[0], K, R)

            def factor_noise(eps_r):
                return jnp.einsum("nkr,cnr->cnk", v, eps_r)

        draws = lambda ids: standard_normal_draws(keys, ids, R)  # noqa: E731
        p = mc_softmax_mean(mu, diag, factor_noise, draws, num_samples=self.num_mc_samples,
                            temperature=self.temperature, chunk_size=self.mc_chunk_size)
        return jnp.log(jnp.maximum(p, PROB_FLOOR))
