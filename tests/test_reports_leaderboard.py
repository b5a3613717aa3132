"""`plexbench leaderboard`: the five files, reference rows from the paper, options and errors."""

from __future__ import annotations

import csv
import json
import math

import pandas as pd
import pytest
from test_reports_synthetic import write_results_dir

from plexbench.cli import main
from plexbench.reports import paper_numbers
from plexbench.reports.columns import direction


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_results_dir(tmp_path_factory.mktemp("results") / "run")


def _leaderboard(*args) -> int:
    return main(["leaderboard", *map(str, args)])


def test_writes_five_files_with_headers_and_reference_rows(run_dir, tmp_path, capsys):
    out = tmp_path / "lb.csv"
    assert _leaderboard(run_dir, "--out", out) == 0
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {"lb.csv", "lb.long.csv", "lb.json", "lb.md", "lb.tex"}  # no temporary files left behind
    wide = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert list(wide.columns[:5]) == ["model", "kind", "task_versions", "group", "score_x100"]
    assert wide.set_index("model").at["det", "task_versions"].startswith("cifar10_ood=1; cifar10_subpop=1")
    assert "ece@fashion_mnist (lower)" in wide.columns and "accuracy@fashion_mnist (higher)" in wide.columns
    assert "ood/digits/msp/fpr95@fashion_mnist (lower)" in wide.columns
    runs = wide[wide.kind == "run"]
    assert sorted(runs.model) == ["be", "det", "plexish"]
    assert runs.score_x100.is_monotonic_decreasing  # sorted by score
    # raw values in the metric columns (det's ECE from the synthetic dir)
    assert runs.set_index("model").at["det", "ece@fashion_mnist (lower)"] == pytest.approx(0.06)
    # the paper's numbers, where the run measured the same axis (values from plex_paper_numbers.csv)
    ref = wide[wide.kind == "reference"].set_index("model")
    assert ref.at["paper:sota_specialized", "ood/cifar100/msp/auroc@cifar10 (higher)"] == pytest.approx(0.9208)
    assert ref.at["paper:sota_specialized", "nll@cifar10_h (lower)"] == pytest.approx(0.26)
    assert ref.at["paper:plex_l", "subpop/p25@cifar10 (higher)"] == pytest.approx(0.990)
    assert math.isnan(ref.at["paper:plex_l", "score_x100"])  # reference rows are not scored
    assert "paper:det" not in ref.index  # the run has no active-learning or retina column
    assert "plexish" in capsys.readouterr().out


def test_long_csv_is_the_concatenated_input(run_dir, tmp_path):
    _leaderboard(run_dir, "--out", tmp_path / "lb.csv")
    with open(run_dir / "metrics_long.csv") as f:
        inputs = list(csv.DictReader(f))
    with open(tmp_path / "lb.long.csv") as f:
        long = list(csv.DictReader(f))
    assert len(long) == len(inputs)
    for a, b in zip(inputs, long):
        assert (a["model"], a["metric"], a["dataset"], a["split"]) == (b["model"], b["metric"], b["dataset"], b["split"])
        assert float(a["value"]) == float(b["value"]) and float(a["ci_low"]) == float(b["ci_low"])
        assert b["results_dir"] == str(run_dir)


def test_json_sidecar_states_conventions(run_dir, tmp_path):
    _leaderboard(run_dir, "--out", tmp_path / "lb.csv", "--preset", "plexbench")
    meta = json.loads((tmp_path / "lb.json").read_text())
    conv = meta["conventions"]
    assert "15 equal-width bins" in conv["ece"] and "top-label" in conv["ece"]
    assert "OOD labelled 1 (the positive class)" in conv["ood"]
    assert "TPR >= 0.95" in conv["fpr95"]
    assert meta["preset"] == "plexbench" and set(meta["presets"]) >= {"paper", "plexbench"}
    quirk = [names for formula, names in meta["presets"]["paper"]["normalisation"].items() if "unflipped" in formula]
    assert quirk and set(quirk[0].split(", ")) == {"brier", "mce"}
    cols = {c["column"]: c for c in meta["columns"]}
    assert cols["brier@fashion_mnist"]["formula"] == "1 - v / 2"
    assert cols["nll@fashion_mnist"]["num_classes"] == 10 and cols["nll@fashion_mnist"]["formula"] == "1 - v / ln(K)"
    assert {"group": "10-class models", "metric": "fewshot/1shot/prec@1", "dataset": "digits",
            "reason": "1-shot column (dropped as in the paper)"} in meta["excluded_columns"]
    assert meta["provenance"]["versions"]["plexbench"] and meta["inputs"][0]["metrics_long_sha256"]
    assert meta["files"]["latex"] == "lb.tex"


