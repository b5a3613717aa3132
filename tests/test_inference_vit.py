"""The engine with plexbench's own ViT-Plex (small random configs): PRNG rule and dtype.

Oracle for the heteroscedastic head's randomness: the module itself applied to ONE example with
its documented per-example key, rng = fold_in(PRNGKey(seed), id)[None] (plexbench.models.vit.row_keys),
outside the engine; and the deterministic BatchEnsemble model checked against the same
per-example application (the engine must not mix rows).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from plexbench.inference import array_source, predict
from plexbench.inference.handle import handle_from_config, model_identity
from plexbench.models import ModelConfig, build
from plexbench.models.checkpoint import random_flat_params, unflatten_params

N = 13
SMALL = dict(image_size=8, patch_size=4, hidden_size=8, mlp_dim=16, num_heads=2, num_layers=2, num_classes=5)
HETERO = ModelConfig(**SMALL, ensemble_size=2, be_layers=(1,), head="heteroscedastic", num_factors=2,
                     temperature=1.5, num_mc_samples=8)
BE = ModelConfig(**SMALL, ensemble_size=3, be_layers=(1,), head="batchensemble")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (N, 8, 8, 3)).astype(np.float32)


def run(config, images, store, **kw):
    params = unflatten_params(random_flat_params(config, seed=1))
    handle = handle_from_config(config, params, name="small")
    source = array_source("synthetic", "test", images, np.arange(N) % 5)
    entry = predict(handle, "synthetic", "test", store_dir=store, source=source, verbose=False, seed=7, **kw)
    return entry, handle, params


def one_by_one(config, params, images, seed=7, dtype="float32"):
    module = build(config, dtype=dtype)
    apply = jax.jit(lambda x, key: module.apply({"params": params}, x, rng=key)["logits"])
    base = jax.random.PRNGKey(seed)
    rows = [apply(images[n:n + 1], jax.random.fold_in(base, n)[None]) for n in range(N)]
    return np.concatenate([np.asarray(r) for r in rows], axis=1)


def test_heteroscedastic_rows_follow_their_example_key(images, tmp_path):
    entry, handle, params = run(HETERO, images, tmp_path / "a", batch_size=4)
    assert handle.uses_rng is True and entry.logits.shape == (2, N, 5)
    np.testing.assert_allclose(entry.logits, one_by_one(HETERO, params, images), atol=2e-5)
    other, _, _ = run(HETERO, images, tmp_path / "b", batch_size=13, chunk_size=5)
    np.testing.assert_allclose(other.logits, entry.logits, atol=1e-6)


def test_batchensemble_members_and_identity(images, tmp_path):
    entry, handle, params = run(BE, images, tmp_path, batch_size=8)
    assert entry.logits.shape == (3, N, 5) and entry.pre_logits.shape == (3, N, 8)
    np.testing.assert_allclose(entry.logits, one_by_one(BE, params, images), atol=2e-5)
    ident = model_identity(handle)
    # param count by hand for this config is config.param_count(); identity says the same.
    from plexbench.models import param_count
    assert ident["num_params"] == param_count(BE) and ident["config"] == BE.to_dict()


def test_bfloat16_compute(images, tmp_path):
    f32, _, _ = run(BE, images, tmp_path, batch_size=8)
    bf16, _, params = run(BE, images, tmp_path, batch_size=8, dtype="bfloat16")
    assert bf16.logits.dtype == np.float32 and bf16.key != f32.key
    # bfloat16 keeps 8 significant bits: each rounding is off by up to 2^-9 relative, and the
    # batched and one-example programs round in different places (XLA picks the dot blocking
    # from the shapes), so they agree only to bfloat16 precision at logits of size ~2.
    np.testing.assert_allclose(bf16.logits, one_by_one(BE, params, images, dtype="bfloat16"), atol=0.1)
    assert 0 < np.abs(bf16.logits - f32.logits).max() < 0.25


def test_checkpoint_that_does_not_match_the_config(images, tmp_path):
    """The checkpoint is read lazily, on the first store miss: its mismatch is a one-line error
    then, and nothing is stored."""
    from plexbench.errors import PlexbenchError
    from plexbench.models.checkpoint import load_params, write_random_checkpoint

    path = tmp_path / "other.npz"
    write_random_checkpoint(HETERO, path)  # another architecture than BE
    handle = handle_from_config(BE, name="be", identity={"ckpt": "other"}, load_params=lambda: load_params(BE, path))
    source = array_source("synthetic", "test", images, np.zeros(N, np.int64))
    with pytest.raises(PlexbenchError) as e:
        predict(handle, "synthetic", "test", store_dir=tmp_path / "store", source=source, verbose=False)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert not list((tmp_path / "store").glob("*/chunk-*.npz"))
