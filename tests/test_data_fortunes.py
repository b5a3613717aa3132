"""The embedded `fortunes` text datasets against the raw Debian files (read here independently, line
by line), the deterministic split rule recomputed here, and the text pipeline (labels, templates,
token batches, process shares)."""

from __future__ import annotations

import collections
import fcntl
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from plexbench.data import registry as R
from plexbench.data import text as T
from plexbench.data.builders import fortunes as F
from plexbench.errors import PlexbenchError

SOURCE = Path(os.environ.get("PLEXBENCH_FORTUNES_DIR") or "/usr/share/games/fortunes")
NAMES = ("fortunes", "fortunes_ood/held_out", "fortunes_ood/de", "fortunes_ood/es", "fortunes_ood/it")
pytestmark = pytest.mark.skipif(not (SOURCE / "computers").is_file(),
                                reason="Debian fortunes packages not installed (make data installs them)")


@pytest.fixture(scope="module")
def text_dir(data_dir) -> Path:
    """The shared test data dir with the fortunes datasets prepared (once, under its lock)."""
    from plexbench.data.prepare import prepare

    with open(data_dir / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in NAMES:
            prepare(name, data_dir)
    return data_dir


def raw_entries(path: Path) -> list[str]:
    """Independent reading of a fortune file: blocks of lines between lines equal to '%'."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]  # the file's final newline
    out, block = [], []
    for line in lines + ["%"]:
        if line == "%":
            entry = "\n".join(block)
            if entry.strip():
                out.append(entry)
            block = []
        else:
            block.append(line)
    return out


def english() -> dict[str, list[tuple[int, str]]]:
    files = F.IN_DOMAIN + F.HELD_OUT
    raw = {name: raw_entries(SOURCE / name) for name in files}
    # a text found in two files is dropped from both (repeats inside one file stay)
    owners = collections.defaultdict(set)
    for name in files:
        for t in raw[name]:
            owners[t].add(name)
    return {name: [(i, t) for i, t in enumerate(raw[name]) if len(owners[t]) == 1] for name in files}


def test_parse_entries_by_hand():
    assert F.parse_entries("a\nb\n%\nc\n%\n") == ["a\nb", "c"]
    assert F.parse_entries("a\n%\n\n%\nlast line") == ["a", "last line"]
    assert F.parse_entries("%\nx\n  %\n%\n") == ["x\n  %"]  # only a line holding '%' alone separates
    assert F.parse_entries("\ttab\n%") == ["\ttab"]


def test_counts_per_category_and_the_split_rule(text_dir):
    from plexbench.data.text import load_texts

    entries = english()
    want = {}
    for label, name in enumerate(F.IN_DOMAIN):
        n = len(entries[name])
        order = sorted(entries[name], key=lambda e: hashlib.sha256(f"{name}/{e[0]}".encode()).hexdigest())
        n_test, n_val = round(0.2 * n), round(0.1 * n)
        want[name] = {"test": {f"{name}/{i}" for i, _ in order[:n_test]},
                      "validation": {f"{name}/{i}" for i, _ in order[n_test:n_test + n_val]},
                      "train": {f"{name}/{i}" for i, _ in order[n_test + n_val:]}}
    seen = set()
    for split in ("train", "validation", "test"):
        data = load_texts("fortunes", split, text_dir)
        sources = _sources("fortunes", split, text_dir)
        counts = np.bincount(data["label"], minlength=6)
        for label, name in enumerate(F.IN_DOMAIN):
            assert counts[label] == len(want[name][split]), (split, name)
            assert {s for s, lab in zip(sources, data["label"]) if lab == label} == want[name][split]
        assert not seen & set(sources)
        seen |= set(sources)
    assert sum(len(v) for v in entries.values() if v) > 3000
    held = load_texts("fortunes_ood/held_out", "test", text_dir)
    np.testing.assert_array_equal(np.bincount(held["label"], minlength=5), [len(entries[n]) for n in F.HELD_OUT])
    # no text is both in-distribution and near OOD
    id_texts = {t for s in ("train", "validation", "test") for t in load_texts("fortunes", s, text_dir)["texts"]["text"]}
    assert not id_texts & set(held["texts"]["text"])


def _sources(name, split, data_dir) -> list[str]:
    """The `source` feature, read with TFDS directly (not through plexbench.data.text)."""
    import tensorflow_datasets as tfds

    from plexbench.data.load import locate

    _, folder = locate(name, data_dir)
    ds = tfds.builder_from_directory(str(folder)).as_dataset(
        split=R.get_dataset(name).splits[split], shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1))
    return [e["source"].decode() for e in tfds.as_numpy(ds)]


@pytest.mark.parametrize("name,split", [("fortunes", "train"), ("fortunes", "test"), ("fortunes_ood/held_out", "test"),
                                        ("fortunes_ood/de", "test"), ("fortunes_ood/es", "test"), ("fortunes_ood/it", "test")])
def test_exact_text_of_sampled_entries(text_dir, name, split):
    from plexbench.data.text import load_texts

    data = load_texts(name, split, text_dir)
    sources = _sources(name, split, text_dir)
    cache: dict[str, list[str]] = {}
    for i in np.random.default_rng(0).choice(len(sources), size=25, replace=False):
        file, index = sources[i].rsplit("/", 1)
        raw = cache.setdefault(file, raw_entries(SOURCE / file))
        assert data["texts"]["text"][i] == raw[int(index)], sources[i]


def test_far_ood_sets_are_whole_packages_without_offensive_files(text_dir):
    from plexbench.data.text import load_texts

    for lang in ("de", "es", "it"):
        files = [p for p in sorted((SOURCE / lang).iterdir())
                 if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
                 and (lang != "es" or p.name.endswith(".fortunes"))]
        total = sum(len(raw_entries(p)) for p in files)
        data = load_texts(f"fortunes_ood/{lang}", "test", text_dir)
        assert len(data["label"]) == total > 5000, lang
        assert set(data["label"]) == {0}
    sources = _sources("fortunes_ood/es", "test", text_dir)
    assert not any("/off/" in s or s.startswith("es/off") for s in sources)
    assert (SOURCE / "es" / "off").is_dir()  # it exists, and is left out


def test_registry_entries_and_the_dataset_order_mixes_files(text_dir):
    info = R.get_dataset("fortunes")
    assert info.is_text and info.embedded and info.class_names == F.IN_DOMAIN == R.FORTUNE_CLASSES
    assert info.text.label_tokens == tuple(f"<extra_id_{k}>" for k in range(6))
    assert R.FORTUNE_HELD_OUT == F.HELD_OUT
    first = T.load_texts("fortunes", "test", text_dir)["label"][:60]
    assert len(set(first.tolist())) >= 4  # a spread-out sample, not one file after another


def test_missing_sources_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PLEXBENCH_FORTUNES_DIR", str(tmp_path))
    with pytest.raises(PlexbenchError, match="sudo apt-get install fortunes") as e:
        F.Fortunes.check_sources()
    assert "\n" not in str(e.value)
    with pytest.raises(PlexbenchError, match="fortunes-de"):
        F.language_files("de")
    (tmp_path / "computers").write_bytes(b"caf\xe9\n%\n")
    with pytest.raises(PlexbenchError, match="not UTF-8"):
        F.read_file(tmp_path / "computers")


# --------------------------------------------------------------------------- text pipeline


def test_label_rules():
    mnli = R.get_dataset("glue/mnli")
    np.testing.assert_array_equal(T.apply_label_rule(np.array([0, 1, 2, 0]), mnli), [1, 0, 0, 1])
    tox = R.get_dataset("civil_comments")
    np.testing.assert_array_equal(T.apply_label_rule(np.array([0.0, 0.49, 0.5, 0.9]), tox), [0, 0, 1, 1])
    assert R.get_dataset("glue/mnli").text.label_tokens == ("<extra_id_0>", "<extra_id_1>")
    assert "male" in tox.text.group_features


def test_templates_and_spec_errors():
    mnli = R.get_dataset("glue/mnli")
    prep = T.parse_text("mnli_input|tokenize(fortunes,16)")
    assert prep.strings([{"premise": "P.", "hypothesis": "H?"}], mnli) == ["mnli hypothesis: H? premise: P."]
    with pytest.raises(PlexbenchError, match="one text feature"):
        T.parse_text("text_input|tokenize(fortunes,16)").strings([{"premise": "a", "hypothesis": "b"}], mnli)
    for bad, fragment in [("tokenize(fortunes,16)", "one template op then tokenize"),
                          ("text_input", "one template op then tokenize"),
                          ("text_input|tokenize(fortunes)", "tokenize takes (VOCAB,LENGTH)"),
                          ("txt_input|tokenize(fortunes,8)", "unknown text preprocessing op 'txt_input'"),
                          ("text_input(3)|tokenize(fortunes,8)", "takes no arguments")]:
        with pytest.raises(PlexbenchError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            T.parse_text(bad)


def test_token_batches_pad_shard_and_match_direct_tokenisation(text_dir):
    from plexbench.models.tokenizer import get_tokenizer

    spec = "text_input|tokenize(fortunes,24)"
    texts = T.load_texts("fortunes", "validation", text_dir)
    n = len(texts["label"])
    want = get_tokenizer("fortunes").encode_batch(texts["texts"]["text"], 24)
    batches = list(T.batches("fortunes", "validation", batch_size=64, preprocess=spec, data_dir=text_dir))
    assert len(batches) == -(-n // 64)
    tokens = np.concatenate([b["tokens"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(tokens, want)
    last = batches[-1]
    assert (last["tokens"][~last["mask"]] == 0).all() and (last["label"][~last["mask"]] == -1).all()
    # two processes: contiguous shares, the same number of batches, together the whole range
    shares = [list(T.batches("fortunes", "validation", batch_size=16, preprocess=spec, data_dir=text_dir,
                             process_index=p, process_count=2, start=5, stop=100)) for p in range(2)]
    assert len(shares[0]) == len(shares[1])
    ids = np.concatenate([b["id"][b["mask"]] for share in shares for b in share])
    np.testing.assert_array_equal(ids, np.arange(5, 100))


def test_text_fingerprint_depends_on_content(text_dir):
    a = T.text_fingerprint("fortunes", "test", text_dir)
    assert a == T.text_fingerprint("fortunes", "test", text_dir)
    assert a != T.text_fingerprint("fortunes", "validation", text_dir)


def test_image_and_text_datasets_are_told_apart(text_dir):
    with pytest.raises(PlexbenchError, match="is an image dataset"):
        T.load_texts("fashion_mnist", "test", text_dir)


def test_unprepared_text_dataset_is_the_usual_one_line_error(tmp_path):
    from plexbench.inference import text_source

    with pytest.raises(PlexbenchError, match="plexbench data prepare glue/mnli") as e:
        text_source("glue/mnli", "test", preprocess="mnli_input|tokenize(fortunes,8)", data_dir=tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(PlexbenchError, match="needs the model's text preprocessing"):
        text_source("fortunes", "test", preprocess=None, data_dir=tmp_path)


def test_fingerprints_are_kept_per_process_while_the_files_stay(text_dir, monkeypatch):
    # inference asks for a split's fingerprint per model: the text is read once
    from plexbench.data import load

    monkeypatch.setattr(load, "_FINGERPRINTS", {})
    calls = []
    compute = load._fingerprint
    monkeypatch.setattr(load, "_fingerprint", lambda *a: calls.append(a[4]) or compute(*a))
    first = load.dataset_fingerprint("fortunes", "test", text_dir)
    assert load.dataset_fingerprint("fortunes", "test", text_dir) == first == T.text_fingerprint("fortunes", "test", text_dir)
    assert calls == ["test"]
