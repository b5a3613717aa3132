"""The dataset registry: the spec's datasets under their TFDS names, checked against installed TFDS."""

from __future__ import annotations

import tempfile
from types import SimpleNamespace

import pytest

from plexbench.data import registry as R
from plexbench.errors import PlexbenchError

# spec §8, by TFDS name (CIFAR-10H is TFDS's cifar10_h builder).
SPEC_DATASETS = [
    "cifar10", "cifar100", "imagenet2012", "imagenet2012_real", "cifar10_h", "svhn_cropped",
    "places365_small", "dtd", "imagenet_a", "imagenet_r", "imagenet_v2/matched-frequency",
    "caltech_birds2011", "caltech101", "cars196", "colorectal_histology", "imagenet2012_subset/10pct",
    "oxford_iiit_pet", "uc_merced", "cifar10_n", "cifar100_n",
]


def test_every_spec_dataset_is_registered():
    for name in SPEC_DATASETS + ["fashion_mnist", "digits"]:
        assert R.get_dataset(name).name == name


def test_spec_splits():
    assert dict(R.get_dataset("cifar10").splits) == {"train": "train[:98%]", "validation": "train[98%:]", "test": "test"}
    assert dict(R.get_dataset("cifar100").splits) == {"train": "train[:98%]", "validation": "train[98%:]", "test": "test"}
    assert dict(R.get_dataset("imagenet2012").splits) == {"train": "train[:99%]", "validation": "train[99%:]",
                                                          "test": "validation"}
    assert dict(R.get_dataset("colorectal_histology").splits) == {"train": "train[:2000]", "test": "train[2000:]"}
    assert dict(R.get_dataset("uc_merced").splits) == {"train": "train[:1000]", "test": "train[1000:]"}
    assert R.get_dataset("places365_small").splits["test"] == "validation"
    assert R.get_dataset("imagenet2012_real").splits["test"] == "validation"


def test_corruption_families():
    assert len(R.CORRUPTIONS) == 15 and len(set(R.CORRUPTIONS)) == 15
    for family in ("cifar10_corrupted", "imagenet2012_corrupted", "fashion_mnist_corrupted"):
        members = [R.get_dataset(n) for n in R.FAMILIES[family]]
        assert len(members) == 75
        assert {(m.corruption, m.severity) for m in members} == {(c, s) for c in R.CORRUPTIONS for s in range(1, 6)}
        assert all(m.family == family and m.name.startswith(family + "/") for m in members)
    # TFDS's cifar10_corrupted spells two corruptions its own way; the canonical name is kept.
    assert R.get_dataset("cifar10_corrupted/frosted_glass_blur_2").corruption == "glass_blur"
    assert R.get_dataset("cifar10_corrupted/elastic_5").corruption == "elastic_transform"
    fm = R.get_dataset("fashion_mnist_corrupted/gaussian_noise_3")
    assert fm.builder == "plexbench.data.builders.corrupted:FashionMnistCorrupted"
    assert fm.tfds_name == "fashion_mnist_corrupted/gaussian_noise_3" and fm.config == "gaussian_noise_3"
    assert fm.requires == ("fashion_mnist",)


def test_entries_match_installed_tfds_builders():
    """Names, configs, class counts, image shapes and label features agree with TFDS's own builders."""
    import tensorflow_datasets as tfds

    scratch = tempfile.mkdtemp()
    checked = 0
    for name, info in R.DATASETS.items():
        if info.builder is not None or (info.family and info.severity != 1) or info.is_text:
            continue  # text datasets: tests/test_data_fortunes.py and test_text_entries_match_tfds
        builder = tfds.builder(info.tfds_name, data_dir=scratch)  # builder info only, no download
        features = builder.info.features
        assert features[info.label_key].num_classes == info.num_classes, name
        assert tuple(features["image"].shape) == tuple(info.image_shape), name
        if info.soft_label:
            assert info.soft_label.split(":", 1)[1] in features, name
        checked += 1
    noisy_keys = sum(len(keys) for keys in R.NOISY_LABEL_KEYS.values())  # cifar10_n/<key>, cifar100_n/<key>
    # + severity 1 of each corruption of the TFDS families
    assert checked == len(SPEC_DATASETS) + 2 * 15 + noisy_keys
    for family in ("cifar10_corrupted", "imagenet2012_corrupted"):
        configs = {c.name for c in tfds.builder_cls(family).BUILDER_CONFIGS}
        assert {R.get_dataset(n).config for n in R.FAMILIES[family]} <= configs


