"""T5.1.1 encoder-decoder classifier with the T5-Plex extensions, in Flax (spec §9, §12).

Forward pass for input tokens (B, L) int (0 = padding) and decoder input tokens (B, T):
    x = token_embedder(tokens)                                       (no scaling)
    encoder: for each layer  x += Attn(RMSNorm(x)) with the bidirectional relative position bias,
             then x += MLP(RMSNorm(x)); encoder_norm
    decoder: y = token_embedder(decoder inputs); for each layer
             y += SelfAttn(RMSNorm(y)) (causal, unidirectional relative position bias),
             y += CrossAttn(RMSNorm(y), encoder output) (no position bias),
             [last layer with E > 1: y tiled E times, member-major]  y += MLP(RMSNorm(y));
             decoder_norm -> hidden (E*B, T, d)
    head: SNGP over the vocabulary (`gp_head`, spec §12) or `logits_dense`, read at the label
          tokens -> (E*B, T, C); SNGP logits are also given in their mean-field version.
Details (spec §9): RMSNorm y = x / sqrt(mean(x^2) + 1e-6) * scale (scale only, float32
statistics); gated-GELU MLP wo(gelu_tanh(wi_0 x) * wi_1 x); no biases in dense layers; attention
logits q.k WITHOUT 1/sqrt(Dh) (T5 folds it into the query initialisation); masks are additive
-1e10 biases, so a query whose keys are all masked (a padding row) gets uniform weights, as in
the reference; softmax in float32. The relative position bucket of key j for query i is
`relative_position_bucket(j - i, ...)`. BatchEnsemble dense without bias: for a row of member m,
y = ((x * alpha_m) @ W) * gamma_m.

Decoder inputs: teacher forcing is the targets shifted right with 0 (`shift_right`). Without
targets, position 0 reads decoder input [0]; for T > 1 the prefix is decoded greedily over the
label tokens with the ENSEMBLE's probabilities (every member continues from the same prefix;
the spec is silent on this, plexbench's choice). Outputs at position t depend only on inputs
<= t (causal), so one more pass with the whole prefix gives every position.

Returned dict (float32):
    label_logits (E, B, T, C): raw restricted logits per member
    logits (E, B, T, C): mean-field logits (SNGP: label_logits / sqrt(1 + lambda * var); dense: = label_logits)
    hidden (E, B, T, d): the final decoder hidden state (after decoder_norm; the Mahalanobis embedding)
    gp_variance (E, B, T): SNGP only, the GP predictive variance
    log_probs (B, T, C): ensemble log-probabilities by `readout` (see `ensemble_log_probs`)
    vocab_logits (E, B, T, V): with vocab_logits=True only (training: full-vocabulary softmax)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.models.layers import gelu, sign_init
from plexbench.models.sngp import RandomFeatureGaussianProcess, mean_field_logits
from plexbench.models.t5_config import PAD_ID, T5Config

Dtype = Any
NEG_BIAS = -1e10
RMS_EPS = 1e-6
READOUTS = ("average", "paper")


# ---------------------------------------------------------------------------- positions


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
    """T5's bucket of each relative position (key position - query position), int64 numpy.

    With n = query - key: bidirectional: half of the buckets for keys after the query (offset
    num_buckets / 2), n = |n|; causal: n = max(n, 0). With b buckets left and e = b / 2:
    n < e -> bucket n; else e + floor(log(n / e) / log(max_distance / e) * (b - e)), capped at b - 1.
    Example (bidirectional, 32, 128): key 1 after the query -> 16 + 1 = 17; 12 before -> 9;
    200 before -> 15. (Computed in float64: equal to the float32 reference for every n, checked.)
    """
    n = -np.asarray(relative_position, np.int64)
    buckets = num_buckets
    out = np.zeros_like(n)
    if bidirectional:
        buckets //= 2
        out += (n < 0).astype(np.int64) * buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    exact = buckets // 2
    with np.errstate(divide="ignore"):
        scaled = np.log(np.maximum(n, 1) / exact) / math.log(max_distance / exact) * (buckets - exact)
    large = np.minimum(exact + scaled.astype(np.int64), buckets - 1)
    return out + np.where(n < exact, n, large)


@functools.lru_cache(maxsize=64)
def bucket_table(q_len: int, k_len: int, bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """(q_len, k_len) buckets of key j for query i (positions 0..len-1)."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    table = relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                     max_distance=max_distance)
    table.setflags(write=False)
    return table


