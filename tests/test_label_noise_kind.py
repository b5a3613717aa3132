"""label_noise kind (spec §11): task files, rows and categories on hand-made predictions, then end to
end on real data - detection on Fashion-MNIST and cross-validated detection and robustness on
digits with a zoo model - checked against scikit-learn probes and cleanlab run here on pre-logits
from a direct forward pass of the model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from plexbench.data import noise as N
from plexbench.tasks import registry as R
from plexbench.tasks.kinds.base import EvalContext, Split
from plexbench.tasks.spec import DatasetRef

REPO = Path(__file__).resolve().parent.parent
KIND = "label_noise"


def write_tasks(root: Path, tasks: dict[str, dict]) -> Path:
    (root / "suites").mkdir(parents=True, exist_ok=True)
    for name, task in tasks.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(task))
    (root / "suites" / "s.yaml").write_text(yaml.safe_dump({"version": 1, "tasks": list(tasks)}))
    return root


def task_dict(dataset, params, **extra) -> dict:
    return {"kind": KIND, "version": 1, "dataset": dataset, "params": params, **extra}


FMNIST_TEST = {"name": "fashion_mnist", "split": "test"}
SYM = [{"type": "symmetric", "rate": 0.2}]


# ----------------------------------------------------------------------------- task files


@pytest.mark.parametrize("params,extra,message", [
    ({"protocol": "detection", "noise": [{"type": "real"}]}, {}, "field 'params.noise[0].key': expected a noisy label key"),
    ({"protocol": "detection", "noise": [{"type": "symmetric"}]}, {}, "params.noise[0].rate': expected a number in (0, 1]"),
    ({"protocol": "detection", "noise": [{"type": "flip", "rate": 0.2, "map": "cifar10"}]}, {},
     "params.noise[0].map': expected nothing: a class map is for asymmetric noise"),
    ({"protocol": "detection", "noise": [{"type": "asymmetric", "rate": 0.2, "map": "mnist"}]}, {},
     "params.noise[0].map': expected a declared class map: cifar10, fashion_mnist, digits"),
    ({"protocol": "detection", "noise": [{"type": "real", "key": "aggre"}]}, {},
     "params.noise[0].key': expected a noisy label key of fashion_mnist (none: fashion_mnist has no noisy labels)"),
    ({"protocol": "detection", "noise": SYM * 2}, {}, "params.noise[1]': expected distinct settings"),
    ({"protocol": "detection", "noise": SYM}, {"bootstrap": 100}, "field 'bootstrap': expected 0"),
    ({"protocol": "robustness", "noise": SYM, "scores": "cross_validated_probe"}, {},
     "field 'params.scores': expected nothing for robustness"),
    ({"protocol": "detection", "noise": SYM, "train": {"name": "digits"}}, {}, "field 'params.train': expected nothing"),
    ({"protocol": "detection", "noise": SYM}, {"metrics": ["accuracy"]},
     "field 'metrics[0]': expected a metric of the detection protocol"),
    ({"protocol": "detection", "noise": SYM, "scores": "cross_validated_probe", "folds": 1}, {},
     "field 'params.folds': expected at least 2 folds"),
    ({"protocol": "detection", "noise": SYM, "adapt": "finetune"}, {}, "field 'params.adapt': expected probe for detection"),
    ({"protocol": "robustness", "noise": SYM, "finetune": {"steps": 5}}, {},
     "field 'params.finetune': expected nothing unless adapt: finetune"),
    ({"protocol": "robustness", "noise": SYM, "adapt": "finetune", "finetune": {"learning_rate": 0}}, {},
     "field 'params.finetune.learning_rate': expected a positive number"),
])
def test_bad_task_files_are_one_line(tmp_path, capsys, params, extra, message):
    from plexbench.cli import main

    tasks = write_tasks(tmp_path / "t", {"ln": task_dict(FMNIST_TEST, params, **extra)})
    assert main(["task", "info", "ln", "--tasks-dir", str(tasks)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_class_filter_is_refused(tmp_path):
    from plexbench.errors import PlexbenchError

    tasks = write_tasks(tmp_path / "t", {"ln": task_dict({**FMNIST_TEST, "classes": [0, 1]},
                                                          {"protocol": "detection", "noise": SYM})})
    with pytest.raises(PlexbenchError, match="dataset.classes"):
        R.load_task("ln", tasks)


def test_shipped_tasks_declare_what_they_read():
    kind = R.get_kind(KIND)
    det = R.load_task("cifar10n_label_noise_detection")
    assert kind.num_classes(det) is None  # probes: any model
    assert [(n.role, n.ref.name, n.pre_logits) for n in kind.needs(det)] == [("labelled", "cifar10_n", True)]
    assert set(kind.datasets(det)) == {("cifar10_n", "train")} | {(f"cifar10_n/{k}", "train") for k in
                                                                  ("aggre", "random1", "random2", "random3", "worst")}
    rob = R.load_task("digits_label_noise_robustness")
    assert [(n.role, n.ref.name, n.ref.split) for n in kind.needs(rob)] == [("labelled", "digits", "train"),
                                                                            ("eval", "digits", "test")]
    fm = R.load_task("fmnist_label_noise_detection")
    assert kind.num_classes(fm) == 10 and not kind.needs(fm)[0].pre_logits


# ----------------------------------------------------------------------------- rows on hand-made predictions


def _task(tmp_path, params, dataset=FMNIST_TEST, **extra):
    root = write_tasks(tmp_path / "t", {"ln": task_dict(dataset, params, **extra)})
    return R.load_task("ln", root)


def _model_split(n=600, k=10, seed=0) -> Split:
    """Predictions of a decent model on clean labels: true class boosted in the logits."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += 3.0
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return Split(DatasetRef("fashion_mnist", "test"), labels, log_probs, np.arange(n))


