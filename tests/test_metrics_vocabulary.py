"""The metric vocabulary: directions, declared facts, every kind's metrics declared, the import contract."""

from __future__ import annotations

import subprocess
import sys

import pytest

from plexbench.errors import PlexbenchError
from plexbench.metrics import direction, metric_info

HIGHER = ["accuracy", "auroc", "auprc", "calib_auc", "oc_acc@0.5%", "oc_acc@5%", "prec@1",
          "ood/svhn/maha/auroc", "fewshot/cifar10/10shot/prec@1", "subpop/mean", "subpop/median",
          "subpop/p05", "subpop/p25", "subpop/p75", "subpop/p95", "accuracy/ci_low"]
LOWER = ["nll", "loss", "ece", "adaptive_ece", "classwise_ece", "brier", "rms_ce", "aurc", "eaurc", "fpr95",
         "mce", "ged", "variance", "subpop/variance", "ood/digits/msp/fpr95", "ece/ci_high"]


@pytest.mark.parametrize("name", HIGHER)
def test_higher(name):
    assert direction(name) == "higher"


@pytest.mark.parametrize("name", LOWER)
def test_lower(name):
    assert direction(name) == "lower"


def test_unknown_name_suggests():
    with pytest.raises(PlexbenchError, match="did you mean.*accuracy"):
        direction("acuracy")


def test_import_pulls_in_neither_tensorflow_nor_jax():
    code = "import sys, plexbench.metrics; print(sorted(m for m in ('tensorflow', 'jax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_declaration_is_consistent():
    from plexbench.metrics.vocabulary import NORMALISATIONS, declared

    for info in declared():
        assert info.direction in ("higher", "lower", None), info
        assert info.category and info.description, info
        low, high = info.value_range
        assert low <= high, info
        for preset in ("paper", "plexbench"):
            norm = info.normalisation(preset)
            assert norm is None or norm in NORMALISATIONS, info
            if norm is not None and norm != "identity" and info.direction == "higher":
                raise AssertionError(f"{info.name}: higher-is-better metrics are scored as they are")
        if info.direction == "lower" and info.paper not in (None, "identity"):
            # a lower-is-better metric the paper flips must come out higher-is-better
            assert NORMALISATIONS[info.paper].slope(10) < 0, info
        if info.paper == "identity" and info.direction == "lower":
            assert info.paper_note.startswith("paper quirk"), info  # the quirk is stated, not silent


def test_every_kind_reports_only_declared_metrics():
    from plexbench.tasks.registry import KINDS, load_kinds

    load_kinds()
    for name, kind in KINDS.items():
        for metric in kind.metrics:
            assert metric_info(kind.declared_metric(metric)), (name, metric)
        assert kind.category is None or kind.category, name


def test_unknown_metric_and_bad_declarations():
    from plexbench.metrics.vocabulary import declare_metric, find_metric

    assert find_metric("disagreement") is None
    with pytest.raises(ValueError, match="declared twice"):
        declare_metric("accuracy", direction="higher", category="prediction", description="again")
    with pytest.raises(ValueError, match="name its plexbench normalisation"):
        declare_metric("some_new_loss", direction="lower", category="prediction", description="x")
