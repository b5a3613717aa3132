"""Language tasks end to end: the embedded fortunes tasks run by `plexbench.tasks.runner.run` on the
two T5 zoo models, every reported number checked against a direct forward pass computed here (the
Flax model applied to the raw texts tokenized here) with scikit-learn and hand-written oracles;
the gp_variance scorer against the SNGP variance recomputed here in numpy from the decoder state;
a results directory holding 6-class vision and 6-class language models grouped apart (also when
read as format 2); the plex-language dry run for the six registered plex-t5-* models."""

from __future__ import annotations

import csv
import fcntl
import json
import math
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import accuracy_score, average_precision_score, log_loss, roc_auc_score, roc_curve

from plexbench.data.text import load_texts
from plexbench.models.registry import get_model
from plexbench.models.sngp import split_state
from plexbench.models.t5 import build_t5
from plexbench.models.t5x_checkpoint import load_t5x_params
from plexbench.models.tokenizer import get_tokenizer
from plexbench.tasks.runner import RunOptions, run

pytestmark = pytest.mark.slow

ZOO = ("t5-plex-mini", "t5-det-mini")
VISION6 = ("plex-mini-fmnist6", "det-mini-fmnist6")
LANGUAGE_TASKS = ("fortunes_in_distribution", "fortunes_calibration", "fortunes_selective_prediction",
                  "fortunes_open_set", "fortunes_ood_languages")
OOD_SETS = {  # label in the results -> (dataset, examples the task reads)
    "fortunes_held_out": ("fortunes_ood/held_out", None),
    "fortunes_de": ("fortunes_ood/de", 1000), "fortunes_es": ("fortunes_ood/es", 1000),
    "fortunes_it": ("fortunes_ood/it", 1000),
}
VISION_LIMIT = 1000  # --limit of the vision run that shares the results directory