def _probe_split(n, seed, k=10, d=8) -> Split:
    """Two members' pre-logits with class structure (for the probe protocols)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    centres = np.random.default_rng(99).normal(size=(k, d)) * 2
    emb = np.stack([centres[labels] + rng.normal(size=(n, d)) for _ in range(2)])
    return Split(DatasetRef("fashion_mnist", "test"), labels, np.full((n, k), -np.log(k)), np.arange(n),
                 embeddings=emb)


def test_detection_rows_are_means_over_draws_of_independently_computed_metrics(tmp_path):
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues

    noise = [{"type": "symmetric", "rate": 0.2}, {"type": "asymmetric", "rate": 0.4}]
    task = _task(tmp_path, {"protocol": "detection", "noise": noise, "repeats": 2}, seed=5)
    split = _model_split()
    result = R.get_kind(KIND).evaluate(task, {"labelled": split}, EvalContext())
    rows = {r.metric: r for r in result.rows}
    probs = split.probs
    expected = {}
    for spec, name in ((("symmetric", None), "symmetric_20"), (("asymmetric", "fashion_mnist"), "asymmetric_40")):
        per_draw = []
        for seed in (5, 6):  # task.seed, task.seed + 1
            rate = 0.2 if spec[0] == "symmetric" else 0.4
            noisy = N.apply(spec[0], split.labels, 10, rate=rate, seed=seed, class_map=spec[1])
            y, wrong = noisy.labels, noisy.labels != split.labels
            sc = probs[np.arange(len(y)), y]
            flagged = find_label_issues(y, probs, n_jobs=1)
            per_draw.append({"self_confidence/auroc": roc_auc_score(wrong, 1 - sc),
                             "self_confidence/auprc": average_precision_score(wrong, 1 - sc),
                             "confident_learning/issue_f1": f1_score(wrong, flagged),
                             "confident_learning/est_noise_rate": 1 - np.trace(estimate_joint(y, probs)),
                             "noise_rate": wrong.mean()})
        for metric in per_draw[0]:
            value = np.mean([d[metric] for d in per_draw])
            assert rows[f"noise_detection/{name}/{metric}"].value == pytest.approx(value, abs=1e-12), (name, metric)
            expected.setdefault(metric, []).append(value)
    for metric, values in expected.items():  # the mean over settings
        assert rows[f"noise_detection/{metric}"].value == pytest.approx(np.mean(values), abs=1e-12)
    assert all(r.n == 600 and r.dataset == "fashion_mnist" and math.isnan(r.ci_low) for r in rows.values())
    # realised rates and seeds are recorded; the ROC data are the sorted issue scores
    assert [d["seed"] for d in result.info["noise"][0]] == [5, 6]
    roc = result.curves["label_noise"]["roc"]["symmetric_20"]["self_confidence"]
    assert roc["noisy"] == sorted(roc["noisy"]) and len(roc["noisy"]) <= 200


def test_categories_and_score_exclusions(tmp_path):
    kind = R.get_kind(KIND)
    det = _task(tmp_path / "a", {"protocol": "detection", "noise": SYM})
    rob = _task(tmp_path / "b", {"protocol": "robustness", "noise": SYM})
    assert kind.row_category(det, "noise_detection/symmetric_20/self_confidence/auroc") == "uncertainty"
    assert kind.row_category(rob, "noise_robustness/accuracy") == "prediction"
    assert kind.row_category(rob, "noise_robustness/nll_increase") == "prediction"
    assert kind.row_category(rob, "noise_robustness/ece") == "uncertainty"
    assert kind.row_category(None, "noise_robustness/accuracy") == "prediction"  # converted results: no task
    assert kind.row_category(None, "noise_robustness/symmetric_20/noise_rate") == "prediction"
    assert kind.row_category(None, "noise_detection/noise_rate") == "uncertainty"
    assert kind.row_category(None, "noise_detection/symmetric_20/confident_learning/issue_f1") == "uncertainty"
    rows = kind.evaluate(det, {"labelled": _model_split(200)}, EvalContext()).rows
    scored = {r.metric for r in rows if not r.score_exclusion}
    assert scored == {"noise_detection/self_confidence/auroc", "noise_detection/normalized_margin/auroc",
                      "noise_detection/confident_learning/issue_f1"}
    assert all(r.score_exclusion == kind.score_exclusion(None, r.metric, r.dataset) for r in rows)
    rows = kind.evaluate(rob, {"labelled": _probe_split(300, 0), "eval": _probe_split(200, 1)}, EvalContext()).rows
    assert {r.metric for r in rows if not r.score_exclusion} == {f"noise_robustness/{m}" for m in ("accuracy", "nll", "ece")}
    assert {r.num_classes for r in rows} == {10}  # the probe's label space (the dataset's), whatever the model's K
    assert "clean-label reference" in {r.metric: r for r in rows}["noise_robustness/clean/accuracy"].score_exclusion


def test_task_seed_moves_the_numbers(tmp_path):
    kind = R.get_kind(KIND)
    split = _model_split()
    values = []
    for seed in (0, 1):
        task = _task(tmp_path / str(seed), {"protocol": "detection", "noise": SYM, "repeats": 1}, seed=seed)
        rows = {r.metric: r.value for r in kind.evaluate(task, {"labelled": split}, EvalContext()).rows}
        values.append(rows["noise_detection/self_confidence/auroc"])
    assert values[0] != values[1]


# ----------------------------------------------------------------------------- end to end on real data


def direct_split(handle, data_dir, dataset, split, prefix=None, stop=None) -> Split:
    """Labels, log-probs and pre-logits from calling the model directly (no store, no runner)."""
    import jax

    from plexbench.data import pipeline

    spec = f"{prefix}|{handle.preprocess}" if prefix else handle.preprocess
    emb, lp, labels, ids = [], [], [], []
    for batch in pipeline.batches(dataset, split, batch_size=250, preprocess=spec, stop=stop, data_dir=data_dir):
        out = handle.apply_fn(handle.params, batch["image"], jax.random.PRNGKey(0))
        emb.append(np.asarray(out["pre_logits"], np.float64)[:, batch["mask"]])
        lp.append(np.asarray(out["log_probs"], np.float64)[batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
        ids.append(batch["id"][batch["mask"]])
    return Split(DatasetRef(dataset, split), np.concatenate(labels), np.concatenate(lp), np.concatenate(ids),
                 embeddings=np.concatenate(emb, axis=1))


def sklearn_probe(x_train, y, x_test, l2, k=10):
    """Per member: standardise with the training rows' mean and std + 1e-5, multinomial logistic
    regression C = 1 / l2 (lbfgs, 150 iterations), members' probabilities averaged."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    out = []
    for xm, tm in zip(x_train, x_test):
        mean, std = xm.mean(axis=0), xm.std(axis=0) + 1e-5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=1 / l2, max_iter=150).fit((xm - mean) / std, y)
        p = np.zeros((tm.shape[0], k))
        p[:, model.classes_] = model.predict_proba((tm - mean) / std)
        out.append(p)
    return np.mean(out, axis=0)


