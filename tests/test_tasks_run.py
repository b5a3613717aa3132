"""End to end: the embedded task kinds on 500 real Fashion-MNIST examples with zoo models.

One module-scoped run (the `e2e` suite below: every kind, bootstrap 20, covariate shift on 2
corruptions x 2 severities) feeds most tests; numbers are checked against a direct forward pass of
the same model scored with scikit-learn / hand formulas, never against earlier plexbench output.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from plexbench.tasks import registry as R

from plexbench.cli import main
from plexbench.tasks import runner
from plexbench.tasks.kinds.base import EvalContext
from plexbench.tasks.runner import RunOptions
from plexbench.tasks.sources import InferenceModel

REPO = Path(__file__).resolve().parent.parent
LIMIT = 500
ZOO_10, ZOO_6 = "det-mini", "det-mini-fmnist6"
SHIFT = {"corruptions": ["gaussian_noise", "contrast"], "severities": [1, 3]}
E2E_TASKS = ["fmnist_in_distribution", "fmnist_calibration", "fmnist_selective_prediction", "fmnist_ood_digits",
             "fmnist_subpopulation", "fmnist_covariate_shift", "fmnist6_in_distribution", "fmnist_open_set",
             "fmnist_soft_labels"]


def make_tasks_dir(root: Path) -> Path:
    """The shipped embedded tasks with bootstrap 20, a smaller shift grid and a label-uncertainty task."""
    (root / "suites").mkdir(parents=True)
    for name in E2E_TASKS[:-1]:
        data = yaml.safe_load((REPO / "tasks" / f"{name}.yaml").read_text())
        if data.get("bootstrap"):
            data["bootstrap"] = 20
        if data["kind"] == "covariate_shift":
            data["params"].update(SHIFT)
        (root / f"{name}.yaml").write_text(yaml.safe_dump(data))
    (root / "fmnist_soft_labels.yaml").write_text(
        "kind: label_uncertainty\nversion: 1\ndataset: {name: fashion_mnist, split: test}\nbootstrap: 20\n")
    (root / "suites" / "e2e.yaml").write_text(yaml.safe_dump({"version": 1, "tasks": E2E_TASKS}))
    return root


def smoothed(labels: np.ndarray) -> np.ndarray:
    """Soft labels 0.8 on the true class, 0.2 / 9 on each other one (rows sum to 1)."""
    soft = np.full((len(labels), 10), 0.2 / 9)
    soft[np.arange(len(labels)), labels] = 0.8
    return soft


class SoftLabelContext(EvalContext):
    """Fashion-MNIST has no soft labels: add smoothed ones (a known function of the true labels)."""

    def load_arrays(self, name, split, n=None):
        arrays = dict(super().load_arrays(name, split, n))
        if name == "fashion_mnist":
            arrays["soft_label"] = smoothed(arrays["label"])
        return arrays


def counting(name: str):
    """The zoo model's handle with its forward function wrapped to count traces (a store hit traces nothing)."""
    from plexbench.inference import ModelHandle, handle_from_registry

    inner = handle_from_registry(name)
    calls = {"n": 0}

    def apply_fn(params, images, rng):
        calls["n"] += 1
        return inner.apply_fn(params, images, rng)

    handle = ModelHandle(inner.name, apply_fn, preprocess=inner.preprocess, identity=inner.identity,
                         num_members=inner.num_members, num_classes=inner.num_classes,
                         load_params=lambda: inner.params, uses_rng=inner.uses_rng)
    return handle, calls


def run_models(ctx_dirs, out: Path, **kw):
    det, det_calls = counting(ZOO_10)
    det6, det6_calls = counting(ZOO_6)
    options = RunOptions(suite="e2e", out_dir=out, data_dir=ctx_dirs.data_dir, store_dir=ctx_dirs.store,
                         tasks_dir=ctx_dirs.tasks_dir, limit=LIMIT, batch_size=250, verbose=False, **kw)
    from plexbench.models.registry import get_model

    models = [InferenceModel(det, "registry", config=get_model(ZOO_10).config),
              InferenceModel(det6, "registry", config=get_model(ZOO_6).config)]
    report = runner.run(options, models, context=SoftLabelContext(data_dir=ctx_dirs.data_dir, limit=LIMIT))
    return report, det_calls["n"] + det6_calls["n"], (det, det6)


