"""Task/suite YAML: every shipped file loads; bad files give one line naming file, field, expectation."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from plexbench.cli import main
from plexbench.errors import PlexbenchError
from plexbench.tasks import registry as R
from plexbench.tasks.spec import DatasetRef, ModelFilter, merge_include

REPO = Path(__file__).resolve().parent.parent
TASKS = REPO / "tasks"


def test_every_file_in_tasks_dir_loads():
    """Each task file parses, each suite's tasks exist, each fragment is included by some task."""
    tasks = R.load_tasks(TASKS)
    suites = R.load_suites(TASKS)
    files = sorted(TASKS.glob("*.yaml"))
    assert {p.stem for p in files if not p.name.startswith("_")} == set(tasks)
    for name, suite in suites.items():
        _, suite_tasks = R.load_suite(name, TASKS)
        assert [t.name for t in suite_tasks] == list(suite.tasks)
    included = {R.read_yaml_mapping(p).get("include") for p in files if not p.name.startswith("_")}
    for fragment in (p for p in files if p.name.startswith("_")):
        assert fragment.name in included, f"{fragment} is included by no task"
    assert {"embedded", "plex-vision"} <= set(suites)
    # Every kind is used by some shipped task.
    assert {t.kind for t in tasks.values()} == set(R.KINDS.names())


def test_embedded_suite_content():
    suite, tasks = R.load_suite("embedded", TASKS)
    kinds = {t.kind for t in tasks}
    assert kinds >= {"in_distribution", "calibration", "selective_prediction", "covariate_shift",
                     "subpopulation", "ood", "few_shot", "label_noise",
                     "active_learning"}
    shift = next(t for t in tasks if t.kind == "covariate_shift")
    assert len(shift.params.corruptions) == 15 and shift.params.severities == (1, 2, 3, 4, 5)
    open_set = next(t for t in tasks if t.name == "fmnist_open_set")
    assert open_set.models == ModelFilter(num_classes=6)
    assert open_set.params.ood[0].classes == (6, 7, 8, 9) and open_set.dataset.classes == (0, 1, 2, 3, 4, 5)
    digits = next(t for t in tasks if t.name == "fmnist_ood_digits")
    assert digits.params.ood[0].preprocess == "resize(28)" and digits.params.fit_limit == 10000
    few = next(t for t in tasks if t.kind == "few_shot")
    assert few.params.shots == (1, 5, 10, 25) and few.params.l2 is None and len(few.params.datasets) == 1


def _write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


GOOD = "kind: calibration\nversion: 1\ndataset: {name: fashion_mnist, split: test}\n"

BAD_CASES = [
    # (yaml, field, words of the expectation)
    (GOOD.replace("split: test", "split: tst"), "dataset.split", "one of 'train', 'validation', 'test'"),
    (GOOD.replace("calibration", "calibratoin"), "kind", "a task kind"),
    (GOOD.replace("version: 1", "version: one"), "version", "an integer"),
    (GOOD.replace("version: 1", "version: 0"), "version", "a positive integer"),
    (GOOD.replace("version: 1\n", ""), "version", "required field is missing"),
    (GOOD.replace("fashion_mnist", "fashion_mnst"), "dataset.name", "did you mean fashion_mnist"),
    (GOOD + "params: {num_bin: 3}\n", "params.num_bin", "unknown field (expected one of: num_bins)"),
    (GOOD + "params: {num_bins: -3}\n", "params.num_bins", "a positive integer"),
    (GOOD + "metrics: [ece, accuracy]\n", "metrics[1]", "a metric of kind calibration"),
    (GOOD + "extra: 1\n", "extra", "unknown field"),
    (GOOD + "models: []\n", "models.names", "a non-empty list"),
    (GOOD + "bootstrap: true\n", "bootstrap", "an integer"),
    ("kind: ood\nversion: 1\ndataset: {name: fashion_mnist}\n", "params.ood", "required field is missing"),
    ("kind: ood\nversion: 1\ndataset: {name: fashion_mnist}\nparams: {ood: [{name: digits, distance: mid}]}\n",
     "params.ood[0].distance", "one of 'near', 'far'"),
    ("kind: ood\nversion: 1\ndataset: {name: fashion_mnist}\nparams: {ood: [{name: digits}], scorers: [maha2]}\n",
     "params.scorers[0]", "one of 'msp'"),
    ("kind: ood\nversion: 1\ndataset: {name: cifar10_h}\nparams: {ood: [{name: digits}]}\n",
     "params.fit_split", "a split role of cifar10_h"),
    ("kind: covariate_shift\nversion: 1\ndataset: {name: fashion_mnist}\n"
     "params: {family: fashion_mnist_corrupted, corruptions: [snow], reference_errors: {fog: 0.5}}\n",
     "params.reference_errors", "exactly one error per corruption"),
    ("kind: covariate_shift\nversion: 1\ndataset: {name: fashion_mnist}\n"
     "params: {family: fashion_mnist_corrupted, corruptions: [snowy]}\n",
     "params.corruptions[0]", "a corruption of fashion_mnist_corrupted"),
    ("kind: covariate_shift\nversion: 1\ndataset: {name: fashion_mnist}\nmetrics: [mce]\n"
     "params: {family: fashion_mnist_corrupted, corruptions: [snow]}\n", "metrics", "mce only with"),
    ("kind: subpopulation\nversion: 1\ndataset: {name: fashion_mnist}\nparams: {grouping: {method: metadata}}\n",
     "params.grouping.key", "the dataset array"),
    ("kind: selective_prediction\nversion: 1\ndataset: {name: fashion_mnist}\nparams: {fractions: [0.5, 1.5]}\n",
     "params.fractions", "strictly between 0 and 1"),
]


