"""A synthetic results directory in exactly the format of plexbench.results_schema (input data
for the report tests), and tests that the reader takes it as written.

`write_results_dir(path)` writes three models (`plexish`, `det`, `be`) evaluated on
fashion_mnist (in-distribution, calibration, selective prediction, OOD vs digits and vs
cifar100 to match a paper axis), its corrupted variants, subpopulations and few-shot digits.
Each row carries what the task kind that would compute it declares (category, score exclusion,
headline, figures), read from the real kinds; `format_version=1` writes the previous format
(11 CSV columns, task files without those facts) to test the conversion on read.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from plexbench.errors import PlexbenchError

V1_HEADER = ["model", "task", "task_version", "dataset", "split", "metric", "value", "ci_low", "ci_high", "n",
             "num_classes"]
V2_HEADER = ["model", "task", "task_version", "kind", "category", "dataset", "split", "metric", "value", "ci_low",
             "ci_high", "n", "num_classes", "model_num_classes", "score_exclusion"]
LONG_HEADER = V1_HEADER[:10]
MODELS = ("plexish", "det", "be")
# (accuracy, ece, nll, brier) per model on fashion_mnist test
IN_DOMAIN = {"plexish": (0.91, 0.02, 0.26, 0.13), "det": (0.88, 0.06, 0.36, 0.18), "be": (0.90, 0.03, 0.29, 0.15)}
RUN_MODELS = {"plexish": {"num_params": 3.0e6, "flops_per_example": 6.0e8},
              "det": {"num_params": 1.0e6, "flops_per_example": 2.0e8},
              "be": {"num_params": 3.1e6, "flops_per_example": 6.2e8}}
CORRUPTIONS = ("gaussian_noise", "contrast")
# task -> (kind, dataset of the task JSON)
TASKS = {
    "fashion_mnist_in_distribution": ("in_distribution", "fashion_mnist"),
    "fashion_mnist_calibration": ("calibration", "fashion_mnist"),
    "fashion_mnist_selective": ("selective_prediction", "fashion_mnist"),
    "fashion_mnist_ood": ("ood", "fashion_mnist"),
    "fashion_mnist_shift": ("covariate_shift", "fashion_mnist_corrupted"),
    "fashion_mnist_subpop": ("subpopulation", "fashion_mnist"),
    "cifar10_ood": ("ood", "cifar10"),
    "cifar10_subpop": ("subpopulation", "cifar10"),
    "cifar10h_label_uncertainty": ("label_uncertainty", "cifar10_h"),
    "digits_fewshot": ("few_shot", "digits"),
}


def _row(model, task, dataset, metric, value, half=0.01, split="test", n=1000):
    return {"model": model, "task": task, "dataset": dataset, "split": split, "metric": metric,
            "value": float(value), "ci_low": float(value - half), "ci_high": float(value + half), "n": n}


def _reliability(rng, acc, ece):
    lower = np.linspace(0, 1, 16)[:-1]
    count = rng.integers(0, 200, size=15)
    count[:3] = 0  # empty low-confidence bins, as in real diagrams
    conf = lower + 1 / 30
    accuracy = np.clip(conf - ece, 0, 1)
    return {"bin_lower": lower.tolist(), "bin_upper": (lower + 1 / 15).tolist(), "count": count.tolist(),
            "accuracy": np.where(count > 0, accuracy, 0.0).tolist(), "confidence": np.where(count > 0, conf, 0.0).tolist()}


def _model_rows(m: str, i: int) -> list[dict]:
    acc, ece, nll, brier = IN_DOMAIN[m]
    rows = [_row(m, "fashion_mnist_in_distribution", "fashion_mnist", k, v)
            for k, v in (("accuracy", acc), ("nll", nll), ("brier", brier))]
    rows += [_row(m, "fashion_mnist_calibration", "fashion_mnist", k, v) for k, v in (("ece", ece), ("calib_auc", 0.8 + 0.02 * i))]
    rows += [_row(m, "fashion_mnist_selective", "fashion_mnist", k, v)
             for k, v in (("aurc", 0.03 + 0.01 * i), ("oc_acc@1%", acc + 0.005))]
    for ood, auroc in (("digits", 0.95 - 0.03 * i), ("cifar100", 0.90 - 0.02 * i)):
        rows.append(_row(m, "fashion_mnist_ood", "fashion_mnist", f"ood/{ood}/msp/auroc", auroc))
        rows.append(_row(m, "fashion_mnist_ood", "fashion_mnist", f"ood/{ood}/msp/fpr95", 0.3 + 0.05 * i))
    for c in CORRUPTIONS:
        rows.append(_row(m, "fashion_mnist_shift", f"fashion_mnist_corrupted/{c}_3", "accuracy", acc - 0.2))
    rows.append(_row(m, "fashion_mnist_shift", "fashion_mnist_corrupted", "accuracy", acc - 0.15))
    rows.append(_row(m, "fashion_mnist_shift", "fashion_mnist_corrupted", "nll", nll + 0.5))
    rows.append(_row(m, "fashion_mnist_subpop", "fashion_mnist", "subpop/p25", acc - 0.05))
    rows.append(_row(m, "fashion_mnist_subpop", "fashion_mnist", "subpop/variance", 0.002 + 0.001 * i))
    # Columns the paper published numbers for (reference rows): OOD vs cifar100 and
    # subpopulation p25 on cifar10, soft-label NLL on CIFAR-10H.
    rows.append(_row(m, "cifar10_ood", "cifar10", "ood/cifar100/msp/auroc", 0.85 - 0.02 * i))
    rows.append(_row(m, "cifar10_subpop", "cifar10", "subpop/p25", 0.80 - 0.01 * i))
    rows.append(_row(m, "cifar10h_label_uncertainty", "cifar10_h", "nll", 0.40 + 0.05 * i))
    for shots in (1, 5):
        rows.append(_row(m, "digits_fewshot", "digits", f"fewshot/{shots}shot/prec@1", 0.5 + 0.08 * shots - 0.02 * i,
                         split="train"))
    return rows


def _declared(row: dict) -> dict:
    """The row with its kind's declared category and score exclusion (what the runner writes)."""
    from plexbench.tasks.registry import get_kind

    kind = get_kind(TASKS[row["task"]][0])
    return {**row, "kind": kind.name, "category": kind.row_category(None, row["metric"]),
            "score_exclusion": kind.score_exclusion(None, row["metric"], row["dataset"])}


