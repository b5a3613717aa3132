"""SNGP output layer: a random-feature Gaussian process with a Laplace posterior (spec §12).

Per input row x (d_in,) float:
    x' = LayerNorm(x) without scale and bias (eps 1e-6)           when normalize_input
    phi = feature_scale * cos(x' W + b)                 (R,)     W (d_in, R) ~ N(0, 2 / d_in), b ~ U(0, 2 pi),
                                                                 drawn once at init and never trained
    logits = phi @ K + c                                (features,)  the trained `output_layer`
    var = covariance_ridge * phi P^{-1} phi^T           ()       P the (R, R) Laplace precision matrix
    mean-field logits = logits / sqrt(1 + lambda * var)          lambda < 0: logits unchanged
Precision: P starts at ridge_penalty * I; a training batch Phi (N, R) updates it with
    P <- P + Phi^T Phi                                  (momentum None: a plain sum over the data)
    P <- m P + (1 - m) Phi^T Phi / N                    (momentum m in [0, 1))
and `step` counts the updates. Both ridges are 1.0 by default; the variance uses the covariance
layer's own 1.0, which the T5-Plex model's ridge_penalty setting does not change (spec §12).

Worked example (R = 1, no normalisation, W = 0, b = 0, feature_scale 1): phi = cos(0) = 1; after
one update with that row and momentum None, P = 1 + 1 = 2, so var = 1 * 1 * (1/2) * 1 = 0.5 and
the mean-field logits with lambda = 2 are logits / sqrt(2).

Flax layout (the official names of §12): parameters `output_layer/{kernel (R, features),
bias (features)}`; the state lives in the variable collection `gp_state`:
`random_features/hidden_layer/{kernel (d_in, R), bias (R)}`,
`laplace_covariance/covmat_layer/precision_matrix (R, R)` and `step` () int32. Checkpoints keep
the state beside the parameters as a sibling subtree named `<layer>_state` (T5X:
`decoder/gp_head` and `decoder/gp_head_state`); `merge_state` / `split_state` convert between
that flat tree and Flax's {"params": ..., "gp_state": ...} variables.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from plexbench.models.layers import Dtype

GP_STATE = "gp_state"
STATE_SUFFIX = "_state"
# Top-level names inside a GP layer's state: how split_state recognises a `<layer>_state` subtree.
STATE_ROOTS = ("random_features", "laplace_covariance", "step")
NORM_EPS = 1e-6


# ---------------------------------------------------------------------------- pure functions


def normalize(x):
    """LayerNorm over the last axis without scale and bias: (x - mean) / sqrt(var + 1e-6), float32."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + NORM_EPS)


def random_features(x, kernel, bias, feature_scale: float = 1.0):
    """phi = feature_scale * cos(x @ kernel + bias); x (..., d_in), kernel (d_in, R), bias (R,) -> (..., R) float32."""
    z = jnp.matmul(x.astype(jnp.float32), kernel.astype(jnp.float32)) + bias.astype(jnp.float32)
    return feature_scale * jnp.cos(z)


def update_precision(precision, phi, momentum: float | None = None, weights=None):
    """One training-time update of the Laplace precision matrix.

    precision (R, R); phi (N, R) random features of a batch; weights (N,) optional 0/1 row mask
    (padding rows excluded; N counts only the rows with weight). Returns the new (R, R):
    momentum None: P + Phi^T Phi; else m P + (1 - m) Phi^T Phi / N.
    Example: P = I (R = 1), phi = [[1], [1]] -> 3 (plain sum) or, with m = 0.5, 0.5 + 0.5 * 2 / 2 = 1.
    """
    phi = phi.astype(jnp.float32)
    if weights is not None:
        phi = phi * weights.astype(jnp.float32)[:, None]
    batch = phi.T @ phi
    if momentum is None:
        return precision + batch
    count = phi.shape[0] if weights is None else jnp.maximum(jnp.sum(weights.astype(jnp.float32)), 1.0)
    return momentum * precision + (1.0 - momentum) * batch / count


def predictive_variance(precision, phi, ridge: float = 1.0):
    """var_n = ridge * phi_n P^{-1} phi_n^T for each row, via a Cholesky solve (diagonal only).

    precision (R, R) symmetric positive definite; phi (..., R) -> (...,) float32.
    Example: P = 2 I, phi = (1, 1) -> ridge * (1/2 + 1/2) = ridge.
    """
    lead = phi.shape[:-1]
    flat = phi.reshape(-1, phi.shape[-1]).astype(jnp.float32)
    chol = jnp.linalg.cholesky(precision.astype(jnp.float32))
    solved = jax.scipy.linalg.cho_solve((chol, True), flat.T)  # P^{-1} phi^T, (R, N)
    return (ridge * jnp.sum(flat.T * solved, axis=0)).reshape(lead)


def mean_field_logits(logits, variance, factor: float):
    """logits / sqrt(1 + factor * variance), variance broadcast over the last (class) axis.

    logits (..., K), variance (...). factor < 0 means no adjustment (the logits are returned as
    they are). Example: logits 2, variance 3, factor 1 -> 2 / sqrt(4) = 1.
    """
    if factor < 0:
        return logits
    scale = jnp.sqrt(1.0 + factor * variance.astype(jnp.float32))
    return logits / scale[..., None].astype(logits.dtype)


# ---------------------------------------------------------------------------- Flax modules


