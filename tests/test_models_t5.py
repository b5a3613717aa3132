"""The T5.1.1 (-Plex) model (spec §9): a hand-checked bucket table, the layout, a float64 numpy
forward written from the spec (loops over heads and members, explicit masks), causal masking,
padding, BatchEnsemble member independence and the two ensemble readouts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from plexbench.models.checkpoint import random_flat_params, unflatten_params
from plexbench.models.sngp import merge_state, split_state
from plexbench.models.t5 import build_t5, ensemble_log_probs, relative_position_bucket, shift_right
from plexbench.models.t5_config import T5Config, t5_param_shapes

RNG = np.random.default_rng(11)
TINY = dict(vocab_size=30, d_model=16, num_heads=2, head_dim=8, mlp_dim=24, num_encoder_layers=2,
            num_decoder_layers=2, label_tokens=(5, 7, 9), gp_hidden_features=12,
            relative_attention_num_buckets=8, relative_attention_max_distance=16)
TOKENS = np.array([[3, 4, 5, 6, 1, 0, 0], [6, 7, 1, 0, 0, 0, 0], [8, 9, 10, 11, 12, 13, 1]], np.int32)


# ---------------------------------------------------------------------------- buckets


def test_relative_position_bucket_table_by_hand():
    # Bidirectional, 32 buckets, max distance 128: 16 per direction, 0..7 exact, then
    # 8 + floor(log(n / 8) / log(16) * 8): 8..11 -> 8, 12..15 -> 9, 16..22 -> 10, 23..31 -> 11,
    # 32..45 -> 12, 46..63 -> 13, 64..90 -> 14, >= 91 -> 15; keys after the query add 16.
    before = {0: 0, 1: 1, 7: 7, 8: 8, 11: 8, 12: 9, 15: 9, 16: 10, 22: 10, 23: 11, 31: 11, 32: 12, 45: 12,
              46: 13, 63: 13, 64: 14, 90: 14, 91: 15, 127: 15, 128: 15, 1000: 15}
    for n, bucket in before.items():
        assert relative_position_bucket(-n, bidirectional=True) == bucket, n  # key n before the query
        if n:
            assert relative_position_bucket(n, bidirectional=True) == 16 + bucket, n  # key n after
    # Causal, 32 buckets: 0..15 exact, 16 + floor(log(n / 16) / log(8) * 16), capped at 31;
    # keys after the query are bucket 0 (and masked anyway).
    causal = {0: 0, 15: 15, 16: 16, 18: 16, 19: 17, 20: 17, 21: 18, 23: 18, 24: 19, 31: 21, 32: 21,
              64: 26, 112: 30, 113: 31, 5000: 31}
    for n, bucket in causal.items():
        assert relative_position_bucket(-n, bidirectional=False) == bucket, n
    assert relative_position_bucket(3, bidirectional=False) == 0
    table = relative_position_bucket(np.arange(4)[None, :] - np.arange(4)[:, None], bidirectional=True)
    np.testing.assert_array_equal(table, [[0, 17, 18, 19], [1, 0, 17, 18], [2, 1, 0, 17], [3, 2, 1, 0]])


# ---------------------------------------------------------------------------- layout


@pytest.mark.parametrize("head", ["sngp", "dense"])
@pytest.mark.parametrize("ens", [1, 3])
def test_layout_equals_flax_tree(head, ens):
    config = T5Config(**{**TINY, "head": head, "ensemble_size": ens})
    shapes = jax.eval_shape(lambda t: merge_state(build_t5(config).init(jax.random.PRNGKey(0), t)),
                            jax.ShapeDtypeStruct((2, 5), jnp.int32))
    assert {k: tuple(v.shape) for k, v in flatten_dict(shapes, sep="/").items()} == t5_param_shapes(config)
    keys = t5_param_shapes(config)
    assert ("decoder/layers_1/mlp/wi_0/fast_weight_alpha" in keys) == (ens > 1)
    assert "decoder/layers_0/mlp/wi_0/fast_weight_alpha" not in keys


def test_invalid_configs():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        T5Config(**{**TINY, "label_tokens": (5, 30)})
    with pytest.raises(ValueError, match="head must be one of"):
        T5Config(**{**TINY, "head": "heteroscedastic"})
    c = T5Config(**TINY)
    assert T5Config.from_dict(c.to_dict()) == c and c.to_dict()["architecture"] == "t5.1.1"


# ---------------------------------------------------------------------------- numpy oracle


def np_rms(x, scale):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def np_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_attention(xq, xkv, p, heads, dh, allowed, pos_bias):
    """One example: xq (Tq, d), xkv (Tk, d); allowed (Tq, Tk) bool; pos_bias (H, Tq, Tk) or None."""
    out = np.zeros((xq.shape[0], heads * dh))
    for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        q, k, v = xq @ p["query"]["kernel"][:, cols], xkv @ p["key"]["kernel"][:, cols], xkv @ p["value"]["kernel"][:, cols]
        s = q @ k.T + (0 if pos_bias is None else pos_bias[h])  # no 1/sqrt(dh)
        s = np.where(allowed, s, -1e10)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        out[:, cols] = w @ v
    return out @ p["out"]["kernel"]


def np_mlp(x, p, m=None):
    def k(name, y):
        if m is None:
            return y @ p[name]["kernel"]
        return ((y * p[name]["fast_weight_alpha"][m]) @ p[name]["kernel"]) * p[name]["fast_weight_gamma"][m]
    return k("wo", np_gelu(k("wi_0", x)) * k("wi_1", x))


def np_pos_bias(table, q_len, k_len, bidirectional, c):
    out = np.zeros((table.shape[0], q_len, k_len))
    for i in range(q_len):
        for j in range(k_len):
            b = relative_position_bucket(j - i, bidirectional=bidirectional, num_buckets=c.relative_attention_num_buckets,
                                         max_distance=c.relative_attention_max_distance)
            out[:, i, j] = table[:, b]
    return out


def np_t5(tree, c: T5Config, tokens, decoder_inputs):
    """Per example and member: (label logits (E, B, T, C), mean-field, hidden (E, B, T, d), variance)."""
    emb = tree["token_embedder"]["embedding"]
    enc_p, dec_p = tree["encoder"], tree["decoder"]
    n_e = c.ensemble_size
    rows = {"raw": [], "mf": [], "hidden": [], "var": []}
    for b in range(len(tokens)):
        valid = tokens[b] != 0
        x = emb[tokens[b]]
        allowed = valid[:, None] & valid[None, :]
        pb = np_pos_bias(enc_p["relpos_bias"]["rel_embedding"], len(x), len(x), True, c)
        for i in range(c.num_encoder_layers):
            p = enc_p[f"layers_{i}"]
            y = np_rms(x, p["pre_attention_layer_norm"]["scale"])
            x = x + np_attention(y, y, p["attention"], c.num_heads, c.head_dim, allowed, pb)
            x = x + np_mlp(np_rms(x, p["pre_mlp_layer_norm"]["scale"]), p["mlp"])
        enc = np_rms(x, enc_p["encoder_norm"]["scale"])
        per_member = {k: [] for k in rows}
        for m in range(n_e):
            y = emb[decoder_inputs[b]]
            t = len(y)
            causal = np.tril(np.ones((t, t), bool))
            dpb = np_pos_bias(dec_p["relpos_bias"]["rel_embedding"], t, t, False, c)
            for i in range(c.num_decoder_layers):
                p = dec_p[f"layers_{i}"]
                z = np_rms(y, p["pre_self_attention_layer_norm"]["scale"])
                y = y + np_attention(z, z, p["self_attention"], c.num_heads, c.head_dim, causal, dpb)
                z = np_rms(y, p["pre_cross_attention_layer_norm"]["scale"])
                y = y + np_attention(z, enc, p["encoder_decoder_attention"], c.num_heads, c.head_dim,
                                     np.ones((t, 1), bool) & valid[None, :], None)
                be = i == c.num_decoder_layers - 1 and n_e > 1
                y = y + np_mlp(np_rms(y, p["pre_mlp_layer_norm"]["scale"]), p["mlp"], m if be else None)
            hidden = np_rms(y, dec_p["decoder_norm"]["scale"])
            labels = list(c.label_tokens)
            if c.head == "sngp":
                st, out = dec_p["gp_head_state"], dec_p["gp_head"]["output_layer"]
                h = (hidden - hidden.mean(-1, keepdims=True)) / np.sqrt(hidden.var(-1, keepdims=True) + 1e-6)
                phi = np.cos(h @ st["random_features"]["hidden_layer"]["kernel"] + st["random_features"]["hidden_layer"]["bias"])
                raw = (phi @ out["kernel"] + out["bias"])[:, labels]
                inv = np.linalg.inv(st["laplace_covariance"]["covmat_layer"]["precision_matrix"])
                var = np.einsum("tr,rs,ts->t", phi, inv, phi)
                mf = raw / np.sqrt(1 + c.gp_mean_field_factor * var)[:, None]
            else:
                k = dec_p["logits_dense"]
                w = k["kernel"] if n_e == 1 else k["fast_weight_alpha"][m][:, None] * k["kernel"] * k["fast_weight_gamma"][m][None]
                raw = (hidden @ w)[:, labels]
                mf, var = raw, np.zeros(t)
            for key, v in (("raw", raw), ("mf", mf), ("hidden", hidden), ("var", var)):
                per_member[key].append(v)
        for key in rows:
            rows[key].append(np.stack(per_member[key]))
    return {k: np.stack(v, axis=1) for k, v in rows.items()}


def tree64(config, seed=0):
    flat = random_flat_params(config, seed)
    return unflatten_params({k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in flat.items()})


@pytest.mark.parametrize("head,ens", [("sngp", 3), ("dense", 1), ("dense", 2)])
def test_forward_equals_numpy_oracle(head, ens):
    config = T5Config(**{**TINY, "head": head, "ensemble_size": ens, "target_length": 2, "gp_mean_field_factor": 0.3})
    tree = tree64(config)
    targets = np.array([[5, 7], [9, 5], [7, 7]], np.int32)
    out = build_t5(config).apply(split_state(tree), jnp.asarray(TOKENS), targets=jnp.asarray(targets))
    want = np_t5(tree, config, TOKENS, np.asarray(shift_right(targets)))
    np.testing.assert_allclose(np.asarray(out["label_logits"]), want["raw"], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.asarray(out["logits"]), want["mf"], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.asarray(out["hidden"]), want["hidden"], rtol=2e-4, atol=2e-4)
    if head == "sngp":
        np.testing.assert_allclose(np.asarray(out["gp_variance"]), want["var"], rtol=1e-3)
    # ensemble readout: proper probability averaging by default
    lp = np.log(np.mean(np.exp(want["mf"] - np.log(np.sum(np.exp(want["mf"]), -1, keepdims=True))), axis=0))
    np.testing.assert_allclose(np.asarray(out["log_probs"]), lp, rtol=1e-4, atol=1e-4)


def test_causal_masking_later_targets_do_not_change_earlier_outputs():
    config = T5Config(**{**TINY, "target_length": 3, "ensemble_size": 2})
    variables = split_state(tree64(config, 1))
    module = build_t5(config)
    a = module.apply(variables, jnp.asarray(TOKENS), targets=jnp.array([[5, 7, 9]] * 3))
    b = module.apply(variables, jnp.asarray(TOKENS), targets=jnp.array([[5, 9, 5]] * 3))
    # position t reads inputs <= t: inputs are (0, t0, t1); only position 2 sees t1
    for key in ("logits", "hidden", "gp_variance"):
        np.testing.assert_array_equal(np.asarray(a[key])[:, :, :2], np.asarray(b[key])[:, :, :2])
        assert not np.allclose(np.asarray(a[key])[:, :, 2], np.asarray(b[key])[:, :, 2])


def test_extra_padding_changes_nothing():
    config = T5Config(**TINY, ensemble_size=2)
    variables = split_state(tree64(config, 2))
    module = build_t5(config)
    a = module.apply(variables, jnp.asarray(TOKENS))
    b = module.apply(variables, jnp.asarray(np.pad(TOKENS, ((0, 0), (0, 5)))))
    for key in ("logits", "hidden", "gp_variance"):
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=1e-5, atol=1e-6)


def test_batchensemble_members_are_independent():
    config = T5Config(**{**TINY, "ensemble_size": 3, "head": "dense"})
    tree = tree64(config, 3)
    module = build_t5(config)
    base = module.apply(split_state(tree), jnp.asarray(TOKENS))
    changed = jax.tree_util.tree_map(np.copy, tree)
    mlp = changed["decoder"]["layers_1"]["mlp"]
    mlp["wi_1"]["fast_weight_gamma"][1] *= 1.7  # member 1 only
    changed["decoder"]["logits_dense"]["fast_weight_alpha"][1] *= -1
    out = module.apply(split_state(changed), jnp.asarray(TOKENS))
    for key in ("logits", "hidden"):
        np.testing.assert_array_equal(np.asarray(out[key])[[0, 2]], np.asarray(base[key])[[0, 2]])
        assert not np.allclose(np.asarray(out[key])[1], np.asarray(base[key])[1])
    # identical fast weights -> identical members
    same = jax.tree_util.tree_map(np.copy, tree)
    for layer in (same["decoder"]["layers_1"]["mlp"][n] for n in ("wi_0", "wi_1", "wo")):
        layer["fast_weight_alpha"][:] = layer["fast_weight_alpha"][0]
        layer["fast_weight_gamma"][:] = layer["fast_weight_gamma"][0]
    for name in ("fast_weight_alpha", "fast_weight_gamma"):
        same["decoder"]["logits_dense"][name][:] = same["decoder"]["logits_dense"][name][0]
    out = np.asarray(module.apply(split_state(same), jnp.asarray(TOKENS))["logits"])
    np.testing.assert_allclose(out[1], out[0], rtol=1e-6)
    np.testing.assert_allclose(out[2], out[0], rtol=1e-6)


def test_readouts_on_the_docstring_example():
    logits = jnp.array([[0.0, 0.0], [2.0, 0.0]])[:, None, :]  # (E=2, B=1, C=2)
    avg = np.exp(np.asarray(ensemble_log_probs(logits, "average")))[0]
    paper = np.exp(np.asarray(ensemble_log_probs(logits, "paper")))[0]
    assert avg[0] == pytest.approx((0.5 + 1 / (1 + math.exp(-2))) / 2)
    z = math.log((1 + math.exp(2)) / 2)
    assert paper[0] == pytest.approx(math.exp(z) / (math.exp(z) + 1))
    one = jnp.asarray(RNG.normal(size=(1, 4, 3)), jnp.float32)
    np.testing.assert_allclose(np.asarray(ensemble_log_probs(one, "paper")), np.asarray(ensemble_log_probs(one)), atol=1e-6)
    config = T5Config(**TINY, ensemble_size=2)
    variables = split_state(tree64(config, 4))
    a = build_t5(config).apply(variables, jnp.asarray(TOKENS))
    p = build_t5(config, readout="paper").apply(variables, jnp.asarray(TOKENS))
    np.testing.assert_array_equal(np.asarray(a["logits"]), np.asarray(p["logits"]))
    np.testing.assert_allclose(np.asarray(p["log_probs"]), np.asarray(ensemble_log_probs(a["logits"], "paper")), atol=1e-6)


def test_greedy_decoding_continues_with_the_ensemble_choice():
    config = T5Config(**{**TINY, "target_length": 3, "ensemble_size": 2})
    variables = split_state(tree64(config, 5))
    module = build_t5(config)
    free = module.apply(variables, jnp.asarray(TOKENS))
    choice = np.asarray(config.label_tokens)[np.argmax(np.asarray(free["log_probs"]), axis=-1)]  # (B, T)
    forced = module.apply(variables, jnp.asarray(TOKENS), targets=jnp.asarray(choice))
    np.testing.assert_allclose(np.asarray(free["logits"]), np.asarray(forced["logits"]), rtol=1e-6, atol=1e-6)


def test_bfloat16_is_close_to_float32():
    config = T5Config(**TINY, ensemble_size=2)
    variables = split_state(tree64(config, 6))
    a = np.asarray(build_t5(config).apply(variables, jnp.asarray(TOKENS))["logits"])
    b = build_t5(config, dtype="bfloat16").apply(variables, jnp.asarray(TOKENS))["logits"]
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(b), a, rtol=0.1, atol=0.1 * np.abs(a).max())
