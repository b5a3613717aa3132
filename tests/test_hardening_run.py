"""`plexbench run` on valid but awkward input (issue 11, items 8-12, 17): prediction files in another row
order, files written by `predict --out`, tasks that cannot run at a --limit, two runs into one directory,
killed writes and the umask, and what the run prints.

Numbers are checked against scikit-learn on the prediction file's own arrays.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from plexbench import fileio
from plexbench.errors import PlexbenchError

REPO = Path(__file__).resolve().parent.parent


def cli(capsys, *argv):
    from plexbench.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def plexbench(*argv, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "plexbench", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def long_rows(out: Path) -> list[dict]:
    with open(out / "metrics_long.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def predicted(data_dir, tmp_path_factory):
    """A prediction file written by `plexbench predict --out` (det-mini, Fashion-MNIST test), named for --predictions."""
    from plexbench.cli import main

    root = tmp_path_factory.mktemp("predicted")
    files = root / "files"
    assert main(["predict", "--model", "det-mini", "--dataset", "fashion_mnist", "--data-dir", str(data_dir),
                 "--store", str(root / "store"), "--out", str(files / "fashion_mnist__test.npz")]) == 0
    return root


# ------------------------------------------------------------------ item 9: predict --out files at a --limit

def test_predict_out_file_runs_at_a_limit(predicted, data_dir, tmp_path, capsys):
    arrays = fileio.load_npz(predicted / "files" / "fashion_mnist__test.npz")
    assert arrays["format_version"].ndim == 0  # the scalar take_rows used to index
    code, out, err = cli(capsys, "run", "--suite", "embedded", "--tasks", "fmnist_in_distribution", "--predictions",
                         f"mine={predicted / 'files'}", "--limit", 32, "--data-dir", data_dir, "--out", tmp_path / "r")
    assert code == 0, err
    acc = next(float(r["value"]) for r in long_rows(tmp_path / "r") if r["metric"] == "accuracy")
    expected = accuracy_score(arrays["labels"][:32], arrays["member_logits"][0, :32].argmax(1))
    assert acc == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------ item 8: row order of prediction files

def _write_shuffled(predicted: Path, target: Path, keep_ids: bool) -> None:
    arrays = dict(fileio.load_npz(predicted / "files" / "fashion_mnist__test.npz"))
    order = np.random.default_rng(0).permutation(len(arrays["labels"]))
    shuffled = {k: (v if v.ndim == 0 else v[:, order] if k in ("member_logits", "embeddings") else v[order])
                for k, v in arrays.items()}
    if not keep_ids:
        shuffled.pop("ids")
    fileio.save_npz(target / "fashion_mnist__test.npz", shuffled)


@pytest.mark.parametrize("keep_ids,words", [(True, "row 0 has id"), (False, "rows have another label")])
def test_prediction_rows_in_another_order_are_refused(keep_ids, words, predicted, data_dir, tmp_path, capsys):
    files = tmp_path / "files"
    _write_shuffled(predicted, files, keep_ids)
    code, out, err = cli(capsys, "run", "--suite", "embedded", "--tasks", "fmnist_subpopulation", "--predictions",
                         f"mine={files}", "--data-dir", data_dir, "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and words in err and "dataset order (ids 0..N-1)" in err, err


def test_check_row_order_oracle():
    from plexbench.tasks.sources import check_row_order

    check_row_order("f", np.arange(5), np.array([1, 0, 2]), np.array([1, 0, 2, 2, 9]))  # a prefix is fine
    with pytest.raises(PlexbenchError, match="row 1 has id 2"):
        check_row_order("f", np.array([0, 2, 1]))
    with pytest.raises(PlexbenchError, match=r"2 of 3 rows .* \(first: row 0, label 0, the split.s 1\)"):
        check_row_order("f", None, np.array([0, 1, 2]), np.array([1, 0, 2]))


# ------------------------------------------------------------------ item 10: a task that cannot run at a limit

def test_task_that_cannot_run_at_the_limit_is_skipped_and_the_rest_written(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    code, stdout, err = cli(capsys, "run", "--suite", "embedded", "--models", "det-mini", "--tasks",
                            "fmnist_in_distribution,fmnist_few_shot", "--limit", 200, "--data-dir", data_dir,
                            "--store", tmp_path / "store", "--out", out)
    assert code == 0, err
    assert {r["task"] for r in long_rows(out)} == {"fmnist_in_distribution"}
    skipped = json.loads((out / "run.json").read_text())["skipped"]
    assert [s["task"] for s in skipped] == ["fmnist_few_shot"]
    assert skipped[0]["reason"].startswith("cannot run at --limit 200: ") and "shots" in skipped[0]["reason"]
    # item 17: one summary of the skips on stdout, no per-pair "skip" lines on stderr
    assert "skipped 1 (task, model) pair(s):" in stdout and "1 x cannot run at --limit 200" in stdout
    assert "skip " not in err


def test_metrics_long_is_written_when_a_task_fails(data_dir, tmp_path, monkeypatch):
    from plexbench.tasks import registry as R
    from plexbench.tasks import runner

    kind = R.get_kind("calibration")
    monkeypatch.setattr(type(kind), "evaluate", lambda self, *a, **k: (_ for _ in ()).throw(PlexbenchError("boom")))
    options = runner.RunOptions(suite="embedded", out_dir=tmp_path / "r", models=("det-mini",),
                                tasks=("fmnist_in_distribution", "fmnist_calibration"), data_dir=data_dir,
                                store_dir=tmp_path / "store", limit=None, verbose=False)
    with pytest.raises(PlexbenchError, match="boom"):
        runner.run(options)
    assert {r["task"] for r in long_rows(tmp_path / "r")} == {"fmnist_in_distribution"}


# ------------------------------------------------------------------ item 11: two runs into one --out

def test_two_concurrent_runs_into_one_out_keep_both(data_dir, tmp_path):
    out, store = tmp_path / "r", tmp_path / "store"
    common = ("--suite", "embedded", "--limit", 100, "--data-dir", data_dir, "--store", store, "--out", out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PLEXBENCH_QUIET": "1"}
    runs = [plexbench("run", "--models", "det-mini", "--tasks", "fmnist_in_distribution", *common, env=env),
            plexbench("run", "--models", "plex-mini", "--tasks", "fmnist_calibration", *common, env=env)]
    for p in runs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    doc = json.loads((out / "run.json").read_text())
    assert set(doc["models"]) == {"det-mini", "plex-mini"}
    assert set(doc["tasks"]) == set(doc["suite"]["tasks"]) == {"fmnist_in_distribution", "fmnist_calibration"}
    pairs = {(r["task"], r["model"]) for r in long_rows(out)}
    assert pairs == {("fmnist_in_distribution", "det-mini"), ("fmnist_calibration", "plex-mini")}


def test_results_lock_excludes_other_processes(tmp_path):
    from plexbench.tasks.runner import results_lock

    probe = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')")
    with results_lock(tmp_path):
        held = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True).stdout
    free = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True).stdout
    assert (held.strip(), free.strip()) == ("held", "free")
    assert list(tmp_path.iterdir()) == []  # no lock file left in the results directory


# ------------------------------------------------------------------ item 12: killed writes, the umask

KILLED_WRITER = """
import os, sys
from plexbench import fileio
with fileio.atomic_open(sys.argv[1], "wb") as f:
    f.write(b"half of a file")
    f.flush()
    os.kill(os.getpid(), 9)  # killed mid-write: the temporary file stays
