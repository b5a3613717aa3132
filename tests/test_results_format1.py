"""A results directory of the previous format (1) is read in today's format: tested on a copy of the
`results/embedded/metrics_long.csv` committed before format 2 (tests/data/results_embedded_v1; its
task files keep what the conversion reads, kind and the model's K, without rows and curves)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plexbench.reports.model_groups import model_groups
from plexbench.reports.reliability_score import compute_score
from plexbench.results_schema import LONG_COLUMNS, load_results

V1 = Path(__file__).resolve().parent / "data" / "results_embedded_v1"


@pytest.fixture(scope="module")
def results():
    return load_results([V1])


def test_every_row_gains_the_format_2_columns(results):
    long = results.long
    assert list(long.columns[:len(LONG_COLUMNS)]) == list(LONG_COLUMNS) or set(LONG_COLUMNS) <= set(long.columns)
    assert len(long) == 1006 and long["kind"].ne("").all() and long["category"].ne("").all()
    # the model's own K: few-shot probe rows of the 6-class models keep the probe's K in num_classes
    probes = long[(long.task == "fmnist_few_shot") & long.model.str.endswith("fmnist6")]
    assert set(probes["model_num_classes"]) == {6} and set(probes["num_classes"]) == {10}


def test_categories_and_exclusions_by_task(results):
    long = results.long
    by_task = long.groupby("task")["category"].agg(lambda c: sorted(set(c)))
    assert by_task.to_dict() == {
        "fmnist6_in_distribution": ["prediction"], "fmnist_calibration": ["uncertainty"],
        "fmnist_covariate_shift": ["prediction", "uncertainty"], "fmnist_few_shot": ["adaptation"],
        "fmnist_in_distribution": ["prediction"], "fmnist_ood_digits": ["uncertainty"],
        "fmnist_open_set": ["uncertainty"], "fmnist_selective_prediction": ["uncertainty"],
        "fmnist_subpopulation": ["prediction"]}
    excluded = long[long.score_exclusion != ""]
    # covariate shift, per model: 75 cells x 4 metrics + (5 severities + 15 corruptions) x 4 breakdowns;
    # few-shot: the 1-shot rows, 4 metrics x 2 targets
    per_model = excluded.groupby(["model", "task"]).size().to_dict()
    assert per_model[("det-mini", "fmnist_covariate_shift")] == 75 * 4 + 20 * 4
    assert per_model[("det-mini", "fmnist_few_shot")] == 8
    assert set(excluded.task) == {"fmnist_covariate_shift", "fmnist_few_shot"}


def _paper_score_by_hand(long: pd.DataFrame, model: str) -> float:
    """The paper preset (spec §7) written out for these metrics: accuracy, prec@1, auroc and *auc*
    unchanged; ece -> 1 - v; nll -> 1 - v / ln K; brier unflipped (the quirk); 1-shot rows, single
    corruption cells and per-severity/per-corruption breakdowns left out; a (metric, dataset) that two
    tasks report (accuracy of in_distribution and subpopulation) is one column; the mean x 100."""
    rows = long[long.model == model].drop_duplicates(["metric", "dataset"])
    values = []
    for r in rows.itertuples():
        base = r.metric.rsplit("/", 1)[-1]
        if "/1shot/" in r.metric or "/" in r.dataset or (r.task == "fmnist_covariate_shift" and "/" in r.metric):
            continue
        if base in ("accuracy", "prec@1", "auroc", "brier") or "auc" in base:
            values.append(r.value)
        elif base == "ece":
            values.append(1 - r.value)
        elif base == "nll":
            values.append(1 - r.value / math.log(r.num_classes))
    return 100 * float(np.mean(values))


def test_scores_equal_the_paper_rule_written_out(results):
    groups = model_groups(results.long)
    assert [g.models for g in groups] == [("det-mini", "plex-mini"), ("det-mini-fmnist6", "plex-mini-fmnist6")]
    for group in groups:
        long = results.long[results.long.model.isin(group.models)]
        score = compute_score(long, preset="paper").summary
        for model in group.models:
            assert score.at[model, "score"] == pytest.approx(_paper_score_by_hand(long, model), rel=1e-12)
