"""Both notebooks run end to end (nbclient, kernel `python3` = this interpreter) on the committed results/embedded.

The kernel must be the virtual environment's Python: the first cell we add prints `sys.executable` and
`sys.prefix`, compared with this process's. Outputs go to a temporary directory (PLEXBENCH_NOTEBOOK_OUT).

The data dir holds what a user's has after `make demo`: every embedded dataset, Fashion-MNIST-C with all
75 configs included (`user_data_dir`), so the notebooks take the branches a user's run takes (the
covariate-shift task with one row per corrupted dataset). Preparing the 75 configs costs about a minute
once; they stay in the shared test data dir (PLEXBENCH_TEST_DATA_DIR) for later runs.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "embedded"
NOTEBOOKS = REPO / "notebooks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def user_data_dir(data_dir) -> Path:
    """The shared test data dir with every dataset of the embedded suite prepared, as after `make demo`."""
    import fcntl

    from plexbench.data.prepare import prepare
    from plexbench.data.registry import FAMILIES

    with open(data_dir / ".prepare.lock", "w") as lock:  # the lock conftest's preparation takes
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in FAMILIES["fashion_mnist_corrupted"]:
            prepare(name, data_dir)
    return data_dir


def _require_committed_results() -> None:
    # A missing reference result is a failure, never a skip: the notebooks are part of the deliverable.
    if not (RESULTS / "metrics_long.csv").is_file():
        pytest.fail(f"{RESULTS} has no metrics_long.csv: run `plexbench demo` (make demo) to create the committed "
                    "reference result that the notebooks read")


def execute(name: str, out: Path, data_dir: Path, monkeypatch) -> list:
    """Run notebooks/<name> in a fresh python3 kernel; returns the executed cells (our probe cell first)."""
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell

    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PLEXBENCH_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("PLEXBENCH_QUIET", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.delenv("PLEXBENCH_RESULTS_DIR", raising=False)
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in book.cells if c.cell_type == "code"), f"{name} is committed with outputs: strip them"
    book.cells.insert(0, new_code_cell("import sys\nprint(sys.executable)\nprint(sys.prefix)"))
    NotebookClient(book, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return book.cells


def _text(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            parts.append(o.text)
        elif "data" in o:
            parts.append(o.data.get("text/plain", ""))
    return "".join(parts)


def _check_kernel(cells) -> None:
    executable, prefix = _text(cells[0]).split()
    assert (executable, prefix) == (sys.executable, sys.prefix)


def _png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_reproduce_paper_figures(user_data_dir, tmp_path, monkeypatch):
    _require_committed_results()
    cells = execute("reproduce_paper_figures.ipynb", tmp_path, user_data_dir, monkeypatch)
    _check_kernel(cells)
    assert _png(tmp_path / "paper_radar.png") and _png(tmp_path / "paper_subpopulation.png")
    # The zoo's 10-class models get their own radar and subpopulation figure.
    assert _png(tmp_path / "run_radar_fashion_mnist.png") and _png(tmp_path / "run_subpopulation_fashion_mnist.png")
    # Fashion-MNIST is none of the paper's datasets: every published number is used as published.
    from importlib import resources

    with resources.as_file(resources.files("plexbench.reports") / "data" / "plex_paper_numbers.csv") as p:
        with open(p, newline="") as f:
            figures = [r["figure"] for r in csv.DictReader(f)]
    origin = next(_text(c) for c in cells if "numbers" in _text(c) and "published" in _text(c))
    for figure in set(figures):
        assert f"{figure} published {figures.count(figure)}" in " ".join(origin.split())
    assert "run embedded" not in origin


def test_benchmark_your_model(user_data_dir, tmp_path, monkeypatch):
    _require_committed_results()
    from sklearn.metrics import accuracy_score

    from plexbench import fileio
    from plexbench.data.load import load_arrays

    data_dir = user_data_dir
    cells = execute("benchmark_your_model.ipynb", tmp_path, data_dir, monkeypatch)
    _check_kernel(cells)
    # The prediction file the notebook wrote: its labels are the test split's, and the accuracy the
    # notebook's run reports for the model is scikit-learn's on the file's logits.
    pred = fileio.load_npz(tmp_path / "predictions" / "fashion_mnist__test.npz")
    labels = load_arrays("fashion_mnist", "test", data_dir)["label"]
    np.testing.assert_array_equal(pred["labels"], labels)
    with open(tmp_path / "results" / "metrics_long.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    acc = next(float(r["value"]) for r in rows if r["model"] == "my-cnn" and r["metric"] == "accuracy"
               and r["task"] == "fmnist_in_distribution")
    assert acc == pytest.approx(accuracy_score(labels, pred["logits"].argmax(1)), abs=1e-12)
    assert acc > 0.75  # one epoch of a small CNN on Fashion-MNIST (about 0.85); far above chance (0.1)
    # With Fashion-MNIST-C prepared, as a user's data dir after `make demo`, the covariate-shift task ran:
    # one accuracy row per corrupted dataset (15 corruptions x 5 severities) for the notebook's model.
    shift = {r["dataset"] for r in rows if r["model"] == "my-cnn" and r["task"] == "fmnist_covariate_shift"
             and r["metric"] == "accuracy" and "/" in r["dataset"]}
    assert len(shift) == 75
    # It sits in the leaderboard beside the zoo's 10-class models from the committed results.
    board = next(_text(c) for c in cells if "plexbench score" in _text(c))
    for model in ("my-cnn", "plex-mini", "det-mini"):
        assert model in board
    assert _png(tmp_path / "radar_with_zoo.png")
