"""Bad places and bad names, as classes (issue 11, items 1, 4, 5): every one is one line on stderr,
exit code 2, no traceback, and nothing is computed or written before the problem is found.

- OS errors: every OSError subclass a command can meet becomes one line in `plexbench.cli`;
  output locations (a directory where a file goes, a path under a file, a name too long) are
  refused before any work, for every command that writes.
- Paths that escape their roots: store keys (hex only), manifest `file` fields, task `include:`.
- Echoed values: a 100,000-character value costs one short line, whatever the command.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from plexbench import fileio
from plexbench.errors import PlexbenchError, os_error_message, shown

REPO = Path(__file__).resolve().parent.parent
LONG = "x" * 100_000


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run `plexbench ARGV` in this process; (exit code, stdout, stderr)."""
    from plexbench.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("plexbench: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and len(err) < 1500, err[:300]
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ------------------------------------------------------------------ item 1: OS errors, one place

OS_ERRORS = [
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/r/file/x"), "is a file, not a directory"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/r/out"), "is a directory"),
    (PermissionError(errno.EACCES, "Permission denied", "/r/locked"), "permission denied"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/r/" + LONG), "file name too long"),
    (OSError(errno.ENOSPC, "No space left on device", "/r/big"), "disk full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/r/big"), "quota"),
    (OSError(errno.EROFS, "Read-only file system", "/r/ro"), "read-only file system"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/r/gone"), "no such file"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"), "across file systems"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "connection reset"),
]


@pytest.mark.parametrize("error,words", OS_ERRORS, ids=[type(e).__name__ + str(e.errno) for e, _ in OS_ERRORS])
def test_every_os_error_is_one_line_exit_2(error, words, capsys, monkeypatch):
    # Whatever command meets it: here `list datasets`, whose lister raises the error.
    import plexbench.data.registry as D

    def boom(args):
        raise error

    monkeypatch.setattr(D, "list_rows", boom)
    code, _, err = cli(capsys, "list", "datasets")
    assert_one_line_error(code, err, words)
    if error.filename:
        assert str(error.filename)[:50] in err


def test_os_error_message_names_both_paths_and_caps_them():
    msg = os_error_message(OSError(errno.EISDIR, "Is a directory", "/tmp/a.tmp", None, "/tmp/" + LONG))
    assert msg.startswith("is a directory") and "'/tmp/a.tmp' -> '/tmp/xxx" in msg and len(msg) < 400


def test_debug_keeps_the_traceback(capsys, monkeypatch):
    import plexbench.data.registry as D

    monkeypatch.setattr(D, "list_rows", lambda args: (_ for _ in ()).throw(PermissionError(13, "x", "/p")))
    monkeypatch.setenv("PLEXBENCH_DEBUG", "1")
    with pytest.raises(PermissionError):
        cli(capsys, "list", "datasets")


