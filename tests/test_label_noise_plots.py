"""Label-noise figures: the numbers read from task JSON curves (hand-made here), and what is drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plexbench.reports import plot_data, plots
from plexbench.results_schema import Results, TaskRecord


def _record(model, task, protocol, curves) -> TaskRecord:
    return TaskRecord(Path(f"/x/{task}/{model}.json"), task, "label_noise", "1", model, "digits", "test", {},
                      {"label_noise": {"protocol": protocol, **curves}},
                      figures=("label_noise_accuracy", "label_noise_roc"))


ROBUST = {"clean": {"accuracy": 0.9, "nll": 0.3, "ece": 0.02},
          "settings": [
              {"name": "symmetric_40", "type": "symmetric", "rate": 0.4, "key": None, "realised_rate": [0.36, 0.34],
               "metrics": {"accuracy": [0.70, 0.74]}},
              {"name": "symmetric_20", "type": "symmetric", "rate": 0.2, "key": None, "realised_rate": [0.18, 0.18],
               "metrics": {"accuracy": [0.85, 0.83]}},
              {"name": "real_aggre", "type": "real", "rate": None, "key": "aggre", "realised_rate": [0.09],
               "metrics": {"accuracy": [0.88]}}]}
DETECT = {"settings": [{"name": "symmetric_20"}, {"name": "asymmetric_40"}],
          "roc": {"asymmetric_40": {"self_confidence": {"noisy": [0.5, 0.9], "clean": [0.1, 0.6], "auroc": 0.75}},
                  "symmetric_20": {"self_confidence": {"noisy": [0.7, 0.8], "clean": [0.1, 0.2], "auroc": 1.0},
                                   "normalized_margin": {"noisy": [0.6, 0.8], "clean": [0.1, 0.7], "auroc": 0.875}}}}


@pytest.fixture()
def results():
    tasks = [_record("det-mini", "rob", "robustness", ROBUST), _record("plex-mini", "rob", "robustness", ROBUST),
             _record("det-mini", "det", "detection", DETECT)]
    return Results((Path("/x"),), pd.DataFrame(), tasks, {})


def test_accuracy_series_start_at_the_clean_reference_sorted_by_realised_rate(results):
    series = [s for s in plot_data.label_noise_accuracy(results) if s.model == "det-mini"]
    by_type = {s.noise_type: s for s in series}
    assert set(by_type) == {"symmetric", "real"}
    sym = by_type["symmetric"]
    np.testing.assert_allclose(sym.rate, [0.0, 0.18, 0.35])
    np.testing.assert_allclose(sym.accuracy, [0.9, 0.84, 0.72])
    np.testing.assert_allclose(sym.low, [0.9, 0.83, 0.70])
    np.testing.assert_allclose(sym.high, [0.9, 0.85, 0.74])
    np.testing.assert_allclose(by_type["real"].rate, [0.0, 0.09])


def test_detection_curves_follow_the_task_setting_order(results):
    curves = plot_data.label_noise_detection(results)
    assert [(c.setting, c.score) for c in curves] == [("symmetric_20", "self_confidence"),
                                                      ("symmetric_20", "normalized_margin"),
                                                      ("asymmetric_40", "self_confidence")]
    # the curve data give the drawn ROC: noisy labels are the positives
    c = curves[2]
    fpr, tpr, auc = plot_data.roc_curve(c.right, c.wrong)
    assert auc == pytest.approx(0.75) == c.auroc


def test_registered_figures_draw_a_panel_per_type_or_setting_with_labelled_lines(results):
    figs = list(plots.FIGURES.get("label_noise_accuracy").draw(results))
    assert [name for _, name in figs] == [("rob", "digits")]
    fig = figs[0][0]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["symmetric (uniform over all classes)", "real (human labels)"]
    assert axes[0].get_ylabel() == "clean test accuracy (fraction)"
    legend = axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["det-mini", "plex-mini"]
    assert all(h.get_visible() for h in legend.legend_handles)
    assert "digits" in fig._suptitle.get_text()

    figs = list(plots.FIGURES.get("label_noise_roc").draw(results))
    fig = figs[0][0]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["symmetric 20%", "asymmetric 40%"]
    texts = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert texts == ["det-mini, self confidence (1.000)", "det-mini, normalized margin (0.875)"]


def test_kind_declares_the_figures():
    from plexbench.tasks import registry as R

    kind = R.get_kind("label_noise")
    assert set(kind.figures) <= set(plots.FIGURES.names())
