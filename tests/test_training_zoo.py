"""The zoo trainer on the training layer: seeded runs reproduce themselves bit for bit, a killed
`zoo train` resumes to the same weights, and the model card's test metrics (through
plexbench.inference.predict) equal scikit-learn's on a direct forward pass of the saved weights."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss

from plexbench.data.load import load_arrays
from plexbench.data.preprocess import parse
from plexbench.models import ModelConfig, build
from plexbench.models import zoo as recipes
from plexbench.models.checkpoint import init_params, load_params
from plexbench.training import zoo

TINY = ModelConfig(image_size=28, patch_size=14, hidden_size=8, mlp_dim=8, num_heads=2, num_layers=2,
                   num_classes=6, ensemble_size=2, be_layers=(1,), head="heteroscedastic", num_factors=1,
                   num_mc_samples=4)


@pytest.fixture()
def tiny_recipe(monkeypatch):
    recipe = dataclasses.replace(recipes.RECIPES["plex-mini-fmnist6"], name="tiny", config=TINY, batch_size=32,
                                 train_mc_samples=2)
    monkeypatch.setitem(recipes.RECIPES, "tiny", recipe)
    monkeypatch.setattr(zoo, "CHECKPOINT_EVERY", 2)
    return recipe


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, data_dir, tiny_recipe):
    card = zoo.train_zoo_model("tiny", data_dir, tmp_path / "a", max_steps=5)
    assert card["training"]["steps"] == 5 and card["data"]["classes"] == [0, 1, 2, 3, 4, 5]
    assert card["data"]["num_test"] == 6000  # the six in-distribution classes of the 10,000 test images
    assert not (tmp_path / "a" / ".tiny.train_state.npz").exists()  # the resumable state is cleaned up

    def kill(step, loss):
        if step == 3:
            raise Killed  # state saved at step 2; step 3 is lost

    with pytest.raises(Killed):
        zoo.train_zoo_model("tiny", data_dir, tmp_path / "k", max_steps=5, callback=kill)
    assert (tmp_path / "k" / ".tiny.train_state.npz").exists()
    resumed = zoo.train_zoo_model("tiny", data_dir, tmp_path / "k", max_steps=5)
    assert resumed["training"]["resumed_from_step"] == 2
    assert resumed["checkpoint"]["sha256"] == card["checkpoint"]["sha256"]
    assert resumed["test"] == card["test"]
    # another seed gives other initial weights (the seed is really used)
    assert not np.array_equal(init_params(TINY, 0)["embedding"]["kernel"], init_params(TINY, 1)["embedding"]["kernel"])
    check_card_against_sklearn(card, tmp_path / "a" / "tiny.npz", data_dir)


def check_card_against_sklearn(card, checkpoint, data_dir):
    """The card's test metrics equal scikit-learn's on a direct forward pass of the saved weights."""
    params = load_params(TINY, checkpoint)
    test = load_arrays("fashion_mnist", "test", data_dir)
    keep = test["label"] < 6
    module = build(TINY)
    base = jax.random.PRNGKey(card["test"]["eval_seed"])

    @jax.jit
    def log_probs(x, ids):  # the card's key rule: fold_in(PRNGKey(eval_seed), example id)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(ids)
        return module.apply({"params": params}, x, rng=keys)["log_probs"]

    images, ids, labels = test["image"][keep], test["id"][keep], test["label"][keep]
    out = np.concatenate([np.asarray(log_probs(parse(card["preprocess"])(images[i:i + 1000]),
                                               jnp.asarray(ids[i:i + 1000], jnp.uint32)))
                          for i in range(0, len(labels), 1000)])
    probs = np.exp(out.astype(np.float64))
    probs /= probs.sum(1, keepdims=True)
    # the same model and keys; batches differ (XLA may round the last bits differently), so a near-tie may flip
    assert card["test"]["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(1)), abs=5e-4)
    assert card["test"]["nll"] == pytest.approx(log_loss(labels, probs, labels=range(6)), rel=1e-4)
