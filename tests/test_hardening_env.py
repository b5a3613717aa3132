"""A user's first hour (issue 11, items 13, 17, 21): no network, no noise, and the docs and messages that
say what a user needs (custom models, checkpoints, environment variables, dry runs).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from plexbench.errors import PlexbenchError

REPO = Path(__file__).resolve().parent.parent


def cli(capsys, *argv):
    from plexbench.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ item 13: no network, found in seconds

class LocalServer:
    """A TCP server on 127.0.0.1: `answer` None accepts connections and never replies (a dead
    proxy, a firewall that swallows packets); else it sends `answer` and closes."""

    def __init__(self, answer: bytes | None):
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.answer is None:
                self.held.append(conn)
            else:
                conn.recv(1024)
                conn.sendall(self.answer)
                conn.close()

    def close(self):
        for c in self.held:
            c.close()
        self.sock.close()


def test_offline_prepare_fails_in_seconds_with_one_line(tmp_path, capsys, monkeypatch):
    silent = LocalServer(None)
    try:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{silent.port}")
        started = time.perf_counter()
        code, out, err = cli(capsys, "data", "prepare", "cifar10", "--data-dir", tmp_path / "data")
        seconds = time.perf_counter() - started
    finally:
        silent.close()
    assert code == 2 and err.count("\n") == 1 and err.startswith("plexbench: error: no network: "), err
    assert "127.0.0.1" in err and "did not answer" in err
    assert "urllib3" not in err and "Retrying" not in err
    assert seconds < 60  # the probe's timeout is 4 s; TFDS itself retried for 206 s
    assert not (tmp_path / "data" / "cifar10").exists() and not (tmp_path / "data" / "downloads").exists()


def test_network_check_passes_when_a_host_answers_http(monkeypatch):
    from plexbench.data.prepare import check_network
    from plexbench.data.registry import get_dataset

    answering = LocalServer(b"HTTP/1.1 200 OK\r\n\r\n")
    try:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{answering.port}")
        check_network(get_dataset("cifar10"), ["example.invalid"])  # no error
    finally:
        answering.close()
    monkeypatch.delenv("HTTPS_PROXY")
    for var in ("https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(PlexbenchError, match="cannot resolve nothing.invalid"):  # RFC 2606: never resolves
        check_network(get_dataset("cifar10"), ["nothing.invalid"])


# ------------------------------------------------------------------ item 17: noise

def _run_cli(*argv, quiet: bool, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell: the CLI picks the level
    if quiet:
        env["PLEXBENCH_QUIET"] = "1"
    else:
        env.pop("PLEXBENCH_QUIET", None)
    return subprocess.run([sys.executable, "-m", "plexbench", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=timeout)


NOISE = re.compile(r"Downloading and preparing|Dataset .* downloaded and prepared|Subsequent calls will reuse|"
                   r"^[IW]\d{4} |^INFO:|absl|Generating splits|Shuffling ", re.M)


def test_preparing_embedded_data_says_only_what_plexbench_says(tmp_path):
    r = _run_cli("data", "prepare", "digits", "--data-dir", tmp_path / "data", quiet=False)
    assert r.returncode == 0, r.stderr
    assert NOISE.search(r.stderr) is None, r.stderr[:2000]
    assert r.stdout.splitlines()[0].startswith("digits: prepared in")


def test_run_shows_one_display_and_one_summary_of_skips(data_dir, tmp_path):
    r = _run_cli("run", "--suite", "embedded", "--models", "det-mini,det-mini-fmnist6", "--tasks",
                 "fmnist_in_distribution,fmnist6_in_distribution,fmnist_open_set", "--limit", 50, "--data-dir", data_dir,
                 "--store", tmp_path / "store", "--out", tmp_path / "r", quiet=False)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in re.split(r"[\r\n]", r.stderr) if ln.strip()]
    # Only progress bars: the overall "run" one, and transient bars under it; no per-item lines.
    assert all(re.match(r"\s*(run|predict|bootstrap|\x1b)", ln) for ln in lines), lines
    assert not any(ln.startswith("skip ") or "examples in" in ln for ln in lines)
    assert NOISE.search(r.stderr) is None
    summary = [ln for ln in r.stdout.splitlines() if ln.startswith("skipped") or ln.startswith("  ")]
    assert summary[0] == "skipped 3 (task, model) pair(s):" and len(summary) == 3, r.stdout


def test_progress_overall_folds_per_item_lines(capsys, monkeypatch):
    from plexbench import progress

    monkeypatch.setenv("PLEXBENCH_QUIET", "1")
    progress.note("outside")
    with progress.overall(5, "run") as display:
        progress.note("inside")  # replaced by the display
        progress.doing("task / model")
        display.drop(2)  # two reused: the ETA counts three
        assert display._bar.total == 3
        display.advance()
        with progress.bar(10, "nested") as inner:
            assert inner.leave is False  # transient under the overall display
    assert capsys.readouterr().err == "outside\n"


def test_demo_names_the_figures_not_drawn():
    from plexbench.commands.demo import not_drawn

    notes = ["6-class: radar: fewer than 3 axes", "6-class: score vs flops: no model has it",
             "10-class: risk-coverage: none in the per-task JSON files"]
    assert not_drawn(notes) == "6-class: radar, score vs flops; 10-class: risk-coverage"


# ------------------------------------------------------------------ item 21: docs and messages

def test_every_environment_variable_is_documented():
    read = set()
    pattern = re.compile(r"environ(?:\.get\(|\[|\.setdefault\(|\.pop\()\s*\\?[\"'](PLEXBENCH_[A-Z_]+|TFDS_DATA_DIR)")
    for path in [*REPO.joinpath("plexbench").rglob("*.py"), *REPO.joinpath("notebooks").glob("*.ipynb")]:
        read |= set(pattern.findall(path.read_text(encoding="utf-8")))
    assert {"PLEXBENCH_QUIET", "PLEXBENCH_DEBUG", "PLEXBENCH_STORE"} <= read
    documented = (REPO / "docs" / "environment.md").read_text()
    assert not [v for v in sorted(read) if f"`{v}" not in documented]


def test_every_docs_page_named_in_the_code_exists():
    named = set()
    for path in REPO.joinpath("plexbench").rglob("*.py"):
        named |= set(re.findall(r"docs/[\w-]+\.md", path.read_text(encoding="utf-8")))
    assert {"docs/your-model.md", "docs/checkpoints.md"} <= named
    assert [n for n in sorted(named) if not (REPO / n).is_file()] == []


def test_the_custom_model_contract_is_written_down():
    text = (REPO / "docs" / "your-model.md").read_text()
    for fact in ("(B, H, W, 3)", "float32", "[-1, 1]", "three", "channels", "`preprocess`", "`name`",
                 "imports and runs your code", "working directory", "(E, B, K)", "(E, B, D)"):
        assert fact in text, fact


def test_checkpoint_hint_names_both_forms_and_where_the_weights_are():
    from plexbench.inference import handle_from_registry

    with pytest.raises(PlexbenchError) as e:
        handle_from_registry("plex-vit-l32-imagenet")
    msg = str(e.value)
    assert "--checkpoint PATH" in msg and "--checkpoint NAME=PATH" in msg and "gs://plex-paper/" in msg
    doc = (REPO / "docs" / "checkpoints.md").read_text()
    assert "gsutil cp gs://plex-paper/plex_vit_large_imagenet21k_to_imagenet.npz" in doc


def test_dry_run_rejects_unknown_models_and_says_which_tasks_run(data_dir, capsys):
    code, out, err = cli(capsys, "run", "--suite", "embedded", "--models", "plex-mnii", "--dry-run",
                         "--data-dir", data_dir)
    assert code == 2 and "unknown model 'plex-mnii'; did you mean plex-mini" in err
    code, out, err = cli(capsys, "run", "--suite", "embedded", "--models", "plex-mini,det-mini-fmnist6",
                         "--model", "mymodel:make", "--dry-run", "--data-dir", data_dir)
    assert code == 0, err
    ten = ["fmnist_in_distribution", "fmnist_calibration", "fmnist_selective_prediction", "fmnist_covariate_shift",
           "fmnist_subpopulation", "fmnist_ood_digits", "fmnist_few_shot", "fmnist_label_noise_detection",
           "digits_label_noise_detection", "fmnist_label_noise_robustness", "digits_label_noise_robustness",
           "fmnist_active_learning", "digits_active_learning"]
    six = ["fmnist6_in_distribution", "fmnist_open_set", "fmnist_few_shot", "digits_label_noise_detection",
           "fmnist_label_noise_robustness", "digits_label_noise_robustness"]
    # An image model never runs the fortunes (text) tasks; digits_active_learning names its models.
    assert f"plex-mini (registry, 10 classes): runs 13 of 20 tasks ({', '.join(ten)})" in out
    assert f"det-mini-fmnist6 (registry, 6 classes): runs 6 of 20 tasks ({', '.join(six)})" in out
    assert "mymodel:make (callable, not imported by --dry-run)" in out and "with 10 classes: runs 12" in out
    code, out, err = cli(capsys, "run", "--suite", "plex-vision", "--models", "plex-vit-l32-imagenet", "--dry-run",
                         "--data-dir", data_dir)
    assert code == 0 and "needs --checkpoint plex-vit-l32-imagenet=PATH, 1000 classes): runs" in out


def test_unknown_dataset_suggests_the_registered_name(capsys, tmp_path):
    code, out, err = cli(capsys, "data", "prepare", "svhn", "--data-dir", tmp_path)
    assert code == 2 and "unknown dataset 'svhn'; did you mean svhn_cropped?" in err