def ece15(labels, probs):
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    bins = np.clip(np.floor(15 * conf), 0, 14).astype(int)
    return sum(abs(np.sum((pred == labels)[bins == b]) - np.sum(conf[bins == b])) for b in range(15)) / len(labels)


NOISE = [{"type": "symmetric", "rate": 0.4}, {"type": "asymmetric", "rate": 0.2}]


@pytest.fixture(scope="module")
def run_digits(tmp_path_factory, data_dir):
    from plexbench.inference import handle_from_registry
    from plexbench.models.registry import get_model
    from plexbench.tasks import runner
    from plexbench.tasks.runner import RunOptions
    from plexbench.tasks.sources import InferenceModel

    root = tmp_path_factory.mktemp("label_noise")
    digits_test = {"name": "digits", "split": "test", "preprocess": "resize(28)"}
    digits_train = {"name": "digits", "split": "train", "preprocess": "resize(28)"}
    tasks = write_tasks(root / "tasks", {
        "rob": task_dict(digits_test, {"protocol": "robustness", "train": digits_train, "noise": NOISE,
                                       "repeats": 2, "l2": 10.0}, seed=3),
        "cv": task_dict(digits_train, {"protocol": "detection", "scores": "cross_validated_probe", "folds": 4,
                                       "noise": NOISE[:1], "repeats": 1, "l2": 10.0}),
        "own": task_dict({**FMNIST_TEST, "limit": 1500}, {"protocol": "detection", "noise": NOISE, "repeats": 1}),
    })
    handle = handle_from_registry("det-mini")
    options = RunOptions(suite="s", out_dir=root / "out", data_dir=data_dir, store_dir=root / "store",
                         tasks_dir=tasks, batch_size=250, verbose=False)
    runner.run(options, [InferenceModel(handle, "registry", config=get_model("det-mini").config)])
    docs = {t: json.loads((root / "out" / "tasks" / t / "det-mini.json").read_text()) for t in ("rob", "cv", "own")}
    return SimpleNamespace(docs=docs, handle=handle, data_dir=data_dir, out=root / "out")