# ---------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + 1e-6) * scale over the last axis; param scale (d,); float32 statistics."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + RMS_EPS) * scale
        return y.astype(self.dtype)


def _normal(stddev: float):
    return nn.initializers.normal(stddev=stddev)


class Kernel(nn.Module):
    """y = x @ kernel, kernel (in, out), no bias; with ens_size > 0 a BatchEnsemble layer without
    bias: fast_weight_alpha (E, in), fast_weight_gamma (E, out), rows member-major."""

    features: int
    stddev: float
    ens_size: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, columns=None):
        n_in = x.shape[-1]
        kernel = self.param("kernel", _normal(self.stddev), (n_in, self.features), jnp.float32)
        if not self.ens_size:
            if columns is not None:
                kernel = jnp.take(kernel, columns, axis=1)
            return jnp.matmul(x.astype(self.dtype), kernel.astype(self.dtype))
        alpha = self.param("fast_weight_alpha", sign_init, (self.ens_size, n_in), jnp.float32)
        gamma = self.param("fast_weight_gamma", sign_init, (self.ens_size, self.features), jnp.float32)
        if columns is not None:
            kernel, gamma = jnp.take(kernel, columns, axis=1), jnp.take(gamma, columns, axis=1)
        return be_matmul(x, kernel, alpha, gamma, self.dtype)


def be_matmul(x, kernel, alpha, gamma, dtype=jnp.float32):
    """BatchEnsemble product without bias: x (E*B, ..., in) -> (E*B, ..., out), member-major rows,
    y = ((x * alpha_m) @ W) * gamma_m for the rows of member m."""
    e = alpha.shape[0]
    rows = x.shape[0]
    if rows % e:
        raise ValueError(f"BatchEnsemble layer with {e} members got {rows} rows (not a multiple)")
    xe = x.reshape((e, rows // e) + x.shape[1:]).astype(dtype)
    expand = (slice(None),) + (None,) * (xe.ndim - 2) + (slice(None),)
    y = jnp.matmul(xe * alpha.astype(dtype)[expand], kernel.astype(dtype)) * gamma.astype(dtype)[expand]
    return y.reshape((rows,) + y.shape[2:])


class Attention(nn.Module):
    """Multi-head attention without biases and without 1/sqrt(Dh) scaling (spec §9).

    inputs_q (R, Tq, d), inputs_kv (R, Tk, d), bias additive float32 broadcastable to
    (R, H, Tq, Tk) -> (R, Tq, d). Kernels query/key/value (d, H*Dh), out (H*Dh, d).
    Initialisation (T5's): query N(0, 1/(d Dh)) (the folded scaling), key/value N(0, 1/d),
    out N(0, 1/(H Dh)).
    """

    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs_q, inputs_kv, bias):
        d = inputs_q.shape[-1]
        h, dh = self.num_heads, self.head_dim
        inner = h * dh
        q = Kernel(inner, (d * dh) ** -0.5, dtype=self.dtype, name="query")(inputs_q)
        k = Kernel(inner, d ** -0.5, dtype=self.dtype, name="key")(inputs_kv)
        v = Kernel(inner, d ** -0.5, dtype=self.dtype, name="value")(inputs_kv)
        rows, tq, tk = inputs_q.shape[0], inputs_q.shape[1], inputs_kv.shape[1]
        q, k, v = q.reshape(rows, tq, h, dh), k.reshape(rows, tk, h, dh), v.reshape(rows, tk, h, dh)
        scores = jnp.einsum("rqhc,rkhc->rhqk", q, k).astype(jnp.float32) + bias
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        ctx = jnp.einsum("rhqk,rkhc->rqhc", weights, v).reshape(rows, tq, inner)
        return Kernel(d, inner ** -0.5, dtype=self.dtype, name="out")(ctx)


class RelativePositionBias(nn.Module):
    """rel_embedding (H, buckets); __call__(q_len, k_len) -> (1, H, q_len, k_len) float32."""

    num_heads: int
    num_buckets: int
    max_distance: int
    bidirectional: bool

    @nn.compact
    def __call__(self, q_len: int, k_len: int):
        table = self.param("rel_embedding", _normal(0.1), (self.num_heads, self.num_buckets), jnp.float32)
        buckets = bucket_table(q_len, k_len, self.bidirectional, self.num_buckets, self.max_distance)
        return jnp.take(table, jnp.asarray(buckets), axis=1)[None]


class GatedMlp(nn.Module):
    """wo(gelu_tanh(wi_0 x) * wi_1 x); BatchEnsemble kernels (no bias) when ens_size > 0."""

    mlp_dim: int
    ens_size: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        layer = functools.partial(Kernel, ens_size=self.ens_size, dtype=self.dtype)
        h = gelu(layer(self.mlp_dim, d ** -0.5, name="wi_0")(x)) * layer(self.mlp_dim, d ** -0.5, name="wi_1")(x)
        return layer(d, self.mlp_dim ** -0.5, name="wo")(h)


def dropout(x, rate: float):
    """Training-time dropout (rng stream 'dropout'); the identity when rate is 0 (inference)."""
    return nn.Dropout(rate)(x, deterministic=rate == 0.0)


class EncoderLayer(nn.Module):
    config: T5Config
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, bias):
        c = self.config
        y = RMSNorm(self.dtype, name="pre_attention_layer_norm")(x)
        x = x + dropout(Attention(c.num_heads, c.head_dim, self.dtype, name="attention")(y, y, bias), self.dropout_rate)
        y = RMSNorm(self.dtype, name="pre_mlp_layer_norm")(x)
        return x + dropout(GatedMlp(c.mlp_dim, 0, self.dtype, name="mlp")(y), self.dropout_rate)