def write_results_dir(path: Path, models=MODELS, *, with_num_classes: bool = True, format_version: int = 2,
                      num_classes: int = 10, drop: tuple[str, ...] = ()) -> Path:
    """Write metrics_long.csv, tasks/<task>/<model>.json and run.json under `path`."""
    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, m in enumerate(models):
        model_rows = [_declared(r) for r in _model_rows(m, i) if r["task"] not in drop]
        rows += model_rows
        _write_tasks(path, m, rng, model_rows, i, format_version, num_classes)
    header = (V2_HEADER if format_version == 2 else V1_HEADER)
    if not with_num_classes:
        header = [h for h in header if h not in ("num_classes", "model_num_classes")]
    with open(path / "metrics_long.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            cells = {**r, "task_version": "1", "num_classes": num_classes, "model_num_classes": num_classes}
            w.writerow([repr(cells[h]) if isinstance(cells[h], float) else str(cells[h]) for h in header])
    run = {"provenance": {"versions": {"plexbench": "0.1.0"}}, "suite": "synthetic",
           "models": {m: {"config": {"name": m}, "checkpoint_sha256": "0" * 64, **RUN_MODELS[m]} for m in models},
           "datasets": {"fashion_mnist": {"sha256": "1" * 64}}, "seeds": [0], "timings": {"total_s": 1.0}}
    (path / "run.json").write_text(json.dumps(run, indent=2))
    return path


def _write_tasks(path, m, rng, rows, i, format_version, num_classes=10):
    """One task JSON per task of the model: rows, curves, and (format 2) headline and figures."""
    from plexbench.tasks.registry import get_kind

    acc, ece = IN_DOMAIN[m][0], IN_DOMAIN[m][1]
    coverage = np.linspace(0.01, 1, 50)
    ood = {o: {"msp": {"in": rng.normal(0, 1, 200).tolist(), "out": rng.normal(1.5 - 0.3 * i, 1, 150).tolist()}}
           for o in ("digits", "cifar100")}
    shift = {c: {str(s): {"accuracy": acc - 0.05 * s - 0.01 * k, "ece": ece + 0.02 * s, "nll": 0.3 + 0.2 * s}
                 for s in range(1, 6)} for k, c in enumerate(CORRUPTIONS)}
    curves = {
        "fashion_mnist_calibration": {"reliability_diagram": _reliability(rng, acc, ece)},
        "fashion_mnist_selective": {"risk_coverage": {"coverage": coverage.tolist(),
                                                      "risk": ((1 - acc) * coverage ** 2).tolist()}},
        "fashion_mnist_ood": {"ood": ood},
        "fashion_mnist_shift": {"shift": shift},
        "fashion_mnist_subpop": {"subpopulation": {"group_accuracy": np.clip(rng.normal(acc, 0.05, 30), 0, 1).tolist()}},
    }
    for task, (kind_name, dataset) in TASKS.items():
        mine = [r for r in rows if r["task"] == task]
        if not mine:
            continue
        keys = ("dataset", "split", "metric", "value", "n", "ci_low", "ci_high") + (
            ("category", "score_exclusion") if format_version == 2 else ())
        doc = {"task": task, "kind": kind_name, "version": "1", "model": m, "dataset": dataset, "split": "test",
               "metrics": {r["metric"] if r["dataset"] == dataset else f"{r['metric']}@{r['dataset']}": r["value"]
                           for r in mine},
               "rows": [{k: r[k] for k in keys} for r in mine], "curves": curves.get(task, {}),
               "num_classes": num_classes}
        if format_version == 2:
            kind = get_kind(kind_name)
            doc.update(format_version=2, figures=list(kind.figures),
                       headline=[list(c) for c in kind.headline_columns(None, [(r["metric"], r["dataset"]) for r in mine])])
        (path / "tasks" / task).mkdir(parents=True, exist_ok=True)
        (path / "tasks" / task / f"{m}.json").write_text(json.dumps(doc))


# --------------------------------------------------------------------------- tests of the reader


def test_reader_takes_the_synthetic_dir_as_written(tmp_path):
    from plexbench.results_schema import LONG_COLUMNS, load_results

    d = write_results_dir(tmp_path / "run")
    r = load_results([d])
    # format 2 as written, read as format 3: the modality column is added on read
    assert tuple(r.long.columns) == LONG_COLUMNS + ("results_dir",) and LONG_COLUMNS == tuple(V2_HEADER) + ("modality",)
    # 3 models x (7 fashion_mnist + 4 OOD + 2 shift variants + 2 shift averages + 2 subpop + 3 paper
    # columns + 2 few-shot) rows
    assert len(r.long) == 3 * 22
    assert r.models() == list(MODELS)
    assert r.long["value"].dtype == np.float64 and r.long["n"].eq(1000).all() and r.long["n"].dtype == "Int64"
    assert r.long["model_num_classes"].eq(10).all()
    assert len(r.tasks) == 3 * len(TASKS) and {t.kind for t in r.tasks} == {k for k, _ in TASKS.values()}
    cal = next(t for t in r.tasks if t.task == "fashion_mnist_calibration")
    assert cal.figures == ("reliability",) and cal.headline == (("ece", "fashion_mnist"), ("calib_auc", "fashion_mnist"))
    assert r.model_info()["det"]["num_params"] == 1.0e6
    assert math.isclose(r.long.query("model == 'det' and metric == 'ece'")["ci_high"].item(), 0.07)


def test_format_1_is_converted_on_read_to_what_format_2_says(tmp_path):
    from plexbench.results_schema import load_results

    new = load_results([write_results_dir(tmp_path / "v2")])
    old = load_results([write_results_dir(tmp_path / "v1", format_version=1)])
    columns = ["model", "task", "metric", "dataset", "kind", "category", "score_exclusion", "model_num_classes"]
    assert old.long[columns].equals(new.long[columns])
    assert [(t.headline, t.figures) for t in old.tasks] == [(t.headline, t.figures) for t in new.tasks]
    # what the conversion decided, by hand: few-shot rows are adaptation, their 1-shot one unscored;
    # shift cells are not scored, the family average is
    facts = {(r.metric, r.dataset): (r.category, bool(r.score_exclusion)) for r in old.long.itertuples()}
    assert facts[("fewshot/5shot/prec@1", "digits")] == ("adaptation", False)
    assert facts[("fewshot/1shot/prec@1", "digits")] == ("adaptation", True)
    assert facts[("accuracy", "fashion_mnist_corrupted/contrast_3")] == ("prediction", True)
    assert facts[("accuracy", "fashion_mnist_corrupted")] == ("prediction", False)
    assert facts[("ood/digits/msp/fpr95", "fashion_mnist")] == ("uncertainty", False)


def test_reader_keeps_text_as_written_and_rejects_bad_files(tmp_path):
    from plexbench.results_schema import load_results, read_long_csv

    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics_long.csv").write_text(",".join(LONG_HEADER) + "\nNA,t,1,none,test,accuracy,0.5,,,10\n")
    df = read_long_csv(d / "metrics_long.csv")
    assert df["model"].item() == "NA" and df["dataset"].item() == "none" and math.isnan(df["ci_low"].item())
    (d / "metrics_long.csv").write_text(",".join(LONG_HEADER) + "\nm,t,1,ds,test,accuracy,zero,,,10\n")
    with pytest.raises(PlexbenchError, match="not a number"):
        read_long_csv(d / "metrics_long.csv")
    (d / "metrics_long.csv").write_text("model,value\nm,1\n")
    with pytest.raises(PlexbenchError, match="lacks columns"):
        read_long_csv(d / "metrics_long.csv")
    with pytest.raises(PlexbenchError, match="not found"):
        load_results([tmp_path / "nope"])