def test_embedded_entries_match_their_builders():
    import tensorflow_datasets as tfds

    from plexbench.data.builders.digits import Digits
    from plexbench.data.builders.fashion_mnist import FashionMnist

    assert str(FashionMnist.VERSION) == R.get_dataset("fashion_mnist").version
    assert str(Digits.VERSION) == R.get_dataset("digits").version
    # Same version and feature layout as TFDS's official fashion_mnist builder.
    scratch = tempfile.mkdtemp()
    official = tfds.builder("fashion_mnist", data_dir=scratch)
    ours = FashionMnist(data_dir=scratch)
    assert official.version == ours.version
    assert official.info.features.to_json() == ours.info.features.to_json()
    assert tuple(official.info.features["label"].names) == R.FASHION_MNIST_CLASSES
    assert official.info.supervised_keys == ours.info.supervised_keys


def test_roles_and_class_names_are_consistent():
    for name, info in R.DATASETS.items():
        noisy_key = "/" in name and name.split("/", 1)[0] in R.NOISY_LABEL_KEYS
        # a noisy-label key of CIFAR-N labels the training set only: it has no test split
        assert set(info.splits) <= set(R.ROLES) and ("test" in info.splits or noisy_key), name
        assert info.class_names is None or len(info.class_names) == info.num_classes, name
    assert len(R.CIFAR100_CLASSES) == len(set(R.CIFAR100_CLASSES)) == 100


def test_unknown_names_one_line_with_close_matches():
    with pytest.raises(PlexbenchError, match="did you mean fashion_mnist") as e:
        R.get_dataset("fashion_mnst")
    assert "\n" not in str(e.value) and "cifar10_corrupted/*" in str(e.value)
    with pytest.raises(PlexbenchError, match="no 'train' split"):
        R.get_dataset("imagenet_a").split_for("train")


def test_expand_names():
    assert R.expand_names(["digits"]) == ["digits"]
    assert len(R.expand_names(["cifar10_corrupted"])) == 75
    assert R.expand_names(["*_corrupted/snow_3"]) == [
        "cifar10_corrupted/snow_3", "fashion_mnist_corrupted/snow_3", "imagenet2012_corrupted/snow_3"]
    assert R.expand_names(["digits", "dig*"]) == ["digits"]
    with pytest.raises(PlexbenchError, match="no dataset matches"):
        R.expand_names(["nothing*"])


def test_availability_and_listing(tmp_path, data_dir):
    assert not R.is_available("fashion_mnist", tmp_path)
    assert R.is_available("fashion_mnist", data_dir) and R.is_available("digits", data_dir)
    # a version folder without dataset_info.json (an interrupted preparation) does not count
    (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)
    assert not R.is_available("cifar10", tmp_path)
    rows = R.list_rows(SimpleNamespace(data_dir=str(data_dir)))
    by_name = {r["name"]: r for r in rows}
    assert by_name["fashion_mnist"]["available"] == "yes" and by_name["digits"]["available"] == "yes"
    assert by_name["cifar10"]["available"] in ("yes", "no")
    family_rows = [r for r in rows if r["name"].endswith("(75)")]
    assert len(family_rows) == 3
    assert len(rows) == len(R.DATASETS) - 3 * 75 + 3


def test_not_prepared_error_names_dataset_dir_and_command(tmp_path):
    from plexbench.data.load import load_arrays

    with pytest.raises(PlexbenchError) as e:
        load_arrays("cifar10", "test", tmp_path)
    message = str(e.value)
    assert "\n" not in message
    assert "'cifar10'" in message and str(tmp_path) in message
    assert f"plexbench data prepare cifar10 --data-dir {tmp_path}" in message


def test_text_entries_match_tfds():
    """Text entries name TFDS builders and features that exist (builder info only, no download)."""
    import tensorflow_datasets as tfds

    scratch = tempfile.mkdtemp()
    for name, info in R.DATASETS.items():
        if not info.is_text or info.builder is not None:
            continue
        features = tfds.builder(info.tfds_name, data_dir=scratch).info.features
        assert set(info.text.features) | {info.label_key} | set(info.text.group_features) <= set(features), name
        assert info.image_shape == () and info.default_preprocess == info.text.template
