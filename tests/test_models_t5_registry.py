"""The six released T5-Plex configs (spec §9) shape-checked with jax.eval_shape, their label tokens,
the analytic T5 FLOPs against the traced program and XLA, and `plexbench model info` on T5 models."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from plexbench.models import param_shapes
from plexbench.models.checkpoint import random_flat_params, unflatten_params
from plexbench.models.flops import flops_per_example, t5_flops_per_example
from plexbench.models.registry import MODELS, get_model
from plexbench.models.sngp import merge_state, split_state
from plexbench.models.t5 import build_t5
from plexbench.models.t5_config import T5Config
from plexbench.models.t5x_checkpoint import write_t5x_checkpoint

RELEASED = [f"plex-t5-{size}-{task}" for size in ("small", "large") for task in ("mnli", "nalue", "toxicity")]


def plexbench(*args):
    env = {**os.environ, "PLEXBENCH_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "plexbench", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("name", RELEASED)
def test_released_configs_shape_check_against_the_spec_tree(name):
    c = get_model(name).config
    shapes = jax.eval_shape(lambda t: merge_state(build_t5(c).init(jax.random.PRNGKey(0), t)),
                            jax.ShapeDtypeStruct((1, 8), jnp.int32))
    got = {k: tuple(v.shape) for k, v in flatten_dict(shapes, sep="/").items()}
    assert got == param_shapes(c)
    d, heads, mlp, layers = (512, 6, 1024, 8) if "small" in name else (1024, 16, 2816, 24)
    last = layers - 1
    spec = {  # spec §9, written out
        "token_embedder/embedding": (32128, d),
        "encoder/relpos_bias/rel_embedding": (heads, 32),
        "decoder/relpos_bias/rel_embedding": (heads, 32),
        "encoder/layers_0/attention/query/kernel": (d, heads * 64),
        "encoder/layers_0/attention/out/kernel": (heads * 64, d),
        "encoder/layers_0/mlp/wi_0/kernel": (d, mlp),
        "encoder/layers_0/mlp/wo/kernel": (mlp, d),
        f"decoder/layers_{last}/mlp/wi_1/fast_weight_alpha": (5, d),
        f"decoder/layers_{last}/mlp/wi_1/fast_weight_gamma": (5, mlp),
        f"decoder/layers_{last}/mlp/wo/fast_weight_alpha": (5, mlp),
        f"decoder/layers_{last}/mlp/wo/fast_weight_gamma": (5, d),
        "decoder/gp_head/output_layer/kernel": (1024, 32128),
        "decoder/gp_head/output_layer/bias": (32128,),
        "decoder/gp_head_state/random_features/hidden_layer/kernel": (d, 1024),
        "decoder/gp_head_state/laplace_covariance/covmat_layer/precision_matrix": (1024, 1024),
        "decoder/gp_head_state/step": (),
        f"decoder/layers_{last}/encoder_decoder_attention/key/kernel": (d, heads * 64),
    }
    for key, shape in spec.items():
        assert got[key] == shape, key
    assert f"encoder/layers_{layers}/mlp/wo/kernel" not in got and f"encoder/layers_{last}/mlp/wo/kernel" in got
    assert not any(k.startswith(f"decoder/layers_{last - 1}/mlp/") and "fast_weight" in k for k in got)
    assert "decoder/logits_dense/kernel" not in got
    if "small" in name:
        assert c.head_dim * c.num_heads == 384  # 512 x 384 attention kernels


def test_label_tokens_and_target_lengths():
    for size in ("small", "large"):
        for task in ("mnli", "toxicity"):
            c = get_model(f"plex-t5-{size}-{task}").config
            assert c.label_tokens == (32099, 32098) and c.target_length == 1  # <extra_id_0>, <extra_id_1>
        nalue = get_model(f"plex-t5-{size}-nalue").config
        assert nalue.label_tokens == () and nalue.target_length == 3
    assert get_model("plex-t5-small-mnli").preprocess == "mnli_input|tokenize(t5,512)"
    assert get_model("t5-plex-mini").preprocess == "text_input|tokenize(fortunes,64)"
    assert sorted(n for n in MODELS.names() if "t5" in n) == sorted(RELEASED + ["t5-det-mini", "t5-plex-mini"])


# ---------------------------------------------------------------------------- FLOPs


def dot_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lhs_contract)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += dot_flops(inner)
    return total


FLOP_CONFIGS = {
    "sngp-be": T5Config(vocab_size=64, d_model=32, num_heads=2, head_dim=16, mlp_dim=48, num_encoder_layers=2,
                        num_decoder_layers=2, label_tokens=(5, 6, 7), ensemble_size=3, gp_hidden_features=24,
                        input_length=20),
    "dense": T5Config(vocab_size=64, d_model=32, num_heads=4, head_dim=8, mlp_dim=48, num_encoder_layers=1,
                      num_decoder_layers=3, label_tokens=(5, 6), head="dense", input_length=20),
}


@pytest.mark.parametrize("name", sorted(FLOP_CONFIGS))
def test_analytic_t5_flops_equal_traced_dot_flops_and_xla(name):
    c = FLOP_CONFIGS[name]
    tree = unflatten_params(random_flat_params(c))
    tokens = jnp.ones((4, c.input_length), jnp.int32)
    fn = lambda t, x: build_t5(c).apply(split_state(t), x)["logits"]  # noqa: E731
    # the Cholesky factorisation of the SNGP variance is once per batch (not counted per example);
    # cho_solve's two triangular solves are counted as 2 R^2 multiply-adds per row.
    traced = dot_flops(jax.make_jaxpr(fn)(tree, tokens).jaxpr)
    analytic = 4 * flops_per_example(c)["total"]
    variance = 4 * t5_flops_per_example(c).get("gp_variance", 0)
    assert traced == analytic - variance
    cost = jax.jit(fn).lower(tree, tokens).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert 0.9 * analytic <= cost["flops"] <= 1.6 * analytic  # XLA also counts elementwise work


def test_breakdown_by_hand():
    c = FLOP_CONFIGS["dense"]  # L 20, T 1, d 32, I 32, M 48, 1 + 3 layers, C 2
    f = t5_flops_per_example(c)
    assert f["encoder_attention"] == 8 * 20 * 32 * 32 + 4 * 20 * 20 * 32
    assert f["encoder_mlp"] == 6 * 20 * 32 * 48
    assert f["decoder_attention"] == 3 * (8 * 32 * 32 + 4 * 32 + 4 * 32 * 32 + 4 * 20 * 32 * 32 + 4 * 20 * 32)
    assert f["decoder_mlp"] == 3 * 6 * 32 * 48 and f["head"] == 2 * 32 * 2


# ---------------------------------------------------------------------------- CLI


def test_model_info_of_a_released_config():
    result = plexbench("model", "info", "plex-t5-small-mnli")
    assert result.returncode == 0, result.stderr
    n = sum(math.prod(s) for s in param_shapes(get_model("plex-t5-small-mnli").config).values())
    assert f"parameters: {n:,}" in result.stdout and "label tokens: [32099, 32098]" in result.stdout
    assert "t5-plex-mini" in plexbench("list", "models").stdout


def test_model_info_checks_a_t5x_directory_and_a_vocab(tmp_path):
    from plexbench.models.tokenizer import train_vocab

    c = get_model("t5-det-mini").config
    tree = unflatten_params(random_flat_params(c, 1))
    write_t5x_checkpoint(tmp_path / "good", tree, zarr={"token_embedder/embedding"})
    ok = plexbench("model", "info", "t5-det-mini", "--checkpoint", str(tmp_path / "good"), "--json")
    assert ok.returncode == 0, ok.stderr
    tree["decoder"]["logits_dense"]["kernel"] = np.zeros((64, 10), np.float32)
    write_t5x_checkpoint(tmp_path / "bad", tree)
    bad = plexbench("model", "info", "t5-det-mini", "--checkpoint", str(tmp_path / "bad"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "decoder/logits_dense/kernel (64, 10)" in bad.stderr
    small = train_vocab(["some text to learn a tiny vocabulary from, with a few more words in it"] * 30,
                        tmp_path / "tiny.spm", vocab_size=25)
    assert small.extra_id(0) == 124
    wrong = plexbench("model", "info", "plex-t5-small-mnli", "--vocab", str(tmp_path / "tiny.spm"))
    assert wrong.returncode == 2 and "puts <extra_id_0>, <extra_id_1> at [124, 123]" in wrong.stderr
    vit = plexbench("model", "info", "det-mini", "--vocab", str(tmp_path / "tiny.spm"))
    assert vit.returncode == 2 and "--vocab applies to T5 models" in vit.stderr
