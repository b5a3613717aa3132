"""Label noise models (spec §11): exact counts and realised rates, the declared maps, seeds, and the
CIFAR-N registry entries read from a real (tiny) TFDS dataset with TFDS's own feature layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexbench.data import noise as N
from plexbench.data import registry as R
from plexbench.errors import PlexbenchError


def _labels(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(1000 + seed).integers(0, k, size=n)


# --------------------------------------------------------------------------- counts and rates


@pytest.mark.parametrize("n,rate,expected", [(10, 0.25, 3), (10, 0.24, 2), (1442, 0.2, 288), (1442, 0.4, 577),
                                             (10000, 0.2, 2000), (7, 1.0, 7), (7, 0.0, 0), (2, 0.25, 1)])
def test_rounded_count_is_half_up(n, rate, expected):
    assert N.rounded_count(rate, n) == expected


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), k=st.integers(2, 12), rate=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_flip_changes_exactly_round_rn_labels(n, k, rate, seed):
    y = _labels(n, k, seed % 7)
    out = N.flip(y, k, rate, seed)
    m = math.floor(rate * n + 0.5)
    assert out.chosen.sum() == m and out.is_noisy.sum() == m
    assert out.realised_rate == m / n
    assert np.array_equal(out.is_noisy, out.labels != y)
    assert np.array_equal(out.labels[~out.chosen], y[~out.chosen])
    assert out.labels.min() >= 0 and out.labels.max() < k


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), k=st.integers(2, 12), rate=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_symmetric_chooses_round_rn_and_may_keep_labels(n, k, rate, seed):
    y = _labels(n, k, seed % 5)
    out = N.symmetric(y, k, rate, seed)
    assert out.chosen.sum() == math.floor(rate * n + 0.5)
    assert np.array_equal(out.is_noisy, out.labels != y)
    assert not (out.is_noisy & ~out.chosen).any()  # only chosen examples change
    assert out.realised_rate == out.is_noisy.sum() / n


def test_symmetric_draws_from_all_k_and_flip_from_the_others():
    # 60,000 chosen examples: the replacement frequencies are within 5 standard errors of uniform.
    k, n = 10, 60000
    y = _labels(n, k)
    sym = N.symmetric(y, k, 1.0, seed=3)
    counts = np.bincount(sym.labels, minlength=k) / n
    assert np.abs(counts - 1 / k).max() < 5 * math.sqrt(0.1 * 0.9 / n)
    kept = 1 - sym.realised_rate  # a redraw keeps the label with probability 1/K
    assert abs(kept - 1 / k) < 5 * math.sqrt(0.1 * 0.9 / n)
    fl = N.flip(y, k, 1.0, seed=3)
    offsets = (fl.labels - y) % k
    assert offsets.min() == 1
    freq = np.bincount(offsets, minlength=k)[1:] / n
    assert np.abs(freq - 1 / (k - 1)).max() < 5 * math.sqrt((1 / 9) * (8 / 9) / n)


def test_uniform_noise_follows_the_documented_draw_order():
    """Independent re-derivation of the docstring's rule: one permutation, one draw per position."""
    y = _labels(50, 4)
    for kind, exclude in (("symmetric", False), ("flip", True)):
        out = N.apply(kind, y, 4, rate=0.3, seed=11)
        rng = np.random.default_rng(11)
        order = rng.permutation(50)
        draws = rng.integers(1, 4, size=50) if exclude else rng.integers(0, 4, size=50)
        expected = y.copy()
        for position in range(15):  # round(0.3 * 50) = 15
            row = order[position]
            expected[row] = (y[row] + draws[position]) % 4 if exclude else draws[position]
        assert np.array_equal(out.labels, expected), kind


# --------------------------------------------------------------------------- asymmetric maps


def test_spec_cifar10_map():
    # spec §11: truck->automobile, bird->airplane, cat<->dog, deer->horse
    names = R.CIFAR10_CLASSES
    by_name = {names[s]: names[t] for s, t in N.ASYMMETRIC_MAPS["cifar10"].items()}
    assert by_name == {"truck": "automobile", "bird": "airplane", "cat": "dog", "dog": "cat", "deer": "horse"}


