"""The dataset registry: one `DatasetInfo` per dataset name (spec §8).

Names are TFDS names (`cifar10`, `imagenet_v2/matched-frequency`, `cifar10_corrupted/snow_3`), so
data prepared by TFDS itself is read from the data dir unchanged. Two datasets are embedded
(shipped with plexbench, prepared offline by its own TFDS builders): `fashion_mnist` and `digits`.

Split roles are `train`, `validation`, `test`; each maps to a TFDS split string. Where Plex holds
out part of the training split for validation the role strings say so (cifar10: `train[:98%]` /
`train[98%:]`). Datasets that Plex only evaluates on have just the roles they need.

Choices where the spec is silent (documented here once):
- CIFAR-10H is the TFDS builder `cifar10_h` (the CIFAR-10 test images with the human vote
  fractions as the float feature `soft_label`); it replaces "cifar10 test + votes".
- ImageNet ReaL is `imagenet2012_real`: `label` is the original ImageNet label; the soft label is
  uniform over the ReaL label set (TFDS holds the set, not the raters' votes). Examples whose ReaL
  set is empty get an all-zero soft label row; consumers must drop rows whose soft label sums to 0.
- Corruption families (`cifar10_corrupted`, `imagenet2012_corrupted`, `fashion_mnist_corrupted`)
  hold the 15 standard ImageNet-C corruptions x severities 1-5, expanded here in Python. Entry
  names use the TFDS config spelling (cifar10_corrupted says `elastic` and `frosted_glass_blur`);
  `DatasetInfo.corruption` always holds the canonical ImageNet-C name.
- Text datasets (T5-Plex, spec §9) carry `DatasetInfo.text` (a `TextFields`): their text features,
  the rule that turns the raw label into a class, and the label tokens of the classes. They have
  no image shape (`image_shape` is ()) and are read by `plexbench.data.text`, not `load_arrays`.
  MNLI is binary as in Plex: TFDS label 0 (entailment) -> class 1 (`<extra_id_1>`), neutral and
  contradiction -> class 0 (`<extra_id_0>`); `glue/mnli` test = validation_matched and
  `glue/mnli_mismatched` (TFDS's own config) test = its validation split. Toxicity (wikipedia
  toxicity subtypes, civil_comments with identities): class = toxicity >= 0.5, same two tokens.
  `clinc_oos` (the CLINC150 part of NaLUE) has its in-scope splits; `clinc_oos_out_of_scope` is
  the same prepared TFDS dataset read at its `test_oos` split. NaLUE's label tokens are not in
  the spec, so CLINC150 has none (tasks that need tokens refuse it with that reason).
- `fortunes` and `fortunes_ood/{held_out,de,es,it}`: the embedded text benchmark
  (plexbench.data.builders.fortunes documents categories and splits); classes k <-> `<extra_id_k>`.

Nothing here imports TensorFlow: `is_available` and `list_rows` only look at the file system.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from plexbench import paths
from plexbench.errors import PlexbenchError, shown
from plexbench.registry import Registry, close_names

ROLES = ("train", "validation", "test")

# The 15 corruptions of ImageNet-C (Hendrycks & Dietterich 2019), in their paper order.
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)

# The preprocessing of fine-tuned evaluation (spec §4): bilinear resize to 384, range [-1, 1].
FINETUNED_PREPROCESS = "resize(384)|value_range(-1,1)"
# Embedded grey datasets keep their native size: the zoo models are trained at it.
GREY_PREPROCESS = "grey_to_rgb|value_range(-1,1)"


@dataclass(frozen=True)
class TextFields:
    """What a text dataset adds to its entry.

    - `features`: the text features, in the order the input template uses them.
    - `label_rule`: how the raw `label_key` value becomes a class: "class" (an integer label as it
      is), "map:a,b,c" (raw label i -> class a/b/c...), "threshold:t" (class 1 iff value >= t).
    - `label_tokens`: vocabulary pieces of classes 0..K-1 (the readout of spec §9), or None.
    - `template`: the text preprocessing op that builds the model input (plexbench.data.text).
    - `group_features`: float features naming subpopulations (member iff >= 0.5), e.g. identities.
    """

    features: tuple[str, ...]
    label_rule: str = "class"
    label_tokens: tuple[str, ...] | None = None
    template: str = "text_input"
    group_features: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetInfo:
    """What plexbench knows about one dataset before reading any file.

    - `name`: the registry name (the TFDS name for TFDS datasets).
    - `tfds_name`: TFDS builder name, `builder/config` for datasets with configs.
    - `splits`: role (`train`/`validation`/`test`) -> TFDS split string.
    - `num_classes`; `class_names`: tuple of K names, or None where the names come from the prepared
      data (see `plexbench.data.load.class_names`).
    - `image_shape`: (H, W, C) of the stored images, None for a side that varies.
    - `default_preprocess`: preprocessing spec (`plexbench.data.preprocess`) used when a model names none.
    - `embedded`: prepared offline by plexbench (no download, no manual files).
    - `prepare_hint`: what preparing needs, shown in errors and by `plexbench data info`.
    - `builder`: "module:Class" of a plexbench TFDS builder class, or None for the official TFDS builder.
    - `version`: the exact TFDS version to read and prepare, or None for "the newest one prepared".
    - `requires`: datasets prepared first (e.g. the clean set a corrupted set is made from).
    - `label_key`: the feature holding the integer label.
    - `soft_label`: None, `feature:<key>` (a float vector feature) or `multi_hot:<key>` (uniform over
      a label set); gives `soft_label` float32 (N, K) in loaded arrays.
    - `family`, `corruption`, `severity`: set for members of a corruption family.
    - `text`: set for text datasets (a `TextFields`); None for image datasets.
    """

    name: str
    tfds_name: str
    splits: Mapping[str, str]
    num_classes: int
    class_names: tuple[str, ...] | None
    image_shape: tuple[int | None, int | None, int]
    default_preprocess: str
    embedded: bool
    prepare_hint: str
    builder: str | None = None
    version: str | None = None
    requires: tuple[str, ...] = ()
    label_key: str = "label"
    soft_label: str | None = None
    family: str | None = None
    corruption: str | None = None
    severity: int | None = None
    description: str = field(default="", compare=False)
    text: TextFields | None = None

    def __post_init__(self):
        # A read-only view: an entry is shared by every caller and must not be edited in place.
        object.__setattr__(self, "splits", MappingProxyType(dict(self.splits)))

    @property
    def is_text(self) -> bool:
        return self.text is not None

    @property
    def builder_name(self) -> str:
        """TFDS builder name: the part of `tfds_name` before '/'."""
        return self.tfds_name.split("/", 1)[0]

    @property
    def config(self) -> str | None:
        """TFDS builder config name: the part of `tfds_name` after '/', or None."""
        parts = self.tfds_name.split("/", 1)
        return parts[1] if len(parts) == 2 else None

    def split_for(self, role: str) -> str:
        """The TFDS split string of a role; PlexbenchError if the dataset has no such role."""
        if role not in self.splits:
            raise PlexbenchError(
                f"dataset '{self.name}' has no '{role}' split (it has: {', '.join(self.splits)})")
        return self.splits[role]


DATASETS: Registry[DatasetInfo] = Registry("dataset")

# Families (e.g. "cifar10_corrupted") -> member names, in corruption x severity order.
FAMILIES: dict[str, list[str]] = {}


def _add(info: DatasetInfo) -> None:
    for role in info.splits:
        if role not in ROLES:
            raise ValueError(f"{info.name}: unknown split role {role!r}")
    if info.class_names is not None and len(info.class_names) != info.num_classes:
        raise ValueError(f"{info.name}: {len(info.class_names)} class names for {info.num_classes} classes")
    DATASETS.add(info.name, info)


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry of `name`; unknown names raise PlexbenchError with close matches."""
    if name not in DATASETS:
        raise PlexbenchError(_unknown_message(name))
    return DATASETS.get(name)