def test_markdown_and_latex(run_dir, tmp_path):
    _leaderboard(run_dir, "--out", tmp_path / "lb.csv")
    md = (tmp_path / "lb.md").read_text()
    assert "| model | score |" in md and "| plexish |" in md
    assert "| ece@fashion_mnist (lower) | fashion_mnist_calibration v1 | **0.0200** | 0.0300 | 0.0600 |" in md  # lowest ECE
    tex = (tmp_path / "lb.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 2 and r"\toprule" in tex
    assert r"ece@fashion\_mnist (lower) & fashion\_mnist\_calibration v1 & \textbf{0.0200}" in tex
    assert r"paper:sota\_specialized" in tex and r"\textbackslash" not in tex


def test_baseline_and_two_directories(tmp_path):
    d1 = write_results_dir(tmp_path / "a", models=("plexish", "det"))
    d2 = write_results_dir(tmp_path / "b", models=("be",))
    out = tmp_path / "lb.csv"
    assert _leaderboard(d1, d2, "--out", out, "--baseline", "det", "--no-paper") == 0
    wide = pd.read_csv(out)
    assert sorted(wide.model) == ["be", "det", "plexish"] and set(wide.kind) == {"run"}
    assert wide.set_index("model").at["det", "score_x100"] == pytest.approx(100.0)
    long = pd.read_csv(tmp_path / "lb.long.csv")
    assert set(long.results_dir) == {str(d1), str(d2)}


def test_models_of_different_class_counts_are_scored_in_their_own_groups(run_dir, tmp_path, capsys):
    # a 6-class model that ran fewer tasks: one table over all four would give every model NaN
    # under the paper preset; within groups, each group is complete and scored
    six = write_results_dir(tmp_path / "six", models=("plexish",), num_classes=6,
                            drop=("cifar10_ood", "cifar10_subpop", "cifar10h_label_uncertainty", "digits_fewshot"))
    (six / "metrics_long.csv").write_text((six / "metrics_long.csv").read_text().replace("plexish", "six-class"))
    out = tmp_path / "mixed.csv"
    assert _leaderboard(run_dir, six, "--out", out, "--no-paper") == 0
    printed = capsys.readouterr().out
    wide = pd.read_csv(out, keep_default_na=False, na_values=[""]).set_index("model")
    assert wide.loc[["plexish", "det", "be", "six-class"], "score_x100"].notna().all()
    assert wide.at["six-class", "group"] == "6-class models" and wide.at["det", "group"] == "10-class models"
    # the 10-class scores are those of the 10-class directory alone
    alone = tmp_path / "alone.csv"
    assert _leaderboard(run_dir, "--out", alone, "--no-paper") == 0
    ten = pd.read_csv(alone).set_index("model")
    for m in ("plexish", "det", "be"):
        assert wide.at[m, "score_x100"] == pytest.approx(ten.at[m, "score_x100"])
    assert "scored within 2 groups" in printed
    meta = json.loads((tmp_path / "mixed.json").read_text())
    assert [g["models"] for g in meta["groups"]] == [["plexish", "det", "be"], ["six-class"]]


def test_a_missing_score_says_why(run_dir, tmp_path, capsys):
    partial = write_results_dir(tmp_path / "partial", models=("be",), drop=("fashion_mnist_calibration",))
    (partial / "metrics_long.csv").write_text((partial / "metrics_long.csv").read_text().replace("be,", "newbie,"))
    assert _leaderboard(run_dir, partial, "--out", tmp_path / "p.csv", "--no-paper") == 0
    printed = capsys.readouterr().out
    assert "newbie: no score: lacks 2 of the" in printed and "the paper preset needs every column" in printed
    wide = pd.read_csv(tmp_path / "p.csv").set_index("model")
    assert math.isnan(wide.at["newbie", "score_x100"]) and wide.at["newbie", "score_note"].startswith("no score")


def test_errors_are_one_line_exit_2(run_dir, tmp_path, capsys):
    assert _leaderboard(run_dir, "--out", tmp_path / "x.csv", "--baseline", "dett") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean det" in err[0]
    assert _leaderboard(tmp_path / "missing") == 2
    assert "results directory not found" in capsys.readouterr().err
    # det written alone is model 0 of its directory: its calib_auc (0.80) differs from run_dir's (0.82)
    clash = write_results_dir(tmp_path / "clash", models=("det",))
    assert _leaderboard(run_dir, clash, "--out", tmp_path / "y.csv") == 2
    assert "conflicting values for model det, calib_auc@fashion_mnist" in capsys.readouterr().err
    assert _leaderboard(run_dir, "--num-classes", "cifar10") == 2
    assert "DATASET=K" in capsys.readouterr().err


def test_paper_axis_mapping_table():
    # The documented mapping, axis by axis.
    assert paper_numbers.plexbench_metrics("in_domain_accuracy") == ("accuracy",)
    assert paper_numbers.plexbench_metrics("ood_msp_auroc_vs_cifar100") == ("ood/cifar100/msp/auroc",)
    assert paper_numbers.plexbench_metrics("ood_msp_auroc_vs_places365")[0] == "ood/places365_small/msp/auroc"
    assert paper_numbers.plexbench_metrics("subpopulation_accuracy_p25") == ("subpop/p25",)
    assert paper_numbers.plexbench_metrics("subpopulation_accuracy", "p50") == ("subpop/median",)
    assert paper_numbers.plexbench_metrics("active_learning_accuracy", "1000 labels") == \
        ("active_learning/margin/1000/accuracy",)
    assert paper_numbers.plexbench_metrics("selective_prediction_accuracy_auc_ood") == ()
    # every axis of the CSV (bar the retina one) maps to metric names with a declared direction
    for row in paper_numbers.mapping_table():
        if row["paper_axis"] == "selective_prediction_accuracy_auc_ood":
            continue
        assert row["plexbench_metrics"], row
        assert all(direction(m) for m in row["plexbench_metrics"]), row
    # the shipped CSV is the shared reference copy: 101 rows, the columns of spec §10
    numbers = paper_numbers.load_paper_numbers()
    assert len(numbers) == 101 and tuple(numbers.columns) == paper_numbers.PAPER_COLUMNS
