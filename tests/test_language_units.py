"""The pieces the language tasks add, on small hand-made inputs: the gp_variance scorer (closed
form, errors), model extras through a Split (limit, class filter, take), the ood kind's
gp_variance rows against scikit-learn and its skip reason, the modality of datasets and models,
and the model-group rule (modality, K) including results without a modality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from plexbench.errors import PlexbenchError
from plexbench.metrics.ood import gp_variance_score
from plexbench.reports.model_groups import model_groups, model_modalities
from plexbench.results_schema import dataset_modality
from plexbench.tasks.kinds.base import EvalContext
from plexbench.tasks.registry import get_kind, parse_task
from plexbench.tasks.sources import modality_mismatch, split_from_arrays
from plexbench.tasks.spec import DatasetRef


def test_gp_variance_score_is_the_member_mean():
    assert gp_variance_score([[0.1, 0.4], [0.3, 0.2]]).tolist() == pytest.approx([0.2, 0.3])
    assert gp_variance_score(np.array([0.5, 0.25], np.float32)).dtype == np.float64
    for bad, message in (([[np.nan, 1.0]], "NaN"), (np.zeros((1, 2, 3)), r"\(N,\) or \(E, N\)"),
                         (np.zeros((2, 0)), "empty"), (np.array(["a"]), "real numbers")):
        with pytest.raises(PlexbenchError, match=message):
            gp_variance_score(bad)


def _arrays(n=6, e=2, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"member_logits": rng.normal(size=(e, n, k)).astype(np.float32), "labels": np.arange(n) % k,
            "ids": np.arange(n), "gp_variance": rng.uniform(size=(e, n)).astype(np.float32)}


def test_extras_follow_the_rows_of_a_split():
    arrays = _arrays()
    split = split_from_arrays(DatasetRef("fortunes", classes=(0, 2)), arrays, n=5)
    kept = np.array([0, 2, 3])  # the first 5 rows, then labels 0 and 2
    np.testing.assert_array_equal(split.extras["gp_variance"], arrays["gp_variance"][:, kept])
    np.testing.assert_array_equal(split.labels, arrays["labels"][kept])
    taken = split.take(np.array([True, False, True]))
    np.testing.assert_array_equal(taken.extras["gp_variance"], arrays["gp_variance"][:, kept[[0, 2]]])
    assert split_from_arrays(DatasetRef("fortunes"), {k: v for k, v in arrays.items() if k != "gp_variance"},
                             None).extras == {}


def _task(scorers):
    return parse_task("t", {"kind": "ood", "version": 1, "dataset": {"name": "fortunes", "split": "test"},
                       "params": {"ood": [{"name": "fortunes_ood/de", "alias": "de", "distance": "far"}],
                                  "scorers": scorers}}, Path("t.yaml"))


def _split(ref, arrays, with_extras=True):
    if not with_extras:
        arrays = {k: v for k, v in arrays.items() if k != "gp_variance"}
    return split_from_arrays(ref, arrays, None)


def test_ood_kind_scores_gp_variance_and_says_why_it_skips_it():
    task = _task(["msp", "gp_variance"])
    kind = get_kind("ood")
    ind, out = _arrays(40, seed=1), _arrays(30, seed=2)
    out["gp_variance"] += 0.3  # further from the training data: a better than chance detector
    inputs = {"eval": _split(task.dataset, ind), "ood:de": _split(task.params.ood[0], out)}
    result = kind.evaluate(task, inputs, EvalContext())
    rows = {r.metric: r for r in result.rows}
    scores = np.r_[ind["gp_variance"].astype(np.float64).mean(0), out["gp_variance"].astype(np.float64).mean(0)]
    expected = roc_auc_score(np.r_[np.zeros(40), np.ones(30)], scores)
    assert rows["ood/de/gp_variance/auroc"].value == pytest.approx(expected, abs=1e-12) and expected > 0.6
    assert result.info["skipped_scorers"] == {}
    assert kind.score_exclusion(task, "ood/de/gp_variance/auroc", "fortunes") != ""
    assert kind.score_exclusion(task, "ood/de/msp/auroc", "fortunes") == ""
    # an OOD split without the variance (a model without an SNGP head, prediction files): skipped, msp kept
    inputs["ood:de"] = _split(task.params.ood[0], out, with_extras=False)
    result = kind.evaluate(task, inputs, EvalContext())
    assert result.info["skipped_scorers"] == {"gp_variance": "predictions without gp_variance (the model has no SNGP head)"}
    assert sorted({r.metric.split("/")[2] for r in result.rows}) == ["msp"]


def test_gp_variance_is_not_a_default_scorer():
    task = parse_task("t", {"kind": "ood", "version": 1, "dataset": {"name": "fortunes"},
                       "params": {"ood": [{"name": "fortunes_ood/de", "alias": "de"}]}}, Path("t.yaml"))
    assert "gp_variance" not in task.params.scorers


def test_modalities_come_from_the_registries():
    assert [dataset_modality(n) for n in ("fortunes", "glue/mnli", "fashion_mnist", "digits", "nope")] == \
        ["text", "text", "image", "image", ""]
    assert modality_mismatch("m", "text", "cifar10") == "model m reads text; dataset cifar10 holds images"
    assert modality_mismatch("m", "image", "civil_comments") == "model m reads images; dataset civil_comments holds text"
    assert modality_mismatch("m", "text", "fortunes") is None and modality_mismatch("m", None, "cifar10") is None


def test_groups_by_modality_then_k():
    long = pd.DataFrame({"model": ["v6", "t6", "t2", "u6", "v6"], "dataset": ["fm6", "fortunes", "mnli", "x", "fm6"],
                         "model_num_classes": [6, 6, 2, 6, 6], "modality": ["image", "text", "text", "", "image"]})
    assert model_modalities(long) == {"v6": "image", "t6": "text", "t2": "text", "u6": ""}
    assert [(g.slug, g.title, g.models) for g in model_groups(long)] == [
        ("fm6", "6-class vision models", ("v6",)), ("fortunes", "6-class language models", ("t6",)),
        ("mnli", "2-class language models", ("t2",)), ("x", "6-class models", ("u6",))]
    # one modality in the table: titles as before (K only)
    vision = long[long.modality == "image"]
    assert [(g.title, g.models) for g in model_groups(vision)] == [("6-class models", ("v6",))]
    # a model with rows of both modalities is a group of its own
    both = pd.concat([long, pd.DataFrame({"model": ["v6"], "dataset": ["fortunes"], "model_num_classes": [6],
                                          "modality": ["text"]})])
    assert [(g.title, g.models) for g in model_groups(both)][0] == ("6-class vision+language models", ("v6",))