"""


def test_temp_files_of_killed_writes_are_cleaned_by_the_next_run(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    (out / "tasks" / "t").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out / "tasks" / "t" / "m.json")], env=env)
    assert killed.returncode == -signal.SIGKILL
    left = list(out.rglob("*.tmp"))
    assert len(left) == 1 and left[0].name.startswith(".m.json.p")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = out / f".run.json.p{sleeper.pid}.abcdefgh.tmp"  # a writer still running: kept
        live.write_text("busy")
        old = out / f".x.json.p{sleeper.pid}.ijklmnop.tmp"  # older than a day: stale whatever its pid
        old.write_text("old")
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        code, _, err = cli(capsys, "run", "--suite", "embedded", "--models", "det-mini", "--tasks",
                           "fmnist_in_distribution", "--limit", 50, "--data-dir", data_dir, "--store", tmp_path / "s",
                           "--out", out)
        assert code == 0, err
        assert sorted(p.name for p in out.rglob("*.tmp")) == [live.name]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_store_entry_lock_cleans_its_temp_files(tmp_path):
    from plexbench.inference import store as st

    entry = tmp_path / ("a" * 64)
    entry.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = entry / f".chunk-000000.npz.p{int(dead.stdout)}.zzzzzzzz.tmp"
    stale.write_bytes(b"x")
    with st.entry_lock(entry):
        assert not stale.exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_respect_the_umask(umask, mode, tmp_path):
    code = (f"import os; os.umask({umask}); from plexbench import fileio; import numpy as np\n"
            f"fileio.write_text({str(tmp_path / 'a.txt')!r}, 'x')\n"
            f"fileio.save_npz({str(tmp_path / 'b.npz')!r}, {{'a': np.zeros(2)}})")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    for name in ("a.txt", "b.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