class DecoderLayer(nn.Module):
    config: T5Config
    ens_size: int = 0  # > 0: tile the rows and use a BatchEnsemble MLP (the last layer of T5-Plex)
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, y, encoded, self_bias, cross_bias):
        c, rate = self.config, self.dropout_rate
        z = RMSNorm(self.dtype, name="pre_self_attention_layer_norm")(y)
        y = y + dropout(Attention(c.num_heads, c.head_dim, self.dtype, name="self_attention")(z, z, self_bias), rate)
        z = RMSNorm(self.dtype, name="pre_cross_attention_layer_norm")(y)
        y = y + dropout(Attention(c.num_heads, c.head_dim, self.dtype, name="encoder_decoder_attention")(
            z, encoded, cross_bias), rate)
        if self.ens_size:
            y = jnp.tile(y, (self.ens_size, 1, 1))  # member-major: rows m*B..(m+1)*B-1 are member m
        z = RMSNorm(self.dtype, name="pre_mlp_layer_norm")(y)
        return y + dropout(GatedMlp(c.mlp_dim, self.ens_size, self.dtype, name="mlp")(z), rate)


def mask_bias(query_valid, key_valid):
    """Additive bias (B, 1, Tq, Tk): 0 where both positions are valid, -1e10 elsewhere."""
    ok = query_valid[:, None, :, None] & key_valid[:, None, None, :]
    return jnp.where(ok, 0.0, NEG_BIAS).astype(jnp.float32)


class Encoder(nn.Module):
    config: T5Config
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, valid):
        c = self.config
        length = x.shape[1]
        bias = mask_bias(valid, valid) + RelativePositionBias(
            c.num_heads, c.relative_attention_num_buckets, c.relative_attention_max_distance, True,
            name="relpos_bias")(length, length)
        x = dropout(x, self.dropout_rate)
        for i in range(c.num_encoder_layers):
            x = EncoderLayer(c, self.dtype, self.dropout_rate, name=f"layers_{i}")(x, bias)
        return dropout(RMSNorm(self.dtype, name="encoder_norm")(x), self.dropout_rate)


class Decoder(nn.Module):
    """Decoder layers, decoder_norm and the head; returns (hidden (E*B, T, d), head outputs)."""

    config: T5Config
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, y, encoded, encoder_valid, *, columns, vocab_logits: bool = False,
                 update_covariance: bool = False, weights=None):
        c = self.config
        y = dropout(y, self.dropout_rate)
        rows, t = y.shape[0], y.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))
        self_bias = jnp.where(causal, 0.0, NEG_BIAS)[None, None] + RelativePositionBias(
            c.num_heads, c.relative_attention_num_buckets, c.relative_attention_max_distance, False,
            name="relpos_bias")(t, t)
        cross_bias = mask_bias(jnp.ones((rows, t), bool), encoder_valid)
        last = c.num_decoder_layers - 1
        for i in range(c.num_decoder_layers):
            ens = c.ensemble_size if (i == last and c.ensemble_size > 1) else 0
            y = DecoderLayer(c, ens, self.dtype, self.dropout_rate, name=f"layers_{i}")(y, encoded, self_bias, cross_bias)
        hidden = dropout(RMSNorm(self.dtype, name="decoder_norm")(y), self.dropout_rate)
        return hidden.astype(jnp.float32), self._head(hidden, columns, vocab_logits, update_covariance, weights)

    def _head(self, hidden, columns, vocab_logits, update_covariance, weights):
        c = self.config
        out = {}
        if c.head == "sngp":
            gp = RandomFeatureGaussianProcess(c.vocab_size, c.gp_hidden_features, c.gp_normalize_input,
                                              dtype=self.dtype, name="gp_head")
            if vocab_logits:
                full, variance = gp(hidden, update_covariance=update_covariance, weights=weights,
                                    compute_variance=not update_covariance)
                out["vocab_logits"] = full
                out["label_logits"] = jnp.take(full, columns, axis=-1)
            else:
                out["label_logits"], variance = gp(hidden, columns=columns)
            out["gp_variance"] = variance
            return out
        e = c.ensemble_size if c.ensemble_size > 1 else 0
        dense = Kernel(c.vocab_size, c.d_model ** -0.5, e, self.dtype, name="logits_dense")
        if vocab_logits:
            full = dense(hidden).astype(jnp.float32)
            out["vocab_logits"] = full
            out["label_logits"] = jnp.take(full, columns, axis=-1)
        else:
            out["label_logits"] = dense(hidden, columns).astype(jnp.float32)
        return out


