"""Every layer and the whole forward pass against small independent numpy implementations (float64).

The numpy code below is written from the spec (§3), not from plexbench.models: loops over
ensemble members, heads and MC samples instead of the model's reshapes, einsums and chunks.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf, softmax

from plexbench.errors import PlexbenchError
from plexbench.models import ModelConfig, build
from plexbench.models.checkpoint import random_flat_params, unflatten_params
from plexbench.models.heads import HeteroscedasticHead, mc_softmax_mean
from plexbench.models.layers import BatchEnsembleDense, LayerNorm, MultiHeadAttention, gelu
from plexbench.models.vit import row_keys

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------------------- numpy oracle


def np_layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_dense(x, p):
    return x @ p["kernel"] + p["bias"]


def np_be_dense(x, p, ens):
    """Member m owns rows m*B..(m+1)*B-1: ((x * alpha_m) @ W) * gamma_m + bias_m."""
    b = x.shape[0] // ens
    out = [((x[m * b:(m + 1) * b] * p["fast_weight_alpha"][m]) @ p["kernel"]) * p["fast_weight_gamma"][m]
           + p["bias"][m] for m in range(ens)]
    return np.concatenate(out)


def np_attention(x, p, num_heads, ens=0):
    rows, n, d = x.shape
    dh = d // num_heads
    out = np.zeros((rows, n, d))
    heads = []
    for h in range(num_heads):
        if ens:
            q, k, v = (np_be_dense(x, p[name], ens)[..., h * dh:(h + 1) * dh] for name in ("query", "key", "value"))
        else:
            q, k, v = (x @ p[name]["kernel"][:, h, :] + p[name]["bias"][h] for name in ("query", "key", "value"))
        w = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(dh), axis=-1)
        ctx = w @ v  # (rows, n, dh)
        heads.append(ctx)
        if not ens:
            out += ctx @ p["out"]["kernel"][h]
    if ens:
        return np_be_dense(np.concatenate(heads, axis=-1), p["out"], ens)
    return out + p["out"]["bias"]


def np_het_head(feat, hp, c: ModelConfig, z):
    """z (N, S, 1 + R): eps = z[..., 0] (one scalar per row and sample), eps_R = z[..., 1:]."""
    mu = np_be_dense(feat, hp["loc_layer"], 1)
    d = np.log1p(np.exp(np_be_dense(feat, hp["diag_layer"], 1))) + 1e-3
    n, k = mu.shape
    total = np.zeros((n, k))
    for s in range(z.shape[1]):
        eps, eps_r = z[:, s, :1], z[:, s, 1:]
        noise = d * eps
        if c.parameter_efficient:
            hom = np_be_dense(eps_r, hp["scale_layer_homoscedastic"], 1)
            noise = noise + hom * np_be_dense(feat, hp["scale_layer_heteroscedastic"], 1)
        elif c.num_factors:
            v = np_be_dense(feat, hp["scale_layer"], 1).reshape(n, k, c.num_factors)
            noise = noise + np.einsum("nkr,nr->nk", v, eps_r)
        total += softmax((mu + noise) / c.temperature, axis=-1)
    return np.log(np.maximum(total / z.shape[1], 1e-7))


def documented_draws(rng_key, batch, ens, num_samples, num_factors):
    """The head's noise rebuilt from its documented key rule with plain jax.random calls:
    example b: fold_in(rng, b); its member-m row: fold_in(., m); sample s: normal(fold_in(., s), (1+R,))."""
    z = np.zeros((ens * batch, num_samples, 1 + num_factors))
    for m in range(ens):
        for b in range(batch):
            row_key = jax.random.fold_in(jax.random.fold_in(rng_key, b), m)
            for s in range(num_samples):
                z[m * batch + b, s] = np.asarray(jax.random.normal(jax.random.fold_in(row_key, s), (1 + num_factors,)))
    return z


def np_forward(c: ModelConfig, p, images, rng_key=None):
    """Whole model: returns (logits (E,B,K), pre_logits (E,B,F), log_probs (B,K)) in float64."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    b, size = images.shape[0], c.image_size
    ps, g, d, e = c.patch_size, size // c.patch_size, c.hidden_size, c.ensemble_size
    tokens = [np.zeros((b, d)) + p["cls"][0, 0]]
    for i in range(g):
        for j in range(g):
            patch = images[:, i * ps:(i + 1) * ps, j * ps:(j + 1) * ps, :].reshape(b, -1)
            tokens.append(patch @ p["embedding"]["kernel"].reshape(-1, d) + p["embedding"]["bias"])
    x = np.stack(tokens, axis=1) + p["Transformer"]["posembed_input"]["pos_embedding"]
    for layer in range(c.num_layers):
        if c.be_layers and layer == min(c.be_layers):
            x = np.concatenate([x] * e)
        blk = p["Transformer"][f"encoderblock_{layer}"]
        ens = e if layer in c.be_layers else 0
        x = x + np_attention(np_layer_norm(x, blk["LayerNorm_0"]), blk["MultiHeadDotProductAttention_1"],
                             c.num_heads, ens if c.ensemble_attention else 0)
        y = np_layer_norm(x, blk["LayerNorm_2"])
        mlp = blk["MlpBlock_3"]
        layer_fn = (lambda v, q: np_be_dense(v, q, ens)) if ens else np_dense
        x = x + layer_fn(np_gelu_tanh(layer_fn(y, mlp["Dense_0"])), mlp["Dense_1"])
    pre = feat = np_layer_norm(x, p["Transformer"]["encoder_norm"])[:, 0]
    if c.representation_size:
        pre = np_be_dense(feat, p["pre_logits"], e) if e > 1 else np_dense(feat, p["pre_logits"])
        feat = np.tanh(pre)
    if c.head == "dense":
        logits = np_dense(feat, p["head"])
    elif c.head == "batchensemble":
        logits = np_be_dense(feat, p["batchensemble_head"], e)
    else:
        z = documented_draws(rng_key, b, e, c.num_mc_samples, c.num_factors)
        logits = np_het_head(feat, p["head"], c, z)
    logits = logits.reshape(e, b, -1)
    probs = softmax(logits, axis=-1).mean(0)
    return logits, pre.reshape(e, b, -1), np.log(probs)