def _unknown_message(name: str) -> str:
    """"unknown dataset" with close matches among all names; families listed once as `family/*`."""
    compact = [n for n in DATASETS.names() if DATASETS.get(n).family is None] + [f"{f}/*" for f in FAMILIES]
    close = close_names(str(name), DATASETS.names() + list(FAMILIES))
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown dataset {shown(str(name), 80)}{hint} (available: {', '.join(sorted(compact))})"


def expand_names(patterns: list[str] | tuple[str, ...]) -> list[str]:
    """Registry names for `patterns`: exact names, family names (all members) or shell globs.

    `cifar10_corrupted` and `cifar10_corrupted/*` both give the 75 members; `*_corrupted/snow_3`
    gives that member of every family. Order: patterns in order, members in registry order,
    duplicates dropped. A pattern matching nothing raises PlexbenchError with close matches.
    """
    out: list[str] = []
    for pattern in patterns:
        if pattern in DATASETS:
            matched = [pattern]
        elif pattern in FAMILIES:
            matched = list(FAMILIES[pattern])
        elif any(ch in pattern for ch in "*?["):
            matched = [n for n in DATASETS.names() if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise PlexbenchError(f"no dataset matches '{pattern}'")
        else:
            raise PlexbenchError(_unknown_message(pattern))
        out += [n for n in matched if n not in out]
    return out


# --------------------------------------------------------------------------- local availability

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def dataset_root(info: DatasetInfo, data_dir) -> Path:
    """`<data_dir>/<builder>[/<config>]`: the folder holding one subfolder per prepared version."""
    root = Path(data_dir) / info.builder_name
    return root / info.config if info.config else root


def prepared_versions(info: DatasetInfo, data_dir) -> list[str]:
    """Versions of `info` fully prepared under `data_dir` (a `dataset_info.json` is present), oldest first.

    TFDS writes a version into `incomplete.*` and renames it when done, so a present
    `<version>/dataset_info.json` means a complete dataset.
    """
    root = dataset_root(info, data_dir)
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir()
             if _VERSION_RE.match(p.name) and (p / "dataset_info.json").is_file()]
    return sorted(found, key=_version_key)


