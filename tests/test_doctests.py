"""Every docstring example of every plexbench module runs (and passes) in `make test`."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import numpy as np
import pandas as pd
import pytest

import plexbench


def _modules() -> list[str]:
    # `plexbench.__main__` runs the CLI when imported: it has no examples to run.
    return sorted(m.name for m in pkgutil.walk_packages(plexbench.__path__, prefix="plexbench.")
                  if m.name != "plexbench.__main__")


@pytest.mark.parametrize("module", _modules())
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, extraglobs={"np": np, "pd": pd}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module}"


def test_the_examples_exist():
    # guards against a collection change that silently runs nothing
    total = sum(doctest.testmod(importlib.import_module(m), extraglobs={"np": np, "pd": pd}, report=False).attempted
                for m in ("plexbench.metrics.vocabulary", "plexbench.reports.report_md", "plexbench.metrics.selective"))
    assert total >= 6