@pytest.fixture(scope="module")
def text_dir(data_dir):
    from plexbench.data.prepare import prepare

    with open(data_dir / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in ("fortunes", "fortunes_ood/held_out", "fortunes_ood/de", "fortunes_ood/es", "fortunes_ood/it"):
            prepare(name, data_dir)
    return data_dir


@pytest.fixture(scope="module")
def results(tmp_path_factory, text_dir):
    """One results directory: the language tasks on the T5 zoo (full data), then the 6-class
    vision zoo on a vision task and a language task (--limit, so quick)."""
    root = tmp_path_factory.mktemp("language")
    out, store = root / "results", root / "store"
    language = run(RunOptions(suite="embedded", out_dir=out, models=ZOO, tasks=LANGUAGE_TASKS, data_dir=text_dir,
                              store_dir=store, verbose=False))
    vision = run(RunOptions(suite="embedded", out_dir=out, models=VISION6,
                            tasks=("fmnist6_in_distribution", "fortunes_in_distribution"), data_dir=text_dir,
                            store_dir=store, limit=VISION_LIMIT, verbose=False))
    crossed = run(RunOptions(suite="embedded", out_dir=out, models=ZOO, tasks=("fmnist6_in_distribution",),
                             data_dir=text_dir, store_dir=store, verbose=False))
    return SimpleNamespace(out=out, language=language, vision=vision, crossed=crossed)


def task_json(out: Path, task: str, model: str) -> dict:
    return json.loads((out / "tasks" / task / f"{model}.json").read_text())


def rows_of(doc: dict) -> dict[str, dict]:
    return {r["metric"]: r for r in doc["rows"]}


# --------------------------------------------------------------------------- the direct forward


def _forward(model: str, texts: list[str]) -> dict[str, np.ndarray]:
    """The model on `texts`, applied here: mean-field label logits (E, N, C), the final decoder
    state (E, N, d), the GP variance (E, N) (SNGP only), in batches of 256."""
    entry = get_model(model)
    tree = load_t5x_params(entry.config, entry.checkpoint)
    tokens = get_tokenizer("fortunes").encode_batch(texts, entry.config.input_length)
    apply = jax.jit(build_t5(entry.config).apply)
    parts = [apply(split_state(tree), jnp.asarray(tokens[i:i + 256])) for i in range(0, len(texts), 256)]
    out = {"logits": np.concatenate([np.asarray(p["logits"][:, :, 0], np.float64) for p in parts], axis=1),
           "hidden": np.concatenate([np.asarray(p["hidden"][:, :, 0], np.float64) for p in parts], axis=1)}
    if "gp_variance" in parts[0]:
        out["gp_variance"] = np.concatenate([np.asarray(p["gp_variance"][:, :, 0], np.float64) for p in parts], axis=1)
    out["tree"] = tree
    return out


@pytest.fixture(scope="module")
def direct(text_dir):
    """model -> {split name: forward outputs + labels} for the fortunes test/train splits and the
    OOD sets (the prefixes the tasks read)."""
    splits = {"test": ("fortunes", "test", None), "train": ("fortunes", "train", None)}
    splits.update({label: (name, "test", n) for label, (name, n) in OOD_SETS.items()})
    texts = {}
    for key, (name, split, n) in splits.items():
        data = load_texts(name, split, text_dir)
        texts[key] = (data["texts"]["text"][:n], np.asarray(data["label"][:n]))
    out = {}
    for model in ZOO:
        joined = [t for key in splits for t in texts[key][0]]
        fwd = _forward(model, joined)
        start, per = 0, {}
        for key in splits:
            size = len(texts[key][0])
            per[key] = {k: v[:, start:start + size] for k, v in fwd.items() if k != "tree"}
            per[key]["labels"] = texts[key][1]
            start += size
        per["tree"] = fwd["tree"]
        out[model] = per
    return out


def probs_of(logits: np.ndarray) -> np.ndarray:
    """Ensemble probabilities (N, C): the members' softmax averaged (spec §3)."""
    return np.exp(log_softmax(logits, axis=-1)).mean(axis=0)


# --------------------------------------------------------------------------- oracles written out


def ece_by_hand(labels, probs, bins=15):
    conf, correct = probs.max(1), probs.argmax(1) == labels
    b = np.minimum((conf * bins).astype(int), bins - 1)
    return sum(abs(correct[b == i].sum() - conf[b == i].sum()) for i in range(bins)) / len(labels)


def rms_ce_by_hand(labels, probs, bins=15):
    conf, correct = probs.max(1), probs.argmax(1) == labels
    b = np.minimum((conf * bins).astype(int), bins - 1)
    total = sum((b == i).sum() * (correct[b == i].mean() - conf[b == i].mean()) ** 2 for i in range(bins) if (b == i).any())
    return math.sqrt(total / len(labels))


def oc_acc_by_hand(labels, probs, fraction):
    conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(float)
    k = int(math.floor(round(len(labels) * fraction, 9)))
    correct[np.argsort(conf, kind="stable")[:k]] = 1.0
    return correct.mean()


def aurc_by_hand(labels, probs):
    conf, wrong = probs.max(1), probs.argmax(1) != labels
    order = np.argsort(-conf, kind="stable")
    return float(np.mean(np.cumsum(wrong[order]) / np.arange(1, len(labels) + 1)))


def fpr95_by_sklearn(is_ood, score):
    fpr, tpr, _ = roc_curve(is_ood, score, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= 0.95)])


def gp_variance_by_hand(tree, hidden):
    """ridge (1.0) * phi P^-1 phi^T, phi = cos(LayerNorm(h) W + b), in float64 numpy (spec §12)."""
    state = tree["decoder"]["gp_head_state"]
    w = np.asarray(state["random_features"]["hidden_layer"]["kernel"], np.float64)
    b = np.asarray(state["random_features"]["hidden_layer"]["bias"], np.float64)
    precision = np.asarray(state["laplace_covariance"]["covmat_layer"]["precision_matrix"], np.float64)
    h = (hidden - hidden.mean(-1, keepdims=True)) / np.sqrt(hidden.var(-1, keepdims=True) + 1e-6)
    phi = np.cos(h @ w + b)  # (E, N, R)
    return np.einsum("enr,enr->en", phi, np.linalg.solve(precision, phi.reshape(-1, phi.shape[-1]).T).T.reshape(phi.shape))