def version_dir(info: DatasetInfo, data_dir) -> Path | None:
    """The folder to read `info` from: its pinned `version` if prepared, else the newest prepared one."""
    versions = prepared_versions(info, data_dir)
    if info.version is not None:
        return dataset_root(info, data_dir) / info.version if info.version in versions else None
    return dataset_root(info, data_dir) / versions[-1] if versions else None


def is_available(name: str, data_dir=None) -> bool:
    """True if `name` is prepared in `data_dir` (default: plexbench.paths.data_dir())."""
    return version_dir(get_dataset(name), paths.data_dir(data_dir)) is not None


def not_prepared_message(info: DatasetInfo, data_dir) -> str:
    """The one-line error for a dataset missing from `data_dir`: what, where, and how to prepare it."""
    looked = dataset_root(info, data_dir) / (info.version or "<version>")
    return (f"dataset '{info.name}' is not prepared in data dir {data_dir} (no {looked}/dataset_info.json); "
            f"prepare it with: plexbench data prepare {info.name} --data-dir {data_dir} ({info.prepare_hint})")


# --------------------------------------------------------------------------- listing

def list_rows(args) -> list[dict]:
    """Rows for `plexbench list datasets`: one per dataset, one per corruption family.

    A family row shows how many members exist and how many are prepared.
    """
    data_dir = paths.data_dir(getattr(args, "data_dir", None))
    rows, seen_families = [], set()
    for name, info in DATASETS.items():
        if info.family is None:
            rows.append(_row(info.name, info, "yes" if version_dir(info, data_dir) else "no"))
        elif info.family not in seen_families:
            seen_families.add(info.family)
            members = [get_dataset(n) for n in FAMILIES[info.family]]
            ready = sum(version_dir(m, data_dir) is not None for m in members)
            row = _row(f"{info.family}/* ({len(members)})", info, f"{ready}/{len(members)}")
            row["tfds_name"] = f"{info.builder_name}/<corruption>_<1-5>"
            rows.append(row)
    return rows


def _row(label: str, info: DatasetInfo, available: str) -> dict:
    return {
        "name": label,
        "tfds_name": info.tfds_name,
        "classes": info.num_classes,
        "splits": " ".join(f"{role}={split}" for role, split in info.splits.items()),
        "embedded": info.embedded,
        "available": available,
    }


