"""A synthetic results directory in exactly the docs/ARCHITECTURE.md format (input data for
the report tests), and tests that the reader takes it as written.

`write_results_dir(path)` writes three models (`plexish`, `det`, `be`) evaluated on
fashion_mnist (in-distribution, calibration, selective prediction, OOD vs digits and vs
cifar100 to match a paper axis), its corrupted variants, subpopulations and few-shot digits.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from plexbench.errors import PlexbenchError

LONG_HEADER = ["model", "task", "task_version", "dataset", "split", "metric", "value", "ci_low", "ci_high", "n"]
MODELS = ("plexish", "det", "be")
# (accuracy, ece, nll, brier) per model on fashion_mnist test
IN_DOMAIN = {"plexish": (0.91, 0.02, 0.26, 0.13), "det": (0.88, 0.06, 0.36, 0.18), "be": (0.90, 0.03, 0.29, 0.15)}
RUN_MODELS = {"plexish": {"num_params": 3.0e6, "flops_per_example": 6.0e8},
              "det": {"num_params": 1.0e6, "flops_per_example": 2.0e8},
              "be": {"num_params": 3.1e6, "flops_per_example": 6.2e8}}
CORRUPTIONS = ("gaussian_noise", "contrast")


def _row(model, task, dataset, metric, value, half=0.01, split="test", n=1000):
    return [model, task, "1", dataset, split, metric, repr(float(value)),
            repr(float(value - half)), repr(float(value + half)), str(n)]


def _reliability(rng, acc, ece):
    lower = np.linspace(0, 1, 16)[:-1]
    count = rng.integers(0, 200, size=15)
    count[:3] = 0  # empty low-confidence bins, as in real diagrams
    conf = lower + 1 / 30
    accuracy = np.clip(conf - ece, 0, 1)
    return {"bin_lower": lower.tolist(), "bin_upper": (lower + 1 / 15).tolist(), "count": count.tolist(),
            "accuracy": np.where(count > 0, accuracy, 0.0).tolist(), "confidence": np.where(count > 0, conf, 0.0).tolist()}


def write_results_dir(path: Path, models=MODELS, *, with_num_classes: bool = True) -> Path:
    """Write metrics_long.csv, tasks/<task>/<model>.json and run.json under `path`."""
    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, m in enumerate(models):
        acc, ece, nll, brier = IN_DOMAIN[m]
        for metric, v in (("accuracy", acc), ("ece", ece), ("nll", nll), ("brier", brier), ("calib_auc", 0.8 + 0.02 * i),
                          ("aurc", 0.03 + 0.01 * i), ("oc_acc@0.01", acc + 0.005)):
            rows.append(_row(m, "fashion_mnist_calibration", "fashion_mnist", metric, v))
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
        _write_tasks(path, m, rng, acc, ece, i)
    header = LONG_HEADER + (["num_classes"] if with_num_classes else [])
    with open(path / "metrics_long.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(r + (["10"] if with_num_classes else []))
    run = {"provenance": {"versions": {"plexbench": "0.1.0"}}, "suite": "synthetic",
           "models": {m: {"config": {"name": m}, "checkpoint_sha256": "0" * 64, **RUN_MODELS[m]} for m in models},
           "datasets": {"fashion_mnist": {"sha256": "1" * 64}}, "seeds": [0], "timings": {"total_s": 1.0}}
    (path / "run.json").write_text(json.dumps(run, indent=2))
    return path


def _task(path, task, kind, model, dataset, metrics, curves):
    obj = {"task": task, "kind": kind, "version": "1", "model": model, "dataset": dataset, "split": "test",
           "metrics": metrics, "curves": curves}
    (path / "tasks" / task).mkdir(parents=True, exist_ok=True)
    (path / "tasks" / task / f"{model}.json").write_text(json.dumps(obj))


def _write_tasks(path, m, rng, acc, ece, i):
    coverage = np.linspace(0.01, 1, 50)
    _task(path, "fashion_mnist_calibration", "calibration", m, "fashion_mnist", {"accuracy": acc, "ece": ece, "aurc": 0.03 + 0.01 * i},
          {"reliability_diagram": _reliability(rng, acc, ece),
           "risk_coverage": {"coverage": coverage.tolist(), "risk": ((1 - acc) * coverage ** 2).tolist()}})
    ood = {o: {"msp": {"in": rng.normal(0, 1, 200).tolist(), "out": rng.normal(1.5 - 0.3 * i, 1, 150).tolist()}}
           for o in ("digits", "cifar100")}
    _task(path, "fashion_mnist_ood", "ood", m, "fashion_mnist", {"ood/digits/msp/auroc": 0.95 - 0.03 * i}, {"ood": ood})
    shift = {c: {str(s): {"accuracy": acc - 0.05 * s - 0.01 * k, "ece": ece + 0.02 * s, "nll": 0.3 + 0.2 * s}
                 for s in range(1, 6)} for k, c in enumerate(CORRUPTIONS)}
    _task(path, "fashion_mnist_shift", "shift", m, "fashion_mnist_corrupted", {}, {"shift": shift})
    _task(path, "fashion_mnist_subpop", "subpopulation", m, "fashion_mnist", {"subpop/p25": acc - 0.05},
          {"subpopulation": {"group_accuracy": np.clip(rng.normal(acc, 0.05, 30), 0, 1).tolist()}})


# --------------------------------------------------------------------------- tests of the reader


def test_reader_takes_the_synthetic_dir_as_written(tmp_path):
    from plexbench.reports.results import LONG_COLUMNS, load_results

    d = write_results_dir(tmp_path / "run")
    r = load_results([d])
    assert tuple(r.long.columns[:10]) == LONG_COLUMNS
    # 3 models x (7 calibration + 4 OOD + 2 shift variants + 2 shift averages + 2 subpop + 3 paper
    # columns + 2 few-shot) rows
    assert len(r.long) == 3 * 22
    assert r.models() == list(MODELS)
    assert r.long["value"].dtype == np.float64 and r.long["n"].eq(1000).all() and r.long["n"].dtype == "Int64"
    assert len(r.tasks) == 3 * 4 and {t.kind for t in r.tasks} == {"calibration", "ood", "shift", "subpopulation"}
    assert r.model_info()["det"]["num_params"] == 1.0e6
    assert math.isclose(r.long.query("model == 'det' and metric == 'ece'")["ci_high"].item(), 0.07)


def test_reader_keeps_text_as_written_and_rejects_bad_files(tmp_path):
    from plexbench.reports.results import load_results, read_long_csv

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
