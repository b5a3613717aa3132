"""Analytic matmul FLOPs vs two independent counts: every dot_general in the traced program
(scan bodies multiplied by their length), and XLA's own cost analysis of the compiled forward."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from plexbench.models import ModelConfig, build
from plexbench.models.checkpoint import random_flat_params, unflatten_params
from plexbench.models.flops import flops_per_example

BASE = dict(image_size=32, patch_size=8, hidden_size=64, mlp_dim=256, num_heads=4, num_layers=3, num_classes=10)
CONFIGS = {
    "deterministic": ModelConfig(**BASE),
    "deterministic-representation": ModelConfig(**BASE, representation_size=32),
    "plex-het": ModelConfig(**BASE, ensemble_size=3, be_layers=(1, 2), head="heteroscedastic", num_factors=3,
                            num_mc_samples=25),
    "plex-het-parameter-efficient": ModelConfig(**BASE, ensemble_size=2, be_layers=(2,), head="heteroscedastic",
                                                num_factors=4, num_mc_samples=9, parameter_efficient=True),
    "plex-upstream-ensemble-attention": ModelConfig(**BASE, ensemble_size=3, be_layers=(2,), ensemble_attention=True,
                                                    representation_size=32, head="batchensemble"),
}
BATCH = 4


def dot_flops(jaxpr) -> int:
    """2 * (output elements) * (contracted size) summed over dot_general equations, recursively."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lhs_contract)
        repeat = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += repeat * dot_flops(inner)
    return total


def _traced(config):
    params = unflatten_params(random_flat_params(config))
    module = build(config, mc_chunk_size=4)  # several scan steps plus a remainder chunk
    images = jnp.zeros((BATCH, config.image_size, config.image_size, 3), jnp.float32)
    fn = lambda p, x: module.apply({"params": p}, x, rng=jax.random.PRNGKey(0))  # noqa: E731
    return fn, params, images


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_analytic_flops_equal_traced_dot_flops(name):
    config = CONFIGS[name]
    fn, params, images = _traced(config)
    assert dot_flops(jax.make_jaxpr(fn)(params, images).jaxpr) == BATCH * flops_per_example(config)["total"]


@pytest.mark.parametrize("name", ["deterministic", "plex-upstream-ensemble-attention"])
def test_xla_cost_analysis_agrees(name):
    # XLA also counts elementwise work (LayerNorm, GELU, softmax), so it reports a little more.
    config = CONFIGS[name]
    fn, params, images = _traced(config)
    cost = jax.jit(fn).lower(params, images).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    analytic = BATCH * flops_per_example(config)["total"]
    assert analytic <= cost["flops"] <= 1.15 * analytic


def test_breakdown_hand_computed_plex_het():
    # N = 1 + 4^2 = 17, D = 64, M = 256, E = 3; blocks 1 and 2 run on 3 rows, block 0 on 1.
    flops = flops_per_example(CONFIGS["plex-het"])
    assert flops["embedding"] == 2 * 16 * (8 * 8 * 3) * 64
    assert flops["attention_projections"] == (1 + 3 + 3) * 8 * 17 * 64 * 64
    assert flops["attention_scores_values"] == (1 + 3 + 3) * 4 * 17 * 17 * 64
    assert flops["mlp"] == (1 + 3 + 3) * 4 * 17 * 64 * 256
    # loc + diag (64 -> 10) and scale (64 -> 30) per row; V @ eps_R: 25 samples x 10 x 3 per row.
    assert flops["head"] == 3 * (2 * 2 * 64 * 10 + 2 * 64 * 30)
    assert flops["mc_sampling"] == 3 * 2 * 25 * 10 * 3
    assert flops["total"] == sum(v for k, v in flops.items() if k != "total")