def test_fashion_mnist_and_digits_maps():
    names = R.FASHION_MNIST_CLASSES
    by_name = {names[s]: names[t] for s, t in N.ASYMMETRIC_MAPS["fashion_mnist"].items()}
    assert by_name == {"T-shirt/top": "Shirt", "Shirt": "T-shirt/top", "Pullover": "Coat", "Coat": "Pullover",
                       "Sneaker": "Ankle boot", "Ankle boot": "Sneaker"}
    assert dict(N.ASYMMETRIC_MAPS["digits"]) == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}  # Patrini et al. 2017 (MNIST)


@pytest.mark.parametrize("map_name", ["cifar10", "fashion_mnist", "digits"])
@pytest.mark.parametrize("rate", [0.2, 0.4, 0.45])
def test_asymmetric_flips_round_rate_of_each_source_class(map_name, rate):
    y = _labels(3001, 10)
    out = N.asymmetric(y, 10, rate, seed=5, class_map=map_name)
    mapping = N.ASYMMETRIC_MAPS[map_name]
    expected_total = 0
    for c in range(10):
        rows = y == c
        if c in mapping:
            m = math.floor(rate * rows.sum() + 0.5)
            assert out.is_noisy[rows].sum() == m
            assert (out.labels[rows & out.is_noisy] == mapping[c]).all()
            expected_total += m
        else:
            assert not out.is_noisy[rows].any()
    assert out.realised_rate == expected_total / 3001
    assert out.describe()["class_map"] == {str(k): v for k, v in sorted(mapping.items())}


def test_asymmetric_worked_example_and_custom_map():
    y = np.array([0, 0, 0, 0, 1, 1])
    out = N.asymmetric(y, 2, 0.5, seed=0, class_map={0: 1})
    assert out.is_noisy.sum() == 2 and out.realised_rate == 2 / 6
    assert (out.labels[4:] == 1).all()


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("kind", ["symmetric", "flip", "asymmetric"])
def test_seeded_deterministic_and_nested_across_rates(kind):
    y = _labels(2000, 10)
    kw = {"class_map": "fashion_mnist"} if kind == "asymmetric" else {}
    a = N.apply(kind, y, 10, rate=0.2, seed=1, **kw)
    b = N.apply(kind, y, 10, rate=0.2, seed=1, **kw)
    c = N.apply(kind, y, 10, rate=0.2, seed=2, **kw)
    high = N.apply(kind, y, 10, rate=0.4, seed=1, **kw)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.chosen, b.chosen)
    assert not np.array_equal(a.chosen, c.chosen)
    # the 20% noise is part of the 40% noise with the same replacement labels
    assert (high.chosen[a.chosen]).all()
    assert np.array_equal(high.labels[a.chosen], a.labels[a.chosen])
    assert a.describe()["seed"] == 1 and a.describe()["rate"] == 0.2


def test_same_seed_same_examples_for_symmetric_and_flip():
    y = _labels(500, 10)
    assert np.array_equal(N.symmetric(y, 10, 0.3, 4).chosen, N.flip(y, 10, 0.3, 4).chosen)


# --------------------------------------------------------------------------- real noise and errors


def test_real_noise_mask_and_rate():
    clean = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    noisy = np.array([0, 1, 2, 0, 4, 5, 1, 7])
    out = N.real(clean, noisy, 10, key="aggre")
    assert out.is_noisy.tolist() == [False, False, False, True, False, False, True, False]
    assert out.realised_rate == 0.25 and out.describe()["key"] == "aggre" and out.rate is None


