"""The embedded zoo: shipped weights and model cards, their test accuracy recomputed here with
scikit-learn on the real Fashion-MNIST test split (training: tests/test_training_zoo.py)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss

from plexbench import fileio
from plexbench.data.load import load_arrays
from plexbench.data.preprocess import parse
from plexbench.models import ModelConfig, build
from plexbench.models.checkpoint import load_params
from plexbench.models.registry import MODELS, ZOO_DIR, get_model

ZOO = ["det-mini", "det-mini-fmnist6", "plex-mini", "plex-mini-fmnist6"]


def card(name):
    return json.loads((ZOO_DIR / f"{name}.json").read_text())


def test_shipped_weights_cards_and_sizes():
    assert sorted(n for n, e in MODELS.items() if e.is_zoo and e.config.architecture == "vit") == ZOO
    total = 0
    for name in ZOO:
        entry = get_model(name)
        c = card(name)
        assert entry.checkpoint.exists() and c["checkpoint"]["sha256"] == fileio.sha256_file(entry.checkpoint)
        assert ModelConfig.from_dict(c["config"]) == entry.config
        assert c["preprocess"] == entry.preprocess == "grey_to_rgb|value_range(-1,1)"
        assert c["training"]["max_steps"] is None and c["training"]["steps"] > 0
        load_params(entry.config, entry.checkpoint)  # validates every key and shape
        total += entry.checkpoint.stat().st_size
    assert total <= 20 * 2**20
    assert card("plex-mini-fmnist6")["data"]["classes"] == [0, 1, 2, 3, 4, 5]
    assert get_model("det-mini-fmnist6").config.num_classes == 6
    plex = get_model("plex-mini").config
    assert plex.ensemble_size == 3 and plex.be_layers == (2, 3) and plex.head == "heteroscedastic"
    trunk = ("image_size", "patch_size", "hidden_size", "mlp_dim", "num_heads", "num_layers", "num_classes")
    assert [getattr(plex, f) for f in trunk] == [getattr(get_model("det-mini").config, f) for f in trunk]


@pytest.mark.parametrize("name", ["det-mini", "plex-mini"])
def test_ten_class_models_reach_88_percent(name, data_dir):
    entry, c = get_model(name), card(name)
    params = load_params(entry.config, entry.checkpoint)
    test = load_arrays("fashion_mnist", "test", data_dir)
    module = build(entry.config)
    base = jax.random.PRNGKey(c["test"]["eval_seed"])

    @jax.jit
    def log_probs(x, ids):  # documented key rule of the model card: fold_in(PRNGKey(seed), example id)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(ids)
        return module.apply({"params": params}, x, rng=keys)["log_probs"]

    prep = parse(entry.preprocess)
    out = np.concatenate([np.asarray(log_probs(prep(test["image"][i:i + 2000]),
                                               jnp.asarray(test["id"][i:i + 2000], jnp.uint32)))
                          for i in range(0, len(test["label"]), 2000)])
    probs = np.exp(out.astype(np.float64))
    accuracy = accuracy_score(test["label"], probs.argmax(1))
    assert accuracy >= 0.88
    assert accuracy == pytest.approx(c["test"]["accuracy"], abs=2e-4)
    assert log_loss(test["label"], probs / probs.sum(1, keepdims=True), labels=range(10)) == \
        pytest.approx(c["test"]["nll"], abs=1e-3)