def mahalanobis_by_sklearn(train_hidden, train_labels, hidden):
    """maha = min_k mean_m d_mk, rmaha = mean_m (min_k d_mk - d_m0), each member's distances from
    scikit-learn's EmpiricalCovariance: the within-class covariance (residuals about the class
    means, / N) and the background covariance of all training states."""
    classes = np.unique(train_labels)
    per_class, relative = [], []
    for x_train, x in zip(train_hidden, hidden):
        means = np.stack([x_train[train_labels == k].mean(0) for k in classes])
        within = EmpiricalCovariance(assume_centered=True).fit(x_train - means[np.searchsorted(classes, train_labels)])
        d = np.stack([within.mahalanobis(x - mu) for mu in means], axis=1)  # (N, K)
        background = EmpiricalCovariance().fit(x_train)
        per_class.append(d)
        relative.append(d.min(1) - background.mahalanobis(x))
    return np.mean(per_class, axis=0).min(1), np.mean(relative, axis=0)


# --------------------------------------------------------------------------- the tasks


def test_runs_and_skips(results):
    assert sorted(results.language.computed) == sorted((t, m) for t in LANGUAGE_TASKS for m in ZOO)
    assert results.language.skipped == []
    reasons = {(s["task"], s["model"]): s["reason"] for s in results.vision.skipped + results.crossed.skipped}
    assert results.crossed.computed == [] and len(reasons) == 4
    # same K (6), other modality: skipped before any inference, saying why
    assert reasons[("fmnist6_in_distribution", "t5-plex-mini")] == \
        "model t5-plex-mini reads text; dataset fashion_mnist holds images"
    assert reasons[("fortunes_in_distribution", "det-mini-fmnist6")] == \
        "model det-mini-fmnist6 reads images; dataset fortunes holds text"
    assert set(results.vision.computed) == {("fmnist6_in_distribution", m) for m in VISION6}


@pytest.mark.parametrize("model", ZOO)
def test_in_distribution_calibration_selective_match_the_direct_forward(results, direct, model):
    d = direct[model]["test"]
    labels, probs = d["labels"], probs_of(d["logits"])
    assert probs[np.arange(len(labels)), labels].min() > 1e-7  # Plex's clip of the NLL is inactive here
    ind = rows_of(task_json(results.out, "fortunes_in_distribution", model))
    assert ind["accuracy"]["value"] == pytest.approx(accuracy_score(labels, probs.argmax(1)), abs=1e-12)
    assert ind["nll"]["value"] == pytest.approx(log_loss(labels, probs, labels=range(6)), rel=1e-5)
    brier = np.mean(((probs - np.eye(6)[labels]) ** 2).sum(1))
    assert ind["brier"]["value"] == pytest.approx(brier, rel=1e-5)
    assert all(r["n"] == 601 and r["ci_low"] <= r["value"] <= r["ci_high"] for r in ind.values())

    cal = rows_of(task_json(results.out, "fortunes_calibration", model))
    assert cal["ece"]["value"] == pytest.approx(ece_by_hand(labels, probs), abs=1e-6)
    assert cal["rms_ce"]["value"] == pytest.approx(rms_ce_by_hand(labels, probs), abs=1e-6)
    wrong = probs.argmax(1) != labels
    assert cal["calib_auc"]["value"] == pytest.approx(roc_auc_score(wrong, 1 - probs.max(1)), abs=1e-6)

    sel = rows_of(task_json(results.out, "fortunes_selective_prediction", model))
    for fraction, name in ((0.005, "oc_acc@0.5%"), (0.01, "oc_acc@1%"), (0.02, "oc_acc@2%"), (0.05, "oc_acc@5%")):
        assert sel[name]["value"] == pytest.approx(oc_acc_by_hand(labels, probs, fraction), abs=1e-12)
    assert sel["aurc"]["value"] == pytest.approx(aurc_by_hand(labels, probs), abs=1e-6)


def _direct_scores(fwd: dict, train: dict, scorers) -> dict[str, np.ndarray]:
    probs = probs_of(fwd["logits"])
    maha, rmaha = mahalanobis_by_sklearn(train["hidden"], train["labels"], fwd["hidden"])
    out = {"msp": 1 - probs.max(1), "entropy": -(probs * np.log(np.where(probs > 0, probs, 1))).sum(1),
           "mlogit": (-fwd["logits"].max(-1)).mean(0), "maha": maha, "rmaha": rmaha}
    if "gp_variance" in scorers:
        out["gp_variance"] = fwd["gp_variance"].mean(0)
    return {s: out[s] for s in scorers}


