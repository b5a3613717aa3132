"""Did a run reproduce a reference? A verdict from two results directories, value by value.

`compare(run_dir, reference_dir)` matches the rows of the two `metrics_long.csv` files on
(model, task, task_version, dataset, split, metric) and counts:

- `reproduced`: both values finite and |run - reference| <= ATOL + RTOL * |reference|, or both NaN;
- `differ`: a matched pair outside that tolerance (the largest differences are listed);
- `missing`: reference rows the run does not have (a task not run, a model left out, or a task
  whose version changed: a new version may move its numbers, so it is not compared);
- `extra`: run rows the reference does not have.

Tolerance: RTOL 1e-4 relative plus ATOL 1e-6 absolute. The same code, data, seeds and library
versions on the same CPU type reproduce every value bit for bit (XLA's CPU kernels are
deterministic); another CPU type or library version may round matmuls differently, which moves
trained or bootstrapped numbers in the 5th significant digit at most in our runs, hence RTOL.
The verdict is written as `reproducibility.json` in the run directory and shown in report.md.
"""

from __future__ import annotations

import math
from pathlib import Path

from plexbench import fileio
from plexbench.results_schema import read_long_csv

RTOL = 1e-4
ATOL = 1e-6
KEY = ("model", "task", "task_version", "dataset", "split", "metric")
FILE_NAME = "reproducibility.json"
SHOWN = 10  # largest differences listed


def within(value: float, reference: float) -> bool:
    """The tolerance rule of the module docstring (NaN equals NaN; inf equals the same inf).

    >>> within(0.88981, 0.8898), within(0.8899, 0.8898), within(float("nan"), float("nan"))
    (True, False, True)
    """
    if math.isnan(value) or math.isnan(reference):
        return math.isnan(value) and math.isnan(reference)
    if math.isinf(value) or math.isinf(reference):
        return value == reference
    return abs(value - reference) <= ATOL + RTOL * abs(reference)


def compare(run_dir: str | Path, reference_dir: str | Path) -> dict:
    """The verdict (a JSON-able dict, see the module docstring); PlexbenchError if a file is unreadable."""
    run = read_long_csv(Path(run_dir) / "metrics_long.csv")
    ref = read_long_csv(Path(reference_dir) / "metrics_long.csv")
    run_values = {tuple(str(r[k]) for k in KEY): float(r["value"]) for _, r in run.iterrows()}
    reproduced, differ, missing = 0, [], []
    for _, r in ref.iterrows():
        key = tuple(str(r[k]) for k in KEY)
        if key not in run_values:
            missing.append(key)
            continue
        a, b = run_values[key], float(r["value"])
        if within(a, b):
            reproduced += 1
        else:
            differ.append({**dict(zip(KEY, key)), "value": a, "reference": b, "difference": a - b})
    ref_keys = {tuple(str(r[k]) for k in KEY) for _, r in ref.iterrows()}
    differ.sort(key=lambda d: -abs(d["difference"]) if math.isfinite(d["difference"]) else -math.inf)
    return {
        "run": str(run_dir), "reference": str(reference_dir), "rtol": RTOL, "atol": ATOL,
        "compared": reproduced + len(differ), "reproduced": reproduced, "differ": len(differ),
        "missing": len(missing), "extra": sum(1 for k in run_values if k not in ref_keys),
        "missing_tasks": sorted({f"{k[1]} v{k[2]}" for k in missing}),
        "largest_differences": differ[:SHOWN],
    }


def write_verdict(run_dir: str | Path, verdict: dict) -> Path:
    path = Path(run_dir) / FILE_NAME
    fileio.write_json(path, verdict)
    return path


def verdict_line(verdict: dict) -> str:
    """One line for the terminal: how many reference values this run reproduced."""
    line = (f"{verdict['reproduced']} of {verdict['compared']} reference values reproduced within "
            f"rel {verdict['rtol']:g} / abs {verdict['atol']:g}")
    if verdict["differ"]:
        worst = verdict["largest_differences"][0]
        line += (f"; {verdict['differ']} differ (largest: {worst['metric']}@{worst['dataset']} of {worst['model']}, "
                 f"{worst['value']:.6g} vs {worst['reference']:.6g})")
    if verdict["missing"]:
        line += f"; {verdict['missing']} not compared (not in this run: {', '.join(verdict['missing_tasks'][:4])})"
    return line
