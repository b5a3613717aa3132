"""Flax (linen) building blocks of ViT-Plex with the official parameter names (spec §2, §3).

Compute dtype: every layer takes `dtype` (float32 or bfloat16). Parameters are created and stored
in float32; a layer casts its inputs and parameters to `dtype` for the matmuls. LayerNorm
statistics and the attention softmax are computed in float32 and cast back to `dtype`.

Shapes: token tensors are (R, N, D) where R = rows (B, or E*B after member-major tiling).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
LAYER_NORM_EPS = 1e-6


def sign_init(key, shape, dtype=jnp.float32):
    """Random signs (+1 / -1 with probability 1/2): the BatchEnsemble fast-weight init."""
    return (2.0 * jax.random.bernoulli(key, 0.5, shape) - 1.0).astype(dtype)


def gelu(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return jax.nn.gelu(x, approximate=True)


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + 1e-6) * scale + bias over the last axis (biased variance).

    Params: scale (D,), bias (D,). Statistics in float32; output in `dtype`.
    """

    dtype: Dtype = jnp.float32
    epsilon: float = LAYER_NORM_EPS

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype)


class Dense(nn.Module):
    """y = x @ kernel + bias; kernel (in, out), bias (out,)."""

    features: int
    dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        y = jnp.matmul(x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class BatchEnsembleDense(nn.Module):
    """BatchEnsemble dense layer (Wen et al. 2020) with the edward2 parameter names.

    Params: kernel W (in, out) shared; fast_weight_alpha (E, in), fast_weight_gamma (E, out),
    bias (E, out) per member. Input x (E*B, ..., in), member-major (rows m*B..(m+1)*B-1 belong
    to member m); output (E*B, ..., out) with, for a row of member m,
        y = ((x * alpha_m) @ W) * gamma_m + bias_m.
    With ens_size 1 the one member applies to every row (how the shared Plex head is built).
    """

    features: int
    ens_size: int
    dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    fast_weight_init: Callable = sign_init

    def _make_params(self, n_in: int):
        E, n_out = self.ens_size, self.features
        kernel = self.param("kernel", self.kernel_init, (n_in, n_out), jnp.float32)
        alpha = self.param("fast_weight_alpha", self.fast_weight_init, (E, n_in), jnp.float32)
        gamma = self.param("fast_weight_gamma", self.fast_weight_init, (E, n_out), jnp.float32)
        bias = self.param("bias", self.bias_init, (E, n_out), jnp.float32)
        return kernel, alpha, gamma, bias

    @nn.compact
    def __call__(self, x):
        kernel, alpha, gamma, bias = self._make_params(x.shape[-1])
        return be_dense(x, kernel, alpha, gamma, bias, self.dtype)


def be_dense(x, kernel, alpha, gamma, bias, dtype=jnp.float32):
    """Pure BatchEnsemble dense: x (E*B, ..., in) -> (E*B, ..., out); see BatchEnsembleDense."""
    E = alpha.shape[0]
    if x.shape[0] % E:
        raise ValueError(f"BatchEnsemble layer with {E} members got {x.shape[0]} rows (not a multiple)")
    rows = x.shape[0]
    xe = x.reshape((E, rows // E) + x.shape[1:]).astype(dtype)
    # (E, 1, ..., 1, in) so each member's vector broadcasts over its rows and tokens.
    expand = (slice(None),) + (None,) * (xe.ndim - 2) + (slice(None),)
    y = jnp.matmul(xe * alpha.astype(dtype)[expand], kernel.astype(dtype))
    y = y * gamma.astype(dtype)[expand] + bias.astype(dtype)[expand]
    return y.reshape((rows,) + y.shape[2:])


def fold_single_member(kernel, alpha, gamma, bias):
    """A one-member BatchEnsemble dense as a plain affine map: (W', b') with
    W' = alpha_0[:, None] * W * gamma_0[None, :] and b' = bias_0, so y = x @ W' + b'."""
    return alpha[0][:, None] * kernel * gamma[0][None, :], bias[0]


class MlpBlock(nn.Module):
    """Dense_0 (D->M) -> tanh-GELU -> Dense_1 (M->D); plain or BatchEnsemble (ens_size > 0)."""

    mlp_dim: int
    ens_size: int = 0  # 0: plain dense layers
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        init = nn.initializers.xavier_uniform()
        bias_init = nn.initializers.normal(stddev=1e-6)
        if self.ens_size:
            layer = lambda n, name: BatchEnsembleDense(  # noqa: E731
                n, self.ens_size, self.dtype, init, bias_init, name=name)
        else:
            layer = lambda n, name: Dense(n, self.dtype, init, bias_init, name=name)  # noqa: E731
        return layer(d, "Dense_1")(gelu(layer(self.mlp_dim, "Dense_0")(x)))


class MultiHeadAttention(nn.Module):
    """Self-attention, softmax(q k^T / sqrt(Dh)) v, with the flax parameter layout.

    Plain: query/key/value kernel (D, H, Dh), bias (H, Dh); out kernel (H, Dh, D), bias (D).
    Ensembled (ens_size > 0): query/key/value/out are BatchEnsemble dense layers with 2-D kernels
    (D, H*Dh) / (H*Dh, D) (spec §2). x (R, N, D) -> (R, N, D). Softmax in float32.
    """

    num_heads: int
    ens_size: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        rows, n, d = x.shape
        h = self.num_heads
        dh = d // h
        init = nn.initializers.xavier_uniform()
        if self.ens_size:
            q, k, v = (BatchEnsembleDense(h * dh, self.ens_size, self.dtype, init, name=name)(x)
                       .reshape(rows, n, h, dh) for name in ("query", "key", "value"))
        else:
            q, k, v = (_Projection(h, dh, self.dtype, init, name=name)(x) for name in ("query", "key", "value"))
        ctx = attention(q, k, v, self.dtype)
        if self.ens_size:
            return BatchEnsembleDense(d, self.ens_size, self.dtype, init, name="out")(
                ctx.reshape(rows, n, h * dh))
        return _OutProjection(d, self.dtype, init, name="out")(ctx)


class _Projection(nn.Module):
    """x (R, N, D) @ kernel (D, H, Dh) + bias (H, Dh) -> (R, N, H, Dh)."""

    num_heads: int
    head_dim: int
    dtype: Dtype
    kernel_init: Callable

    @nn.compact
    def __call__(self, x):
        shape = (x.shape[-1], self.num_heads, self.head_dim)
        kernel = self.param("kernel", _fan_in_2d(self.kernel_init), shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, shape[1:], jnp.float32)
        y = jnp.einsum("rnd,dhk->rnhk", x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class _OutProjection(nn.Module):
    """ctx (R, N, H, Dh) @ kernel (H, Dh, D) + bias (D) -> (R, N, D)."""

    features: int
    dtype: Dtype
    kernel_init: Callable

    @nn.compact
    def __call__(self, ctx):
        shape = (ctx.shape[-2], ctx.shape[-1], self.features)
        kernel = self.param("kernel", _fan_in_2d(self.kernel_init, in_axes=2), shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = jnp.einsum("rnhk,hkd->rnd", ctx.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


def _fan_in_2d(init, in_axes: int = 1):
    """Initialise a (D, H, Dh) / (H, Dh, D) kernel as its 2-D (fan_in, fan_out) matrix reshaped."""

    def wrapped(key, shape, dtype=jnp.float32):
        flat = (math.prod(shape[:in_axes]), math.prod(shape[in_axes:]))
        return init(key, flat, dtype).reshape(shape)

    return wrapped


def attention(q, k, v, dtype=jnp.float32):
    """softmax(q k^T / sqrt(Dh)) v per head. q, k, v (R, N, H, Dh) -> (R, N, H, Dh)."""
    dh = q.shape[-1]
    scores = jnp.einsum("rqhk,rshk->rhqs", q.astype(dtype), k.astype(dtype))
    weights = jax.nn.softmax(scores.astype(jnp.float32) / math.sqrt(dh), axis=-1)
    return jnp.einsum("rhqs,rshk->rqhk", weights.astype(dtype), v.astype(dtype))


class EncoderBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + Attn(LN_0(x)), then + MLP(LN_2(.)).

    Sub-module names follow the released checkpoints: LayerNorm_0,
    MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3.
    """

    num_heads: int
    mlp_dim: int
    ens_size: int = 0  # > 0: BatchEnsemble MLP
    ensemble_attention: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        att_ens = self.ens_size if self.ensemble_attention else 0
        y = LayerNorm(self.dtype, name="LayerNorm_0")(x)
        y = MultiHeadAttention(self.num_heads, att_ens, self.dtype, name="MultiHeadDotProductAttention_1")(y)
        x = x + y
        y = LayerNorm(self.dtype, name="LayerNorm_2")(x)
        y = MlpBlock(self.mlp_dim, self.ens_size, self.dtype, name="MlpBlock_3")(y)
        return x + y
