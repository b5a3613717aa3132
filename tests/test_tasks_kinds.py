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
    [row] = measure(task, task.dataset, {"accuracy": M.accuracy}, M.ExampleStats.from_probs(probs, labels))
    assert row.ci_low <= row.value <= row.ci_high and row.n == 200 and row.ci_low < row.ci_high
    # the interval of the naive bootstrap (resampling the (N, K) arrays) with the task's seed
    assert (row.ci_low, row.ci_high) == M.bootstrap_ci(M.accuracy, labels, probs, num_samples=50, seed=task.seed)


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
             "ci_high": 0.5, "n": 3, "num_classes": 10, "model_num_classes": 10, "score_exclusion": "",
             "modality": "image"}]
    RS.write_long_csv(tmp_path / "m.csv", rows)
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == ",".join(RS.LONG_COLUMNS)
    assert lines[1] == "m,t,1,calibration,uncertainty,d,test,ece,nan,,0.5,3,10,10,,image"
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


# --------------------------------------------------------------------------- seeds, one bootstrap policy

def _with_seed(task: TaskSpec, seed: int, bootstrap: int = 40) -> TaskSpec:
    return dataclasses.replace(task, seed=seed, bootstrap=bootstrap)


def _intervals(rows):
    return {r.metric: (r.ci_low, r.ci_high) for r in rows}


def _labelled_split(n=300, k=10, seed=0, ref=FMNIST):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.standard_normal((n, k)) * 2.0
    logits[np.arange(n), labels] += 1.0
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return labels, probs / probs.sum(1, keepdims=True), logits


@pytest.mark.parametrize("kind_yaml, metric_fns", [
    ("kind: in_distribution\nversion: 1\ndataset: {name: fashion_mnist}\nmetrics: [accuracy, nll, brier, ece]\n",
     {"accuracy": "accuracy", "brier": "brier", "ece": "ece"}),
    ("kind: calibration\nversion: 1\ndataset: {name: fashion_mnist}\n",
     {"ece": "ece", "adaptive_ece": "adaptive_ece", "rms_ce": "rms_calibration_error", "calib_auc": "calib_auc"}),
    ("kind: selective_prediction\nversion: 1\ndataset: {name: fashion_mnist}\n", {"aurc": "aurc", "eaurc": "eaurc"}),
])
def test_kinds_bootstrap_with_the_task_seed(tmp_path, kind_yaml, metric_fns):
    # Fails when a kind ignores `task.seed`: its intervals must be those of the naive bootstrap with
    # that seed (resampling the (N, K) arrays), and change with the seed.
    from plexbench import metrics as M

    task = _task(tmp_path, kind_yaml)
    kind = R.get_kind(task.kind)
    labels, probs, _ = _labelled_split()
    split = _split(labels, probs)
    by_seed = {seed: _intervals(kind.evaluate(_with_seed(task, seed), {"eval": split}, EvalContext()).rows)
               for seed in (7, 8)}
    for metric, fn_name in metric_fns.items():
        naive = M.bootstrap_ci(getattr(M, fn_name), labels, split.probs, num_samples=40, seed=7)
        assert by_seed[7][metric] == pytest.approx(naive, rel=1e-12), metric
        assert by_seed[7][metric] != by_seed[8][metric], metric


def test_ood_kind_bootstrap_is_stratified_with_the_task_seed(tmp_path):
    from sklearn.metrics import roc_auc_score

    task = _task(tmp_path, "kind: ood\nversion: 1\ndataset: {name: fashion_mnist}\nparams: "
                           "{ood: [{name: digits, alias: d}, {name: digits, alias: e}], scorers: [msp, mlogit]}\n")
    kind = R.get_kind("ood")
    labels, probs, logits = _labelled_split(n=120)
    _, p_d, l_d = _labelled_split(n=60, seed=1)
    _, p_e, l_e = _labelled_split(n=50, seed=2)
    inputs = {"eval": _split(labels, probs, logits=logits[None]),
              "ood:d": _split(np.zeros(60, int), p_d, logits=l_d[None]),
              "ood:e": _split(np.zeros(50, int), p_e, logits=l_e[None])}
    rows = {r.metric: r for r in kind.evaluate(_with_seed(task, 5, 30), inputs, EvalContext()).rows}
    assert rows["ood/e/msp/auroc"].n == 170
    # in-distribution rows from default_rng(seed), the j-th OOD set's rows from default_rng([seed, 1 + j])
    for j, (name, p_out, l_out) in enumerate((("d", p_d, l_d), ("e", p_e, l_e))):
        rng_in, rng_out = np.random.default_rng(5), np.random.default_rng([5, 1 + j])
        flags = np.r_[np.zeros(120), np.ones(len(p_out))]
        msp_in, msp_out = 1 - probs.max(1), 1 - p_out.max(1)
        mlogit_in, mlogit_out = -logits.max(1), -l_out.max(1)
        msp, mlogit = [], []
        for _ in range(30):
            i, o = rng_in.integers(0, 120, 120), rng_out.integers(0, len(p_out), len(p_out))
            msp.append(roc_auc_score(flags, np.r_[msp_in[i], msp_out[o]]))
            mlogit.append(roc_auc_score(flags, np.r_[mlogit_in[i], mlogit_out[o]]))
        for scorer, values in (("msp", msp), ("mlogit", mlogit)):
            row = rows[f"ood/{name}/{scorer}/auroc"]
            assert (row.ci_low, row.ci_high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12)
    other = {r.metric: r for r in kind.evaluate(_with_seed(task, 6, 30), inputs, EvalContext()).rows}
    assert other["ood/d/msp/auroc"].ci_low != rows["ood/d/msp/auroc"].ci_low


