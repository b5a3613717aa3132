"""Task kinds and their helpers on small hand-made inputs (oracles: hand arithmetic, scikit-learn)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexbench.errors import PlexbenchError
from plexbench.tasks import groups as G
from plexbench.tasks import registry as R
from plexbench import results_schema as RS
from plexbench.tasks.kinds.base import EvalContext, Need, Split, measure
from plexbench.tasks.kinds.covariate_shift import corruption_errors, shifted_name
from plexbench.tasks.kinds.selective_prediction import oc_metric_name
from plexbench.tasks.runner import RunOptions, plan_requests
from plexbench.tasks.sources import split_from_arrays
from plexbench.tasks.spec import DatasetRef, TaskSpec

REPO = Path(__file__).resolve().parent.parent


def _task(tmp_path, text: str) -> TaskSpec:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return R.load_task_file(path)


FMNIST = DatasetRef("fashion_mnist")


def _split(labels, probs, *, ref=FMNIST, logits=None, embeddings=None) -> Split:
    probs = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):  # log 0 = -inf, a probability of exactly 0
        log_probs = np.log(probs)
    return Split(ref, np.asarray(labels), log_probs, np.arange(len(labels)), logits, embeddings)


# --------------------------------------------------------------------------- kinds on hand-made predictions

def test_in_distribution_by_hand(tmp_path):
    task = _task(tmp_path, "kind: in_distribution\nversion: 1\ndataset: {name: fashion_mnist}\n")
    probs = [[0.7, 0.2, 0.1] + [0.0] * 7, [0.1, 0.6, 0.3] + [0.0] * 7, [0.5, 0.4, 0.1] + [0.0] * 7]
    labels = [0, 2, 0]
    rows = {r.metric: r for r in R.get_kind("in_distribution").evaluate(task, {"eval": _split(labels, probs)},
                                                                         EvalContext()).rows}
    assert set(rows) == {"accuracy", "nll", "brier"}  # ece only on request
    assert rows["accuracy"].value == pytest.approx(2 / 3)  # argmax 0, 1, 0 vs labels 0, 2, 0
    assert rows["nll"].value == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.5)) / 3)
    # Brier: (0.09+0.04+0.01) + (0.01+0.36+0.49) + (0.25+0.16+0.01) = 0.14 + 0.86 + 0.42
    assert rows["brier"].value == pytest.approx((0.14 + 0.86 + 0.42) / 3)
    assert all(r.n == 3 and math.isnan(r.ci_low) for r in rows.values())


def test_measure_bootstrap_interval_brackets_value(tmp_path):
    from plexbench import metrics as M

    task = _task(tmp_path, "kind: in_distribution\nversion: 1\ndataset: {name: fashion_mnist}\nbootstrap: 50\n")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    row = measure(task, task.dataset, "accuracy", M.accuracy, (labels, probs))
    assert row.ci_low <= row.value <= row.ci_high and row.n == 200 and row.ci_low < row.ci_high


def test_ood_kind_skips_scorers_without_inputs(tmp_path):
    from sklearn.metrics import roc_auc_score

    task = _task(tmp_path, "kind: ood\nversion: 1\ndataset: {name: fashion_mnist}\n"
                           "params: {ood: [{name: digits, alias: d}], scorers: [msp, mlogit, maha]}\n")
    kind = R.get_kind("ood")
    assert [n.role for n in kind.needs(task)] == ["eval", "ood:d", "fit"]
    rng = np.random.default_rng(1)
    p_in, p_out = rng.dirichlet(np.ones(10) * 0.3, 40), rng.dirichlet(np.ones(10) * 3, 30)
    inputs = {"eval": _split(rng.integers(0, 10, 40), p_in), "ood:d": _split(np.zeros(30, int), p_out)}
    result = kind.evaluate(task, inputs, EvalContext())
    assert result.info["skipped_scorers"] == {"mlogit": "predictions without logits",
                                              "maha": "no predictions on the fit split"}
    rows = {r.metric: r for r in result.rows}
    assert set(rows) == {"ood/d/msp/auroc", "ood/d/msp/auprc", "ood/d/msp/fpr95"}
    expected = roc_auc_score(np.r_[np.zeros(40), np.ones(30)], np.r_[1 - p_in.max(1), 1 - p_out.max(1)])
    assert rows["ood/d/msp/auroc"].value == pytest.approx(expected, abs=1e-12)
    assert rows["ood/d/msp/auroc"].n == 70 and rows["ood/d/msp/auroc"].dataset == "fashion_mnist"


def test_label_uncertainty_drops_rows_without_soft_label(tmp_path):
    task = _task(tmp_path, "kind: label_uncertainty\nversion: 1\ndataset: {name: fashion_mnist}\n")

    class Ctx(EvalContext):
        def load_arrays(self, name, split, n=None):
            soft = np.zeros((4, 10))
            soft[0, 1] = soft[1, 2] = 1.0
            soft[3, :2] = 0.5  # row 2 stays all zero: no label set
            return {"soft_label": soft}

    probs = np.full((4, 10), 0.01)
    probs[:, 1] = 0.91
    result = R.get_kind("label_uncertainty").evaluate(task, {"eval": _split([1, 2, 0, 0], probs)}, Ctx())
    rows = {r.metric: r for r in result.rows}
    assert result.info["dropped_without_soft_label"] == 1
    assert rows["accuracy"].n == 3
    # argmax soft labels 1, 2, 0 (tie 0.5/0.5 -> class 0); predictions all class 1.
    assert rows["accuracy"].value == pytest.approx(1 / 3)
    nll = (-math.log(0.91) - math.log(0.01) - 0.5 * (math.log(0.01) + math.log(0.91))) / 3
    assert rows["nll"].value == pytest.approx(nll)


def test_corruption_errors_worked_example():
    grid = {"snow": {1: {"accuracy": 0.9}, 2: {"accuracy": 0.7}}, "fog": {1: {"accuracy": 0.6}, 2: {"accuracy": 0.6}}}
    ce = corruption_errors(grid, {"snow": 0.8, "fog": 0.5})
    assert ce == pytest.approx({"snow": (1 - 0.8) / 0.8, "fog": (1 - 0.6) / 0.5})  # 0.25 and 0.8


def test_covariate_shift_mce_row(tmp_path, monkeypatch):
    task = _task(tmp_path, "kind: covariate_shift\nversion: 1\ndataset: {name: fashion_mnist}\nparams:\n"
                           "  family: fashion_mnist_corrupted\n  corruptions: [snow, fog]\n  severities: [1, 2]\n"
                           "  reference_errors: {snow: 0.8, fog: 0.5}\n")
    kind = R.get_kind("covariate_shift")
    needs = kind.needs(task)
    assert [n.ref.name for n in needs] == ["fashion_mnist_corrupted/snow_1", "fashion_mnist_corrupted/snow_2",
                                           "fashion_mnist_corrupted/fog_1", "fashion_mnist_corrupted/fog_2"]
    eye = np.eye(10) * 0.9 + 0.01  # rows: 0.91 on one class, 0.01 elsewhere
    # 10 examples per cell; correct counts 9, 7, 6, 6 (accuracies 0.9, 0.7, 0.6, 0.6).
    inputs = {}
    for need, right in zip(needs, (9, 7, 6, 6), strict=True):
        labels = np.arange(10)
        preds = np.where(np.arange(10) < right, labels, (labels + 1) % 10)
        inputs[need.role] = _split(labels, eye[preds], ref=need.ref)
    result = kind.evaluate(task, inputs, EvalContext())
    rows = {(r.dataset, r.metric): r for r in result.rows}
    assert rows[("fashion_mnist_corrupted", "mce")].value == pytest.approx((0.25 + 0.8) / 2)
    assert rows[("fashion_mnist_corrupted", "accuracy")].value == pytest.approx((0.9 + 0.7 + 0.6 + 0.6) / 4)
    assert rows[("fashion_mnist_corrupted", "severity_2/accuracy")].value == pytest.approx((0.7 + 0.6) / 2)
    assert rows[("fashion_mnist_corrupted", "snow/accuracy")].value == pytest.approx(0.8)
    assert rows[("fashion_mnist_corrupted", "accuracy")].n == 40
    assert result.dataset == "fashion_mnist_corrupted" and result.curves["shift"]["fog"]["2"]["accuracy"] == 0.6


def test_shifted_name_uses_the_family_spelling():
    assert shifted_name("cifar10_corrupted", "elastic_transform", 2) == "cifar10_corrupted/elastic_2"
    assert shifted_name("fashion_mnist_corrupted", "glass_blur", 5) == "fashion_mnist_corrupted/glass_blur_5"


def test_oc_metric_names_match_plexbench_score():
    assert [oc_metric_name(f) for f in (0.005, 0.01, 0.02, 0.05)] == ["oc_acc@0.5%", "oc_acc@1%", "oc_acc@2%",
                                                                     "oc_acc@5%"]


# --------------------------------------------------------------------------- groupings

def _clusters(seed=0):
    """Two classes, each three well-separated blobs of 8x8 'images'."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(2):
        for size in (40, 25, 15):
            centre = rng.integers(20, 235, (8, 8, 1))
            images.append(np.clip(centre + rng.normal(0, 4, (size, 8, 8, 1)), 0, 255).astype(np.uint8))
            labels += [c] * size
    return np.concatenate(images), np.array(labels)


