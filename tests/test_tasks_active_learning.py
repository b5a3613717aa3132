"""active_learning (spec §6): acquisition scores on hand-computed probabilities, the initial set,
selection rules, power acquisition as sampling without replacement (statistical test), rows and
curve areas by hand, then end to end on the real digits: the first round equals a probe (scikit-learn)
and a fine-tune (plexbench.training.finetune) done here, and a killed run resumes to identical results."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from plexbench import fileio
from plexbench.errors import PlexbenchError
from plexbench.training import acquisition as A
from plexbench.training.active_learning import Budget

REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- scores by hand


def test_entropy_margin_msp_by_hand():
    p = np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    member = p[None]
    h0 = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    np.testing.assert_allclose(A.scores("entropy", member), [h0, 0.0, math.log(3)], atol=1e-12)  # 0 log 0 = 0
    np.testing.assert_allclose(A.scores("margin", member), [1 - (0.5 - 0.3), 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(A.scores("msp", member), [0.5, 0.0, 2 / 3], atol=1e-12)
    # the ensemble probability is the mean of the members'
    two = np.array([[[0.9, 0.1]], [[0.3, 0.7]]])
    np.testing.assert_allclose(A.scores("msp", two), [1 - 0.6], atol=1e-12)


def test_bald_from_member_probabilities_by_hand():
    members = np.array([[[0.9, 0.1], [0.5, 0.5]], [[0.1, 0.9], [0.5, 0.5]]])  # (E=2, N=2, K=2)
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    # disagreeing members: H[mean] = ln 2, mean member entropy h; agreeing uncertain members: 0
    np.testing.assert_allclose(A.scores("bald", members), [math.log(2) - h, 0.0], atol=1e-12)
    with pytest.raises(PlexbenchError, match="needs an ensemble"):
        A.scores("bald", members[:1])


def hand_lda_log_density(pool, x, y):
    """s = log sum_k exp(-d_k / 2) with class means and the pooled within-class covariance,
    written out with loops and an explicit inverse (n > D, so the covariance is invertible)."""
    classes = sorted(set(y.tolist()))
    means = {c: x[y == c].mean(axis=0) for c in classes}
    cov = np.zeros((x.shape[1], x.shape[1]))
    for xi, yi in zip(x, y):
        r = xi - means[yi]
        cov += np.outer(r, r)
    inv = np.linalg.inv(cov / len(y))
    out = []
    for q in pool:
        d = [(q - means[c]) @ inv @ (q - means[c]) for c in classes]
        out.append(math.log(sum(math.exp(-v / 2) for v in d)))
    return np.array(out)


def test_density_from_a_hand_fitted_lda_and_member_average():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 6)
    x = np.stack([rng.normal(size=(18, 3)) + np.array([[2.0 * k, 0, -k] for k in y]) for _ in range(2)])  # 2 members
    pool = rng.normal(size=(2, 7, 3)) * 2
    s = [hand_lda_log_density(pool[m], x[m], y) for m in range(2)]
    np.testing.assert_allclose(A.log_density(pool[0], x[0], y), s[0], rtol=1e-9, atol=1e-9)
    mean_s = (s[0] + s[1]) / 2  # ensembles: the members' s averaged (spec §6's fix of the reference code)
    got = A.scores("density", np.full((2, 7, 3), 1 / 3), pool_embeddings=pool, labelled_embeddings=x,
                   labelled_labels=y)
    np.testing.assert_allclose(got, mean_s.max() - mean_s, rtol=1e-9, atol=1e-9)
    assert got.min() == 0.0
    # no labelled example yet: uniform (all zero) scores
    np.testing.assert_array_equal(A.density_score(pool, None, np.array([])), np.zeros(7))


def test_uniform_scores_come_from_the_round_generator():
    a = A.scores("uniform", np.full((1, 5, 2), 0.5), rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, np.random.default_rng(3).uniform(size=5))


# ----------------------------------------------------------------------------- initial set and selection


def test_initial_set_is_class_balanced_in_permuted_order():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    rows = A.initial_set(labels, 6, 3, seed=7)
    perm = np.random.default_rng(7).permutation(12).tolist()
    # by hand: walk the permutation, keep the first two rows of each class
    expected, count = [], {0: 0, 1: 0, 2: 0}
    for r in perm:
        if count[labels[r]] < 2:
            count[labels[r]] += 1
            expected.append(r)
    assert rows.tolist() == expected[:6]
    assert np.bincount(labels[rows]).tolist() == [2, 2, 2]
    with pytest.raises(PlexbenchError, match="not divisible"):
        A.initial_set(labels, 5, 3, seed=0)
    with pytest.raises(PlexbenchError, match="fewer than 5 examples of class"):
        A.initial_set(labels, 15, 3, seed=0)


def test_topk_ties_go_to_the_lower_pool_index_and_labelled_rows_are_excluded():
    score = np.array([0.5, 0.9, 0.9, 0.1, 0.9])
    assert A.select(score, 2).tolist() == [1, 2]
    masked = A.mask_labelled(score, [1])
    assert A.select(masked, 3).tolist() == [2, 4, 0]
    with pytest.raises(PlexbenchError, match="only 4 pool examples"):
        A.select(masked, 5)


def test_power_acquisition_is_sampling_without_replacement_proportional_to_the_score():
    score = np.array([1.0, 2.0, 3.0, 4.0, 0.0, -np.inf])
    rng = np.random.default_rng(12345)
    draws = 20000
    pairs = np.array([A.select(score, 2, method="power", rng=rng) for _ in range(draws)])
    assert not np.isin(pairs, [4, 5]).any()  # score 0 (log = -inf) and labelled rows are never drawn
    total = score[:4].sum()
    observed, expected = [], []
    for i in range(4):
        for j in range(4):
            if i != j:  # P(i first, j second) = s_i / S * s_j / (S - s_i)
                observed.append(np.sum((pairs[:, 0] == i) & (pairs[:, 1] == j)))
                expected.append(draws * score[i] / total * score[j] / (total - score[i]))
    _, p_value = stats.chisquare(observed, expected)
    assert p_value > 1e-3


# ----------------------------------------------------------------------------- rows by hand


def test_budget_sizes_curve_area_and_rows():
    from plexbench.tasks import registry as R
    from plexbench.tasks.kinds.active_learning import curve_area, result_rows

    assert Budget(20, 200, 5).sizes()[-1] == 200 and len(Budget(20, 200, 5).sizes()) == 37
    assert curve_area([10, 20, 30], [0.5, 0.7, 0.7]) == pytest.approx((0.6 * 10 + 0.7 * 10) / 20)
    assert curve_area([10], [0.4]) == 0.4
    task = R.load_task("fmnist_active_learning", REPO / "tasks")
    curves = {"margin": {s: {"rounds": [{"accuracy": a, "nll": 1.0 + s, "ece": 0.1} for a in accs]}
                         for s, accs in ((0, [0.5, 0.6]), (1, [0.7, 0.9]))}}
    rows = {r.metric: r for r in result_rows(task, curves, [10, 20], 10, ("accuracy", "nll", "ece", "area"))}
    r = rows["active_learning/margin/20/accuracy"]
    assert (r.value, r.n, r.ci_low, r.ci_high, r.num_classes) == (pytest.approx(0.75), 2, 0.6, 0.9, 10)
    assert rows["active_learning/margin/20/nll"].value == pytest.approx(1.5)
    assert "active_learning/margin/10/nll" not in rows  # NLL and ECE at the largest budget only
    area = rows["active_learning/margin/area/accuracy"]
    assert area.value == pytest.approx((0.55 + 0.8) / 2) and (area.ci_low, area.ci_high) == (0.55, 0.8)


# ----------------------------------------------------------------------------- task files


def test_shipped_tasks_and_dry_run_cost(tmp_path):
    from plexbench.tasks import registry as R

    embedded = {t.name: t for t in R.load_suite("embedded", REPO / "tasks")[1]}
    probe = embedded["fmnist_active_learning"]
    assert probe.params.mode == "probe" and len(probe.params.seeds) == 3
    assert set(probe.params.acquisitions) == set(A.ACQUISITIONS)
    assert embedded["digits_active_learning"].params.mode == "finetune"
    vision = {t.name: t for t in R.load_suite("plex-vision", REPO / "tasks")[1]}
    budgets = {n: (vision[f"{n}_active_learning"].params.budget.initial, vision[f"{n}_active_learning"].params.budget.max,
                   vision[f"{n}_active_learning"].params.budget.batch)
               for n in ("cifar10", "cifar100", "imagenet", "places365")}
    assert budgets == {"cifar10": (20, 200, 5), "cifar100": (200, 2000, 50), "imagenet": (2000, 20000, 500),
                       "places365": (730, 7300, 182)}
    assert all(vision[f"{n}_active_learning"].params.seeds == (189, 827, 905, 964, 952) for n in budgets)
    r = subprocess.run([sys.executable, "-m", "plexbench", "run", "--suite", "plex-vision", "--dry-run",
                        "--models", "plex-vit-l32-imagenet", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.strip().startswith("cifar10_active_learning:"))
    # 2 acquisitions x 5 seeds = 10 curves, 37 rounds, <= 2000 steps of 512
    assert "10 curves x 37 rounds x <= 2000 steps x 512 examples" in line
    assert "plex-vit-l32-imagenet" in line and "FLOPs" in line
    assert "plexbench data prepare cifar10" in r.stdout


@pytest.mark.parametrize("params,message", [
    ({"budget": {"initial": 15, "max": 30, "batch": 5}}, "field 'params.budget.initial': expected a multiple of"),
    ({"budget": {"initial": 20, "max": 10, "batch": 5}}, "field 'params.budget.max': expected at least initial"),
    ({"acquisitions": ["margin", "margin"]}, "field 'params.acquisitions': expected a non-empty list of distinct"),
    ({"acquisitions": ["coreset"]}, "field 'params.acquisitions[0]': expected one of"),
])
def test_bad_task_files_are_one_line(tmp_path, capsys, params, message):
    from plexbench.cli import main

    task = {"kind": "active_learning", "version": 1, "dataset": {"name": "digits", "split": "test"},
            "params": {"pool": {"name": "digits", "split": "train"}, "validation": {"name": "digits", "split": "validation"},
                       "budget": {"initial": 10, "max": 20, "batch": 10}, **params}}
    (tmp_path / "suites").mkdir()
    (tmp_path / "al.yaml").write_text(yaml.safe_dump(task))
    assert main(["task", "info", "al", "--tasks-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- end to end on real digits


def write_task(root: Path, params: dict, models=None) -> Path:
    (root / "suites").mkdir(parents=True, exist_ok=True)
    task = {"kind": "active_learning", "version": 1, "dataset": {"name": "digits", "split": "test", "preprocess": "resize(28)"},
            "params": {"pool": {"name": "digits", "split": "train", "preprocess": "resize(28)"},
                       "validation": {"name": "digits", "split": "validation", "preprocess": "resize(28)"}, **params}}
    if models:
        task["models"] = models
    (root / "al.yaml").write_text(yaml.safe_dump(task))
    (root / "suites" / "s.yaml").write_text("version: 1\ntasks: [al]\n")
    return root


def run_suite(tasks: Path, out: Path, data_dir, store, models=("det-mini",)):
    from plexbench.tasks import runner
    from plexbench.tasks.runner import RunOptions

    runner.run(RunOptions(suite="s", out_dir=out, models=models, data_dir=data_dir, store_dir=store, tasks_dir=tasks,
                          verbose=False))
    return {m: json.loads((out / "tasks" / "al" / f"{m}.json").read_text()) for m in models}


def direct_features(name, data_dir, split):
    """Pre-logits (E, N, D), labels and ids from calling the zoo model directly on the images."""
    import jax

    from plexbench.data import pipeline
    from plexbench.inference import handle_from_registry

    handle = handle_from_registry(name)
    emb, labels = [], []
    for batch in pipeline.batches("digits", split, batch_size=512, preprocess=f"resize(28)|{handle.preprocess}",
                                  data_dir=data_dir):
        out = handle.apply_fn(handle.params, batch["image"], jax.random.PRNGKey(0))
        emb.append(np.asarray(out["pre_logits"], np.float64)[:, batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
    return np.concatenate(emb, axis=1), np.concatenate(labels)


PROBE = {"mode": "probe", "budget": {"initial": 10, "max": 30, "batch": 10}, "acquisitions": ["uniform", "margin", "bald"],
         "seeds": [0, 1], "probe": {"l2_exponents": [-1, 3]}}


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("al_probe")
    docs = run_suite(write_task(root / "t", PROBE), root / "out", data_dir, root / "store")
    return root / "out", docs["det-mini"]


def test_probe_mode_first_round_equals_sklearn_probes_on_direct_pre_logits(probe_run, data_dir):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    out, doc = probe_run
    assert doc["info"]["skipped"] == {"bald": "not applicable: BALD needs an ensemble, this model has E = 1"}
    assert set(doc["curves"]["active_learning"]["acquisitions"]) == {"uniform", "margin"}
    pool, y_pool = direct_features("det-mini", data_dir, "train")
    val, y_val = direct_features("det-mini", data_dir, "validation")
    test, y_test = direct_features("det-mini", data_dir, "test")
    grid = 2.0 ** np.arange(-1, 4)
    for seed in (0, 1):
        rows = A.initial_set(y_pool, 10, 10, seed)
        x = pool[0][rows]
        mean, std = x.mean(0), x.std(0) + 1e-5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits = [LogisticRegression(C=1 / l2, max_iter=150).fit((x - mean) / std, y_pool[rows]) for l2 in grid]
        val_acc = [np.mean(f.predict((val[0] - mean) / std) == y_val) for f in fits]
        best = fits[int(np.argmax(val_acc))]  # the first of equal accuracies: the smaller l2
        expected = np.mean(best.predict((test[0] - mean) / std) == y_test)
        for acq in ("uniform", "margin"):
            curve = doc["curves"]["active_learning"]["acquisitions"][acq]
            assert curve["accuracy"][curve["seeds"].index(seed)][0] == pytest.approx(expected, abs=1e-9)
    with open(out / "metrics_long.csv", newline="") as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert {"active_learning/margin/10/accuracy", "active_learning/margin/30/accuracy", "active_learning/margin/30/nll",
            "active_learning/uniform/area/accuracy"} <= set(rows)
    assert not any("bald" in m for m in rows)
    # declared facts: every row is adaptation; only the margin curve's area is scored
    assert {r["category"] for r in rows.values()} == {"adaptation"}
    assert [m for m, r in rows.items() if r["score_exclusion"] == ""] == ["active_learning/margin/area/accuracy"]
    assert rows["active_learning/uniform/area/accuracy"]["score_exclusion"].startswith("the score takes the margin")
    assert rows["active_learning/margin/10/accuracy"]["score_exclusion"].startswith("a point of the active-learning")


def test_figure_from_the_task_json_and_paper_reference_rows(probe_run, tmp_path):
    from plexbench.reports import paper_numbers, plot_data, plots
    from plexbench.reports.columns import Column
    from plexbench.results_schema import load_results

    out, doc = probe_run
    results = load_results([out])
    (curves,) = plot_data.active_learning_curves(results)
    acc = np.asarray(doc["curves"]["active_learning"]["acquisitions"]["margin"]["accuracy"])
    margin = next(c for c in curves.curves if c.acquisition == "margin")
    np.testing.assert_allclose(margin.mean, acc.mean(0))
    np.testing.assert_allclose(margin.low, acc.min(0))
    np.testing.assert_allclose(margin.high, acc.max(0))
    assert list(margin.labels) == [10, 20, 30] and curves.skipped == {"bald": doc["info"]["skipped"]["bald"]}
    written, _ = plots.plot_results(results, tmp_path / "figs")
    manifest = json.loads((tmp_path / "figs" / "figures.json").read_text())["figures"]
    assert {"file": "active_learning_al_digits.png", "figure": "active_learning",
            "title": "Active learning: accuracy against labels"} in manifest
    assert (tmp_path / "figs" / "active_learning_al_digits.pdf") in written
    # the paper's radar numbers become reference rows of the margin column at their label count
    refs = paper_numbers.reference_rows([Column("active_learning/margin/1000/accuracy", "cifar10")])
    assert dict(zip(refs["model"], refs["value"])) == {"paper:sota_specialized": 0.56, "paper:plex_l_be": 0.964,
                                                       "paper:det": 0.95}
    assert plot_data.paper_active_learning_points("imagenet2012")[1] == ("Plex-L", 30000, 0.771687)


FINETUNE = {"mode": "finetune", "budget": {"initial": 10, "max": 20, "batch": 10}, "acquisitions": ["margin", "density"],
            "seeds": [3], "finetune": {"learning_rate": 0.05, "batch_size": 16, "max_steps": 10, "eval_every": 5,
                                       "patience": 100}}


def test_finetune_mode_first_round_equals_a_direct_finetune(tmp_path, data_dir):
    from plexbench.data.load import load_arrays
    from plexbench.data.preprocess import parse
    from plexbench.inference import handle_from_registry
    from plexbench.models.registry import get_model
    from plexbench.training import FinetuneConfig, TrainableModel, TrainData, finetune
    from plexbench.training.active_learning import round_seed
    from plexbench.training.evaluate import EvalData, Forward, accuracy

    doc = run_suite(write_task(tmp_path / "t", FINETUNE), tmp_path / "out", data_dir, tmp_path / "store")["det-mini"]
    handle = handle_from_registry("det-mini")
    model = TrainableModel.from_handle(handle, get_model("det-mini").config)
    prep = parse(f"resize(28)|{handle.preprocess}")
    pool, val, test = (load_arrays("digits", s, data_dir) for s in ("train", "validation", "test"))
    rows = A.initial_set(pool["label"], 10, 10, 3)
    forward = Forward(model.apply_fn(10))
    val_data = EvalData(val["image"], val["label"], val["id"], prep)
    config = FinetuneConfig(learning_rate=0.05, momentum=0.9, clip_norm=1.0, batch_size=16, max_steps=10, eval_every=5,
                            patience=100, sampling="repeat", seed=round_seed(3, 0, 2), rng_seed=round_seed(3, 0, 3))
    result = finetune(model.apply_fn(10), model.with_zero_head(10), TrainData(pool["image"][rows], pool["label"][rows], prep),
                      config, evaluate=lambda p: accuracy(val_data.labels, forward(p, val_data)["logits"]))
    out = forward(result.params, EvalData(test["image"], test["label"], test["id"], prep))
    expected = accuracy(test["label"], out["logits"])
    for acq in ("margin", "density"):
        curve = doc["curves"]["active_learning"]["acquisitions"][acq]
        assert curve["accuracy"][0][0] == pytest.approx(expected, abs=1e-12)
        assert curve["rounds"][0][0]["best_step"] == result.best_step
    assert doc["info"]["mode"] == "finetune"


def test_a_killed_run_resumes_to_identical_results(tmp_path, data_dir, monkeypatch):
    params = {**PROBE, "acquisitions": ["margin", "density"]}
    tasks = write_task(tmp_path / "t", params)
    whole = run_suite(tasks, tmp_path / "whole", data_dir, tmp_path / "store")["det-mini"]
    writes = []
    real = fileio.write_json

    class Killed(Exception):
        pass

    def dying_write(path, obj):
        real(path, obj)
        if Path(path).name.endswith(".state.json"):
            writes.append(path)
            if len(writes) == 4:  # killed after the 4th round of 12 (2 seeds x 2 acquisitions x 3 rounds)
                raise Killed

    monkeypatch.setattr(fileio, "write_json", dying_write)
    with pytest.raises(Killed):
        run_suite(tasks, tmp_path / "out", data_dir, tmp_path / "store")
    state = json.loads(Path(writes[-1]).read_text())
    assert sum(len(c["rounds"]) for c in state["curves"].values()) == 4
    monkeypatch.setattr(fileio, "write_json", real)
    resumed = run_suite(tasks, tmp_path / "out", data_dir, tmp_path / "store")["det-mini"]
    for key in ("metrics", "rows", "curves"):
        assert resumed[key] == whole[key]
    assert not Path(writes[-1]).exists()  # the scratch state is removed with the result written


def test_streamed_examples_equal_in_memory_ones(data_dir):
    """The path for splits that do not fit in memory (ImageNet, Places365), forced on digits."""
    from plexbench.inference import handle_from_registry
    from plexbench.models.registry import get_model
    from plexbench.training import TrainableModel
    from plexbench.training.evaluate import EvalData, Forward, StreamedData, examples

    spec = "resize(28)|grey_to_rgb|value_range(-1,1)"
    memory = examples("digits", "validation", spec, data_dir)
    assert isinstance(memory, EvalData)
    streamed = StreamedData("digits", "validation", spec, data_dir, stream=True, read_batch=64)
    np.testing.assert_array_equal(streamed.labels, memory.labels)
    np.testing.assert_array_equal(streamed.ids, memory.ids)
    rows = np.array([40, 3, 4, 5, 200, 3])
    np.testing.assert_array_equal(streamed.take(rows), memory.take(rows))
    np.testing.assert_array_equal(streamed.take(rows[::-1]), memory.take(rows[::-1]))  # from the kept copy
    model = TrainableModel.from_handle(handle_from_registry("det-mini"), get_model("det-mini").config)
    forward = Forward(model.apply_fn(), batch_size=100)
    a, b = forward(model.pretrained, memory), forward(model.pretrained, streamed)
    np.testing.assert_allclose(b["logits"], a["logits"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b["pre_logits"], a["pre_logits"], rtol=1e-6, atol=1e-6)
