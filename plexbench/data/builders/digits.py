"""scikit-learn's handwritten digits as a TFDS dataset (`digits`).

Source: `sklearn.datasets.load_digits()` (1,797 images of 8x8 pixels, values 0..16, the UCI
"Optical Recognition of Handwritten Digits" test set), bundled with scikit-learn: no download.

- Pixels: v in 0..16 -> uint8 (v * 255 + 8) // 16, i.e. round(v * 255 / 16) with halves rounded up
  (0 -> 0, 8 -> 128, 16 -> 255). The map is strictly increasing, so it is invertible.
- Split (deterministic, stratified, no random seed): within each class, take that class's examples
  in scikit-learn's order and send every fifth one (positions 4, 9, 14, ... counted from 0) to
  `test`, the others to `train`. That gives 1,442 train and 355 test examples.
- Order: both splits keep scikit-learn's order (`disable_shuffling`), so example i of a split is
  the i-th scikit-learn row assigned to it.
- Features: `image` uint8 (8, 8, 1), `label` ClassLabel with names "0".."9".
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from plexbench.data.registry import DIGIT_CLASSES

TEST_EVERY = 5  # every fifth example of each class goes to test


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Map scikit-learn's digit values 0..16 (any numeric dtype) to uint8 by (v * 255 + 8) // 16."""
    v = np.asarray(values).astype(np.int64)
    if v.size and (v.min() < 0 or v.max() > 16):
        raise ValueError(f"digit values must lie in 0..16, got {v.min()}..{v.max()}")
    return ((v * 255 + 8) // 16).astype(np.uint8)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of scikit-learn's arrays for `train` and `test`, each in increasing order.

    A row goes to test if it is the k-th example of its class (k counted from 0 in row order)
    with k % 5 == 4.
    """
    labels = np.asarray(labels)
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rank_in_class[rows] = np.arange(len(rows))
    is_test = rank_in_class % TEST_EVERY == TEST_EVERY - 1
    return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}


class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-learn's 8x8 digits with a fixed stratified split (see the module docstring)."""

    name = "digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version: scikit-learn's digits, every 5th example per class in test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's handwritten digits: 1,797 8x8 grey images of the digits 0-9, "
                        "values 0..16 scaled to 0..255 by (v*255+8)//16; every 5th example of each "
                        "class is in the test split.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(names=list(DIGIT_CLASSES)),
            }),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
            citation="@misc{alpaydin1998optical, title={Optical Recognition of Handwritten Digits}, "
                     "author={Alpaydin, E. and Kaynak, C.}, howpublished={UCI Machine Learning "
                     "Repository}, year={1998}, doi={10.24432/C50P49}}",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = to_uint8(bunch.images)[..., None]
        labels = np.asarray(bunch.target, dtype=np.int64)
        return {split: self._generate_examples(images, labels, rows)
                for split, rows in split_indices(labels).items()}

    def _generate_examples(self, images, labels, rows):
        for row in rows:
            # Key = the scikit-learn row; with shuffling disabled the order is the generation order.
            yield int(row), {"image": images[row], "label": int(labels[row])}