@pytest.fixture()
def places(tmp_path):
    """A file, a directory and paths that cannot be written as a file / as a directory."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    adir = tmp_path / "adir"
    adir.mkdir()
    return {"file": afile, "dir": adir, "under_file": afile / "x" / "y", "too_long": tmp_path / ("n" * 300)}


def _store_is_empty(store: Path) -> bool:
    return not store.exists() or not any(store.iterdir())


@pytest.mark.parametrize("where", ["dir", "under_file", "too_long"])
def test_predict_out_is_refused_before_computing(where, places, data_dir, tmp_path, capsys):
    store = tmp_path / "store"
    code, _, err = cli(capsys, "predict", "--model", "det-mini", "--dataset", "fashion_mnist", "--data-dir", data_dir,
                       "--store", store, "--out", places[where])
    assert_one_line_error(code, err, "--out")
    assert _store_is_empty(store)  # nothing was computed or stored


@pytest.mark.parametrize("argv,what", [
    (("store", "export", "abcd", "--out", "{dir}", "--store", "{store}"), "--out"),
    (("store", "export", "abcd", "--out", "{under_file}", "--store", "{store}"), "--out"),
    (("store", "ls", "--store", "{file}"), "prediction store"),
    (("store", "verify", "--store", "{under_file}"), "prediction store"),
    (("predict", "--model", "det-mini", "--dataset", "fashion_mnist", "--store", "{file}"), "prediction store"),
    (("data", "prepare", "digits", "--data-dir", "{file}"), "data dir"),
    (("data", "info", "digits", "--data-dir", "{under_file}"), "data dir"),
    (("list", "datasets", "--data-dir", "{too_long}"), "data dir"),
    (("run", "--suite", "embedded", "--models", "det-mini", "--out", "{file}"), "results directory"),
    (("run", "--suite", "embedded", "--models", "det-mini", "--out", "{under_file}"), "results directory"),
    (("run", "--suite", "embedded", "--models", "det-mini", "--store", "{file}", "--out", "{dir}/r"), "prediction store"),
    (("leaderboard", "{results}", "--out", "{dir}"), "--out"),
    (("leaderboard", "{results}", "--out", "{under_file}"), "--out"),
    (("plot", "{results}", "--out", "{file}"), "--out"),
    (("demo", "--out", "{file}"), "results directory"),
], ids=lambda v: "-".join(v) if isinstance(v, tuple) else v)
def test_bad_locations_are_one_line_for_every_command(argv, what, places, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "embedded", results, ignore=shutil.ignore_patterns("plots", "*.pdf", "*.png"))
    before = sorted(p.name for p in results.iterdir())
    names = {**{k: str(v) for k, v in places.items()}, "store": str(tmp_path / "store"), "results": str(results)}
    code, _, err = cli(capsys, *(a.format(**names) for a in argv))
    assert_one_line_error(code, err, what)
    assert sorted(p.name for p in results.iterdir()) == before  # nothing written into the results


def test_check_output_helpers(places, tmp_path):
    assert fileio.check_output_file(tmp_path / "new" / "deeper" / "f.npz") == tmp_path / "new" / "deeper" / "f.npz"
    assert fileio.check_output_dir(places["dir"]) == places["dir"]
    with pytest.raises(PlexbenchError, match="is a directory"):
        fileio.check_output_file(places["dir"])
    with pytest.raises(PlexbenchError, match="which is a file"):
        fileio.check_output_file(places["under_file"])
    with pytest.raises(PlexbenchError, match="is a file, not a directory"):
        fileio.check_output_dir(places["file"])
    with pytest.raises(PlexbenchError, match="longer than"):
        fileio.check_output_dir(places["too_long"])
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_atomic_write_onto_a_directory_names_the_target(places):
    with pytest.raises(PlexbenchError, match="it is a directory"):
        fileio.write_text(places["dir"], "x")
    assert list(places["dir"].iterdir()) == []  # no temporary file left behind


# ------------------------------------------------------------------ item 4: paths that escape their roots

def _tiny_entry(store: Path) -> str:
    from plexbench.inference import ModelHandle, array_source, predict
    from plexbench.inference import testing as T
    from plexbench.inference.handle import wrap_module_apply

    module = T.make_tiny_ensemble(2)
    handle = ModelHandle("tiny", wrap_module_apply(module), params=T.init(module), identity={"t": 1})
    source = array_source("synthetic", "test", T.random_images(20), np.arange(20) % 3)
    return predict(handle, "synthetic", "test", store_dir=store, source=source, chunk_size=8, verbose=False).key


@pytest.fixture(scope="module")
def store_with_entry(tmp_path_factory):
    store = tmp_path_factory.mktemp("escape") / "store"
    key = _tiny_entry(store)
    # A directory beside the store that looks like an entry: no key may reach it.
    evil = store.parent / "evil"
    shutil.copytree(store / key, evil)
    return store, key, evil


@pytest.mark.parametrize("key", ["../evil", "****", "*", "[0-9a-f]*", "/etc", "....", "ab/../cd", "zzzz", LONG])
@pytest.mark.parametrize("action", ["export", "verify"])
def test_store_keys_are_hex_only(key, action, store_with_entry, tmp_path, capsys):
    store, _, evil = store_with_entry
    out = tmp_path / "x.npz"
    argv = ("store", action, key, "--store", store) + (("--out", out) if action == "export" else ())
    code, _, err = cli(capsys, *argv)
    assert_one_line_error(code, err, "hex digits")
    assert not out.exists() and (evil / "manifest.json").is_file()


def test_a_real_key_prefix_still_works(store_with_entry, tmp_path, capsys):
    store, key, _ = store_with_entry
    code, out, _ = cli(capsys, "store", "export", key[:6].upper(), "--store", store, "--out", tmp_path / "p.npz")
    assert code == 0 and (tmp_path / "p.npz").is_file()
    code, out, _ = cli(capsys, "store", "verify", "--store", store)
    assert code == 0 and out.count("complete") == 1  # the `evil` copy outside the store is not an entry


@pytest.mark.parametrize("bad_file", ["../../evil.npz", "/etc/passwd", "chunk-000001.npz", "sub/chunk-000000.npz", 7])
def test_manifest_file_fields_stay_in_their_entry(bad_file, tmp_path, capsys):
    from plexbench.inference import store as st

    store = tmp_path / "store"
    key = _tiny_entry(store)
    manifest_path = store / key / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["chunks"][0]["file"] = bad_file
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(PlexbenchError, match="chunk record 0 names file"):
        st.read_manifest(store / key)
    code, _, err = cli(capsys, "store", "verify", key[:8], "--store", store)
    assert_one_line_error(code, err, "corrupt store entry")


def _task_file(directory: Path, include: str) -> Path:
    path = directory / "t.yaml"
    path.write_text(f"include: {include}\nversion: 1\n")
    return path


def test_task_include_stays_inside_the_tasks_directory(tmp_path):
    from plexbench.tasks.registry import load_task_file

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    outside = tmp_path / "outside.yaml"
    outside.write_text("kind: in_distribution\ndataset: {name: fashion_mnist, split: test}\n")
    (tasks / "link.yaml").symlink_to(outside)
    for include in ("../outside.yaml", str(outside), "link.yaml", "sub/../../outside.yaml"):
        with pytest.raises(PlexbenchError, match="inside the tasks directory"):
            load_task_file(_task_file(tasks, include))
    # A fragment inside the directory (also in a sub-folder) is followed.
    (tasks / "frag").mkdir()
    shutil.copy(outside, tasks / "frag" / "_base.yaml")
    task = load_task_file(_task_file(tasks, "frag/_base.yaml"))
    assert task.kind == "in_distribution" and task.dataset.name == "fashion_mnist"


# ------------------------------------------------------------------ item 5: echoed values are capped

LONG_INPUTS = [
    ("data", "info", LONG),
    ("data", "prepare", LONG),
    ("model", "info", LONG),
    ("task", "info", LONG),
    ("run", "--suite", LONG, "--dry-run"),
    ("run", "--suite", "embedded", "--models", LONG, "--dry-run"),
    ("run", "--suite", "embedded", "--tasks", LONG, "--dry-run"),
    ("run", "--suite", "embedded", "--checkpoint", LONG, "--dry-run"),
    ("run", "--suite", "embedded", "--model", LONG, "--dry-run"),
    ("predict", "--model", LONG, "--dataset", "fashion_mnist"),
    ("predict", "--model", "det-mini", "--dataset", LONG),
    ("predict", "--model", "det-mini", "--dataset", "fashion_mnist", "--out", "/tmp/" + LONG),
    ("store", "export", LONG, "--out", "x.npz"),
    ("score", "/tmp/" + LONG),
    ("leaderboard", "/tmp/" + LONG),
    ("leaderboard", "results/embedded", "--num-classes", LONG),
    ("list", LONG),
    (LONG,),
    ("run", "--suite", "embedded", "--dtype", LONG),
]


@pytest.mark.parametrize("argv", LONG_INPUTS, ids=lambda a: " ".join(x[:12] for x in a))
def test_a_100k_character_value_is_one_short_line(argv, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and len(err) < 2500, (len(err), err[:200])
    assert "Traceback" not in err and out == ""


def test_shown_caps_and_says_the_length():
    assert shown("abc") == "'abc'"
    text = shown(LONG)
    assert len(text) < 260 and "100,000 characters" in text
    assert len(str(PlexbenchError("x " + LONG))) < 2100  # the backstop of every message