@pytest.mark.slow
def test_robustness_end_to_end_on_digits_matches_a_probe_fitted_here(run_digits):
    """The protocol on real digits: noisy train labels from the documented seeds, a scikit-learn
    probe fitted here on pre-logits of a direct forward pass, scored on the CLEAN test labels."""
    from sklearn.metrics import accuracy_score, log_loss

    h, dd = run_digits.handle, run_digits.data_dir
    train = direct_split(h, dd, "digits", "train", "resize(28)")
    test = direct_split(h, dd, "digits", "test", "resize(28)")

    def scores(probs):
        return {"accuracy": accuracy_score(test.labels, probs.argmax(axis=1)),
                "nll": log_loss(test.labels, probs, labels=list(range(10))), "ece": ece15(test.labels, probs)}

    clean = scores(sklearn_probe(train.embeddings, train.labels, test.embeddings, 10.0))
    metrics = run_digits.docs["rob"]["metrics"]
    for m in ("accuracy", "nll", "ece"):
        assert metrics[f"noise_robustness/clean/{m}"] == pytest.approx(clean[m], abs=2e-4)
    assert clean["accuracy"] > 0.6  # pre-logits of a Fashion-MNIST model still separate digits
    for spec, name in (("symmetric", "symmetric_40"), ("asymmetric", "asymmetric_20")):
        runs = []
        for seed in (3, 4):
            noisy = N.apply(spec, train.labels, 10, rate=0.4 if spec == "symmetric" else 0.2, seed=seed,
                            class_map="digits" if spec == "asymmetric" else None)
            runs.append(scores(sklearn_probe(train.embeddings, noisy.labels, test.embeddings, 10.0)))
        for m in ("accuracy", "nll", "ece"):
            mean = np.mean([r[m] for r in runs])
            assert metrics[f"noise_robustness/{name}/{m}"] == pytest.approx(mean, abs=2e-4), (name, m)
        drop = clean["accuracy"] - np.mean([r["accuracy"] for r in runs])
        assert metrics[f"noise_robustness/{name}/accuracy_drop"] == pytest.approx(drop, abs=2e-4)
    assert metrics["noise_robustness/symmetric_40/accuracy_drop"] > 0  # 40% wrong labels cost accuracy
    assert run_digits.docs["rob"]["dataset"] == "digits" and run_digits.docs["rob"]["split"] == "test"