# --------------------------------------------------------------------------- the entries

_DOWNLOAD = "downloads the data from the internet through TFDS"
_IMAGENET_MANUAL = ("needs the ImageNet tars ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
                    "in --manual-dir; see https://www.tensorflow.org/datasets/catalog/imagenet2012")
_IMAGENET_VAL_MANUAL = ("needs the ImageNet validation tar ILSVRC2012_img_val.tar in --manual-dir; "
                        "see https://www.tensorflow.org/datasets/catalog/{name}")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table
tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
worm""".split())
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))

# Noisy label keys of the label-noise datasets (spec §11): plexbench key -> TFDS feature. Read from
# tensorflow_datasets' own builders (image_classification/cifar10_n, cifar100_n): CIFAR-10N stores
# `aggre_label`, `random_label1..3` and `worse_label` (spelled so by TFDS) beside the clean `label`;
# CIFAR-100N stores `noise_label` beside the clean fine `label`. Only the train split has them.
NOISY_LABEL_KEYS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "cifar10_n": MappingProxyType({"aggre": "aggre_label", "random1": "random_label1", "random2": "random_label2",
                                   "random3": "random_label3", "worst": "worse_label"}),
    "cifar100_n": MappingProxyType({"noisy": "noise_label"}),
})

# TFDS's cifar10_corrupted spells two ImageNet-C corruptions differently.
_CIFAR10_C_SPELLING = {"elastic_transform": "elastic", "glass_blur": "frosted_glass_blur"}


def _standard(name, splits, num_classes, shape, *, class_names=None, hint=_DOWNLOAD,
              preprocess=FINETUNED_PREPROCESS, description="", **kw) -> None:
    _add(DatasetInfo(name=name, tfds_name=name, splits=splits, num_classes=num_classes,
                     class_names=class_names, image_shape=shape, default_preprocess=preprocess,
                     embedded=False, prepare_hint=hint, description=description, **kw))


def _family(family: str, *, spelling: Mapping[str, str], base: str, splits, num_classes: int,
            class_names, shape, hint: str, builder: str | None = None, requires: tuple[str, ...] = (),
            embedded: bool = False) -> None:
    """Register `family/<corruption>_<severity>` for the 15 corruptions x 5 severities of `base`."""
    members = []
    for corruption in CORRUPTIONS:
        for severity in SEVERITIES:
            config = f"{spelling.get(corruption, corruption)}_{severity}"
            name = f"{family}/{config}"
            _add(DatasetInfo(
                name=name, tfds_name=name, splits=splits, num_classes=num_classes,
                class_names=class_names, image_shape=shape,
                default_preprocess=GREY_PREPROCESS if shape[-1] == 1 else FINETUNED_PREPROCESS,
                embedded=embedded, prepare_hint=hint, builder=builder, requires=requires, family=family,
                corruption=corruption, severity=severity,
                description=f"{base} {splits['test']} with {corruption} at severity {severity}"))
            members.append(name)
    FAMILIES[family] = members


def _register_all() -> None:  # a table, one call per dataset (long on purpose)
    # Embedded: prepared offline by plexbench's own builders (plexbench.data.builders).
    _add(DatasetInfo(
        name="fashion_mnist", tfds_name="fashion_mnist",
        splits={"train": "train[:98%]", "validation": "train[98%:]", "test": "test"},
        num_classes=10, class_names=FASHION_MNIST_CLASSES, image_shape=(28, 28, 1),
        default_preprocess=GREY_PREPROCESS, embedded=True,
        prepare_hint="offline, from the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)",
        builder="plexbench.data.builders.fashion_mnist:FashionMnist", version="3.0.1",
        description="Fashion-MNIST (Xiao et al. 2017), 60,000 train / 10,000 test 28x28 grey images"))
    _add(DatasetInfo(
        name="digits", tfds_name="digits",
        splits={"train": "train[:80%]", "validation": "train[80%:]", "test": "test"},
        num_classes=10, class_names=DIGIT_CLASSES, image_shape=(8, 8, 1),
        default_preprocess=GREY_PREPROCESS, embedded=True,
        prepare_hint="offline, from scikit-learn's bundled copy of the UCI handwritten digits",
        builder="plexbench.data.builders.digits:Digits", version="1.0.0",
        description="scikit-learn's 8x8 handwritten digits (1,797 images), values 0..16 scaled to 0..255"))
    _family("fashion_mnist_corrupted", spelling={}, base="fashion_mnist", splits={"test": "test"},
            num_classes=10, class_names=FASHION_MNIST_CLASSES, shape=(28, 28, 1),
            hint="offline, generated from the prepared fashion_mnist test split",
            builder="plexbench.data.builders.corrupted:FashionMnistCorrupted",
            requires=("fashion_mnist",), embedded=True)

    _register_text()

    # In-distribution (spec §8).
    _standard("cifar10", {"train": "train[:98%]", "validation": "train[98%:]", "test": "test"}, 10, (32, 32, 3),
              class_names=CIFAR10_CLASSES, description="CIFAR-10")
    _standard("cifar100", {"train": "train[:98%]", "validation": "train[98%:]", "test": "test"}, 100, (32, 32, 3),
              class_names=CIFAR100_CLASSES, description="CIFAR-100 (fine labels); also a few-shot set")
    _standard("imagenet2012", {"train": "train[:99%]", "validation": "train[99%:]", "test": "validation"}, 1000,
              (None, None, 3), hint=_IMAGENET_MANUAL, description="ImageNet-1k (ILSVRC 2012)")

    # Label uncertainty.
    _standard("cifar10_h", {"test": "test"}, 10, (32, 32, 3), class_names=CIFAR10_CLASSES,
              soft_label="feature:soft_label",
              description="CIFAR-10 test with CIFAR-10H human vote fractions (soft_label)")
    _standard("imagenet2012_real", {"test": "validation"}, 1000, (None, None, 3),
              hint=_IMAGENET_VAL_MANUAL.format(name="imagenet2012_real"), label_key="original_label",
              soft_label="multi_hot:real_label",
              description="ImageNet validation with the ReaL label sets (soft label uniform over the set)")

    # Out of distribution.
    _standard("svhn_cropped", {"train": "train", "test": "test"}, 10, (32, 32, 3), class_names=DIGIT_CLASSES,
              description="SVHN cropped digits (OOD for CIFAR)")
    # Active learning (spec §6) holds out the end of train for validation, like ImageNet (1%).
    _standard("places365_small", {"train": "train[:99%]", "validation": "train[99%:]", "test": "validation"}, 365,
              (256, 256, 3),
              description="Places365 at 256x256 (OOD for ImageNet; active learning)")
    _standard("dtd", {"train": "train", "validation": "validation", "test": "test"}, 47, (None, None, 3),
              description="Describable Textures (OOD; few-shot)")

    # Covariate shift.
    _standard("imagenet_a", {"test": "test"}, 1000, (None, None, 3), description="ImageNet-A (200 of 1000 classes)")
    _standard("imagenet_r", {"test": "test"}, 1000, (None, None, 3), description="ImageNet-R (200 of 1000 classes)")
    _standard("imagenet_v2/matched-frequency", {"test": "test"}, 1000, (None, None, 3),
              description="ImageNetV2, matched-frequency sampling")
    _family("cifar10_corrupted", spelling=_CIFAR10_C_SPELLING, base="cifar10", splits={"test": "test"},
            num_classes=10, class_names=CIFAR10_CLASSES, shape=(32, 32, 3),
            hint=_DOWNLOAD + " (CIFAR-10-C, 2.9 GiB)")
    _family("imagenet2012_corrupted", spelling={}, base="imagenet2012", splits={"test": "validation"},
            num_classes=1000, class_names=None, shape=(224, 224, 3),
            hint=_IMAGENET_VAL_MANUAL.format(name="imagenet2012_corrupted") + "; TFDS generates the corruptions")

    # Label noise (spec §11): human re-labels of the CIFAR training sets. `cifar10_n` / `cifar100_n`
    # read the clean label; `<name>/<key>` read the same TFDS dataset (same folder, same images)
    # with one noisy label key as `label`, so a task reads clean and noisy labels through the one
    # loader. No validation role: the noisy labels cover the whole train split.
    _label_noise_entries()

    # Few-shot (splits as in big_vision's few-shot evaluator).
    _standard("caltech_birds2011", {"train": "train", "test": "test"}, 200, (None, None, 3),
              description="CUB-200-2011 birds (few-shot)")
    _standard("caltech101", {"train": "train", "test": "test"}, 102, (None, None, 3), description="Caltech-101 (few-shot)")
    _standard("cars196", {"train": "train", "test": "test"}, 196, (None, None, 3), description="Stanford Cars (few-shot)")
    _standard("colorectal_histology", {"train": "train[:2000]", "test": "train[2000:]"}, 8, (150, 150, 3),
              description="Colorectal histology tiles (few-shot)")
    _standard("imagenet2012_subset/10pct", {"train": "train", "test": "validation"}, 1000, (None, None, 3),
              hint=_IMAGENET_MANUAL, description="10% of ImageNet train (few-shot)")
    _standard("oxford_iiit_pet", {"train": "train", "test": "test"}, 37, (None, None, 3),
              description="Oxford-IIIT Pet (few-shot)")
    _standard("uc_merced", {"train": "train[:1000]", "test": "train[1000:]"}, 21, (None, None, 3),
              description="UC Merced land use (few-shot)")


_CIFAR_N_HINT = ("downloads CIFAR through TFDS and needs the CIFAR-N label files in --manual-dir "
                 "(see https://www.tensorflow.org/datasets/catalog/{name})")
_CIFAR_N_NOISE = {"aggre": "majority vote of 3 annotators, about 9% wrong",
                  "random1": "annotator 1, about 17% wrong", "random2": "annotator 2, about 18% wrong",
                  "random3": "annotator 3, about 18% wrong", "worst": "a wrong annotation where one exists, about 40% wrong",
                  "noisy": "one annotator, about 40% wrong"}


def _label_noise_entries() -> None:
    """`cifar10_n`, `cifar100_n` (clean labels) and one entry per noisy label key (spec §11)."""
    shapes = {"cifar10_n": (10, CIFAR10_CLASSES, "CIFAR-10N"), "cifar100_n": (100, CIFAR100_CLASSES, "CIFAR-100N")}
    for name, keys in NOISY_LABEL_KEYS.items():
        k, names, title = shapes[name]
        hint = _CIFAR_N_HINT.format(name=name)
        _standard(name, {"train": "train", "test": "test"}, k, (32, 32, 3), class_names=names, hint=hint,
                  description=f"{title}: the CIFAR training set with human re-labels (clean `label` here)")
        for key, feature in keys.items():
            _add(DatasetInfo(
                name=f"{name}/{key}", tfds_name=name, splits={"train": "train"}, num_classes=k, class_names=names,
                image_shape=(32, 32, 3), default_preprocess=FINETUNED_PREPROCESS, embedded=False,
                prepare_hint=f"the same TFDS dataset as {name}: preparing one prepares both; {hint}",
                label_key=feature,
                description=f"{title} train with the noisy label `{feature}` as label ({_CIFAR_N_NOISE[key]})"))


# --------------------------------------------------------------------------- text datasets

FORTUNE_CLASSES = ("computers", "science", "politics", "law", "food", "startrek")
FORTUNE_HELD_OUT = ("sports", "medicine", "education", "love", "pets")
BINARY_TOKENS = ("<extra_id_0>", "<extra_id_1>")  # spec §9: class k <-> <extra_id_k>
CIVIL_COMMENTS_IDENTITIES = (
    "male", "female", "transgender", "other_gender", "heterosexual", "homosexual_gay_or_lesbian", "bisexual",
    "other_sexual_orientation", "christian", "jewish", "muslim", "hindu", "buddhist", "atheist", "other_religion",
    "black", "white", "asian", "latino", "other_race_or_ethnicity", "physical_disability",
    "intellectual_or_learning_disability", "psychiatric_or_mental_illness", "other_disability")
_FORTUNES_HINT = "offline, from the Debian packages fortunes, fortunes-de, fortunes-es, fortunes-it (/usr/share/games/fortunes)"


def _text(name, tfds_name, splits, num_classes, class_names, text: TextFields, *, embedded=False,
          hint=_DOWNLOAD, builder=None, version=None, label_key="label", description="") -> None:
    _add(DatasetInfo(name=name, tfds_name=tfds_name, splits=splits, num_classes=num_classes,
                     class_names=class_names, image_shape=(), default_preprocess=text.template,
                     embedded=embedded, prepare_hint=hint, builder=builder, version=version,
                     label_key=label_key, description=description, text=text))


def _register_text() -> None:  # a table, one call per dataset
    fortunes = "plexbench.data.builders.fortunes:"
    tokens = tuple(f"<extra_id_{k}>" for k in range(len(FORTUNE_CLASSES)))
    _text("fortunes", "fortunes", {"train": "train", "validation": "validation", "test": "test"}, 6,
          FORTUNE_CLASSES, TextFields(("text",), label_tokens=tokens), embedded=True, hint=_FORTUNES_HINT,
          builder=fortunes + "Fortunes", version="1.0.0",
          description="Debian fortune cookies, 6 English topics (in-distribution), 70/10/20 split")
    _text("fortunes_ood/held_out", "fortunes_ood/held_out", {"test": "test"}, len(FORTUNE_HELD_OUT), FORTUNE_HELD_OUT,
          TextFields(("text",)), embedded=True, hint=_FORTUNES_HINT, builder=fortunes + "FortunesOod",
          version="1.0.0", description="fortune cookies of 5 held-out English topics (near OOD for fortunes)")
    for lang, language in (("de", "German"), ("es", "Spanish"), ("it", "Italian")):
        _text(f"fortunes_ood/{lang}", f"fortunes_ood/{lang}", {"test": "test"}, 1, (lang,), TextFields(("text",)),
              embedded=True, hint=_FORTUNES_HINT, builder=fortunes + "FortunesOod", version="1.0.0",
              description=f"{language} fortune cookies (far OOD for fortunes)")

    mnli = TextFields(("premise", "hypothesis"), "map:1,0,0", BINARY_TOKENS, "mnli_input")
    _text("glue/mnli", "glue/mnli", {"train": "train", "validation": "validation_matched", "test": "validation_matched"},
          2, ("not_entailment", "entailment"), mnli, description="MNLI, binary entailment (Plex), matched validation")
    _text("glue/mnli_mismatched", "glue/mnli_mismatched", {"test": "validation"}, 2, ("not_entailment", "entailment"),
          mnli, description="MNLI mismatched validation (genre shift), binary")
    clinc = TextFields(("text",))
    _text("clinc_oos", "clinc_oos", {"train": "train", "validation": "validation", "test": "test"}, 151, None, clinc,
          label_key="intent", description="CLINC150 intents (the CLINC part of NaLUE), in-scope splits")
    _text("clinc_oos_out_of_scope", "clinc_oos", {"train": "train_oos", "validation": "validation_oos", "test": "test_oos"},
          151, None, clinc, label_key="intent", description="CLINC150 out-of-scope queries (OOD for clinc_oos)")
    toxic = TextFields(("text",), "threshold:0.5", BINARY_TOKENS)
    _text("wikipedia_toxicity_subtypes", "wikipedia_toxicity_subtypes/EnglishSubtypes", {"train": "train", "test": "test"},
          2, ("non_toxic", "toxic"), toxic, label_key="toxicity",
          description="Wikipedia talk comments, toxic iff toxicity >= 0.5 (in-domain toxicity)")
    _text("civil_comments", "civil_comments/CivilCommentsIdentities",
          {"train": "train", "validation": "validation", "test": "test"}, 2, ("non_toxic", "toxic"),
          TextFields(("text",), "threshold:0.5", BINARY_TOKENS, group_features=CIVIL_COMMENTS_IDENTITIES),
          label_key="toxicity", description="Civil Comments with identity labels (toxicity shift, subpopulations)")


_register_all()