def ensemble_log_probs(logits, readout: str = "average"):
    """Ensemble log-probabilities over the C label tokens; logits (E, ..., C) -> (..., C).

    "average" (proper probability averaging, plexbench's default and what every metric uses
    for the ViTs, spec §3): logsumexp_m(log_softmax(logits_m)) - log E.
    "paper" (the T5-Plex reference code's quirk, spec §9): log_softmax(logsumexp_m(logits_m) - log E),
    the softmax of a log-mean-exp of the RAW logits. The two agree for E = 1.
    Example: E = 2, C = 2, member logits (0, 0) and (2, 0): average gives p_0 = (0.5 + 0.881) / 2
    = 0.690; paper gives softmax((log((1 + e^2) / 2), 0))_0 = 0.812.
    """
    e = logits.shape[0]
    if readout == "average":
        return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0) - math.log(e)
    if readout == "paper":
        return jax.nn.log_softmax(jax.nn.logsumexp(logits, axis=0) - math.log(e), axis=-1)
    raise PlexbenchError(f"unknown readout '{readout}' (choose from {', '.join(READOUTS)})")


def shift_right(targets):
    """Teacher-forcing decoder inputs: (B, T) targets -> (0, targets[:, :-1]) (B, T) int32."""
    targets = jnp.asarray(targets, jnp.int32)
    return jnp.concatenate([jnp.full((targets.shape[0], 1), PAD_ID, jnp.int32), targets[:, :-1]], axis=1)


