"""`{dataset}_corrupted/{corruption}_{severity}`: ImageNet-C corruptions of a prepared dataset, as TFDS datasets.

`CorruptedBuilder` is the generic part: a `tfds.core.GeneratorBasedBuilder` with one BuilderConfig per
corruption x severity (75), parameterised by class attributes: the source dataset (a plexbench registry
name, read with `plexbench.data.load.load_arrays`), its split, image shape, class names and how many
leading examples to corrupt. A corrupted version of another embedded dataset is a subclass:

    class DigitsCorrupted(CorruptedBuilder, skip_registration=True):
        name = "digits_corrupted"
        SOURCE, IMAGE_SHAPE, CLASS_NAMES, NUM_EXAMPLES = "digits", (8, 8, 1), DIGIT_CLASSES, None
        BUILDER_CONFIGS = corruption_configs()

Each prepared config holds one split, `test`: example i is `corrupt(source[i], corruption, severity,
seed=i)` (`plexbench.data.corruptions`), with the source's label, for i < NUM_EXAMPLES, in the source's
dataset order (TFDS shuffling is disabled, so id i of the corrupted set is id i of the source split).
The features equal the source's: `image` uint8 IMAGE_SHAPE and `label` ClassLabel(CLASS_NAMES).
Importing this module imports tensorflow_datasets.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from plexbench import paths, progress
from plexbench.data.registry import CORRUPTIONS, FASHION_MNIST_CLASSES, SEVERITIES
from plexbench.errors import PlexbenchError

# Images corrupted per call of corrupt_batch: bounds memory, keeps the progress bar moving.
CHUNK = 500


@dataclasses.dataclass(eq=False)
class CorruptionConfig(tfds.core.BuilderConfig):
    """BuilderConfig `{corruption}_{severity}`."""

    corruption: str = ""
    severity: int = 0


def corruption_configs() -> list[CorruptionConfig]:
    """The 75 configs, corruption-major in the ImageNet-C paper order, severities 1..5."""
    return [CorruptionConfig(name=f"{c}_{s}", corruption=c, severity=s,
                             description=f"{c} at severity {s} (ImageNet-C parameters, scaled to the image size)")
            for c in CORRUPTIONS for s in SEVERITIES]


class CorruptedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Generic `{SOURCE}_corrupted` builder; subclasses set the class attributes below and BUILDER_CONFIGS.

    - `SOURCE`: registry name of the clean dataset (must be prepared in the same data dir first).
    - `SOURCE_SPLIT`: split role of the source to corrupt (`test`).
    - `IMAGE_SHAPE`: (H, W, C) of the source images; `CLASS_NAMES`: its label names.
    - `NUM_EXAMPLES`: corrupt the first NUM_EXAMPLES examples (dataset order), or all if None.
    - `BASE_SEED`: `base_seed` of `corrupt_batch` (0; change it only to draw an independent replicate).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "ImageNet-C's 15 corruptions x 5 severities, plexbench.data.corruptions."}
    SOURCE: str = ""
    SOURCE_SPLIT: str = "test"
    IMAGE_SHAPE: tuple[int, int, int] = (0, 0, 0)
    CLASS_NAMES: tuple[str, ...] = ()
    NUM_EXAMPLES: int | None = None
    BASE_SEED: int = 0

    def __init__(self, *, data_dir=None, **kwargs):
        # Read the source from the same data dir this builder writes to (plexbench's default if None).
        data_dir = paths.data_dir(data_dir)
        super().__init__(data_dir=str(data_dir), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        count = "all" if self.NUM_EXAMPLES is None else f"the first {self.NUM_EXAMPLES:,}"
        return tfds.core.DatasetInfo(
            builder=self,
            description=(f"{count} examples of the {self.SOURCE} {self.SOURCE_SPLIT} split (dataset order) "
                         "with one of the 15 ImageNet-C corruptions at one of 5 severities, parameters "
                         "scaled to the image size, deterministic per example (plexbench.data.corruptions)."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=tuple(self.IMAGE_SHAPE)),
                "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # keep the source's order: id i here is id i of the source split
            homepage="https://github.com/hendrycks/robustness",
            citation="@inproceedings{hendrycks2019benchmarking, title={Benchmarking Neural Network "
                     "Robustness to Common Corruptions and Perturbations}, author={Hendrycks, Dan and "
                     "Dietterich, Thomas}, booktitle={ICLR}, year={2019}}",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything comes from the prepared source dataset
        return {"test": self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        from plexbench.data.corruptions import corrupt_batch

        config = self.builder_config
        images, labels = self.source_arrays()
        with progress.bar(len(images), desc=f"{self.name}/{config.name}", unit="img") as bar:
            for start in range(0, len(images), CHUNK):
                ids = np.arange(start, min(start + CHUNK, len(images)))
                corrupted = corrupt_batch(images[ids], config.corruption, config.severity, ids=ids,
                                          base_seed=self.BASE_SEED)
                for i, image in zip(ids, corrupted):
                    yield int(i), {"image": image, "label": int(labels[i])}
                bar.update(len(ids))

    def source_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 (N, H, W, C), labels int64 (N,)): the first NUM_EXAMPLES of the source split, checked."""
        from plexbench.data.load import load_arrays

        arrays = load_arrays(self.SOURCE, self.SOURCE_SPLIT, self.data_dir_root)
        images, labels = arrays["image"], arrays["label"]
        n = len(images) if self.NUM_EXAMPLES is None else self.NUM_EXAMPLES
        if len(images) < n:
            raise PlexbenchError(f"{self.name}: source {self.SOURCE} {self.SOURCE_SPLIT} has {len(images)} "
                                 f"examples, fewer than the {n} to corrupt")
        if images.shape[1:] != tuple(self.IMAGE_SHAPE) or images.dtype != np.uint8:
            raise PlexbenchError(f"{self.name}: source {self.SOURCE} images are {images.dtype} {images.shape[1:]}, "
                                 f"expected uint8 {tuple(self.IMAGE_SHAPE)}")
        return images[:n], labels[:n]


class FashionMnistCorrupted(CorruptedBuilder, skip_registration=True):
    """`fashion_mnist_corrupted`: the first 2,000 Fashion-MNIST test examples, 15 corruptions x 5 severities.

    2,000 of 10,000 keeps preparing all 75 configs (150,000 images) within the demo's CPU budget; the
    prefix is in TFDS's dataset order (a key-hash shuffle of the IDX order), so it is close to class
    balanced (per-class counts 185..223, see docs/corruptions.md).
    """

    name = "fashion_mnist_corrupted"
    SOURCE = "fashion_mnist"
    SOURCE_SPLIT = "test"
    IMAGE_SHAPE = (28, 28, 1)
    CLASS_NAMES = FASHION_MNIST_CLASSES
    NUM_EXAMPLES = 2000
    BUILDER_CONFIGS = corruption_configs()