def test_kmeans_per_class_groups_blobs():
    images, labels = _clusters()
    fit = G.fit_kmeans_per_class(images, labels, num_classes=2, clusters_per_class=3, pca_dims=8, seed=0)
    groups = fit.assign(images, labels)
    # The blobs are recovered exactly, numbered by decreasing size within each class.
    expected = np.repeat([0, 1, 2, 3, 4, 5], [40, 25, 15, 40, 25, 15])
    assert np.array_equal(groups, expected)
    # An example is assigned within its TRUE class even when it looks like the other class.
    swapped = fit.assign(images[:1], np.array([1]))
    assert 3 <= swapped[0] <= 5


@settings(max_examples=20, deadline=None)
@given(st.permutations(list(range(80))))
def test_group_assignment_is_row_wise(perm):
    images, labels = _clusters(1)
    fit = G.fit_kmeans_per_class(images, labels, num_classes=2, clusters_per_class=3, pca_dims=4, seed=0, n_init=2)
    perm = np.array(perm)
    assert np.array_equal(fit.assign(images[perm], labels[perm]), fit.assign(images, labels)[perm])


# --------------------------------------------------------------------------- runner pieces

def test_split_from_arrays_limit_then_class_filter():
    logits = np.random.default_rng(0).normal(size=(1, 10, 6))
    labels = np.array([0, 7, 1, 8, 2, 9, 3, 6, 4, 5])
    arrays = {"member_logits": logits, "labels": labels, "embeddings": np.arange(30.0).reshape(1, 10, 3)}
    held_out = split_from_arrays(DatasetRef("fashion_mnist", classes=(6, 7, 8, 9)), arrays, 6)
    # first 6 rows (labels 0 7 1 8 2 9) then classes 6-9: rows 1, 3, 5 -- labels >= K=6 are fine for OOD data
    assert held_out.ids.tolist() == [1, 3, 5] and held_out.labels.tolist() == [7, 8, 9]
    assert held_out.embeddings.shape == (1, 3, 3) and held_out.embeddings[0, 0, 0] == 3.0
    assert np.allclose(np.exp(held_out.log_probs).sum(1), 1.0) and held_out.logits.shape == (1, 3, 6)
    with pytest.raises(PlexbenchError, match="no example of classes"):
        split_from_arrays(DatasetRef("fashion_mnist", classes=(9,)), arrays, 3)