class T5Classifier(nn.Module):
    """T5.1.1 (-Plex) classifier; module docstring for the forward pass and outputs.

    Runtime options (not part of the architecture): dtype (float32 or bfloat16 compute, float32
    params and outputs); readout ("average" or "paper", for `log_probs`); dropout_rate (training
    only, T5's placement: on the embeddings, each sublayer's output before its residual add and
    the final norms' outputs; needs the 'dropout' rng; 0 = none, the inference default).
    Call: `module.apply(split_state(tree), tokens, targets=None, decoder_input_tokens=None)`.
    targets (B, T) label-token ids teacher-force the decoder (shift_right); decoder_input_tokens
    gives the decoder inputs directly; neither: position 0 from [0] and greedy decoding over the
    label tokens for T > 1. vocab_logits=True also returns the full-vocabulary logits;
    update_covariance=True (training, with mutable=["gp_state"]) adds the batch's features of
    the rows with `weights` (E*B*T,) to the SNGP precision matrix.
    """

    config: T5Config
    dtype: Dtype = jnp.float32
    readout: str = "average"
    dropout_rate: float = 0.0

    def setup(self):
        c = self.config
        self.token_embedder = Embed(c.vocab_size, c.d_model, self.dtype)
        self.encoder = Encoder(c, self.dtype, self.dropout_rate)
        self.decoder = Decoder(c, self.dtype, self.dropout_rate)

    def encode(self, tokens):
        """tokens (B, L) int -> (encoded (B, L, d), valid (B, L) bool)."""
        valid = tokens != PAD_ID
        return self.encoder(self.token_embedder(tokens), valid), valid

    def decode(self, encoded, valid, decoder_input_tokens, **head_options):
        """Decoder + head on decoder inputs (B, T) -> (hidden (E*B, T, d), head outputs)."""
        columns = jnp.asarray(self.config.label_tokens, jnp.int32)
        return self.decoder(self.token_embedder(decoder_input_tokens), encoded, valid, columns=columns, **head_options)

    def __call__(self, tokens, targets=None, decoder_input_tokens=None, *, vocab_logits: bool = False,
                 update_covariance: bool = False, weights=None):
        c = self.config
        _check_tokens(tokens)
        if not c.label_tokens and not self.is_initializing():
            raise PlexbenchError("this T5 config has no label tokens (the readout of its task is not known to "
                                 "plexbench), so it cannot classify")
        batch = tokens.shape[0]
        encoded, valid = self.encode(tokens)
        if decoder_input_tokens is None:
            if targets is not None:
                decoder_input_tokens = shift_right(targets)
            else:
                decoder_input_tokens = self._greedy_inputs(encoded, valid, batch)
        hidden, head = self.decode(encoded, valid, decoder_input_tokens, vocab_logits=vocab_logits,
                                   update_covariance=update_covariance, weights=weights)
        return self._outputs(hidden, head, batch)

    def _greedy_inputs(self, encoded, valid, batch: int):
        """Decoder inputs (B, T): 0, then the ensemble's greedy label token at each position."""
        c = self.config
        labels = jnp.asarray(c.label_tokens, jnp.int32)
        inputs = jnp.zeros((batch, c.target_length), jnp.int32)
        if not c.label_tokens:  # only reached while initialising a config without a readout
            return inputs
        for t in range(c.target_length - 1):
            _, head = self.decode(encoded, valid, inputs)
            logits = self._member_major(self._mean_field(head), batch)[:, :, t]
            choice = jnp.argmax(ensemble_log_probs(logits, self.readout), axis=-1)
            inputs = inputs.at[:, t + 1].set(labels[choice])
        return inputs

    def _mean_field(self, head):
        if "gp_variance" in head:
            return mean_field_logits(head["label_logits"], head["gp_variance"], self.config.gp_mean_field_factor)
        return head["label_logits"]

    def _member_major(self, x, batch: int):
        """(E*B, ...) -> (E, B, ...); a model whose rows were never tiled has E = 1."""
        return x.reshape((x.shape[0] // batch, batch) + x.shape[1:])

    def _outputs(self, hidden, head, batch: int) -> dict:
        mm = functools.partial(self._member_major, batch=batch)
        logits = mm(self._mean_field(head))
        out = {"label_logits": mm(head["label_logits"]), "logits": logits, "hidden": mm(hidden),
               "log_probs": ensemble_log_probs(logits, self.readout)}
        if "gp_variance" in head:
            out["gp_variance"] = mm(head["gp_variance"])
        if "vocab_logits" in head:
            out["vocab_logits"] = mm(head["vocab_logits"])
        return out


class Embed(nn.Module):
    """embedding (V, d) ~ N(0, 1); tokens (...) int -> (..., d) in `dtype`."""

    num_embeddings: int
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        table = self.param("embedding", _normal(1.0), (self.num_embeddings, self.features), jnp.float32)
        return jnp.take(table, tokens, axis=0).astype(self.dtype)


def _check_tokens(tokens) -> None:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise PlexbenchError(f"T5 models take token ids of shape (B, L) and an integer dtype, got "
                             f"{tuple(tokens.shape)} {tokens.dtype}; check the text preprocessing")


def build_t5(config: T5Config, *, dtype: str | Dtype = "float32", readout: str = "average",
             dropout_rate: float = 0.0) -> T5Classifier:
    """The Flax module for `config`; apply it to `plexbench.models.sngp.split_state(tree)`."""
    dt = jnp.dtype(dtype)
    if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise PlexbenchError(f"dtype must be float32 or bfloat16, got {dtype}")
    if readout not in READOUTS:
        raise PlexbenchError(f"unknown readout '{readout}' (choose from {', '.join(READOUTS)})")
    return T5Classifier(config, dt, readout, float(dropout_rate))


def init_t5_params(config: T5Config, seed: int = 0, input_length: int = 8) -> dict:
    """Freshly initialised tree (params merged with the SNGP state), nested dict of numpy arrays."""
    from plexbench.models.checkpoint import flatten_params, unflatten_params
    from plexbench.models.sngp import merge_state

    module = build_t5(config)
    tokens = jnp.ones((1, input_length), jnp.int32)
    variables = jax.jit(lambda k: merge_state(module.init(k, tokens)))(jax.random.PRNGKey(seed))
    flat = flatten_params(jax.device_get(variables))
    return unflatten_params({k: np.asarray(v) for k, v in flat.items()})