@pytest.mark.slow
def test_cross_validated_detection_on_digits_matches_folds_fitted_here(run_digits):
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from cleanlab.filter import find_label_issues

    h, dd = run_digits.handle, run_digits.data_dir
    train = direct_split(h, dd, "digits", "train", "resize(28)")
    noisy = N.symmetric(train.labels, 10, 0.4, seed=0)
    probs = np.zeros((train.n, 10))
    for fit_rows, held in StratifiedKFold(4, shuffle=True, random_state=0).split(train.embeddings[0], noisy.labels):
        probs[held] = sklearn_probe(train.embeddings[:, fit_rows], noisy.labels[fit_rows],
                                    train.embeddings[:, held], 10.0)
    wrong = noisy.is_noisy
    metrics = run_digits.docs["cv"]["metrics"]
    auroc = roc_auc_score(wrong, 1 - probs[np.arange(train.n), noisy.labels])
    assert metrics["noise_detection/symmetric_40/self_confidence/auroc"] == pytest.approx(auroc, abs=1e-3)
    flagged = find_label_issues(noisy.labels, probs, n_jobs=1)
    f1 = 2 * np.sum(flagged & wrong) / (np.sum(flagged) + np.sum(wrong))
    assert metrics["noise_detection/symmetric_40/confident_learning/issue_f1"] == pytest.approx(f1, abs=0.02)
    assert auroc > 0.8


@pytest.mark.slow
def test_own_prediction_detection_on_fashion_mnist(run_digits):
    from sklearn.metrics import roc_auc_score

    h, dd = run_digits.handle, run_digits.data_dir
    test = direct_split(h, dd, "fashion_mnist", "test", stop=1500)
    probs = np.exp(test.log_probs)
    metrics = run_digits.docs["own"]["metrics"]
    noisy = N.asymmetric(test.labels, 10, 0.2, seed=0, class_map="fashion_mnist")
    margin_q = np.array([(p[y] - np.max(np.delete(p, y)) + 1) / 2 for p, y in zip(probs, noisy.labels)])
    expected = roc_auc_score(noisy.is_noisy, 1 - margin_q)
    assert metrics["noise_detection/asymmetric_20/normalized_margin/auroc"] == pytest.approx(expected, abs=1e-4)
    assert metrics["noise_detection/asymmetric_20/noise_rate"] == pytest.approx(noisy.realised_rate)
    assert expected > 0.8


@pytest.mark.slow
def test_real_noise_reads_the_datasets_noisy_label_key(tmp_path):
    """CIFAR-10N's real noise through the registry and the loader: a real (tiny) TFDS cifar10_n."""
    from test_data_noise import _write_fake_cifar10_n

    from plexbench.data import registry as D

    rng = np.random.default_rng(3)
    clean = rng.integers(0, 10, 60)
    noisy = {key: np.where(rng.random(60) < 0.1 * (i + 1), rng.integers(0, 10, 60), clean)
             for i, key in enumerate(D.NOISY_LABEL_KEYS["cifar10_n"])}
    _write_fake_cifar10_n(tmp_path / "data", clean, noisy)
    task = _task(tmp_path, {"protocol": "detection", "repeats": 3,
                            "noise": [{"type": "real", "key": k} for k in ("aggre", "worst")]},
                 dataset={"name": "cifar10_n", "split": "train"})
    split = _model_split(60)
    split = Split(DatasetRef("cifar10_n", "train"), clean, split.log_probs, np.arange(60))
    result = R.get_kind(KIND).evaluate(task, {"labelled": split}, EvalContext(data_dir=tmp_path / "data"))
    metrics = {r.metric: r.value for r in result.rows}
    for key in ("aggre", "worst"):
        wrong = noisy[key] != clean
        assert metrics[f"noise_detection/real_{key}/noise_rate"] == pytest.approx(wrong.mean())
        from sklearn.metrics import roc_auc_score

        quality = split.probs[np.arange(60), noisy[key]]
        assert metrics[f"noise_detection/real_{key}/self_confidence/auroc"] == pytest.approx(
            roc_auc_score(wrong, 1 - quality))
    # real noise is one fixed draw, whatever `repeats` says
    assert [len(draws) for draws in result.info["noise"]] == [1, 1]
    assert result.info["noise"][0][0]["key"] == "aggre" and result.info["noise"][0][0]["seed"] is None