def random_kernel_init(key, shape, dtype=jnp.float32):
    """W ~ N(0, 2 / fan_in) (variance scaling 2, fan_in, normal); shape (d_in, R)."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / shape[0])


def random_bias_init(key, shape, dtype=jnp.float32):
    """b ~ U(0, 2 pi)."""
    return jax.random.uniform(key, shape, dtype, 0.0, 2.0 * math.pi)


class _FixedDense(nn.Module):
    """kernel (d_in, R) and bias (R,) held in the `gp_state` collection (never trained)."""

    hidden_features: int

    @nn.compact
    def __call__(self, d_in: int):
        kernel = self.variable(GP_STATE, "kernel", lambda: random_kernel_init(
            self.make_rng("params"), (d_in, self.hidden_features)))
        bias = self.variable(GP_STATE, "bias", lambda: random_bias_init(
            self.make_rng("params"), (self.hidden_features,)))
        return kernel.value, bias.value


class _RandomFeatures(nn.Module):
    hidden_features: int

    @nn.compact
    def __call__(self, d_in: int):
        return _FixedDense(self.hidden_features, name="hidden_layer")(d_in)


class _Precision(nn.Module):
    hidden_features: int
    ridge_penalty: float

    @nn.compact
    def __call__(self):
        r = self.hidden_features
        return self.variable(GP_STATE, "precision_matrix", lambda: self.ridge_penalty * jnp.eye(r, dtype=jnp.float32))


class _LaplaceCovariance(nn.Module):
    hidden_features: int
    ridge_penalty: float

    @nn.compact
    def __call__(self):
        return _Precision(self.hidden_features, self.ridge_penalty, name="covmat_layer")()


class _OutputLayer(nn.Module):
    """phi @ kernel + bias with kernel (R, features), bias (features,); `columns` (C,) int selects
    output columns before the product (the same numbers as slicing the full output, cheaper)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, phi, columns=None):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (phi.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        if columns is not None:
            kernel, bias = jnp.take(kernel, columns, axis=1), jnp.take(bias, columns)
        y = jnp.matmul(phi.astype(self.dtype), kernel.astype(self.dtype))
        return (y + bias.astype(self.dtype)).astype(jnp.float32)


class RandomFeatureGaussianProcess(nn.Module):
    """The SNGP layer (module docstring). x (..., d_in) -> (logits (..., features) float32, var (...)).

    Call options: `update_covariance=True` adds this batch to the precision matrix (and 1 to
    `step`); apply with `mutable=["gp_state"]` to get the new state. `weights` (rows,) masks
    padding rows out of that update (rows = prod of the leading axes). `compute_variance=False`
    skips the Cholesky solve and returns a zero variance (cheaper training steps).
    `columns` (C,) int: return only these logits (..., C) (e.g. the label tokens of a vocabulary).
    The variance is computed from the precision BEFORE this call's update.
    """

    features: int
    hidden_features: int = 1024
    normalize_input: bool = True
    feature_scale: float = 1.0
    ridge_penalty: float = 1.0
    covariance_ridge: float = 1.0
    momentum: float | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, update_covariance: bool = False, weights=None, compute_variance: bool = True,
                 columns=None):
        d_in = x.shape[-1]
        h = normalize(x) if self.normalize_input else x.astype(jnp.float32)
        kernel, bias = _RandomFeatures(self.hidden_features, name="random_features")(d_in)
        phi = random_features(h, jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(bias), self.feature_scale)
        logits = _OutputLayer(self.features, self.dtype, name="output_layer")(phi, columns)
        precision = _LaplaceCovariance(self.hidden_features, self.ridge_penalty, name="laplace_covariance")()
        step = self.variable(GP_STATE, "step", lambda: jnp.zeros((), jnp.int32))
        if compute_variance:
            variance = predictive_variance(jax.lax.stop_gradient(precision.value), phi, self.covariance_ridge)
        else:
            variance = jnp.zeros(phi.shape[:-1], jnp.float32)
        if update_covariance and not self.is_initializing():
            flat = jax.lax.stop_gradient(phi.reshape(-1, self.hidden_features))
            w = None if weights is None else weights.reshape(-1)
            precision.value = update_precision(precision.value, flat, self.momentum, w)
            step.value = step.value + 1
        return logits, variance


# ---------------------------------------------------------------------------- checkpoint trees


def merge_state(variables: Mapping[str, Any]) -> dict:
    """Flax variables {"params": P, "gp_state": S} -> one nested tree: P plus, for each GP layer at
    path a/.../layer, its state under a/.../layer_state (the checkpoint layout). Without a
    `gp_state` collection the params tree is returned as it is."""
    params = _as_dict(variables.get("params", {}))
    state = variables.get(GP_STATE)
    if not state:
        return params
    out = params
    for path, leaf in _leaves(_as_dict(state)):
        cut = next(i for i, k in enumerate(path) if k in STATE_ROOTS)
        if cut == 0:
            raise ValueError(f"gp_state leaf {'/'.join(path)} has no owning layer")
        new = path[:cut - 1] + (path[cut - 1] + STATE_SUFFIX,) + path[cut:]
        _set(out, new, leaf)
    return out


def split_state(tree: Mapping[str, Any]) -> dict:
    """Inverse of `merge_state`: a checkpoint tree -> {"params": ..., "gp_state": ...} (the
    `gp_state` entry only when the tree holds a `<layer>_state` subtree)."""
    params: dict = {}
    state: dict = {}
    for path, leaf in _leaves(_as_dict(tree)):
        target, new = params, path
        for i, k in enumerate(path[:-1]):
            if k.endswith(STATE_SUFFIX) and path[i + 1] in STATE_ROOTS:
                target, new = state, path[:i] + (k[:-len(STATE_SUFFIX)],) + path[i + 1:]
                break
        _set(target, new, leaf)
    return {"params": params, GP_STATE: state} if state else {"params": params}


def _as_dict(tree) -> dict:
    if isinstance(tree, Mapping):
        return {k: _as_dict(v) for k, v in tree.items()}
    return tree


def _leaves(tree: Mapping, prefix: tuple = ()):
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _set(tree: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value