@pytest.mark.parametrize("model", ZOO)
@pytest.mark.parametrize("task", ["fortunes_open_set", "fortunes_ood_languages"])
def test_ood_tasks_match_scores_of_the_direct_forward(results, direct, model, task):
    doc = task_json(results.out, task, model)
    rows = rows_of(doc)
    scorers = ["msp", "entropy", "mlogit", "maha", "rmaha"] + (["gp_variance"] if model == "t5-plex-mini" else [])
    if model == "t5-det-mini":  # declared in the task, skipped with the reason
        assert doc["info"]["skipped_scorers"] == {"gp_variance": "predictions without gp_variance (the model has no SNGP head)"}
        assert not any("/gp_variance/" in m for m in rows)
    else:
        assert doc["info"]["skipped_scorers"] == {}
    d = direct[model]
    ind = _direct_scores(d["test"], d["train"], scorers)
    labels = [label for label in OOD_SETS if f"ood/{label}/msp/auroc" in rows]
    assert labels == (["fortunes_held_out"] if task == "fortunes_open_set" else ["fortunes_de", "fortunes_es", "fortunes_it"])
    for label in labels:
        out = _direct_scores(d[label], d["train"], scorers)
        assert doc["info"]["ood_sets"][label]["n"] == len(d[label]["labels"])
        for s in scorers:
            score = np.concatenate([ind[s], out[s]])
            is_ood = np.r_[np.zeros(len(ind[s])), np.ones(len(out[s]))]
            prefix = f"ood/{label}/{s}"
            assert rows[f"{prefix}/auroc"]["value"] == pytest.approx(roc_auc_score(is_ood, score), abs=2e-4), prefix
            assert rows[f"{prefix}/auprc"]["value"] == pytest.approx(average_precision_score(is_ood, score), abs=2e-4)
            assert rows[f"{prefix}/fpr95"]["value"] == pytest.approx(fpr95_by_sklearn(is_ood, score), abs=3e-3)
            assert rows[f"{prefix}/auroc"]["n"] == len(score)
            excluded = rows[f"{prefix}/auroc"]["score_exclusion"]
            assert excluded == ("gp_variance: a scorer only models with an SNGP head have" if s == "gp_variance" else "")


def test_gp_variance_is_the_sngp_variance_recomputed_here(direct):
    d = direct["t5-plex-mini"]
    for key in ("test", "fortunes_held_out", "fortunes_de"):
        by_hand = gp_variance_by_hand(d["tree"], d[key]["hidden"])
        np.testing.assert_allclose(d[key]["gp_variance"], by_hand, rtol=2e-3, atol=1e-7)
    assert "gp_variance" not in direct["t5-det-mini"]["test"]


# --------------------------------------------------------------------------- results and reports