def numpy_head_sgd(feats, labels, sampler, steps, lr, momentum=0.9, clip=1.0, k=10):
    """Head-only fine-tuning written out: a zero linear softmax head on frozen features, mean
    cross-entropy, gradients clipped to global norm `clip`, SGD with momentum (trace = g + m trace)."""
    w, b = np.zeros((feats.shape[1], k)), np.zeros(k)
    tw, tb = np.zeros_like(w), np.zeros_like(b)
    onehot = np.eye(k)
    for _ in range(steps):
        rows = sampler.next()
        x, y = feats[rows], labels[rows]
        z = x @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        r = (p - onehot[y]) / len(rows)
        gw, gb = x.T @ r, r.sum(axis=0)
        norm = np.sqrt((gw ** 2).sum() + (gb ** 2).sum())
        scale = clip / max(norm, clip)
        tw, tb = gw * scale + momentum * tw, gb * scale + momentum * tb
        w, b = w - lr * tw, b - lr * tb
    return w, b


@pytest.mark.slow
def test_robustness_by_fine_tuning_matches_head_sgd_written_out(tmp_path, data_dir):
    """adapt: finetune through plexbench.training, head only, against the same SGD in numpy on the
    frozen pre-logits of a direct forward pass (the trunk does not move, so the head sees them)."""
    from sklearn.metrics import accuracy_score, log_loss

    from plexbench.inference import handle_from_registry
    from plexbench.models.registry import get_model
    from plexbench.tasks import runner
    from plexbench.tasks.runner import RunOptions
    from plexbench.tasks.sources import InferenceModel
    from plexbench.training.loop import BatchSampler

    settings = {"steps": 25, "batch_size": 64, "learning_rate": 0.05, "trainable": "head"}
    digits = {"name": "digits", "split": "test", "preprocess": "resize(28)"}
    tasks = write_tasks(tmp_path / "tasks", {"ft": task_dict(
        digits, {"protocol": "robustness", "adapt": "finetune", "finetune": settings, "repeats": 1,
                 "train": {**digits, "split": "train"}, "noise": [{"type": "symmetric", "rate": 0.4}]}, seed=2)})
    assert R.get_kind(KIND).adapts(R.load_task("ft", tasks))
    handle = handle_from_registry("det-mini")
    options = RunOptions(suite="s", out_dir=tmp_path / "out", data_dir=data_dir, store_dir=tmp_path / "store",
                         tasks_dir=tasks, batch_size=250, verbose=False)
    runner.run(options, [InferenceModel(handle, "registry", config=get_model("det-mini").config)])
    metrics = json.loads((tmp_path / "out" / "tasks" / "ft" / "det-mini.json").read_text())["metrics"]

    train = direct_split(handle, data_dir, "digits", "train", "resize(28)")
    test = direct_split(handle, data_dir, "digits", "test", "resize(28)")
    noisy = N.symmetric(train.labels, 10, 0.4, seed=2)
    for name, labels in (("clean", train.labels), ("symmetric_40", noisy.labels)):
        sampler = BatchSampler(train.n, 64, 2, "repeat")  # the run's seed is the noise seed (task seed 2)
        w, b = numpy_head_sgd(train.embeddings[0], labels, sampler, 25, 0.05)
        z = test.embeddings[0] @ w + b
        probs = np.exp(z - z.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        assert metrics[f"noise_robustness/{name}/accuracy"] == pytest.approx(
            accuracy_score(test.labels, probs.argmax(axis=1)), abs=0.006)
        assert metrics[f"noise_robustness/{name}/nll"] == pytest.approx(
            log_loss(test.labels, probs, labels=list(range(10))), rel=2e-3)
    assert metrics["noise_robustness/clean/accuracy"] > 0.5  # 25 head steps already learn digits
    assert not any(p.name.endswith(".state.json") for p in (tmp_path / "out" / "tasks" / "ft").iterdir())