@pytest.mark.parametrize("call,match", [
    (lambda: N.symmetric(np.array([0, 1]), 2, 1.5, 0), "noise rate"),
    (lambda: N.flip(np.array([0, 1]), 2, 0.5, -1), "seed"),
    (lambda: N.flip(np.array([0, 3]), 2, 0.5, 0), "span"),
    (lambda: N.flip(np.array([0.0, 1.0]), 2, 0.5, 0), "integers"),
    (lambda: N.asymmetric(np.array([0, 1]), 2, 0.5, 0, class_map="nope"), "unknown asymmetric"),
    (lambda: N.asymmetric(np.array([0, 1]), 2, 0.5, 0, class_map={0: 0}), "not a change"),
    (lambda: N.asymmetric(np.array([0, 1]), 2, 0.5, 0, class_map="cifar10"), "not a change"),
    (lambda: N.apply("pair", np.array([0, 1]), 2, rate=0.5), "unknown noise type"),
    (lambda: N.real(np.array([0, 1]), np.array([0]), 2), "examples"),
])
def test_bad_input_is_one_line(call, match):
    with pytest.raises(PlexbenchError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- CIFAR-N registry entries


def test_cifar_n_entries_name_tfds_feature_keys():
    """The entries read TFDS's own feature names (checked against the installed builders)."""
    import tempfile

    import tensorflow_datasets as tfds

    scratch = tempfile.mkdtemp()
    for name, keys in R.NOISY_LABEL_KEYS.items():
        features = tfds.builder(name, data_dir=scratch).info.features
        clean = R.get_dataset(name)
        assert clean.tfds_name == name and clean.label_key == "label" and "label" in features
        for key, feature in keys.items():
            entry = R.get_dataset(f"{name}/{key}")
            assert entry.tfds_name == name and entry.label_key == feature
            assert features[feature].num_classes == entry.num_classes == clean.num_classes
            assert dict(entry.splits) == {"train": "train"}
    assert set(R.NOISY_LABEL_KEYS["cifar10_n"]) == {"aggre", "random1", "random2", "random3", "worst"}
    assert dict(R.NOISY_LABEL_KEYS["cifar100_n"]) == {"noisy": "noise_label"}


def _write_fake_cifar10_n(data_dir, clean, noisy):
    """A real TFDS dataset named cifar10_n (TFDS's version and exact feature spec), tiny random images."""
    import tensorflow_datasets as tfds

    official = tfds.builder("cifar10_n", data_dir=data_dir)
    feature_json = official.info.features.to_json()

    class FakeCifar10N(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "cifar10_n"
        VERSION = official.version

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeatureConnector.from_json(feature_json),
                                         disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples("train", len(clean)), "test": self._generate_examples("test", 3)}

        def _generate_examples(self, split, n):
            rng = np.random.default_rng(0)
            for i in range(n):
                train = split == "train"
                record = {"id": f"{split}_{i:05d}", "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                          "label": int(clean[i]) if train else i % 10}
                for key, feature in R.NOISY_LABEL_KEYS["cifar10_n"].items():
                    record[feature] = int(noisy[key][i]) if train else -1
                for w in (1, 2, 3):
                    record[f"worker{w}_id"] = -1
                    record[f"worker{w}_time"] = -1.0
                yield i, record

    FakeCifar10N(data_dir=data_dir).download_and_prepare()


@pytest.mark.slow
def test_cifar10_n_noisy_keys_load_through_the_registry(tmp_path):
    from plexbench.data.load import load_arrays

    rng = np.random.default_rng(0)
    clean = rng.integers(0, 10, 40)
    noisy = {key: np.where(rng.random(40) < 0.3, rng.integers(0, 10, 40), clean)
             for key in R.NOISY_LABEL_KEYS["cifar10_n"]}
    _write_fake_cifar10_n(tmp_path, clean, noisy)
    assert R.is_available("cifar10_n", tmp_path) and R.is_available("cifar10_n/worst", tmp_path)
    base = load_arrays("cifar10_n", "train", tmp_path)
    assert np.array_equal(base["label"], clean)
    for key in noisy:
        arrays = load_arrays(f"cifar10_n/{key}", "train", tmp_path)
        assert np.array_equal(arrays["label"], noisy[key]), key
        assert np.array_equal(arrays["image"], base["image"])  # the same examples, only the label differs
        out = N.real(base["label"], arrays["label"], 10, key=key)
        assert out.realised_rate == float(np.mean(noisy[key] != clean))
