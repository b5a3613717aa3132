"""The SNGP layer (spec §12) against closed forms in float64 numpy, and `head: sngp` on the ViT."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from plexbench.models import ModelConfig, build, param_shapes
from plexbench.models.checkpoint import load_params, write_random_checkpoint
from plexbench.models.sngp import (
    GP_STATE,
    RandomFeatureGaussianProcess,
    mean_field_logits,
    merge_state,
    predictive_variance,
    random_features,
    split_state,
    update_precision,
)

RNG = np.random.default_rng(7)


def np_normalize(x):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6)


def test_random_feature_map_is_scaled_cosine():
    x, w, b = RNG.normal(size=(5, 3)), RNG.normal(size=(3, 4)), RNG.uniform(0, 2 * np.pi, 4)
    got = np.asarray(random_features(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                     jnp.asarray(b, jnp.float32), feature_scale=2.0))
    want = np.stack([[2.0 * math.cos(sum(x[n, i] * w[i, r] for i in range(3)) + b[r]) for r in range(4)]
                     for n in range(5)])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("ridge", [1.0, 0.5])
def test_variance_equals_explicit_inverse(ridge):
    a = RNG.normal(size=(6, 6))
    precision = np.eye(6) + a @ a.T
    phi = RNG.normal(size=(2, 3, 6))
    got = np.asarray(predictive_variance(jnp.asarray(precision, jnp.float32), jnp.asarray(phi, jnp.float32), ridge))
    inv = np.linalg.inv(precision)
    want = np.array([[ridge * phi[i, j] @ inv @ phi[i, j] for j in range(3)] for i in range(2)])
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_worked_example_of_the_docstring():
    p = update_precision(jnp.eye(1), jnp.ones((1, 1)))
    assert float(p[0, 0]) == 2.0
    var = predictive_variance(p, jnp.ones((1, 1)))
    assert float(var[0]) == pytest.approx(0.5)
    assert float(mean_field_logits(jnp.array([[3.0]]), var, 2.0)[0, 0]) == pytest.approx(3 / math.sqrt(2))


def test_update_rule_step_by_step():
    r = 3
    batches = [RNG.normal(size=(4, r)) for _ in range(3)]
    p_sum, p_mom = np.eye(r), np.eye(r)
    got_sum, got_mom = jnp.eye(r), jnp.eye(r)
    for phi in batches:
        p_sum = p_sum + sum(np.outer(row, row) for row in phi)
        p_mom = 0.9 * p_mom + 0.1 * sum(np.outer(row, row) for row in phi) / len(phi)
        got_sum = update_precision(got_sum, jnp.asarray(phi, jnp.float32))
        got_mom = update_precision(got_mom, jnp.asarray(phi, jnp.float32), momentum=0.9)
        np.testing.assert_allclose(np.asarray(got_sum), p_sum, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(got_mom), p_mom, rtol=1e-5)
    # padding rows (weight 0) do not count, neither in the sum nor in N
    phi = RNG.normal(size=(4, r))
    masked = update_precision(jnp.eye(r), jnp.asarray(phi, jnp.float32), momentum=0.5,
                              weights=jnp.array([1, 1, 0, 0]))
    np.testing.assert_allclose(np.asarray(masked), 0.5 * np.eye(r) + 0.5 * phi[:2].T @ phi[:2] / 2, rtol=1e-5)


def test_mean_field_factor_negative_means_no_adjustment():
    logits = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    var = jnp.asarray(RNG.uniform(0, 5, size=4), jnp.float32)
    assert mean_field_logits(logits, var, -1.0) is logits
    np.testing.assert_allclose(np.asarray(mean_field_logits(logits, var, 0.0)), np.asarray(logits))
    want = np.asarray(logits) / np.sqrt(1 + 1e-1 * np.asarray(var))[:, None]
    np.testing.assert_allclose(np.asarray(mean_field_logits(logits, var, 1e-1)), want, rtol=1e-6)


def _layer(**kw):
    return RandomFeatureGaussianProcess(features=5, hidden_features=16, **kw)


def test_layer_names_initialisation_and_forward_against_numpy():
    layer = _layer()
    x = jnp.asarray(RNG.normal(size=(7, 4)), jnp.float32)
    variables = layer.init(jax.random.PRNGKey(0), x)
    shapes = {f"{c}/{k}": tuple(v.shape) for c in variables for k, v in flatten_dict(variables[c], sep="/").items()}
    assert shapes == {
        "params/output_layer/kernel": (16, 5), "params/output_layer/bias": (5,),
        f"{GP_STATE}/random_features/hidden_layer/kernel": (4, 16),
        f"{GP_STATE}/random_features/hidden_layer/bias": (16,),
        f"{GP_STATE}/laplace_covariance/covmat_layer/precision_matrix": (16, 16),
        f"{GP_STATE}/step": (),
    }
    state = variables[GP_STATE]
    np.testing.assert_array_equal(np.asarray(state["laplace_covariance"]["covmat_layer"]["precision_matrix"]), np.eye(16))
    b = np.asarray(state["random_features"]["hidden_layer"]["bias"])
    assert b.min() >= 0 and b.max() < 2 * np.pi

    logits, var = layer.apply(variables, x)
    w = np.asarray(state["random_features"]["hidden_layer"]["kernel"], np.float64)
    phi = np.cos(np_normalize(np.asarray(x, np.float64)) @ w + b)
    k, c = (np.asarray(variables["params"]["output_layer"][n], np.float64) for n in ("kernel", "bias"))
    np.testing.assert_allclose(np.asarray(logits), phi @ k + c, atol=1e-4)
    np.testing.assert_allclose(np.asarray(var), np.sum(phi * phi, axis=1), rtol=1e-4)  # P = I


def test_random_feature_kernel_has_variance_two_over_fan_in():
    layer = RandomFeatureGaussianProcess(features=1, hidden_features=4096)
    variables = layer.init(jax.random.PRNGKey(3), jnp.zeros((1, 50)))
    w = np.asarray(variables[GP_STATE]["random_features"]["hidden_layer"]["kernel"])
    assert abs(w.mean()) < 0.01 and w.var() == pytest.approx(2 / 50, rel=0.03)


def test_training_update_through_the_module_and_padding_rows():
    layer = _layer(normalize_input=False)
    x = jnp.asarray(RNG.normal(size=(6, 4)), jnp.float32)
    variables = layer.init(jax.random.PRNGKey(1), x)
    weights = jnp.array([1, 1, 1, 1, 0, 0])
    (_, var_before), new = layer.apply(variables, x, update_covariance=True, weights=weights, mutable=[GP_STATE])
    state = variables[GP_STATE]
    w, b = (np.asarray(state["random_features"]["hidden_layer"][n], np.float64) for n in ("kernel", "bias"))
    phi = np.cos(np.asarray(x, np.float64) @ w + b)
    p = new[GP_STATE]["laplace_covariance"]["covmat_layer"]["precision_matrix"]
    np.testing.assert_allclose(np.asarray(p), np.eye(16) + phi[:4].T @ phi[:4], rtol=1e-5, atol=1e-5)
    assert int(new[GP_STATE]["step"]) == 1
    np.testing.assert_allclose(np.asarray(var_before), np.sum(phi**2, axis=1), rtol=1e-4)  # before the update
    # the fixed features and the precision receive no gradient
    grads = jax.grad(lambda v: jnp.sum(layer.apply({"params": v, GP_STATE: state}, x)[0]))(variables["params"])
    assert set(grads) == {"output_layer"}


def test_merge_and_split_state_round_trip():
    tree = {"decoder": {"gp_head": {"output_layer": {"kernel": 1}},
                        "gp_head_state": {"step": 2, "random_features": {"hidden_layer": {"bias": 3}}},
                        "other_state": {"kernel": 4}}}
    variables = split_state(tree)
    assert variables["params"] == {"decoder": {"gp_head": {"output_layer": {"kernel": 1}}, "other_state": {"kernel": 4}}}
    assert variables[GP_STATE] == {"decoder": {"gp_head": {"step": 2, "random_features": {"hidden_layer": {"bias": 3}}}}}
    assert merge_state(variables) == tree
    assert split_state({"a": {"kernel": 1}}) == {"params": {"a": {"kernel": 1}}}


# ---------------------------------------------------------------------------- ViT head


VIT = dict(image_size=8, patch_size=4, hidden_size=8, mlp_dim=16, num_heads=2, num_layers=2, num_classes=3,
           head="sngp", gp_hidden_features=12)


@pytest.mark.parametrize("extra", [{}, dict(ensemble_size=2, be_layers=(1,))])
def test_vit_sngp_layout_equals_flax_tree(extra):
    config = ModelConfig(**VIT, **extra)
    images = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: merge_state(build(config).init(jax.random.PRNGKey(0), x)), images)
    assert {k: tuple(v.shape) for k, v in flatten_dict(shapes, sep="/").items()} == param_shapes(config)
    assert "head_state/laplace_covariance/covmat_layer/precision_matrix" in param_shapes(config)
    assert "gp_hidden_features" in config.to_dict()
    assert "gp_hidden_features" not in config.replace(head="dense").to_dict()  # other identities unchanged


def test_vit_sngp_checkpoint_round_trip_and_head_against_numpy(tmp_path):
    config = ModelConfig(**VIT, ensemble_size=2, be_layers=(1,), gp_mean_field_factor=0.5)
    stored = write_random_checkpoint(config, tmp_path / "sngp.npz", seed=3, dtype="bfloat16")
    params = load_params(config, tmp_path / "sngp.npz")
    assert params["head_state"]["step"].dtype == np.int32
    assert int(params["head_state"]["step"]) == int(stored["head_state"]["step"])
    images = jnp.asarray(RNG.uniform(-1, 1, size=(3, 8, 8, 3)), jnp.float32)
    out = build(config).apply(split_state(params), images)
    pre = np.asarray(out["pre_logits"], np.float64)  # (E, B, D): the head's input
    state, head = params["head_state"], params["head"]
    phi = np.cos(np_normalize(pre) @ state["random_features"]["hidden_layer"]["kernel"]
                 + state["random_features"]["hidden_layer"]["bias"])
    logits = phi @ head["output_layer"]["kernel"] + head["output_layer"]["bias"]
    inv = np.linalg.inv(np.asarray(state["laplace_covariance"]["covmat_layer"]["precision_matrix"], np.float64))
    var = np.einsum("ebr,rs,ebs->eb", phi, inv, phi)
    np.testing.assert_allclose(np.asarray(out["gp_variance"]), var, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(out["logits"]), logits / np.sqrt(1 + 0.5 * var)[..., None], rtol=1e-3, atol=1e-4)


def test_vit_sngp_flops_count_the_head_matmuls():
    import math as _math

    from plexbench.models.checkpoint import random_flat_params, unflatten_params
    from plexbench.models.flops import flops_per_example

    def dots(jaxpr):
        total = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                total += 2 * _math.prod(eqn.outvars[0].aval.shape) * _math.prod(eqn.invars[0].aval.shape[i] for i in contract)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        total += dots(inner)
        return total

    config = ModelConfig(**VIT, ensemble_size=2, be_layers=(1,))
    tree = unflatten_params(random_flat_params(config))
    images = jnp.zeros((3, 8, 8, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda t, x: build(config).apply(split_state(t), x)["logits"])(tree, images).jaxpr
    f = flops_per_example(config)
    assert f["head"] == 2 * 2 * 8 * 12 + 2 * 2 * 12 * 3 and f["gp_variance"] == 4 * 2 * 12 * 12
    # the variance's triangular solves are not dot_generals: everything else is
    assert dots(jaxpr) == 3 * (f["total"] - f["gp_variance"])