@pytest.mark.parametrize("text, field, expected", BAD_CASES)
def test_bad_task_is_one_line_naming_file_field_expectation(tmp_path, text, field, expected):
    path = _write(tmp_path, text)
    with pytest.raises(PlexbenchError) as err:
        R.load_task_file(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: field '{field}': "), message
    assert expected in message, message


@pytest.mark.parametrize("text, expected", [
    ("- a\n- b\n", "expected a mapping of fields at the top level"),
    ("kind: [calibration\n", "invalid YAML at line 2"),
])
def test_unparsable_yaml(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(PlexbenchError, match=expected):
        R.load_task_file(path)


def test_include_merges_one_level(tmp_path):
    _write(tmp_path, "kind: calibration\nversion: 2\ndataset: {name: fashion_mnist, split: test}\n"
                     "params: {num_bins: 10}\nbootstrap: 5\n", "_base.yaml")
    variant = _write(tmp_path, "include: _base.yaml\ndataset: {split: validation}\nbootstrap: 0\n", "variant.yaml")
    task = R.load_task_file(variant)
    assert task.name == "variant" and task.version == 2 and task.bootstrap == 0
    assert task.dataset == DatasetRef("fashion_mnist", "validation")  # mapping merged key by key
    assert task.params.num_bins == 10
    # Two levels are refused, naming the inner file.
    _write(tmp_path, "include: _base.yaml\n", "_mid.yaml")
    deep = _write(tmp_path, "include: _mid.yaml\n", "deep.yaml")
    with pytest.raises(PlexbenchError, match=r"_mid.yaml: field 'include': expected a file without its own include"):
        R.load_task_file(deep)
    missing = _write(tmp_path, "include: _nope.yaml\n", "missing.yaml")
    with pytest.raises(PlexbenchError, match=r"missing.yaml: field 'include'"):
        R.load_task_file(missing)


def test_merge_include_replaces_lists():
    assert merge_include({"a": {"x": 1, "y": [1, 2]}, "b": 1}, {"a": {"y": [3]}}) == {"a": {"x": 1, "y": [3]}, "b": 1}


def test_model_filter_shorthand_and_accepts(tmp_path):
    task = R.load_task_file(_write(tmp_path, GOOD + "models: [m1, m2]\n", "t.yaml"))
    assert task.models == ModelFilter(names=("m1", "m2"))
    assert task.models.accepts("m1", 10) and not task.models.accepts("m3", 10)
    assert ModelFilter(num_classes=6).accepts("any", 6) and not ModelFilter(num_classes=6).accepts("any", 10)


def test_suite_errors(tmp_path):
    (tmp_path / "suites").mkdir()
    _write(tmp_path, GOOD, "ok.yaml")
    _write(tmp_path, "version: 1\ntasks: [ok, okk]\n", "suites/s.yaml")
    with pytest.raises(PlexbenchError, match=r"s.yaml: field 'tasks\[1\]': unknown task 'okk'; did you mean ok"):
        R.load_suite("s", tmp_path)
    _write(tmp_path, "version: 1\ntasks: [ok, ok]\n", "suites/s.yaml")
    with pytest.raises(PlexbenchError, match=r"field 'tasks\[1\]': expected each task listed once"):
        R.load_suite("s", tmp_path)
    with pytest.raises(PlexbenchError, match="unknown suite 'z'"):
        R.load_suite("z", tmp_path)


def test_tasks_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("PLEXBENCH_TASKS_DIR", str(tmp_path))
    assert R.tasks_dir() == tmp_path
    assert R.tasks_dir(TASKS) == TASKS  # explicit wins
    monkeypatch.delenv("PLEXBENCH_TASKS_DIR")
    assert R.tasks_dir() == TASKS
    with pytest.raises(PlexbenchError, match="tasks directory not found"):
        R.tasks_dir(tmp_path / "nope")


def test_listing_rows():
    rows = R.list_task_rows(argparse.Namespace(tasks_dir=None))
    by_name = {r["task"]: r for r in rows}
    assert by_name["fmnist_open_set"]["models"] == "num_classes 6"
    assert by_name["fmnist_open_set"]["suites"] == "embedded"
    suites = {r["suite"]: r for r in R.list_suite_rows(argparse.Namespace(tasks_dir=None))}
    import yaml

    listed = yaml.safe_load((TASKS / "suites" / "embedded.yaml").read_text())["tasks"]
    assert suites["embedded"]["tasks"] == len(listed) >= 13


def test_cli_bad_task_file_exits_2(tmp_path, capsys):
    _write(tmp_path, GOOD.replace("split: test", "split: tst"), "broken.yaml")
    code = main(["task", "info", "broken", "--tasks-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "broken.yaml: field 'dataset.split'" in err


def test_cli_task_info_and_list(capsys):
    assert main(["task", "info", "fmnist_ood_digits"]) == 0
    out = capsys.readouterr().out
    assert "kind         ood" in out and "digits:test, preprocess 'resize(28)' first" in out
    assert "fit: fashion_mnist:train, first 10,000 examples (+ pre-logits)" in out


def test_dry_run_lists_missing_plex_vision_data(tmp_path):
    r = subprocess.run([sys.executable, "-m", "plexbench", "run", "--suite", "plex-vision", "--dry-run",
                        "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "imagenet_covariate_shift" in r.stdout
    assert f"plexbench data prepare cifar10 --data-dir {tmp_path}" in r.stdout
    assert "imagenet2012_corrupted/* (75 datasets)" in r.stdout