# ---------------------------------------------------------------------------- layers


def _apply(module, params, *args):
    return np.asarray(jax.jit(lambda p, *a: module.apply({"params": p}, *a))(params, *args), np.float64)


@functools.lru_cache(maxsize=None)
def _jitted_apply(module):
    return jax.jit(lambda p, x, k: module.apply({"params": p}, x, rng=k))


def forward(module, params, images, rng=None):
    """module.apply under jit (eager op-by-op dispatch of a whole ViT is slow); one compiled
    function per module (flax modules hash by their fields), so equal shapes compile once."""
    return _jitted_apply(module)(params, images, rng)


def test_batchensemble_dense_matches_per_member_loop():
    ens, b, n_in, n_out = 3, 4, 5, 6
    p = {"kernel": RNG.normal(size=(n_in, n_out)), "fast_weight_alpha": RNG.normal(size=(ens, n_in)),
         "fast_weight_gamma": RNG.normal(size=(ens, n_out)), "bias": RNG.normal(size=(ens, n_out))}
    x = RNG.normal(size=(ens * b, 2, n_in))  # rows x tokens x features
    got = _apply(BatchEnsembleDense(n_out, ens), jax.tree_util.tree_map(jnp.float32, p), jnp.float32(x))
    np.testing.assert_allclose(got, np_be_dense(x, p, ens), rtol=1e-5, atol=1e-5)
    # Member-major: swapping the first two blocks of rows must change the result.
    swapped = np.concatenate([x[b:2 * b], x[:b], x[2 * b:]])
    assert not np.allclose(got, np_be_dense(swapped, p, ens), atol=1e-3)