def read_long(out: Path) -> list[dict]:
    with open(out / "metrics_long.csv", newline="") as f:
        return list(csv.DictReader(f))


def value(rows, model, task, metric, dataset=None) -> float:
    hits = [r for r in rows if r["model"] == model and r["task"] == task and r["metric"] == metric
            and (dataset is None or r["dataset"] == dataset)]
    assert len(hits) == 1, (model, task, metric, dataset, len(hits))
    return float(hits[0]["value"])


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, data_dir):
    from plexbench.data.prepare import prepare

    root = tmp_path_factory.mktemp("tasks_e2e")
    for c in SHIFT["corruptions"]:
        for s in SHIFT["severities"]:
            prepare(f"fashion_mnist_corrupted/{c}_{s}", data_dir)
    dirs = SimpleNamespace(root=root, data_dir=data_dir, store=root / "store", tasks_dir=make_tasks_dir(root / "tasks"))
    report, calls, (det, det6) = run_models(dirs, root / "out")
    return SimpleNamespace(dirs=dirs, out=root / "out", report=report, calls=calls, rows=read_long(root / "out"),
                           handle=det, handle6=det6)


def direct_probs(handle, dataset: str, split: str, n: int, prefix: str | None = None):
    """Ensemble probabilities (n, K) and labels of the first n examples, by calling the model directly."""
    import jax

    from plexbench.data import pipeline
    from plexbench.data.registry import get_dataset

    base = handle.preprocess or get_dataset(dataset).default_preprocess
    spec = f"{prefix}|{base}" if prefix else base
    probs, labels = [], []
    for batch in pipeline.batches(dataset, split, batch_size=250, preprocess=spec, stop=n,
                                  data_dir=_direct_data_dir[0]):
        out = handle.apply_fn(handle.params, batch["image"], jax.random.PRNGKey(0))
        member = jax.nn.softmax(np.asarray(out["logits"], np.float64), axis=-1)
        probs.append(np.asarray(member).mean(axis=0)[batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
    return np.concatenate(probs), np.concatenate(labels)


_direct_data_dir = [None]


@pytest.fixture(scope="module")
def direct(e2e):
    _direct_data_dir[0] = e2e.dirs.data_dir
    test_p, test_y = direct_probs(e2e.handle, "fashion_mnist", "test", LIMIT)
    digits_p, _ = direct_probs(e2e.handle, "digits", "test", LIMIT, prefix="resize(28)")
    six_p, _ = direct_probs(e2e.handle6, "fashion_mnist", "test", LIMIT)
    return SimpleNamespace(probs=test_p, labels=test_y, digits=digits_p, six=six_p)


# --------------------------------------------------------------------------- results directory

def test_results_directory_format(e2e):
    out = e2e.out
    with open(out / "metrics_long.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["model", "task", "task_version", "kind", "category", "dataset", "split", "metric", "value",
                      "ci_low", "ci_high", "n", "num_classes", "model_num_classes", "score_exclusion", "modality"]
    for task in E2E_TASKS:
        model = ZOO_6 if task in ("fmnist6_in_distribution", "fmnist_open_set") else ZOO_10
        doc = json.loads((out / "tasks" / task / f"{model}.json").read_text())
        assert {"task", "kind", "version", "model", "dataset", "split", "metrics", "curves", "headline",
                "figures", "format_version"} <= set(doc)
        # what the kind declares travels with the results
        kind = R.get_kind(doc["kind"])
        assert doc["figures"] == list(kind.figures)
        assert all(r["category"] == kind.row_category(None, r["metric"]) for r in doc["rows"])
    categories = {(r["task"], r["category"]) for r in e2e.rows}
    assert ("fmnist_ood_digits", "uncertainty") in categories and ("fmnist_in_distribution", "prediction") in categories
    assert all(r["model_num_classes"] == ("6" if r["model"] == ZOO_6 else "10") for r in e2e.rows)
    cal = json.loads((out / "tasks" / "fmnist_calibration" / f"{ZOO_10}.json").read_text())
    diagram = cal["curves"]["reliability_diagram"]
    assert sum(diagram["count"]) == LIMIT and len(diagram["bin_lower"]) == 15
    sel = json.loads((out / "tasks" / "fmnist_selective_prediction" / f"{ZOO_10}.json").read_text())
    assert set(sel["curves"]["risk_coverage"]) == {"coverage", "risk"}
    ood = json.loads((out / "tasks" / "fmnist_ood_digits" / f"{ZOO_10}.json").read_text())
    assert set(ood["curves"]["ood"]["digits"]) == {"msp", "entropy", "mlogit", "maha", "rmaha"}
    run_json = json.loads((out / "run.json").read_text())
    assert {"provenance", "suite", "tasks", "models", "datasets", "seeds", "timings"} <= set(run_json)
    info = run_json["models"][ZOO_10]
    assert info["num_params"] > 1000 and info["flops_per_example"] > info["num_params"]
    assert info["identity"]["checkpoint_sha256"]
    # Every row carries n; bootstrapped rows carry an interval around the value.
    for r in e2e.rows:
        assert int(r["n"]) > 0
    acc = next(r for r in e2e.rows if r["task"] == "fmnist_in_distribution" and r["metric"] == "accuracy"
               and r["model"] == ZOO_10)
    assert float(acc["ci_low"]) <= float(acc["value"]) <= float(acc["ci_high"]) and int(acc["n"]) == LIMIT
    # the resamples behind those intervals are kept for the reliability score's interval
    from plexbench.fileio import load_npz

    doc = json.loads((out / "tasks" / "fmnist_in_distribution" / f"{ZOO_10}.json").read_text())
    kept = load_npz(out / "tasks" / "fmnist_in_distribution" / doc["replicates_file"])
    column = list(kept["columns"]).index("accuracy@fashion_mnist")
    assert kept["replicates"].shape == (len(kept["columns"]), doc["bootstrap"])
    low, high = np.quantile(kept["replicates"][column], [0.025, 0.975])
    assert (low, high) == pytest.approx((float(acc["ci_low"]), float(acc["ci_high"])), abs=1e-12)


def test_in_distribution_matches_sklearn(e2e, direct):
    from sklearn.metrics import accuracy_score, log_loss

    rows = e2e.rows
    assert value(rows, ZOO_10, "fmnist_in_distribution", "accuracy") == pytest.approx(
        accuracy_score(direct.labels, direct.probs.argmax(1)), abs=1e-12)
    assert value(rows, ZOO_10, "fmnist_in_distribution", "nll") == pytest.approx(
        log_loss(direct.labels, direct.probs, labels=range(10)), rel=1e-5)
    onehot = np.eye(10)[direct.labels]
    assert value(rows, ZOO_10, "fmnist_in_distribution", "brier") == pytest.approx(
        ((direct.probs - onehot) ** 2).sum(1).mean(), rel=1e-5)


def test_ood_auroc_matches_sklearn(e2e, direct):
    from sklearn.metrics import average_precision_score, roc_auc_score

    is_ood = np.r_[np.zeros(len(direct.probs)), np.ones(len(direct.digits))]
    msp = np.r_[1 - direct.probs.max(1), 1 - direct.digits.max(1)]
    rows = e2e.rows
    assert value(rows, ZOO_10, "fmnist_ood_digits", "ood/digits/msp/auroc") == pytest.approx(
        roc_auc_score(is_ood, msp), abs=1e-4)
    assert value(rows, ZOO_10, "fmnist_ood_digits", "ood/digits/msp/auprc") == pytest.approx(
        average_precision_score(is_ood, msp), abs=1e-4)
    ent = np.r_[-(direct.probs * np.log(direct.probs)).sum(1), -(direct.digits * np.log(direct.digits)).sum(1)]
    assert value(rows, ZOO_10, "fmnist_ood_digits", "ood/digits/entropy/auroc") == pytest.approx(
        roc_auc_score(is_ood, ent), abs=1e-4)
    ood_rows = [r for r in rows if r["task"] == "fmnist_ood_digits" and r["model"] == ZOO_10]
    assert {r["dataset"] for r in ood_rows} == {"fashion_mnist"}
    assert len(ood_rows) == 5 * 3 and all(int(r["n"]) == LIMIT + len(direct.digits) for r in ood_rows)


def test_selective_and_calibration_by_hand(e2e, direct):
    conf = direct.probs.max(1)
    correct = direct.probs.argmax(1) == direct.labels
    # oc_acc@5%: the 25 least confident of 500 go to the oracle (counted correct).
    order = np.argsort(conf, kind="stable")
    referred = np.zeros(LIMIT, bool)
    referred[order[:25]] = True
    assert value(e2e.rows, ZOO_10, "fmnist_selective_prediction", "oc_acc@5%") == pytest.approx(
        np.mean(correct | referred), abs=1e-12)
    # ECE with 15 equal-width bins, bin = min(floor(15 c), 14).
    bins = np.minimum((conf * 15).astype(int), 14)
    ece = sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
              for b in range(15) if (bins == b).any())
    # (abs 1e-6: the jitted forward pass in the store and the direct one round float32 differently)
    assert value(e2e.rows, ZOO_10, "fmnist_calibration", "ece") == pytest.approx(ece, abs=1e-6)


def test_label_uncertainty_against_hand_formulas(e2e, direct):
    soft = smoothed(direct.labels)
    p = direct.probs
    nll = -(soft * np.log(np.clip(p, 1e-7, None))).sum(1).mean()
    # GED = 2 sum_{i!=j} y_i p_j - sum_{i!=j} y_i y_j - sum_{i!=j} p_i p_j (spec §5), mean over examples.
    cross = soft.sum(1) * p.sum(1) - (soft * p).sum(1)
    label_div = soft.sum(1) ** 2 - (soft ** 2).sum(1)
    sample_div = p.sum(1) ** 2 - (p ** 2).sum(1)
    ged = np.mean(2 * cross - label_div - sample_div)
    rows = e2e.rows
    assert value(rows, ZOO_10, "fmnist_soft_labels", "nll") == pytest.approx(nll, rel=1e-5)
    assert value(rows, ZOO_10, "fmnist_soft_labels", "ged") == pytest.approx(ged, rel=1e-5)
    assert value(rows, ZOO_10, "fmnist_soft_labels", "accuracy") == pytest.approx(np.mean(p.argmax(1) == direct.labels))


def test_covariate_shift_averages_and_grid(e2e):
    rows = [r for r in e2e.rows if r["task"] == "fmnist_covariate_shift" and r["model"] == ZOO_10]
    cells = {(r["dataset"], r["metric"]): float(r["value"]) for r in rows}
    names = [f"fashion_mnist_corrupted/{c}_{s}" for c in SHIFT["corruptions"] for s in SHIFT["severities"]]
    for metric in ("accuracy", "ece", "nll", "brier"):
        grid = [cells[(n, metric)] for n in names]
        assert cells[("fashion_mnist_corrupted", metric)] == pytest.approx(np.mean(grid), abs=1e-12)
        assert cells[("fashion_mnist_corrupted", f"severity_1/{metric}")] == pytest.approx(np.mean(grid[0::2]))
        assert cells[("fashion_mnist_corrupted", f"contrast/{metric}")] == pytest.approx(np.mean(grid[2:]))
    overall = next(r for r in rows if r["dataset"] == "fashion_mnist_corrupted" and r["metric"] == "accuracy")
    assert int(overall["n"]) == 4 * LIMIT
    doc = json.loads((e2e.out / "tasks" / "fmnist_covariate_shift" / f"{ZOO_10}.json").read_text())
    assert doc["dataset"] == "fashion_mnist_corrupted"
    assert doc["curves"]["shift"]["contrast"]["3"]["accuracy"] == cells[(names[3], "accuracy")]


def test_subpopulation_groups(e2e, direct):
    doc = json.loads((e2e.out / "tasks" / "fmnist_subpopulation" / f"{ZOO_10}.json").read_text())
    curve = doc["curves"]["subpopulation"]
    groups = np.array(curve["group"])
    assert groups.min() >= 0 and groups.max() < 30 and sum(curve["group_size"]) == LIMIT
    # 3 groups per class: each class's examples fall into groups 3c .. 3c+2.
    per_class = np.bincount(groups // 3, weights=curve["group_size"], minlength=10)
    assert np.array_equal(per_class, np.bincount(direct.labels, minlength=10))
    acc = np.array(curve["group_accuracy"])
    assert value(e2e.rows, ZOO_10, "fmnist_subpopulation", "subpop/mean") == pytest.approx(acc.mean())
    assert value(e2e.rows, ZOO_10, "fmnist_subpopulation", "subpop/p25") == pytest.approx(np.percentile(acc, 25))


def test_open_set_only_for_six_class_model(e2e, direct):
    from sklearn.metrics import roc_auc_score

    rows = e2e.rows
    assert {r["model"] for r in rows if r["task"] == "fmnist_open_set"} == {ZOO_6}
    assert {r["model"] for r in rows if r["task"] == "fmnist_in_distribution"} == {ZOO_10}
    held = [r for r in rows if r["task"] == "fmnist_open_set" and r["metric"].startswith("ood/fashion_mnist_heldout/")]
    assert len(held) == 15 and {r["dataset"] for r in held} == {"fashion_mnist6"}
    skipped = {(s["task"], s["model"]) for s in e2e.report.skipped}
    assert ("fmnist_open_set", ZOO_10) in skipped and ("fmnist_calibration", ZOO_6) in skipped
    # Classes 0-5 of the first 500 test images are in-distribution, classes 6-9 OOD (same split).
    known = direct.labels < 6
    is_ood = np.r_[np.zeros(known.sum()), np.ones((~known).sum())]
    msp = 1 - np.r_[direct.six[known].max(1), direct.six[~known].max(1)]
    assert value(rows, ZOO_6, "fmnist_open_set", "ood/fashion_mnist_heldout/msp/auroc") == pytest.approx(
        roc_auc_score(is_ood, msp), abs=1e-4)
    assert all(int(r["n"]) == LIMIT for r in held)
    assert value(rows, ZOO_6, "fmnist6_in_distribution", "accuracy") == pytest.approx(
        np.mean(direct.six[known].argmax(1) == direct.labels[known]))


# --------------------------------------------------------------------------- store, reuse, resume

def test_first_run_called_the_models(e2e):
    assert e2e.calls > 0 and len(e2e.report.computed) == len(E2E_TASKS)


def test_rerun_hits_the_store(e2e):
    """A fresh results directory: every task is evaluated again, the models are never called."""
    out = e2e.dirs.root / "out2"
    report, calls, _ = run_models(e2e.dirs, out)
    assert calls == 0
    assert len(report.computed) == len(E2E_TASKS) and not report.reused
    first = {(r["model"], r["task"], r["dataset"], r["metric"]): r["value"] for r in e2e.rows}
    second = {(r["model"], r["task"], r["dataset"], r["metric"]): r["value"] for r in read_long(out)}
    assert first == second


def test_resume_reuses_finished_results(e2e):
    out = e2e.dirs.root / "out3"
    shutil.copytree(e2e.out, out)
    (out / "tasks" / "fmnist_calibration" / f"{ZOO_10}.json").unlink()  # interrupted before this one
    (out / "tasks" / "fmnist_ood_digits" / f"{ZOO_10}.json").write_text('{"task": "fmnist_ood')  # half-written
    report, calls, _ = run_models(e2e.dirs, out)
    assert calls == 0
    assert sorted(report.computed) == [("fmnist_calibration", ZOO_10), ("fmnist_ood_digits", ZOO_10)]
    assert len(report.reused) == len(E2E_TASKS) - 2
    assert len(read_long(out)) == len(e2e.rows)


def test_changed_task_is_recomputed(e2e):
    out = e2e.dirs.root / "out4"
    shutil.copytree(e2e.out, out)
    tasks_dir = e2e.dirs.root / "tasks_v2"
    shutil.copytree(e2e.dirs.tasks_dir, tasks_dir)
    path = tasks_dir / "fmnist_calibration.yaml"
    path.write_text(path.read_text().replace("version: 1", "version: 2"))
    dirs = SimpleNamespace(**{**vars(e2e.dirs), "tasks_dir": tasks_dir})
    report, calls, _ = run_models(dirs, out)
    assert report.computed == [("fmnist_calibration", ZOO_10)] and calls == 0
    versions = {r["task_version"] for r in read_long(out) if r["task"] == "fmnist_calibration"}
    assert versions == {"2"}


# --------------------------------------------------------------------------- models from files, CLI

def test_prediction_files_model_via_cli(e2e, tmp_path, capsys):
    """Store entries exported as <dataset>__<split>.npz give the same numbers as the model itself."""
    from plexbench.inference.store import StoreEntry

    pred_dir = tmp_path / "preds"
    for path in sorted(p for p in e2e.dirs.store.iterdir() if (p / "manifest.json").is_file()):
        m = StoreEntry(path).manifest
        if m.get("model") == ZOO_10 and m["split"] == "test" and m["dataset"] in ("fashion_mnist", "digits"):
            StoreEntry(path).export(pred_dir / f"{m['dataset']}__{m['split']}.npz")
    out = tmp_path / "out"
    code = main(["run", "--suite", "e2e", "--tasks", "fmnist_in_distribution,fmnist_ood_digits",
                 "--tasks-dir", str(e2e.dirs.tasks_dir), "--predictions", f"files={pred_dir}",
                 "--data-dir", str(e2e.dirs.data_dir), "--out", str(out), "--limit", str(LIMIT)])
    assert code == 0, capsys.readouterr().err
    rows = read_long(out)
    assert value(rows, "files", "fmnist_in_distribution", "accuracy") == value(
        e2e.rows, ZOO_10, "fmnist_in_distribution", "accuracy")
    assert value(rows, "files", "fmnist_ood_digits", "ood/digits/msp/auroc") == pytest.approx(value(
        e2e.rows, ZOO_10, "fmnist_ood_digits", "ood/digits/msp/auroc"), abs=1e-12)
    # No file for the fit split (train): the Mahalanobis scorers are left out, the others reported.
    assert not any("/maha/" in r["metric"] or "/rmaha/" in r["metric"] for r in rows)
    doc = json.loads((out / "tasks" / "fmnist_ood_digits" / "files.json").read_text())
    assert doc["info"]["skipped_scorers"] == {"maha": "no predictions on the fit split",
                                              "rmaha": "no predictions on the fit split"}


@pytest.mark.parametrize("argv, message", [
    (["--models", "", "--checkpoint", "x=y"], "--checkpoint given for x"),
    (["--models", "no-such-model"], "unknown model 'no-such-model'"),
    (["--predictions", "bad"], "bad --predictions 'bad'"),
    (["--limit", "0", "--models", ZOO_10], "--limit must be >= 1"),
    (["--tasks", "nope", "--models", ZOO_10], "--tasks: nope not in suite embedded"),
])
def test_cli_bad_arguments_exit_2(argv, message, capsys, tmp_path):
    code = main(["run", "--suite", "embedded", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
