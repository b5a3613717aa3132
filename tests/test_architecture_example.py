"""The "add a task kind" example of docs/ARCHITECTURE.md works as written: one module, one YAML file,
no edit in plexbench/reports, and the new kind's rows reach the score, the report and its tables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _blocks(language: str) -> list[str]:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    example = text[text.index("### Worked example: adding a task kind"):]
    return re.findall(rf"```{language}\n(.*?)```", example, flags=re.S)


@pytest.mark.slow
def test_the_documented_kind_runs_and_reaches_the_reports(tmp_path, data_dir):
    module, = _blocks("python")
    task_yaml, = _blocks("yaml")
    tasks = tmp_path / "tasks"
    (tasks / "suites").mkdir(parents=True)
    (tasks / "fmnist_top_k.yaml").write_text(task_yaml)
    (tasks / "fmnist_in_distribution.yaml").write_text((REPO / "tasks" / "fmnist_in_distribution.yaml").read_text())
    (tasks / "suites" / "example.yaml").write_text(
        "version: 1\ndescription: the documented example\ntasks: [fmnist_in_distribution, fmnist_top_k]\n")
    (tmp_path / "top_k.py").write_text(module)
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("plexbench.tasks.kinds.top_k", {str(tmp_path / "top_k.py")!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)  # registers the kind, as the package import would
        from plexbench.tasks.runner import RunOptions, run
        from plexbench.reports import leaderboard, report_md
        out = {str(out)!r}
        run(RunOptions(suite="example", out_dir=out, models=("det-mini",), tasks_dir={str(tasks)!r},
                       data_dir={str(data_dir)!r}, store_dir={str(tmp_path / "store")!r}, limit=300, verbose=False))
        lb = leaderboard.build_leaderboard([out], preset="plexbench")
        cols = {{str(c.column): c.category for s in lb.scores for c in s.columns}}
        print(json.dumps({{"columns": cols, "report": report_md.render_report(out)}}))
    """)
    env = {**os.environ, "PLEXBENCH_QUIET": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["columns"]["top_k_accuracy@fashion_mnist"] == "prediction"
    rows = {r["metric"]: r for r in json.loads((out / "tasks" / "fmnist_top_k" / "det-mini.json").read_text())["rows"]}
    top2 = rows["top_k_accuracy"]
    accuracy = json.loads((out / "tasks" / "fmnist_in_distribution" / "det-mini.json").read_text())["metrics"]["accuracy"]
    assert accuracy <= top2["value"] <= 1.0 and top2["n"] == 300 and top2["category"] == "prediction"
    assert top2["ci_low"] <= top2["value"] <= top2["ci_high"]  # bootstrap: 200 in the YAML
    assert "### `fmnist_top_k` (top_k, v1)" in result["report"] and "top_k_accuracy" in result["report"]