def test_one_member_batchensemble_dense_is_shared_by_all_rows():
    p = {"kernel": RNG.normal(size=(3, 2)), "fast_weight_alpha": RNG.normal(size=(1, 3)),
         "fast_weight_gamma": RNG.normal(size=(1, 2)), "bias": RNG.normal(size=(1, 2))}
    x = RNG.normal(size=(7, 3))
    want = (x * p["fast_weight_alpha"][0]) @ p["kernel"] * p["fast_weight_gamma"][0] + p["bias"][0]
    got = _apply(BatchEnsembleDense(2, 1), jax.tree_util.tree_map(jnp.float32, p), jnp.float32(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_layer_norm_uses_epsilon_1e6():
    # Variance ~1e-6: eps 1e-6 vs 1e-5 changes the output by a factor sqrt(2e-6 / 1.1e-5) ~ 0.43.
    x = 1.0 + 1e-3 * np.array([[1.0, -1.0, 1.0, -1.0]])  # var = 1e-6 exactly
    p = {"scale": np.array([1.0, 2.0, 0.5, 1.0]), "bias": np.array([0.0, 0.1, 0.0, -0.1])}
    got = _apply(LayerNorm(), jax.tree_util.tree_map(jnp.float32, p), jnp.float32(x))
    np.testing.assert_allclose(got, np_layer_norm(x, p, 1e-6), rtol=2e-3, atol=2e-3)
    # (x - mean) / sqrt(2e-6) = +-0.7071 before scale/bias.
    np.testing.assert_allclose(got[0, 0], 1e-3 / math.sqrt(2e-6), rtol=2e-3)
    assert not np.allclose(got, np_layer_norm(x, p, 1e-5), rtol=1e-2, atol=1e-2)


def test_gelu_is_the_tanh_approximation():
    x = np.linspace(-4, 4, 81)
    got = np.asarray(gelu(jnp.float32(x)), np.float64)
    np.testing.assert_allclose(got, np_gelu_tanh(x), atol=1e-6)
    exact = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    assert np.max(np.abs(got - exact)) > 1e-4  # the erf GELU is a different function


@pytest.mark.parametrize("ens", [0, 2])
def test_attention_matches_per_head_loop(ens):
    rows, n, d, h = 4, 5, 8, 2
    dh = d // h
    if ens:
        def be(n_in, n_out):
            return {"kernel": RNG.normal(size=(n_in, n_out)) / np.sqrt(n_in),
                    "fast_weight_alpha": RNG.normal(size=(ens, n_in)), "fast_weight_gamma": RNG.normal(size=(ens, n_out)),
                    "bias": RNG.normal(size=(ens, n_out))}
        p = {"query": be(d, d), "key": be(d, d), "value": be(d, d), "out": be(d, d)}
    else:
        p = {name: {"kernel": RNG.normal(size=(d, h, dh)) / np.sqrt(d), "bias": RNG.normal(size=(h, dh))}
             for name in ("query", "key", "value")}
        p["out"] = {"kernel": RNG.normal(size=(h, dh, d)) / np.sqrt(d), "bias": RNG.normal(size=(d,))}
    x = RNG.normal(size=(rows, n, d))
    got = _apply(MultiHeadAttention(h, ens), jax.tree_util.tree_map(jnp.float32, p), jnp.float32(x))
    np.testing.assert_allclose(got, np_attention(x, p, h, ens), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- heteroscedastic head


def _het_params(f, k, r, parameter_efficient):
    def be(n_in, n_out):
        return {"kernel": RNG.normal(size=(n_in, n_out)) / np.sqrt(n_in), "fast_weight_alpha": RNG.normal(size=(1, n_in)),
                "fast_weight_gamma": RNG.normal(size=(1, n_out)), "bias": RNG.normal(size=(1, n_out))}
    p = {"loc_layer": be(f, k), "diag_layer": be(f, k)}
    if parameter_efficient:
        p["scale_layer_homoscedastic"] = be(r, k)
        p["scale_layer_heteroscedastic"] = be(f, k)
    elif r:
        p["scale_layer"] = be(f, k * r)
    return p


@pytest.mark.parametrize("r,pe,chunk", [(0, False, None), (2, False, 3), (3, True, 2), (2, False, 7)])
def test_heteroscedastic_head_with_documented_noise(r, pe, chunk):
    n, f, k, s, t = 5, 4, 6, 7, 1.25
    c = ModelConfig(image_size=4, patch_size=4, hidden_size=4, mlp_dim=4, num_heads=1, num_layers=1,
                    num_classes=k, head="heteroscedastic", num_factors=r, temperature=t, num_mc_samples=s,
                    parameter_efficient=pe)
    p = _het_params(f, k, r, pe)
    feat = RNG.normal(size=(n, f))
    key = jax.random.PRNGKey(7)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n, dtype=jnp.uint32))
    head = HeteroscedasticHead(k, r, t, s, pe, chunk)
    got = _apply(head, jax.tree_util.tree_map(jnp.float32, p), jnp.float32(feat), keys)
    z = np.stack([np.stack([np.asarray(jax.random.normal(jax.random.fold_in(keys[i], j), (1 + r,)))
                            for j in range(s)]) for i in range(n)])
    np.testing.assert_allclose(got, np_het_head(feat, p, c, z), rtol=1e-4, atol=1e-5)


def test_mc_softmax_mean_with_injected_noise_and_one_scalar_eps_per_sample():
    # Hand case: K = 2, one row, mu = (0, 0), d = (1, 3), no factors, T = 1, two samples with
    # eps = +1 and -1: logits (1, 3) and (-1, -3) -> p = mean(softmax) = (0.5, 0.5) by symmetry;
    # a per-class eps would not give this symmetry in general.
    mu = jnp.zeros((1, 2))
    d = jnp.array([[1.0, 3.0]])
    z = jnp.array([[[1.0]], [[-1.0]]])  # (S, N, 1)
    p = mc_softmax_mean(mu, d, None, lambda ids: z[ids], num_samples=2, temperature=1.0, chunk_size=1)
    s1 = 1 / (1 + math.exp(2.0))  # softmax((1, 3))[0]
    s2 = 1 / (1 + math.exp(-2.0))  # softmax((-1, -3))[0]
    np.testing.assert_allclose(np.asarray(p), [[(s1 + s2) / 2, 1 - (s1 + s2) / 2]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(p), [[0.5, 0.5]], atol=1e-6)


def test_mc_chunking_does_not_change_the_estimate():
    n, k, r, s = 3, 5, 2, 11
    mu, d = jnp.asarray(RNG.normal(size=(n, k)), jnp.float32), jnp.ones((n, k)) * 0.7
    v = jnp.asarray(RNG.normal(size=(n, k, r)), jnp.float32)
    z = jnp.asarray(RNG.normal(size=(s, n, 1 + r)), jnp.float32)
    noise = lambda e: jnp.einsum("nkr,cnr->cnk", v, e)  # noqa: E731
    results = [np.asarray(mc_softmax_mean(mu, d, noise, lambda ids: z[ids], num_samples=s, temperature=1.5,
                                          chunk_size=c)) for c in (1, 4, 11, None)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-6, atol=1e-7)


def test_released_head_sampling_fits_in_chunked_memory():
    # Released head: K = 1000, R = 15, S = 1000; batch 32 x E = 3 -> 96 rows. All S samples at
    # once hold 1000 * 96 * 1000 float32 = 384 MB of logits (XLA plans ~730 MiB of temporaries);
    # the default chunks keep one (C, 96, 1000) block with C * 96 * 1000 <= 2**22 (~32 MiB here).
    from plexbench.models.heads import standard_normal_draws

    n, k, r, s = 96, 1000, 15, 1000

    def temp_bytes(chunk):
        def head(mu, d, v, key):
            keys = jax.random.split(key, n)
            return mc_softmax_mean(mu, d, lambda e: jnp.einsum("nkr,cnr->cnk", v, e),
                                   lambda ids: standard_normal_draws(keys, ids, r), num_samples=s,
                                   temperature=1.25, chunk_size=chunk)

        args = (jax.ShapeDtypeStruct((n, k), jnp.float32), jax.ShapeDtypeStruct((n, k), jnp.float32),
                jax.ShapeDtypeStruct((n, k, r), jnp.float32), jax.random.PRNGKey(0))
        return jax.jit(head).lower(*args).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(None) < 64 * 2**20
    assert temp_bytes(s) > 256 * 2**20  # one chunk of all samples: what the chunking avoids


# ---------------------------------------------------------------------------- whole model

TINY = dict(image_size=8, patch_size=4, hidden_size=8, mlp_dim=16, num_heads=2, num_layers=3, num_classes=4)
CONFIGS = {
    "deterministic": ModelConfig(**TINY),
    "deterministic-representation": ModelConfig(**TINY, representation_size=6),
    "plex-finetuned": ModelConfig(**TINY, ensemble_size=2, be_layers=(1, 2), head="heteroscedastic",
                                  num_factors=2, temperature=1.5, num_mc_samples=5),
    "plex-upstream-ensemble-attention": ModelConfig(**TINY, ensemble_size=3, be_layers=(2,), ensemble_attention=True,
                                                    representation_size=6, head="batchensemble"),
    "plex-parameter-efficient": ModelConfig(**TINY, ensemble_size=2, be_layers=(0, 2), head="heteroscedastic",
                                            num_factors=2, num_mc_samples=4, parameter_efficient=True),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_whole_model_matches_numpy_reimplementation(name):
    c = CONFIGS[name]
    p = unflatten_params(random_flat_params(c, seed=3))
    images = RNG.uniform(-1, 1, size=(3, 8, 8, 3))
    key = jax.random.PRNGKey(11)
    out = forward(build(c), p, jnp.float32(images), key)
    logits, pre, log_probs = np_forward(c, p, images, key)
    e = c.ensemble_size
    assert out["logits"].shape == (e, 3, 4) and out["pre_logits"].shape == (e, 3, c.pre_logits_size)
    assert all(v.dtype == jnp.float32 for v in out.values())
    np.testing.assert_allclose(np.asarray(out["logits"]), logits, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(out["pre_logits"]), pre, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(out["log_probs"]), log_probs, rtol=2e-4, atol=2e-5)
    if e > 1:  # members really differ, so log-mean-exp is not a no-op
        assert np.abs(logits[0] - logits[1]).max() > 1e-3


def test_log_probs_are_log_mean_exp_of_member_log_softmax():
    c = CONFIGS["plex-upstream-ensemble-attention"]
    p = unflatten_params(random_flat_params(c, seed=5))
    out = forward(build(c), p, jnp.float32(RNG.uniform(-1, 1, (2, 8, 8, 3))))
    lg = np.asarray(out["logits"], np.float64)
    member_lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    want = np.log(np.exp(member_lp).mean(0))  # probability averaging (spec §3)
    np.testing.assert_allclose(np.asarray(out["log_probs"]), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(want, member_lp.mean(0), atol=1e-4)  # differs from logit averaging


def test_per_example_keys_make_predictions_independent_of_batching():
    c = CONFIGS["plex-finetuned"]
    p = unflatten_params(random_flat_params(c, seed=2))
    images = jnp.float32(RNG.uniform(-1, 1, (3, 8, 8, 3)))
    per_example = lambda seed: jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(  # noqa: E731
        jnp.arange(3, dtype=jnp.uint32))
    keys = per_example(0)
    module = build(c)
    whole = forward(module, p, images, keys)["logits"]
    alone = forward(module, p, images[1:2], keys[1:2])["logits"]
    np.testing.assert_allclose(np.asarray(alone[:, 0]), np.asarray(whole[:, 1]), rtol=1e-5, atol=1e-6)
    other = forward(module, p, images, per_example(1))["logits"]
    assert np.abs(np.asarray(other) - np.asarray(whole)).max() > 1e-4  # the key matters


def test_row_keys_accept_raw_and_typed_keys_member_major():
    key = jax.random.PRNGKey(5)  # raw uint32 (2,)
    rows = row_keys(key, 2, 3)
    typed = row_keys(jax.random.wrap_key_data(key), 2, 3)
    assert rows.shape == (6,)
    np.testing.assert_array_equal(jax.random.key_data(rows), jax.random.key_data(typed))
    # Row m*B + b is fold_in(fold_in(key, b), m) (documented rule).
    want = jax.random.fold_in(jax.random.fold_in(key, 1), 2)
    np.testing.assert_array_equal(jax.random.key_data(rows[2 * 2 + 1]), np.asarray(want))
    per_example = jnp.stack([jax.random.PRNGKey(9), jax.random.PRNGKey(10)])  # raw (B, 2)
    rows = row_keys(per_example, 2, 1)
    np.testing.assert_array_equal(jax.random.key_data(rows[1]), np.asarray(jax.random.fold_in(jax.random.PRNGKey(10), 0)))
    with pytest.raises(PlexbenchError, match="per-example keys"):
        row_keys(per_example, 3, 1)


def test_heteroscedastic_model_needs_a_key_and_checks_image_shape():
    c = CONFIGS["plex-finetuned"]
    p = unflatten_params(random_flat_params(c))
    with pytest.raises(PlexbenchError, match="rng"):
        jax.eval_shape(lambda x: build(c).apply({"params": p}, x), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(PlexbenchError, match=r"\(B, 8, 8, 3\)"):
        jax.eval_shape(lambda x: build(c).apply({"params": p}, x, rng=jax.random.PRNGKey(0)), jnp.zeros((1, 12, 12, 3)))


def test_bfloat16_compute_is_close_to_float32_and_returns_float32():
    c = CONFIGS["plex-upstream-ensemble-attention"]
    p = unflatten_params(random_flat_params(c, seed=9))
    images = jnp.float32(RNG.uniform(-1, 1, (4, 8, 8, 3)))
    f32 = forward(build(c), p, images)
    bf16 = forward(build(c, dtype="bfloat16"), p, images)
    assert all(v.dtype == jnp.float32 for v in bf16.values())
    diff = np.abs(np.asarray(bf16["log_probs"]) - np.asarray(f32["log_probs"])).max()
    assert 0 < diff < 0.1  # bfloat16 has 8 mantissa bits: close, but not identical
    with pytest.raises(PlexbenchError, match="dtype"):
        build(c, dtype="float16")
