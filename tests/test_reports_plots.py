"""Plots: the numbers behind each figure, the figures' labels, files written, the Pareto front."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reports_synthetic import IN_DOMAIN, write_results_dir

from plexbench.cli import main
from plexbench.errors import PlexbenchError
from plexbench.reports import plot_data, plots
from plexbench.results_schema import load_results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return load_results([write_results_dir(tmp_path_factory.mktemp("plots") / "run")])


def _legend(fig_or_ax) -> list[str]:
    legend = fig_or_ax.get_legend() if hasattr(fig_or_ax, "get_legend") else None
    legends = [legend] if legend else list(getattr(fig_or_ax, "legends", []))
    return [t.get_text() for lg in legends for t in lg.get_texts()]


def test_plot_command_writes_every_figure_as_pdf_and_png(results, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["plot", str(results.dirs[0]), "--out", str(out), "--paper-figures"]) == 0
    stems = {p.stem for p in out.iterdir() if p.name != "figures.json"}
    assert stems == {"radar", "reliability_fashion_mnist_calibration_fashion_mnist",
                     "risk_coverage_fashion_mnist_selective_fashion_mnist",
                     "ood_hist_fashion_mnist_vs_digits_msp", "ood_roc_fashion_mnist_vs_digits_msp",
                     "ood_hist_fashion_mnist_vs_cifar100_msp", "ood_roc_fashion_mnist_vs_cifar100_msp",
                     "shift_fashion_mnist_corrupted", "subpopulation_fashion_mnist", "score_vs_num_params",
                     "score_vs_flops_per_example", "paper_radar", "paper_subpopulation", "paper_active_learning"}
    for stem in stems:
        pdf, png = (out / f"{stem}.pdf").read_bytes(), (out / f"{stem}.png").read_bytes()
        assert pdf.startswith(b"%PDF") and len(pdf) > 1000, stem
        assert png.startswith(b"\x89PNG") and len(png) > 1000, stem
    assert "wrote 28 files" in capsys.readouterr().out
    # the manifest names the figure kind of every PNG (report.md groups figures by it)
    manifest = json.loads((out / "figures.json").read_text())["figures"]
    kinds = {f["file"]: f["figure"] for f in manifest}
    assert kinds["ood_roc_fashion_mnist_vs_digits_msp.png"] == "ood_roc" and kinds["radar.png"] == "radar"
    assert len(kinds) == 11 and all(f["title"] for f in manifest)


def test_titles_and_labels_fit_inside_the_figure():
    # a title far wider than its figure is wrapped onto more lines before saving, so nothing is clipped
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    curves = [plot_data.Curve("a-model-with-a-long-name", "a_task_with_a_long_name_too", "a_dataset_with_a_long_name",
                              np.linspace(0, 1, 5), np.linspace(0, 0.1, 5))]
    fig = plots.draw_risk_coverage(curves)
    with plots.paper_style():
        plots.fit_texts(fig)
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        for text in (fig.axes[0].title, fig.axes[0].yaxis.label, fig.axes[0].xaxis.label):
            box = text.get_window_extent(renderer)
            assert box.x0 >= -1 and box.x1 <= fig.bbox.width + 1 and box.y0 >= -1 and box.y1 <= fig.bbox.height + 1
    assert "\n" in fig.axes[0].get_title()


def test_radar_of_close_models_is_drawn_relative_to_the_best():
    data = plot_data.RadarData(["a@x", "b@x", "c@x"], ["m1", "m2"], np.array([[0.90, 0.80, 0.70], [0.91, 0.79, 0.70]]),
                               "t", "n", relative_to_best=True)
    fig = plots.draw_radar(data)
    ax = fig.axes[0]
    radii = [line.get_ydata()[:3] for line in ax.get_lines()[:2]]
    assert radii[0] == pytest.approx([0.90 / 0.91, 1.0, 1.0]) and radii[1] == pytest.approx([1.0, 0.79 / 0.80, 1.0])
    low = min(0.90 / 0.91, 0.79 / 0.80)
    assert ax.get_ylim()[0] == pytest.approx(low - 0.25 * (1 - low))  # the centre is just below the lowest ratio
    assert "best model's value" in ax.get_xlabel()


def test_plot_needs_an_input(capsys):
    assert main(["plot"]) == 2
    assert "--paper-figures" in capsys.readouterr().err


def test_radar_default_axes_and_values(results):
    data = plot_data.radar_data(results)
    assert data.models == ["plexish", "det", "be"]
    # one axis per task first: each task's first headline column, in task order (in-distribution,
    # calibration, selective prediction, OOD, shift, ...), then further headline columns
    assert data.labels[:5] == ["accuracy@fashion_mnist", "ece@fashion_mnist", "oc_acc@1%@fashion_mnist",
                               "ood/digits/msp/auroc@fashion_mnist", "accuracy@fashion_mnist_corrupted"]
    assert len(data.labels) == 8 and not any("/" in lbl.rpartition("@")[2] for lbl in data.labels)
    ece = data.labels.index("ece@fashion_mnist")
    assert data.values[:, ece] == pytest.approx([1 - 0.02, 1 - 0.06, 1 - 0.03])  # 1 - ECE
    accuracy = data.labels.index("accuracy@fashion_mnist")
    assert data.values[:, accuracy] == pytest.approx([0.91, 0.88, 0.90])
    fig = plots.draw_radar(data)
    ax = fig.axes[0]
    assert [t.get_text().replace("\n", "") for t in ax.get_xticklabels()] == data.labels
    assert "fashion_mnist" in ax.get_title() and _legend(fig) == ["plexish", "det", "be"]
    assert "normalised" in ax.get_xlabel()


def test_radar_explicit_axes(results):
    axes = ["accuracy@fashion_mnist", "ood/digits/msp/auroc@fashion_mnist", "subpop/p25@fashion_mnist"]
    data = plot_data.radar_data(results, axes)
    assert data.labels == axes
    assert data.values[:, 0] == pytest.approx([IN_DOMAIN[m][0] for m in ("plexish", "det", "be")])
    with pytest.raises(PlexbenchError, match="not in the results"):
        plot_data.radar_data(results, ["accuracy@cifar10", "ece@fashion_mnist", "nll@fashion_mnist"])


def test_reliability_and_risk_coverage_figures(results):
    diagrams = plot_data.reliability_diagrams(results)
    assert len(diagrams) == 3 and np.isnan(diagrams[0].accuracy[:3]).all()  # empty bins -> NaN
    fig = plots.draw_reliability(diagrams)
    assert "fashion_mnist" in fig.get_suptitle()
    assert [ax.get_title() for ax in fig.axes] == ["plexish, ECE 0.020", "det, ECE 0.060", "be, ECE 0.030"]
    assert "confidence" in fig.axes[0].get_xlabel() and "accuracy" in fig.axes[0].get_ylabel()
    # five models wrap onto a second row of panels; every row has its y label
    five = [dataclasses.replace(diagrams[i % 3], model=f"m{i}") for i in range(5)]
    fig = plots.draw_reliability(five)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(",")[0] for ax in visible] == ["m0", "m1", "m2", "m3", "m4"]
    assert visible[4].get_ylabel().startswith("accuracy")
    curves = plot_data.risk_coverage_curves(results)
    ax = plots.draw_risk_coverage(curves).axes[0]
    assert "coverage" in ax.get_xlabel() and "risk" in ax.get_ylabel() and "fashion_mnist" in ax.get_title()
    assert _legend(ax) == ["plexish (AURC 0.0300)", "det (AURC 0.0400)", "be (AURC 0.0500)"]


def test_ood_figures(results):
    groups = {}
    for s in plot_data.ood_scores(results):
        groups.setdefault((s.ood_dataset, s.scorer), []).append(s)
    digits = groups[("digits", "msp")]
    fig = plots.draw_ood_histograms(digits)
    assert "fashion_mnist vs digits (msp)" in fig.get_suptitle()
    assert [ax.get_title() for ax in fig.axes] == ["plexish", "det", "be"]
    assert _legend(fig.axes[0]) == ["in: fashion_mnist", "OOD: digits"] and "msp score" in fig.axes[0].get_xlabel()
    ax = plots.draw_ood_roc(digits).axes[0]
    assert "false-positive rate" in ax.get_xlabel() and "true-positive rate" in ax.get_ylabel()
    assert _legend(ax)[0].startswith("plexish (AUROC ")


def test_roc_curve_hand_case():
    # in-distribution scores 0, 1; OOD scores 1, 2, 3 (OOD positive). Pairs (out > in) + ties / 2:
    # 2 and 3 beat both in-scores (4 pairs), 1 beats 0 and ties 1 (1 + 0.5) -> 5.5 / 6
    fpr, tpr, auc = plot_data.roc_curve(np.array([0.0, 1.0]), np.array([1.0, 2.0, 3.0]))
    assert auc == pytest.approx(5.5 / 6)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)


def test_shift_series_and_figure(results):
    series = [s for s in plot_data.shift_series(results) if s.model == "det" and s.metric == "accuracy"][0]
    acc = IN_DOMAIN["det"][0]
    # synthetic accuracy at severity s, corruption k (0, 1): acc - 0.05 s - 0.01 k
    s = np.arange(1, 6)
    np.testing.assert_allclose(series.mean, acc - 0.05 * s - 0.005)
    np.testing.assert_allclose(series.low, acc - 0.05 * s - 0.01)
    np.testing.assert_allclose(series.high, acc - 0.05 * s)
    fig = plots.draw_shift(plot_data.shift_series(results))
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy (fraction)", "ECE (15 bins, fraction)", "NLL (nats)"]
    assert all(ax.get_xlabel() == "corruption severity" for ax in fig.axes)
    assert "fashion_mnist_corrupted" in fig.get_suptitle() and "2 corruptions" in fig.get_suptitle()
    assert _legend(fig.axes[0]) == ["plexish", "det", "be"]


def test_subpopulation_figure(results):
    groups = plot_data.subpopulation_groups(results)
    ax = plots.draw_subpopulation(groups).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["plexish", "det", "be"]
    assert "accuracy per subpopulation" in ax.get_ylabel() and "fashion_mnist (30 subpopulations)" in ax.get_title()


def test_score_vs_cost(results):
    data = plot_data.score_vs_cost(results, "num_params")
    assert data.models == ["plexish", "det", "be"]
    np.testing.assert_array_equal(data.cost, [3.0e6, 1.0e6, 3.1e6])
    # det is cheapest; plexish has the best score; be costs more than plexish and scores less
    assert data.score[0] > data.score[2] and list(data.front) == [1, 0]
    ax = plots.draw_score_vs_cost(data).axes[0]
    assert ax.get_xlabel() == "parameters (count)" and "reliability score" in ax.get_ylabel()
    assert _legend(ax) == ["plexish", "det", "be", "Pareto front (2 of 3 models)"] and "plexish, det, be" in ax.get_title()
    # the front is visible whatever its size: its models are ringed (a marker line), not only a step
    ring = next(line for line in ax.get_lines() if line.get_label().startswith("Pareto front"))
    assert ring.get_marker() == "o" and list(ring.get_xdata()) == list(data.cost[data.front])


def test_pareto_front_hand_case():
    # cost (1, 2, 3, 4, 2, 5), score (50, 40, 60, 60, 50, nan): 1 is beaten by 0 (cheaper, better),
    # 3 by 2 (same score, cheaper), 4 by 0 (same score, cheaper); 5 is NaN; front = 0 then 2
    assert plot_data.pareto_front([1, 2, 3, 4, 2, 5], [50, 40, 60, 60, 50, np.nan]).tolist() == [0, 2]
    # identical points do not dominate each other
    assert plot_data.pareto_front([1, 1, 2], [5, 5, 6]).tolist() == [0, 1, 2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 5)), min_size=1, max_size=8))
def test_pareto_front_matches_brute_force(points):
    cost, score = np.array(points, dtype=float).T

    def dominated(i):
        return any(cost[j] <= cost[i] and score[j] >= score[i] and (cost[j] < cost[i] or score[j] > score[i])
                   for j in range(len(cost)))

    expected = sorted((i for i in range(len(cost)) if not dominated(i)), key=lambda i: (cost[i], -score[i], i))
    assert plot_data.pareto_front(cost, score).tolist() == expected


def test_paper_radar_from_published_numbers():
    data = plot_data.paper_radar_data()
    assert data.models[0].startswith("Plex-L") and data.models[1:] == ["deterministic", "specialised SOTA"]
    label = [i for i, lbl in enumerate(data.labels) if lbl.startswith("active learning accuracy\ncifar10,")][0]
    # cifar10 active learning: plex_l_be .9640, det .95, sota .56 -> scaled by the best (.9640)
    assert data.values[:, label] == pytest.approx([1.0, 0.95 / 0.964, 0.56 / 0.964])
    loss = [i for i, lbl in enumerate(data.labels) if lbl.startswith("soft-label loss")][0]
    assert data.values[2, loss] == pytest.approx(1.0) and np.isnan(data.values[:2, loss]).all()
    p25 = data.labels.index("subpopulation accuracy p25\ncifar10")
    assert data.values[:, p25] == pytest.approx([1.0, np.nan, 0.815 / 0.990], nan_ok=True)
    fig = plots.draw_radar(data)
    assert "Tran et al. 2022" in fig.axes[0].get_title() and len(_legend(fig)) == 3


def test_paper_subpopulation_from_published_quantiles():
    stats = plot_data.paper_subpopulation_stats()
    assert len(stats) == 16  # 4 datasets x 4 models
    first = stats[0]
    assert (first["dataset"], first["model"]) == ("cifar10_30_subpopulations", "none")
    assert [first[k] for k in ("whislo", "q1", "med", "q3", "whishi")] == [0.984, 0.989, 0.992, 0.996, 0.998]
    fig = plots.draw_paper_subpopulation(stats)
    assert [ax.get_title() for ax in fig.axes] == ["cifar10 30 subpopulations", "cifar10 100 subpopulations",
                                                 "cifar100 30 subpopulations", "cifar100 100 subpopulations"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["none", "plex", "be->be", "none->be"]
    assert "accuracy per subpopulation" in fig.axes[0].get_ylabel()


def test_figures_use_serif_fonts(results):
    fig = plots.draw_risk_coverage(plot_data.risk_coverage_curves(results))
    assert fig.axes[0].title.get_fontfamily() == ["serif"]
    assert list(itertools.islice(plots.STYLE, 1)) == ["font.family"]
