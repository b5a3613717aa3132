"""ModelConfig validation and serialisation; the numpy layout equals the Flax model's for random
small configs (hypothesis); the position-embedding zoom equals scipy's for random grids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from flax.traverse_util import flatten_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plexbench.models import ModelConfig, build, param_count, param_shapes
from plexbench.models.checkpoint import zoom_bilinear

BASE = dict(image_size=8, patch_size=4, hidden_size=8, mlp_dim=16, num_heads=2, num_layers=3, num_classes=4)


@pytest.mark.parametrize("changes,fragment", [
    (dict(patch_size=3), "does not divide image_size"),
    (dict(num_heads=3), "does not divide hidden_size"),
    (dict(ensemble_size=2), "needs at least one BatchEnsemble layer"),
    (dict(ensemble_size=2, be_layers=(3,)), "be_layers"),
    (dict(ensemble_size=2, be_layers=(1, 1)), "be_layers"),
    (dict(be_layers=(1,)), "need ensemble_size > 1"),
    (dict(head="gp"), "head must be one of"),
    (dict(head="heteroscedastic", parameter_efficient=True), "parameter_efficient needs num_factors >= 1"),
    (dict(temperature=0.0), "temperature"),
    (dict(num_mc_samples=0), "num_mc_samples must be >= 1"),
])
def test_invalid_configs_are_rejected(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        ModelConfig(**{**BASE, **changes})


def test_dict_round_trip_and_unknown_fields():
    c = ModelConfig(**BASE, ensemble_size=2, be_layers=[1, 2], head="heteroscedastic", num_factors=2)
    assert c.be_layers == (1, 2)
    d = c.to_dict()
    assert d["be_layers"] == [1, 2] and ModelConfig.from_dict(d) == c
    with pytest.raises(ValueError, match="unknown ModelConfig fields: colour"):
        ModelConfig.from_dict({**d, "colour": 1})
    assert c.num_tokens == 1 + 2 * 2 and c.head_dim == 4


configs = st.builds(
    lambda layers, heads, e, be, head, r, pe, rep, att: ModelConfig(
        image_size=8, patch_size=4, hidden_size=4 * heads, mlp_dim=6, num_heads=heads, num_layers=layers,
        num_classes=3, ensemble_size=e, be_layers=tuple(sorted({i % layers for i in be})) if e > 1 else (),
        ensemble_attention=att and e > 1, representation_size=rep, head=head,
        num_factors=max(r, 1) if pe and head == "heteroscedastic" else r,
        parameter_efficient=pe and head == "heteroscedastic", num_mc_samples=2),
    st.integers(1, 3), st.integers(1, 2), st.integers(1, 3), st.lists(st.integers(0, 2), min_size=1, max_size=3),
    st.sampled_from(["dense", "batchensemble", "heteroscedastic"]), st.integers(0, 3), st.booleans(),
    st.sampled_from([None, 5]), st.booleans())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_numpy_layout_equals_flax_model_layout(config):
    images = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: build(config).init(jax.random.PRNGKey(0), x, rng=jax.random.PRNGKey(1)), images)
    got = {k: tuple(v.shape) for k, v in flatten_dict(shapes["params"], sep="/").items()}
    assert got == param_shapes(config)
    assert param_count(config) == sum(int(np.prod(s)) for s in got.values())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_zoom_equals_scipy_for_any_grid(old, new, seed):
    grid = np.random.default_rng(seed).normal(size=(old, old, 2))
    want = scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)
    assert want.shape == (new, new, 2)  # scipy rounds old * (new / old) back to new
    np.testing.assert_allclose(zoom_bilinear(grid, new), want, rtol=1e-10, atol=1e-10)
