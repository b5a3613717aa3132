"""direction(metric_name), the import contract, and the docstring examples."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import numpy as np
import pytest

from plexbench.errors import PlexbenchError
from plexbench.metrics import direction

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


@pytest.mark.parametrize(
    "module",
    ["classification", "selective", "ensemble", "ood", "label_uncertainty", "subpopulation", "direction"],
)
def test_docstring_examples(module):
    mod = importlib.import_module(f"plexbench.metrics.{module}")
    result = doctest.testmod(mod, extraglobs={"np": np})
    assert result.attempted > 0 and result.failed == 0