def test_results_declare_the_modality(results):
    with open(results.out / "metrics_long.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["modality"] for r in rows if r["task"].startswith("fortunes")} == {"text"}
    assert {r["modality"] for r in rows if r["task"].startswith("fmnist")} == {"image"}
    assert task_json(results.out, "fortunes_calibration", "t5-det-mini")["modality"] == "text"


def _expected_groups():
    return [("fashion_mnist6", "6-class vision models", VISION6), ("fortunes", "6-class language models", ZOO)]


def test_groups_separate_language_from_vision_models_of_the_same_k(results, tmp_path):
    from plexbench.reports import report_md
    from plexbench.reports.leaderboard import build_leaderboard
    from plexbench.reports.model_groups import model_groups
    from plexbench.reports.plots import plot_results
    from plexbench.results_schema import load_results

    res = load_results([results.out])
    assert set(res.long["model_num_classes"]) == {6}
    groups = [(g.slug, g.title, set(g.models)) for g in model_groups(res.long)]
    assert groups == [(s, t, set(m)) for s, t, m in _expected_groups()]
    board = build_leaderboard([results.out], preset="paper")
    scored = {group.title: score for group, score in board.groups}
    assert set(scored) == {"6-class vision models", "6-class language models"}
    assert set(scored["6-class language models"].summary.index) == set(ZOO)
    assert set(scored["6-class vision models"].summary.index) == set(VISION6)
    # both language models have a paper score: gp_variance rows (t5-plex-mini only) are reported, not scored
    assert not scored["6-class language models"].summary["score"].isna().any()
    language = scored["6-class language models"]
    assert not any("gp_variance" in str(c) for c in language.normalised.columns)
    assert any("gp_variance" in e["metric"] and "SNGP" in e["reason"] for e in language.excluded)
    text = report_md.render_report(results.out)
    assert "### 6-class vision models" in text and "### 6-class language models" in text
    written, _ = plot_results([results.out], tmp_path / "plots")
    folders = {p.parent.name for p in written}
    assert folders == {"fashion_mnist6", "fortunes"}
    assert (tmp_path / "plots" / "fortunes" / "radar.png").is_file()
    assert any("gp_variance" in p.name for p in written if p.parent.name == "fortunes")
    assert not any("gp_variance" in p.name or "fortunes" in p.name for p in written if p.parent.name == "fashion_mnist6")


def _as_format2(src: Path, dst: Path, keep_run_json: bool) -> Path:
    """`src` rewritten as format 2: no modality column, task JSONs of format 2 without modality."""
    import shutil

    shutil.copytree(src, dst)
    with open(dst / "metrics_long.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c != "modality"]
    with open(dst / "metrics_long.csv", "w", newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    for path in (dst / "tasks").glob("*/*.json"):
        doc = json.loads(path.read_text())
        doc.pop("modality")
        path.write_text(json.dumps({**doc, "format_version": 2}))
    if not keep_run_json:
        (dst / "run.json").unlink()
    return dst


def test_format2_results_get_the_modality_from_run_json(results, tmp_path):
    from plexbench.reports.model_groups import model_groups
    from plexbench.results_schema import LONG_COLUMNS, load_results

    res = load_results([_as_format2(results.out, tmp_path / "v2", keep_run_json=True)])
    assert tuple(res.long.columns) == LONG_COLUMNS + ("results_dir",)
    assert [(g.slug, g.title, set(g.models)) for g in model_groups(res.long)] == \
        [(s, t, set(m)) for s, t, m in _expected_groups()]
    assert {t.modality for t in res.tasks} == {"text", "image"}
    # without run.json nothing declares the modality: models are grouped by K alone (one group)
    bare = load_results([_as_format2(results.out, tmp_path / "bare", keep_run_json=False)])
    assert set(bare.long["modality"]) == {""}
    assert [(g.title, set(g.models)) for g in model_groups(bare.long)] == [("6-class models", set(VISION6 + ZOO))]


# --------------------------------------------------------------------------- plex-language dry run


def test_plex_language_dry_run_lists_needs_and_cost(tmp_path):
    from plexbench.models.flops import flops_per_example
    from plexbench.tasks.runner import dry_run

    six = tuple(f"plex-t5-{size}-{task}" for size in ("small", "large") for task in ("mnli", "toxicity", "nalue"))
    text = "\n".join(dry_run(RunOptions(suite="plex-language", out_dir=tmp_path / "out", models=six,
                                        data_dir=tmp_path / "empty")))
    for dataset in ("glue/mnli", "glue/mnli_mismatched", "clinc_oos", "clinc_oos_out_of_scope",
                    "wikipedia_toxicity_subtypes", "civil_comments"):
        assert f"  {dataset}: plexbench data prepare {dataset} --data-dir" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  plex-t5-") and " runs " in line}
    mnli = ("mnli_in_distribution, mnli_calibration, mnli_selective_prediction, mnli_mismatched, "
            "mnli_mismatched_calibration")
    for size in ("small", "large"):
        assert f"runs 5 of 13 tasks ({mnli})" in lines[f"plex-t5-{size}-mnli"]
        assert "runs 6 of 13 tasks (toxicity_in_distribution" in lines[f"plex-t5-{size}-toxicity"]
        assert "runs 0 of 13 tasks (none)" in lines[f"plex-t5-{size}-nalue"]
        assert "model has 0 classes, the task 151" in lines[f"plex-t5-{size}-nalue"]
    cost = [line for line in text.splitlines() if "FLOPs per example" in line]
    assert len(cost) == 4  # the NaLUE models run nothing
    for line in cost:
        name = line.split()[0]
        per = flops_per_example(get_model(name).config)["total"]
        assert f"{per:.3g} FLOPs per example" in line and "not prepared, size unknown" in line
    assert "glue/mnli:test, glue/mnli_mismatched:test" in next(c for c in cost if "small-mnli" in c)
