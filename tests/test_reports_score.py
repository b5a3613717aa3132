"""The reliability score (spec §7): hand-computed toy tables, the paper's quirks, NaN rules,
ranks against scipy, baseline division, categories and normalisations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from plexbench.errors import PlexbenchError
from plexbench.metrics.vocabulary import metric_info
from plexbench.reports.columns import Column, parse_column
from plexbench.reports.reliability_score import (
    compute_score,
    rank_table,
    resolve_num_classes,
)
from plexbench.tasks.registry import get_kind

LN10 = math.log(10)

# The toy table: three models, dataset A (K = 10) and few-shot dataset B.
# nll values are multiples of ln(10) so that 1 - nll / ln(K) is a round number.
TOY = {
    #            accuracy ece   nll          brier calib_auc 5shot 1shot
    "mA": dict(acc=0.90, ece=0.10, nll=0.25 * LN10, brier=0.20, cauc=0.80, s5=0.60, s1=0.30),
    "mB": dict(acc=0.80, ece=0.05, nll=0.50 * LN10, brier=0.30, cauc=0.80, s5=0.70, s1=0.90),
    "mC": dict(acc=0.70, ece=0.20, nll=0.10 * LN10, brier=0.10, cauc=0.90, s5=0.50, s1=None),
}
NAMES = {"acc": ("accuracy", "A"), "ece": ("ece", "A"), "nll": ("nll", "A"), "brier": ("brier", "A"),
         "cauc": ("calib_auc", "A"), "s5": ("fewshot/5shot/prec@1", "B"), "s1": ("fewshot/1shot/prec@1", "B")}
# The task kind that reports each toy metric: its declarations fill `category` and `score_exclusion`
# as the runner writes them into metrics_long.csv.
KINDS = {"acc": "in_distribution", "ece": "calibration", "nll": "in_distribution", "brier": "in_distribution",
         "cauc": "calibration", "s5": "few_shot", "s1": "few_shot"}


def declared_row(kind: str, **row) -> dict:
    """A metrics_long row with the category and score exclusion that kind `kind` declares for it."""
    k = get_kind(kind)
    return {"task": kind, "task_version": "1", "split": "test", "ci_low": np.nan, "ci_high": np.nan, "n": 100,
            **row, "kind": kind, "category": k.row_category(None, row["metric"]),
            "score_exclusion": k.score_exclusion(None, row["metric"], row["dataset"])}


def long_table(table=TOY, drop=(), half=None):
    """A metrics_long-style frame from {model: {key: value}}; `drop` = [(model, key)] rows left out."""
    rows = []
    for model, vals in table.items():
        for key, v in vals.items():
            if v is None or (model, key) in drop:
                continue
            metric, dataset = NAMES[key]
            h = np.nan if half is None else half.get(key, np.nan)
            rows.append(declared_row(KINDS[key], model=model, dataset=dataset, metric=metric, value=v,
                                     ci_low=v - h, ci_high=v + h))
    return pd.DataFrame(rows).assign(task="t")


K = {"A": 10, "B": 10}


def test_paper_preset_hand_computed():
    r = compute_score(long_table(), preset="paper", num_classes=K)
    s = r.summary
    # Normalised (paper): accuracy, 1 - ece, 1 - nll/ln10, brier UNFLIPPED, calib_auc, 5-shot; 1-shot dropped.
    # mA: .90 + .90 + .75 + .20 + .80 + .60 = 4.15 -> /6 -> 69.1667
    # mB: .80 + .95 + .50 + .30 + .80 + .70 = 4.05 -> /6 -> 67.5
    # mC: .70 + .80 + .90 + .10 + .90 + .50 = 3.90 -> /6 -> 65.0
    assert s.loc["mA", "score"] == pytest.approx(100 * 4.15 / 6)
    assert s.loc["mB", "score"] == pytest.approx(100 * 4.05 / 6)
    assert s.loc["mC", "score"] == pytest.approx(65.0)
    # prediction = accuracy, nll, brier: mA (.90+.75+.20)/3, mB (.80+.50+.30)/3, mC (.70+.90+.10)/3
    assert s["prediction_score"].tolist() == pytest.approx([100 * 1.85 / 3, 100 * 1.6 / 3, 100 * 1.7 / 3])
    # uncertainty = ece, calib_auc: mA (.90+.80)/2, mB (.95+.80)/2, mC (.80+.90)/2
    assert s["uncertainty_score"].tolist() == pytest.approx([85.0, 87.5, 85.0])
    assert s["adaptation_score"].tolist() == pytest.approx([60.0, 70.0, 50.0])
    # Ranks (1 = best): acc A1 B2 C3; nll C1 A2 B3; brier (higher wins, the quirk) B1 A2 C3;
    # ece B1 A2 C3; calib_auc C1, A and B tie at .80 -> 2.5 each; 5-shot B1 A2 C3.
    # mean rank: mA (1+2+2+2+2.5+2)/6, mB (2+3+1+1+2.5+1)/6, mC (3+1+3+3+1+3)/6
    assert s["mean_rank"].tolist() == pytest.approx([11.5 / 6, 10.5 / 6, 14 / 6])
    # best: mA acc; mB brier, ece, 5-shot; mC nll, calib_auc
    assert s["best"].tolist() == [1, 3, 2]
    assert s["prediction_best"].tolist() == [1, 1, 1]
    assert s["uncertainty_best"].tolist() == [0, 1, 1]
    assert s["prediction_mean_rank"].tolist() == pytest.approx([5 / 3, 2.0, 7 / 3])
    assert s["uncertainty_mean_rank"].tolist() == pytest.approx([2.25, 1.75, 2.0])
    assert {(e["metric"], e["reason"].split(" ")[0]) for e in r.excluded} == {("fewshot/1shot/prec@1", "1-shot")}


def test_plexbench_preset_flips_brier_the_paper_does_not():
    paper = compute_score(long_table(), preset="paper", num_classes=K)
    ours = compute_score(long_table(), preset="plexbench", num_classes=K)
    # Paper: brier stays as is -> the column is [.20, .30, .10]; plexbench: 1 - brier/2 = [.90, .85, .95].
    assert paper.normalised["brier@A"].tolist() == pytest.approx([0.20, 0.30, 0.10])
    assert ours.normalised["brier@A"].tolist() == pytest.approx([0.90, 0.85, 0.95])
    assert paper.ranks["brier@A"].tolist() == [2, 1, 3]  # the largest Brier "wins" in the paper
    assert ours.ranks["brier@A"].tolist() == [2, 3, 1]
    # plexbench scores: mA .90+.90+.75+.90+.80+.60 = 4.85; mB 4.60; mC .70+.80+.90+.95+.90+.50 = 4.75
    assert ours.summary["score"].tolist() == pytest.approx([100 * 4.85 / 6, 100 * 4.60 / 6, 100 * 4.75 / 6])
    assert [c.note for c in paper.columns if c.column.metric == "brier"][0].startswith("paper quirk")


def test_paper_preset_nan_if_any_column_missing_plexbench_reports_it():
    long = long_table(drop=[("mB", "cauc")])
    paper = compute_score(long, preset="paper", num_classes=K).summary
    assert math.isnan(paper.loc["mB", "score"])
    assert math.isnan(paper.loc["mB", "uncertainty_score"]) and math.isnan(paper.loc["mB", "uncertainty_mean_rank"])
    assert paper.loc["mB", "prediction_score"] == pytest.approx(100 * 1.6 / 3)  # its prediction columns are complete
    assert paper.loc["mA", "score"] == pytest.approx(100 * 4.15 / 6)
    ours = compute_score(long, preset="plexbench", num_classes=K)
    # mB over its 5 present columns: (4.60 - .80) / 5 = 0.76
    assert ours.summary.loc["mB", "score"] == pytest.approx(76.0)
    assert ours.summary.loc["mB", "n_missing"] == 1 and ours.summary.loc["mB", "n_columns"] == 5
    assert ours.missing == {"mB": [Column("calib_auc", "A")]}
    # calib_auc ranks among the two models that have it: mC (.90) 1, mA (.80) 2
    assert ours.ranks["calib_auc@A"].tolist()[0] == 2 and math.isnan(ours.ranks["calib_auc@A"].tolist()[1])


def test_nan_value_counts_as_missing():
    long = long_table()
    long.loc[(long.model == "mC") & (long.metric == "ece"), "value"] = np.nan
    assert math.isnan(compute_score(long, preset="paper", num_classes=K).summary.loc["mC", "score"])
    assert compute_score(long, preset="plexbench", num_classes=K).missing == {"mC": [Column("ece", "A")]}


def test_baseline_division():
    r = compute_score(long_table(), preset="paper", num_classes=K, baseline="mC").summary
    # mA / mC per column: .9/.7, .9/.8, .75/.9, .2/.1, .8/.9, .6/.5
    expected = (0.9 / 0.7 + 0.9 / 0.8 + 0.75 / 0.9 + 0.2 / 0.1 + 0.8 / 0.9 + 0.6 / 0.5) / 6
    assert r.loc["mA", "score"] == pytest.approx(100 * expected)
    assert r.loc["mC", "score"] == pytest.approx(100.0)
    assert r.loc["mC", "prediction_score"] == pytest.approx(100.0)
    with pytest.raises(PlexbenchError, match="did you mean mA"):
        compute_score(long_table(), preset="paper", num_classes=K, baseline="mAA")


def test_baseline_zero_column_is_nan():
    table = {m: dict(v) for m, v in TOY.items()}
    table["mC"]["s5"] = 0.0  # the baseline's 5-shot accuracy is 0: no ratio
    paper = compute_score(long_table(table), preset="paper", num_classes=K, baseline="mC").summary
    assert paper["score"].isna().all()
    ours = compute_score(long_table(table), preset="plexbench", num_classes=K, baseline="mC")
    assert set(ours.missing) == {"mA", "mB", "mC"}


def test_score_interval_hand_computed():
    long = long_table(half={"acc": 0.02, "nll": 0.1})
    long = long[long.metric.isin(["accuracy", "nll"])]
    r = compute_score(long, preset="plexbench", num_classes=K).summary
    # half-widths on the normalised scale: accuracy 0.02 (slope 1), nll 0.1 / ln 10 (slope -1/ln 10);
    # score = mean of 2 columns -> interval half-width (0.02 + 0.1 / ln10) / 2
    h = (0.02 + 0.1 / LN10) / 2
    assert r.loc["mA", "score"] == pytest.approx(100 * (0.90 + 0.75) / 2)
    assert r.loc["mA", "ci_low"] == pytest.approx(100 * ((0.90 + 0.75) / 2 - h))
    assert r.loc["mA", "ci_high"] == pytest.approx(100 * ((0.90 + 0.75) / 2 + h))
    # a used column without an interval -> no score interval
    assert compute_score(long_table(), preset="plexbench", num_classes=K).summary["ci_low"].isna().all()


def test_baseline_interval_worst_case_delta():
    long = long_table(half={"acc": 0.02})
    long = long[long.metric == "accuracy"]
    r = compute_score(long, preset="paper", num_classes=K, baseline="mC").summary
    # h(x/b) = h_x/|b| + |x| h_b / b^2 = .02/.7 + .9 * .02 / .49 for mA; the baseline has 0
    h = 0.02 / 0.7 + 0.9 * 0.02 / 0.49
    assert r.loc["mA", "ci_high"] - r.loc["mA", "score"] == pytest.approx(100 * h)
    assert r.loc["mC", "ci_low"] == pytest.approx(100.0) and r.loc["mC", "ci_high"] == pytest.approx(100.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=4, max_size=4), min_size=1, max_size=5),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), max_size=4))
def test_ranks_match_scipy_rankdata_average(columns, holes):
    # integers 0..3 make ties common; `holes` put NaN in some cells
    values = np.asarray(columns, dtype=np.float64).T  # 4 models x C columns
    for m, c in holes:
        if c < values.shape[1]:
            values[m, c] = np.nan
    df = pd.DataFrame(values, index=list("abcd"))
    ranks = rank_table(df).to_numpy()
    for c in range(values.shape[1]):
        present = ~np.isnan(values[:, c])
        expected = np.full(4, np.nan)
        expected[present] = rankdata(-values[present, c], method="average")
        np.testing.assert_array_equal(ranks[:, c], expected)


# Every metric name the paper's score uses (spec §5-§7), in plexbench spelling, and its declared category.
DECLARED_CATEGORIES = {
    "accuracy": "prediction", "prec@1": "prediction", "loss": "prediction", "nll": "prediction",
    "brier": "prediction", "mce": "prediction", "soft_ce": "prediction", "subpop/p25": "prediction",
    "subpop/variance": "prediction",
    "ece": "uncertainty", "calib_auc": "uncertainty", "auroc": "uncertainty", "oc_auc@0.005": "uncertainty",
    "ood/cifar100/msp/auroc": "uncertainty", "ood/svhn_cropped/maha/auroc": "uncertainty",
    "ood/places365_small/rmaha/auroc": "uncertainty", "fpr95": "uncertainty", "ood/digits/entropy/fpr95": "uncertainty",
    "aurc": "uncertainty", "oc_acc@0.01": "uncertainty", "ged": "uncertainty", "adaptive_ece": "uncertainty",
}


@pytest.mark.parametrize("metric,expected", sorted(DECLARED_CATEGORIES.items()))
def test_metric_declared_categories(metric, expected):
    assert metric_info(metric).category == expected


@pytest.mark.parametrize("kind,metric,expected", [
    # a kind with a category of its own puts every row there (spec §7.5: few-shot -> adaptation) ...
    ("few_shot", "fewshot/5shot/prec@1", "adaptation"), ("few_shot", "fewshot/10shot/ece", "adaptation"),
    ("few_shot", "fewshot/25shot/nll", "adaptation"), ("ood", "ood/digits/msp/auroc", "uncertainty"),
    ("subpopulation", "accuracy", "prediction"), ("selective_prediction", "aurc", "uncertainty"),
    # ... a kind without one defers to the metric's declaration (a shift breakdown named after
    # the corruption shot_noise is a prediction metric, whatever its name)
    ("covariate_shift", "shot_noise/accuracy", "prediction"), ("covariate_shift", "ece", "uncertainty"),
    ("in_distribution", "brier", "prediction"), ("label_uncertainty", "ged", "uncertainty"),
])
def test_kind_categories(kind, metric, expected):
    assert get_kind(kind).row_category(None, metric) == expected


def test_category_is_read_from_the_results_not_from_names():
    # the same metric name scores in whatever category its row declares, in both presets
    long = long_table()
    long.loc[long.metric == "accuracy", "category"] = "adaptation"
    for preset in ("paper", "plexbench"):
        r = compute_score(long, preset=preset, num_classes=K)
        assert [s.category for s in r.columns if s.column.metric == "accuracy"] == ["adaptation"]


@pytest.mark.parametrize("metric,value,expected", [
    # plexbench normalisations, by hand: 1 - v; 1 - v/2 on [0, 2]; 1 - 4v for a variance of [0, 1] values
    ("ece", 0.1, 0.9), ("adaptive_ece", 0.2, 0.8), ("rms_ce", 0.3, 0.7), ("ood/x/msp/fpr95", 0.25, 0.75),
    ("aurc", 0.05, 0.95), ("eaurc", 0.01, 0.99), ("mce", 0.6, 0.4), ("brier", 0.5, 0.75), ("ged", 1.0, 0.5),
    ("subpop/variance", 0.1, 0.6), ("nll", 0.5 * LN10, 0.5), ("accuracy", 0.7, 0.7), ("ood/x/msp/auroc", 0.8, 0.8),
    ("subpop/p05", 0.6, 0.6), ("oc_acc@0.01", 0.93, 0.93),
])
def test_plexbench_normalisations(metric, value, expected):
    # a hand-written table without category / score_exclusion columns: metric declarations decide
    long = pd.DataFrame([{"model": "m", "task": "t", "task_version": "1", "dataset": "A", "split": "test",
                          "metric": metric, "value": value, "ci_low": np.nan, "ci_high": np.nan, "n": 10}])
    r = compute_score(long, preset="plexbench", num_classes=K)
    assert r.normalised.iloc[0, 0] == pytest.approx(expected)


def test_excluded_columns_and_reasons():
    long = long_table()
    extra = long.iloc[:1].assign(metric="disagreement", value=0.1)
    fpr = long.iloc[:1].assign(metric="ood/digits/msp/fpr95", value=0.3)
    long = pd.concat([long, extra, fpr], ignore_index=True)
    paper = {e["metric"]: e["reason"] for e in compute_score(long, preset="paper", num_classes=K).excluded}
    ours = {e["metric"]: e["reason"] for e in compute_score(long, preset="plexbench", num_classes=K).excluded}
    assert "not one of the metric kinds" in paper["ood/digits/msp/fpr95"]
    assert "not declared" in ours["disagreement"] and "ood/digits/msp/fpr95" not in ours


def test_num_classes_sources():
    long = long_table()
    long["num_classes"] = 10
    # the column is enough (no override)
    r = compute_score(long[long.metric == "nll"], preset="paper")
    assert r.columns[0].num_classes == 10
    # override beats the column
    assert resolve_num_classes(["A"], long, {"A": 4}) == {"A": 4}
    with pytest.raises(PlexbenchError, match="number of classes unknown for dataset 'no_such_set'"):
        resolve_num_classes(["no_such_set"], None, {})
    # the dataset registry (plexbench.data.registry) knows the embedded sets and the corruption families
    assert resolve_num_classes(["fashion_mnist_corrupted/contrast_3", "fashion_mnist_corrupted", "digits"]) == \
        {"fashion_mnist_corrupted/contrast_3": 10, "fashion_mnist_corrupted": 10, "digits": 10}
    long.loc[0, "num_classes"] = 6
    with pytest.raises(PlexbenchError, match="dataset 'A' has different num_classes"):
        resolve_num_classes(["A"], long)


def shift_rows(model: str = "mA") -> pd.DataFrame:
    """Rows as the covariate_shift kind writes them: the family average, one cell, breakdowns."""
    rows = [("accuracy", "A_corrupted", 0.5), ("accuracy", "A_corrupted/snow_3", 0.4),
            ("severity_3/accuracy", "A_corrupted", 0.4), ("shot_noise/accuracy", "A_corrupted", 0.3),
            ("ece", "A_corrupted", 0.2), ("snow/ece", "A_corrupted", 0.25)]
    return pd.DataFrame([declared_row("covariate_shift", model=model, metric=m, dataset=d, value=v)
                         for m, d, v in rows])


def test_shift_cells_and_breakdowns_give_way_to_the_family_average():
    extra = pd.concat([shift_rows(), pd.DataFrame([declared_row(
        "in_distribution", model="mA", metric="accuracy", dataset="A_v2/matched-frequency", value=0.6)])])
    for preset in ("paper", "plexbench"):
        r = compute_score(pd.concat([long_table(), extra], ignore_index=True), preset=preset, num_classes=K)
        scored = {s.key for s in r.columns}
        assert {"accuracy@A_corrupted", "ece@A_corrupted", "accuracy@A_v2/matched-frequency"} <= scored
        assert not {"accuracy@A_corrupted/snow_3", "severity_3/accuracy@A_corrupted",
                    "shot_noise/accuracy@A_corrupted", "snow/ece@A_corrupted"} & scored
        reasons = {(e["metric"], e["dataset"]): e["reason"] for e in r.excluded}
        assert "family average" in reasons[("accuracy", "A_corrupted/snow_3")]
        assert "breakdown" in reasons[("severity_3/accuracy", "A_corrupted")]
        assert {s.category for s in r.columns if s.column.dataset == "A_corrupted"} == {"prediction", "uncertainty"}


def test_conflicting_duplicates_raise_identical_ones_collapse():
    long = long_table()
    same = pd.concat([long, long.iloc[:1].assign(task="other")], ignore_index=True)
    assert compute_score(same, preset="paper", num_classes=K).summary.loc["mA", "score"] == pytest.approx(100 * 4.15 / 6)
    clash = pd.concat([long, long.iloc[:1].assign(task="other", value=0.5)], ignore_index=True)
    with pytest.raises(PlexbenchError, match="conflicting values for model mA, accuracy@A"):
        compute_score(clash, preset="paper", num_classes=K)


def test_column_names_and_few_shot_exclusions():
    from plexbench.tasks.kinds.few_shot import shot_metric, shots_of

    assert parse_column("prec@1@cifar10") == Column("prec@1", "cifar10")
    assert parse_column("oc_acc@0.01@fashion_mnist") == Column("oc_acc@0.01", "fashion_mnist")
    with pytest.raises(PlexbenchError, match="METRIC@DATASET"):
        parse_column("accuracy")
    assert [shots_of(shot_metric(s, "prec@1")) for s in (1, 5, 25)] == [1, 5, 25]
    assert shots_of("shot_noise/accuracy") is None and shots_of("fewshot/prec@1") is None
    few_shot = get_kind("few_shot")
    assert few_shot.score_exclusion(None, "fewshot/1shot/prec@1", "B").startswith("1-shot")
    assert few_shot.score_exclusion(None, "fewshot/5shot/prec@1", "B") == ""


def test_bootstrap_interval_from_resamples_by_hand():
    # Two columns of one task with 400 resamples each; the score of resample b is the mean of the
    # normalised resampled columns (nll: 1 - v / ln 10), its interval the 2.5/97.5 percentiles.
    rng = np.random.default_rng(7)
    long = long_table()
    long = long[long.metric.isin(["accuracy", "nll"])]
    reps = {m: {("accuracy", "A"): rng.normal(TOY[m]["acc"], 0.01, 400), ("nll", "A"): rng.normal(TOY[m]["nll"], 0.05, 400)}
            for m in TOY}
    r = compute_score(long, preset="plexbench", num_classes=K, replicates=reps).summary
    for m in TOY:
        per_resample = (reps[m][("accuracy", "A")] + 1 - reps[m][("nll", "A")] / LN10) / 2
        low, high = np.quantile(per_resample, [0.025, 0.975])
        assert r.loc[m, "ci_low"] == pytest.approx(100 * low) and r.loc[m, "ci_high"] == pytest.approx(100 * high)
        assert r.loc[m, "interval_method"] == "bootstrap" and r.loc[m, "interval_fixed"] == 0
        # the prediction category holds the same two columns here
        assert r.loc[m, "prediction_ci_low"] == pytest.approx(100 * low)


def test_bootstrap_interval_holds_columns_without_resamples_and_divides_by_the_baseline():
    rng = np.random.default_rng(8)
    long = long_table()
    long = long[long.metric.isin(["accuracy", "ece"])]
    reps = {m: {("accuracy", "A"): rng.normal(TOY[m]["acc"], 0.01, 300)} for m in ("mA", "mC")}
    r = compute_score(long, preset="plexbench", num_classes=K, replicates=reps, baseline="mC").summary
    # ece has no resamples: held at 1 - ece; each resample divided by the baseline's resample
    ratio = (reps["mA"][("accuracy", "A")] / reps["mC"][("accuracy", "A")] + (1 - 0.10) / (1 - 0.20)) / 2
    low, high = np.quantile(ratio, [0.025, 0.975])
    assert r.loc["mA", "ci_low"] == pytest.approx(100 * low) and r.loc["mA", "ci_high"] == pytest.approx(100 * high)
    assert r.loc["mA", "interval_fixed"] == 1 and r.loc["mC", "ci_low"] == pytest.approx(100.0)
    # a model without resamples keeps the conservative rule (here: no interval in the table -> NaN)
    assert r.loc["mB", "interval_method"] == "conservative" and math.isnan(r.loc["mB", "ci_low"])