def test_plan_merges_requests(tmp_path):
    tasks = R.load_tasks(REPO / "tasks")
    chosen = [tasks[n] for n in ("fmnist_in_distribution", "fmnist_ood_digits", "fmnist_open_set")]
    plan = plan_requests(chosen, RunOptions(suite="x", out_dir=tmp_path))
    test = plan[("fashion_mnist", "test", None)]
    assert test.n is None and test.pre_logits  # the OOD task needs its embeddings; one inference serves all
    assert plan[("fashion_mnist", "train", None)].n == 10000
    assert plan[("digits", "test", "resize(28)")].pre_logits
    smoke = plan_requests(chosen, RunOptions(suite="x", out_dir=tmp_path, limit=300))
    assert {r.n for r in smoke.values()} == {300}


def test_need_optional_flag():
    assert Need("fit", DatasetRef("x"), True, optional=True).optional


def test_long_csv_cells(tmp_path):
    rows = [{"model": "m", "task": "t", "task_version": 1, "kind": "calibration", "category": "uncertainty",
             "dataset": "d", "split": "test", "metric": "ece", "value": float("nan"), "ci_low": float("nan"),
             "ci_high": 0.5, "n": 3, "num_classes": 10, "model_num_classes": 10, "score_exclusion": ""}]
    RS.write_long_csv(tmp_path / "m.csv", rows)
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == ",".join(RS.LONG_COLUMNS)
    assert lines[1] == "m,t,1,calibration,uncertainty,d,test,ece,nan,,0.5,3,10,10,"
    assert RS.safe_name("pkg.mod:make") == "pkg.mod_make"


def test_every_kind_declares_consistent_metadata():
    R.load_kinds()
    for name, kind in R.KINDS.items():
        assert kind.name == name and kind.summary and kind.metrics
        assert dataclasses.is_dataclass(kind.Params)
        if kind.default_metrics is not None:
            assert set(kind.default_metrics) <= set(kind.metrics)
        assert kind.headline, f"{name} declares no headline metrics for report tables"
        from plexbench.reports.plots import FIGURES

        assert all(f in FIGURES for f in kind.figures), f"{name} feeds an unregistered figure"
