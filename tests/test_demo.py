"""`plexbench demo` and report.md.

The report is checked on a hand-made results directory whose numbers are chosen so that the scores
can be worked out by hand (arithmetic in the comments); the demo itself runs once in smoke mode on
real data with a real zoo model, and again to check that the second run reuses everything.
"""

from __future__ import annotations

import csv
import json
import re
import struct
import zlib
from pathlib import Path

import pytest

from plexbench.cli import main
from plexbench.commands.demo import remove_stale
from plexbench.errors import PlexbenchError
from plexbench.reports import report_md

LONG_HEADER = ["model", "task", "task_version", "dataset", "split", "metric", "value", "ci_low", "ci_high", "n",
               "num_classes"]


def _png(path: Path) -> None:
    """A real 1x1 PNG (so the file is what its name says)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))


def write_results(root: Path) -> Path:
    """Models a, b (10 classes) on two tasks; c (6 classes) on one; run.json, demo.json, task files, plots."""
    rows = [
        # model, task, dataset, metric, value, ci_low, ci_high, n, K
        ("a", "t_in", "fashion_mnist", "accuracy", 0.9, 0.88, 0.92, 100, 10),
        ("a", "t_cal", "fashion_mnist", "ece", 0.05, 0.04, 0.06, 100, 10),
        ("b", "t_in", "fashion_mnist", "accuracy", 0.8, 0.78, 0.82, 100, 10),
        ("b", "t_cal", "fashion_mnist", "ece", 0.1, 0.08, 0.12, 100, 10),
        ("c", "t_in6", "fashion_mnist6", "accuracy", 0.7, "", "", 60, 6),
    ]
    root.mkdir(parents=True)
    with open(root / "metrics_long.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LONG_HEADER)
        for m, t, d, metric, v, lo, hi, n, k in rows:
            w.writerow([m, t, 1, d, "test", metric, v, lo, hi, n, k])
    kinds = {"t_in": "in_distribution", "t_cal": "calibration", "t_in6": "in_distribution"}
    for m, t, d, metric, v, *_ in rows:
        doc = {"task": t, "kind": kinds[t], "version": 1, "model": m, "dataset": d, "split": "test",
               "metrics": {metric: v}, "curves": {}, "seconds": 1.25}
        (root / "tasks" / t).mkdir(parents=True, exist_ok=True)
        (root / "tasks" / t / f"{m}.json").write_text(json.dumps(doc))
    run = {"provenance": {"git_commit": "0123456789abcdef", "python": "3.11.7", "platform": "Linux-test",
                          "versions": {"plexbench": "0.1.0", "jax": "0.10.2"}},
           "suite": {"name": "embedded", "version": 1, "sha256": "f" * 64, "tasks": ["t_in", "t_cal", "t_in6"]},
           "tasks": {t: {"kind": k, "version": 1, "spec": {"description": f"the {t} task"}} for t, k in kinds.items()},
           "models": {"a": {"source": "registry", "num_classes": 10, "num_members": 2, "num_params": 1234567,
                            "flops_per_example": 2.5e9, "identity": {"checkpoint_sha256": "abcdef0123456789"}}},
           "options": {"limit": None, "batch_size": 256, "dtype": "float32"}, "seeds": {"inference": 0},
           "timings": {"total_s": 12.5, "inference": [{"model": "a", "seconds": 2.0}], "tasks": []},
           "computed": [["t_in", "a"]], "reused": [], "skipped": []}
    (root / "run.json").write_text(json.dumps(run))
    demo = {"started": "2026-01-02 03:04:05", "stages": {"data": 1.5, "run": 20.25, "leaderboard": 1.0,
                                                         "plots": 3.0}, "total_s": 25.75, "load_average": 1.5,
            "datasets_prepared": 0, "results_computed": 5,
            "history": [{"started": "2026-01-01 00:00:00", "stages": {"data": 46.0, "run": 300.0, "report": 0.5},
                         "total_s": 346.5, "datasets_prepared": 77, "results_computed": 8, "load_average": 3.25}]}
    (root / "demo.json").write_text(json.dumps(demo))
    _png(root / "plots" / "fashion_mnist" / "radar.png")
    _png(root / "plots" / "fashion_mnist" / "reliability_t_cal_fashion_mnist.png")
    _png(root / "plots" / "fashion_mnist6" / "radar.png")
    (root / "plots" / "fashion_mnist" / "figures.json").write_text(json.dumps({"figures": [
        {"file": "radar.png", "figure": "radar"},
        {"file": "reliability_t_cal_fashion_mnist.png", "figure": "reliability"}]}))
    return root


@pytest.fixture()
def results(tmp_path) -> Path:
    return write_results(tmp_path / "res")


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_write_report_is_render_report_written_atomically(results):
    path = report_md.write_report(results)
    assert path == results / "report.md"
    assert path.read_text() == report_md.render_report(results)
    assert sorted(p.name for p in results.iterdir() if p.name.startswith(".")) == []  # no temporary files


def test_groups_by_number_of_classes(results):
    from plexbench.results_schema import read_long_csv

    long = read_long_csv(results / "metrics_long.csv")  # format 1: the model's K comes with the conversion
    groups = report_md.model_groups(long)
    assert [(g.slug, g.title, g.models) for g in groups] == [
        ("fashion_mnist", "10-class models", ("a", "b")), ("fashion_mnist6", "6-class models", ("c",))]
    assert [g.models for g in report_md.model_groups(long.drop(columns="model_num_classes"))] == [("a", "b", "c")]


def test_groups_use_the_models_own_k_not_the_rows():
    import pandas as pd

    # c is a 6-class model; its few-shot probe rows on a 10-class target carry K = 10 in num_classes,
    # and its own K in model_num_classes: even a table of probe rows only keeps it in its group
    long = pd.DataFrame({"model": ["a", "c", "c", "c"], "dataset": ["x", "x6", "digits", "digits"],
                         "metric": ["accuracy", "accuracy", "fewshot/5shot/prec@1", "fewshot/5shot/nll"],
                         "num_classes": [10, 6, 10, 10], "model_num_classes": [10, 6, 6, 6]})
    assert [(g.title, g.models) for g in report_md.model_groups(long)] == [
        ("10-class models", ("a",)), ("6-class models", ("c",))]
    only_probes = long[long.metric.str.startswith("fewshot") | (long.model == "a")]
    assert [(g.title, g.models) for g in report_md.model_groups(only_probes)] == [
        ("10-class models", ("a",)), ("6-class models", ("c",))]


def test_score_tables_match_hand_computed_scores(results):
    text = report_md.render_report(results)
    ten = _section(text, "### 10-class models")
    # Paper preset, columns accuracy and ece on fashion_mnist: score = mean(accuracy, 1 - ece) x 100.
    #   a: (0.9 + 0.95) / 2 = 0.925 -> 92.5; b: (0.8 + 0.9) / 2 = 0.85 -> 85.0
    # Interval half-width = mean of the columns' half-widths (slope 1 for both):
    #   a: (0.02 + 0.01) / 2 = 0.015 -> [91.0, 94.0]; b: (0.02 + 0.02) / 2 = 0.02 -> [83.0, 87.0]
    paper = ten[ten.index("Preset `paper`"):ten.index("Preset `plexbench`")]
    assert re.search(r"\| `a` \| 92\.5 \| \[91\.0, 94\.0\] \|", paper)
    assert re.search(r"\| `b` \| 85\.0 \| \[83\.0, 87\.0\] \|", paper)
    assert paper.index("`a`") < paper.index("`b`")  # best first
    # c is scored alone, in its own group: its accuracy 0.7 -> 70.0, no interval (none in the file)
    six = _section(text, "### 6-class models")
    assert re.search(r"\| `c` \| 70\.0 \| – \|", six)
    assert "`a`" not in six


def test_key_metric_tables_with_intervals_and_best_in_bold(results):
    text = report_md.render_report(results)
    cal = text[text.index("### `t_cal`"):text.index("### `t_in6`")]
    assert "The t_cal task." in cal
    # ece is lower-is-better: a (0.05) is best and bold; b is not
    assert "| `a` | **0.0500 [0.0400, 0.0600]** | 100 |" in cal
    assert "| `b` | 0.1000 [0.0800, 0.1200] | 100 |" in cal
    t_in = text[text.index("### `t_in`"):text.index("### `t_cal`")]
    assert "| `a` | **0.9000 [0.8800, 0.9200]** | 100 |" in t_in
    # suite order from run.json: t_in, t_cal, t_in6
    assert text.index("### `t_in`") < text.index("### `t_cal`") < text.index("### `t_in6`")


def test_figures_are_relative_links_to_existing_pngs(results):
    text = report_md.render_report(results)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["plots/fashion_mnist/radar.png", "plots/fashion_mnist/reliability_t_cal_fashion_mnist.png",
                             "plots/fashion_mnist6/radar.png"]
    for link in links:
        assert (results / link).is_file()
    figures = _section(text, "## Figures")
    # kinds and titles from figures.json; a folder without one lists its PNGs as other figures
    assert figures.index("Reliability radar") < figures.index("Reliability diagrams")
    six = figures[figures.index("plots/fashion_mnist6/"):]
    assert "**Other figures**" in six and "Reliability radar" not in six


def test_provenance_models_and_timings(results):
    text = report_md.render_report(results)
    assert "git commit `0123456789abcdef`" in text
    assert "suite `embedded` version 1" in text
    assert "| `a` | registry | 10 | 2 | 1,234,567 | 2.50 G | `abcdef012345` |" in text
    timings = _section(text, "## Timings")
    # demo history, oldest first, stage columns in stage order; the latest run has no report stage yet
    assert "| started (UTC) | data | run | leaderboard | plots | report | total |" in timings
    assert "| 2026-01-01 00:00:00 | 46.0 | 300.0 | – | – | 0.5 | 346.5 | 77 | 8 | 3.25 |" in timings
    assert "| 2026-01-02 03:04:05 | 1.5 | 20.2 | 1.0 | 3.0 | – | 25.8 | 0 | 5 | 1.50 |" in timings
    assert "Last `plexbench run`: 12.5 s" in timings
    assert "`a` 2.0 s over 1 split." in timings


def test_smoke_mode_is_announced(results):
    run = json.loads((results / "run.json").read_text())
    run["options"]["limit"] = 200
    (results / "run.json").write_text(json.dumps(run))
    assert "**Smoke mode**" in report_md.render_report(results)


def test_missing_results_are_one_line_errors(tmp_path):
    with pytest.raises(PlexbenchError, match="results directory not found"):
        report_md.write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlexbenchError, match="metrics_long.csv"):
        report_md.write_report(tmp_path / "empty")


def test_common_prefix():
    assert report_md.common_prefix(["ood/digits/msp/auroc", "ood/digits/maha/fpr95"]) == "ood/digits/"
    assert report_md.common_prefix(["ood/a/msp/auroc", "ood/b/msp/auroc"]) == "ood/"
    assert report_md.common_prefix(["severity_5/accuracy", "accuracy"]) == ""
    assert report_md.common_prefix(["a/b"]) == "a/"
    assert report_md.common_prefix([]) == ""


def test_remove_stale_touches_only_listed_plot_files(tmp_path):
    for rel in ("plots/g/old.png", "plots/g/kept.png", "metrics_long.csv", "plots/mine.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    before = ["plots/g/old.png", "plots/g/kept.png", "metrics_long.csv", "plots/../metrics_long.csv",
              "plots/g/gone.png"]
    assert remove_stale(tmp_path, before, ["plots/g/kept.png"]) == 1
    assert not (tmp_path / "plots/g/old.png").exists()
    for rel in ("plots/g/kept.png", "metrics_long.csv", "plots/mine.png"):
        assert (tmp_path / rel).exists()


@pytest.mark.parametrize("args, message", [
    (["--models", ""], "--models is empty"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--models", "no-such-model"], "no-such-model"),
    (["--tasks", "nope"], "--tasks: nope not in suite embedded"),
])
def test_bad_arguments_are_one_line_errors(args, message, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing was written


@pytest.mark.slow
def test_reproducibility_verdict_by_hand(tmp_path):
    from plexbench.reports import reproducibility as R

    header = ",".join(LONG_HEADER)
    rows = ["m,t,1,d,test,accuracy,{},,,10,10", "m,t,1,d,test,ece,{},,,10,10", "m,t,1,d,test,nll,{},,,10,10",
            "m,t2,1,d,test,accuracy,{},,,10,10"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    for d, values, keep in ((ref, (0.9, 0.05, 0.3, 0.5), 4), (run, (0.90005, 0.0501, 0.3, 0.5), 3)):
        d.mkdir()
        (d / "metrics_long.csv").write_text("\n".join([header] + [r.format(v) for r, v in zip(rows, values)][:keep]) + "\n")
    v = R.compare(run, ref)
    # accuracy: |0.90005 - 0.9| = 5e-5 <= 1e-6 + 1e-4 * 0.9 -> reproduced; ece: 1e-4 > 1e-6 + 5e-6 -> differs;
    # nll equal; t2 missing from the run
    assert (v["compared"], v["reproduced"], v["differ"], v["missing"], v["extra"]) == (3, 2, 1, 1, 0)
    assert v["largest_differences"][0]["metric"] == "ece" and v["missing_tasks"] == ["t2 v1"]
    assert "2 of 3 reference values reproduced" in R.verdict_line(v)


def test_demo_smoke_run_then_everything_reused(data_dir, tmp_path, capsys):
    out, store = tmp_path / "out", tmp_path / "store"
    args = ["demo", "--out", str(out), "--data-dir", str(data_dir), "--store", str(store), "--models", "det-mini",
            "--tasks", "fmnist_in_distribution,fmnist_calibration", "--limit", "300"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for i, stage in enumerate(("data", "run", "leaderboard", "plots", "compare", "report"), 1):
        assert f"[{i}/6] {stage}: " in printed
    assert "demo finished in" in printed
    # the default reference is the committed results/embedded (full splits): a smoke run at 300
    # examples reproduces none of its values, and says so
    verdict = json.loads((out / "reproducibility.json").read_text())
    assert verdict["reproduced"] + verdict["differ"] == verdict["compared"] and verdict["differ"] > 0
    for name in ("metrics_long.csv", "run.json", "report.md", "demo.json", "leaderboard_paper.md",
                 "leaderboard_plexbench.csv", "tasks/fmnist_in_distribution/det-mini.json"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "**Smoke mode**" in report and "`det-mini`" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "plots/fashion_mnist/reliability_fmnist_calibration_fashion_mnist.png" in links
    assert all((out / link).is_file() for link in links)
    # the report's accuracy is metrics_long.csv's (itself checked against scikit-learn in the runner's tests)
    with open(out / "metrics_long.csv") as f:
        acc = next(float(r["value"]) for r in csv.DictReader(f)
                   if r["metric"] == "accuracy" and r["task"] == "fmnist_in_distribution")
    assert f"| `det-mini` | {acc:.4f} [" in report

    import shutil

    reference = tmp_path / "reference"
    shutil.copytree(out, reference)
    # warm, against the first run as the reference: nothing computed again, every value reproduced
    assert main(args + ["--reference", str(reference)]) == 0
    demo = json.loads((out / "demo.json").read_text())
    assert demo["results_computed"] == 0 and demo["results_reused"] == 2 and demo["datasets_prepared"] == 0
    assert len(demo["history"]) == 1 and demo["history"][0]["results_computed"] == 2
    assert set(demo["stages"]) == {"data", "run", "leaderboard", "plots", "compare", "report"}
    rows = sum(1 for _ in open(out / "metrics_long.csv")) - 1
    assert demo["reproducibility"] == {"compared": rows, "reproduced": rows, "differ": 0, "missing": 0}
    printed = capsys.readouterr().out
    assert f"reproducibility: {rows} of {rows} reference values reproduced" in printed
    assert "## Reproducibility" in (out / "report.md").read_text()

    # the figures were kept (nothing they are drawn from changed), byte for byte; a deleted figure,
    # or a changed result, makes the next demo draw them again
    assert "kept: results and plotting code unchanged" in printed
    figure = out / "plots/fashion_mnist/reliability_fmnist_calibration_fashion_mnist.png"
    assert figure.read_bytes() == (reference / figure.relative_to(out)).read_bytes()
    figure.unlink()
    assert main(args) == 0
    assert "kept:" not in capsys.readouterr().out and figure.is_file()
    from plexbench.commands.demo import plots_key

    key = plots_key(out)
    task_json = out / "tasks/fmnist_calibration/det-mini.json"
    task_json.write_text(task_json.read_text().replace('"curves"', '"curves" ', 1))
    assert plots_key(out) != key