def test_label_uncertainty_bootstrap_with_the_task_seed(tmp_path):
    from plexbench import metrics as M

    task = _task(tmp_path, "kind: label_uncertainty\nversion: 1\ndataset: {name: fashion_mnist}\n")
    rng = np.random.default_rng(3)
    soft = rng.dirichlet(np.ones(10), 200)

    class Ctx(EvalContext):
        def load_arrays(self, name, split, n=None):
            return {"soft_label": soft}

    _, probs, _ = _labelled_split(n=200)
    split = _split(soft.argmax(1), probs)
    rows = _intervals(R.get_kind("label_uncertainty").evaluate(_with_seed(task, 11), {"eval": split}, Ctx()).rows)
    assert rows["nll"] == pytest.approx(M.bootstrap_ci(M.soft_cross_entropy, soft, split.log_probs, num_samples=40,
                                                       seed=11), rel=1e-12)
    assert rows["ged"] == pytest.approx(M.bootstrap_ci(M.ged, soft, split.probs, num_samples=40, seed=11), rel=1e-12)


def test_split_statistics_are_computed_once_per_split():
    from plexbench.tasks.kinds.base import split_stats

    labels, probs, _ = _labelled_split(n=20)
    split = _split(labels, probs)
    assert split_stats(split) is split_stats(split)
    assert split_stats(split, labels=False).correct is None


class _FixedModel:
    """A model source whose identity is fixed (inputs_fingerprint only reads identity())."""

    name = "fixed"

    def identity(self):
        return {"kind": "test", "weights": "abc"}


def test_inputs_fingerprint_depends_on_the_seed(tmp_path):
    # Fails when the inputs fingerprint ignores the run's seed: a rerun with another seed would
    # then reuse results computed with the first one.
    from plexbench.tasks.runner import inputs_fingerprint

    task = R.load_tasks(REPO / "tasks")["fmnist_in_distribution"]
    options = RunOptions(suite="x", out_dir=tmp_path, data_dir=tmp_path / "no-data")
    same = inputs_fingerprint(task, _FixedModel(), options)
    assert same == inputs_fingerprint(task, _FixedModel(), dataclasses.replace(options))
    assert inputs_fingerprint(task, _FixedModel(), dataclasses.replace(options, seed=1)) != same
    assert inputs_fingerprint(dataclasses.replace(task, seed=3), _FixedModel(), options) != same


def test_data_fingerprints_once_per_dataset_and_split(tmp_path, monkeypatch):
    from plexbench.tasks import runner

    calls = []
    monkeypatch.setattr(runner, "data_fingerprint", lambda name, split, data_dir: calls.append((name, split)) or name)
    fingerprints = runner.DataFingerprints(tmp_path)
    tasks = R.load_tasks(REPO / "tasks")
    options = RunOptions(suite="x", out_dir=tmp_path, data_dir=tmp_path)
    for _ in range(3):  # three models
        for name in ("fmnist_covariate_shift", "fmnist_in_distribution", "fmnist_calibration"):
            runner.inputs_fingerprint(tasks[name], _FixedModel(), options, fingerprints)
    assert len(calls) == len(set(calls)) == fingerprints.calls
    assert ("fashion_mnist", "test") in calls and len(calls) > 50  # the corrupted family, once each


def test_measure_one_metric_on_raw_arrays_equals_the_naive_bootstrap(tmp_path):
    # A kind's own metric on raw arrays: measure(task, ref, "name", fn, arrays) -> one row, the
    # rows of all arrays resampled together with the task seed (as bootstrap_ci).
    from plexbench import metrics as M

    task = _with_seed(_task(tmp_path, "kind: in_distribution\nversion: 1\ndataset: {name: fashion_mnist}\n"), 4, 30)
    labels, probs, _ = _labelled_split(n=150)

    def top2(y, p):
        return float(np.mean((np.argsort(-p, axis=1)[:, :2] == y[:, None]).any(axis=1)))

    row = measure(task, task.dataset, "top2", top2, (labels, probs))
    assert row.metric == "top2" and row.n == 150 and row.value == top2(labels, probs)
    assert (row.ci_low, row.ci_high) == M.bootstrap_ci(top2, labels, probs, num_samples=30, seed=4)
