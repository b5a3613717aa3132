"""Fortune-cookie texts from Debian's fortunes packages, as TFDS datasets (an offline text benchmark).

Sources: the Debian packages `fortunes` (+ its dependency `fortunes-min`), `fortunes-de`,
`fortunes-es` and `fortunes-it` install plain-text files under /usr/share/games/fortunes
(override with $PLEXBENCH_FORTUNES_DIR). A file is a list of entries separated by lines holding
only '%'. An entry's text is exactly the lines between two separators, joined with '\\n' and
without the final newline; empty entries are skipped. Files are read as UTF-8 (all of them are).

Choices (the issue asks for documented ones):
- In-distribution classes, 6 English topic files with distinct subjects and >= 190 entries:
  computers, science, politics, law, food, startrek (label = index in that order).
- Near OOD (unseen topics of the same kind of text, like NaLUE's out-of-scope intents): the
  English topic files sports, medicine, education, love, pets.
- Far OOD: the German, Spanish and Italian texts, one dataset per language: every file of
  fortunes/de and fortunes/it and every `*.fortunes` file of fortunes/es, EXCEPT the
  offensive-category files fortunes/es/off/ (the English offensive files live in the package
  fortunes-off, which plexbench neither installs nor reads). The `.dat` indexes and `.u8`
  symlinks are not read; fortunes-it's top-level symlinks into it/ are not English files.
- English entries whose exact text appears in more than one of the 11 selected English files
  are dropped from all of them (no text is both in-distribution and near OOD, or in two classes).
- Split of `fortunes` (deterministic, no RNG): within each class, entries are ordered by
  sha256("<file>/<index>") (index = position among the file's non-empty entries); the first
  round(0.2 n) are `test`, the next round(0.1 n) `validation`, the rest `train`.
- Example keys are "<file>/<index>"; TFDS orders a split by the hash of its keys, so dataset
  order mixes the files and the first N examples of any split are a spread-out sample.

Datasets: `fortunes` (splits train / validation / test; features `text`, `label` (6 names));
`fortunes_ood/held_out` (split `test`, `label` one of the 5 held-out topics), `fortunes_ood/de`,
`fortunes_ood/es`, `fortunes_ood/it` (split `test`, `label` the language: one class). Every
example also has `source` = "<file>/<index>", where it comes from (its example key).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import tensorflow_datasets as tfds

from plexbench.errors import PlexbenchError

DEFAULT_SOURCE_DIR = "/usr/share/games/fortunes"
IN_DOMAIN = ("computers", "science", "politics", "law", "food", "startrek")
HELD_OUT = ("sports", "medicine", "education", "love", "pets")
LANGUAGES = ("de", "es", "it")
PACKAGES = {"en": "fortunes", "de": "fortunes-de", "es": "fortunes-es", "it": "fortunes-it"}
OFFENSIVE_DIR = "off"
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1
_SEPARATOR = re.compile(r"^%$", re.MULTILINE)


def source_dir() -> Path:
    """Folder of the fortune files: $PLEXBENCH_FORTUNES_DIR, else the Debian location."""
    return Path(os.environ.get("PLEXBENCH_FORTUNES_DIR") or DEFAULT_SOURCE_DIR)


def parse_entries(text: str) -> list[str]:
    """Entries of a fortune file: the text between lines that hold only '%', final newline
    removed, empty entries skipped. Example: "a\\nb\\n%\\nc\\n%\\n" -> ["a\\nb", "c"]."""
    out = []
    for piece in _SEPARATOR.split(text):
        piece = piece[1:] if piece.startswith("\n") else piece  # the newline after a separator
        piece = piece[:-1] if piece.endswith("\n") else piece
        if piece.strip():
            out.append(piece)
    return out


def read_file(path: Path) -> list[str]:
    """`parse_entries` of a UTF-8 file; one-line PlexbenchError if it is missing or not UTF-8."""
    if not path.is_file():
        raise PlexbenchError(f"fortune file missing: {path}; install the Debian packages "
                             f"(sudo apt-get install {' '.join(PACKAGES.values())}) or set PLEXBENCH_FORTUNES_DIR")
    try:
        return parse_entries(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PlexbenchError(f"fortune file {path} is not UTF-8 ({e.reason} at byte {e.start})") from None


def language_files(language: str, root: Path | None = None) -> list[str]:
    """Relative paths of the far-OOD files of a language (module docstring), sorted."""
    root = root or source_dir()
    folder = root / language
    if not folder.is_dir():
        raise PlexbenchError(f"fortune folder missing: {folder}; install the Debian package {PACKAGES[language]} "
                             "(sudo apt-get install " + PACKAGES[language] + ") or set PLEXBENCH_FORTUNES_DIR")
    out = []
    for p in sorted(folder.iterdir()):  # top level only: es/off/ is not descended into
        if p.is_symlink() or not p.is_file() or p.suffix in (".dat", ".u8"):
            continue
        if language == "es" and not p.name.endswith(".fortunes"):
            continue
        out.append(f"{language}/{p.name}")
    return out


def english_entries(root: Path | None = None) -> dict[str, list[tuple[int, str]]]:
    """{file: [(index, text)]} of the 11 selected English files, cross-file duplicates dropped."""
    root = root or source_dir()
    raw = {name: read_file(root / name) for name in IN_DOMAIN + HELD_OUT}
    owners: dict[str, set[str]] = {}
    for name, entries in raw.items():
        for text in entries:
            owners.setdefault(text, set()).add(name)
    return {name: [(i, t) for i, t in enumerate(entries) if len(owners[t]) == 1] for name, entries in raw.items()}


def split_of(entries: list[tuple[int, str]], name: str) -> dict[str, list[tuple[int, str]]]:
    """The deterministic test / validation / train split of one class (module docstring)."""
    order = sorted(entries, key=lambda e: hashlib.sha256(f"{name}/{e[0]}".encode()).hexdigest())
    n_test = round(TEST_FRACTION * len(order))
    n_val = round(VALIDATION_FRACTION * len(order))
    return {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


def check_english_sources() -> None:
    for name in IN_DOMAIN + HELD_OUT:
        if not (source_dir() / name).is_file():
            read_file(source_dir() / name)  # raises the one-line "missing" error


_CITATION = "Debian fortunes packages (fortune-mod cookie files), https://packages.debian.org/fortunes"


class Fortunes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """In-distribution fortunes: 6 topic classes, train / validation / test (module docstring)."""

    name = "fortunes"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Six English topic files of Debian's fortunes, deterministic 70/10/20 split."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fortune-cookie texts of six topics (computers, science, politics, law, food, "
                        "startrek) from Debian's fortunes package.",
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=list(IN_DOMAIN)),
                "source": tfds.features.Text(),
            }),
            supervised_keys=("text", "label"),
            homepage="https://packages.debian.org/fortunes",
            citation=_CITATION,
        )

    @staticmethod
    def check_sources() -> None:
        check_english_sources()

    def _split_generators(self, dl_manager):
        del dl_manager
        entries = english_entries()
        splits = {name: split_of(entries[name], name) for name in IN_DOMAIN}
        return {split: self._generate_examples(splits, split) for split in ("train", "validation", "test")}

    def _generate_examples(self, splits, split: str):
        for label, name in enumerate(IN_DOMAIN):
            for index, text in splits[name][split]:
                yield f"{name}/{index}", {"text": text, "label": label, "source": f"{name}/{index}"}


class FortunesOodConfig(tfds.core.BuilderConfig):
    """One OOD set: `held_out` (English topics) or a language code."""


class FortunesOod(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """OOD fortunes: held-out English topics (near) and German / Spanish / Italian texts (far)."""

    name = "fortunes_ood"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Held-out English topics and the de/es/it packages (es/off/ excluded)."}
    BUILDER_CONFIGS = [
        FortunesOodConfig(name="held_out", description="English topics " + ", ".join(HELD_OUT)),
        FortunesOodConfig(name="de", description="German fortunes (fortunes-de)"),
        FortunesOodConfig(name="es", description="Spanish fortunes (fortunes-es), offensive files excluded"),
        FortunesOodConfig(name="it", description="Italian fortunes (fortunes-it)"),
    ]

    def _label_names(self) -> list[str]:
        name = self.builder_config.name
        return list(HELD_OUT) if name == "held_out" else [name]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Out-of-distribution fortunes: {self.builder_config.description}.",
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=self._label_names()),
                "source": tfds.features.Text(),
            }),
            supervised_keys=("text", "label"),
            homepage="https://packages.debian.org/fortunes",
            citation=_CITATION,
        )

    @staticmethod
    def check_sources() -> None:
        """All four packages: `make data` installs them together."""
        check_english_sources()
        for language in LANGUAGES:
            language_files(language)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        if self.builder_config.name == "held_out":
            entries = english_entries()
            for label, name in enumerate(HELD_OUT):
                for index, text in entries[name]:
                    yield f"{name}/{index}", {"text": text, "label": label, "source": f"{name}/{index}"}
            return
        for rel in language_files(self.builder_config.name):
            for index, text in enumerate(read_file(source_dir() / rel)):
                yield f"{rel}/{index}", {"text": text, "label": 0, "source": f"{rel}/{index}"}
