"""Recompute the embedded run into a temporary directory and compare it with the committed one.

Run: .venv/bin/python benchmarks/reproduce_embedded.py [--out DIR] [--data-dir DIR] [--store DIR]
     [--reference results/embedded/metrics_long.csv] [--repo PATH] [--existing DIR]

Runs `plexbench run --suite embedded` over the four zoo models with the plexbench of `--repo`
(default: this checkout) in a subprocess, then compares every (model, task, dataset, split, metric)
row of the new metrics_long.csv with the reference: value, ci_low and ci_high each counted as
bitwise equal, within 1e-12 relative, or different (listed with both numbers). Rows present on one
side only are listed too. Exit status 0 when nothing differs. `--existing DIR` compares the
metrics_long.csv of an earlier run instead of running (e.g. two runs over one warm store: the old and
the new code on the same predictions).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = "det-mini,plex-mini,det-mini-fmnist6,plex-mini-fmnist6"
KEY = ("model", "task", "dataset", "split", "metric")
NUMBERS = ("value", "ci_low", "ci_high")


def read(path: Path) -> dict[tuple, dict]:
    with open(path, newline="") as f:
        return {tuple(row[k] for k in KEY): row for row in csv.DictReader(f)}


def number(text: str) -> float:
    return math.nan if text in ("", "nan") else float(text)


def compare(new: dict, ref: dict) -> tuple[dict, list[str]]:
    counts = {"bitwise": 0, "within 1e-12": 0, "different": 0}
    lines = []
    for key in sorted(set(new) | set(ref)):
        if key not in new or key not in ref:
            lines.append(f"only in {'new' if key in new else 'reference'}: {'/'.join(key)}")
            continue
        for column in NUMBERS:
            a, b = number(new[key][column]), number(ref[key][column])
            if a == b or (math.isnan(a) and math.isnan(b)):
                counts["bitwise"] += 1
            elif abs(a - b) <= 1e-12 * max(abs(a), abs(b)):
                counts["within 1e-12"] += 1
            else:
                counts["different"] += 1
                rel = abs(a - b) / max(abs(a), abs(b)) if max(abs(a), abs(b)) else math.inf
                lines.append(f"{'/'.join(key)} {column}: new {a!r} reference {b!r} (diff {a - b:+.3g}, rel {rel:.2g})")
    return counts, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="results directory (default: a new temporary directory)")
    parser.add_argument("--data-dir", help="TFDS data dir (prepared embedded datasets are reused)")
    parser.add_argument("--store", help="prediction store (a warm store skips inference)")
    parser.add_argument("--reference", type=Path, default=ROOT / "results" / "embedded" / "metrics_long.csv")
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout whose plexbench runs")
    parser.add_argument("--existing", type=Path, help="compare this results directory, run nothing")
    args = parser.parse_args()
    if args.existing:
        return report(args.existing / "metrics_long.csv", args.reference)
    out = args.out or Path(tempfile.mkdtemp(prefix="embedded-"))
    cmd = [sys.executable, "-m", "plexbench", "run", "--suite", "embedded", "--models", MODELS, "--out", str(out),
           "--tasks-dir", str(args.repo / "tasks")]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--store", args.store] if args.store else []
    env = dict(os.environ, PYTHONPATH=str(args.repo))
    print("running:", " ".join(cmd), file=sys.stderr)
    done = subprocess.run(cmd, env=env, cwd=args.repo)
    if done.returncode != 0:
        print(f"plexbench run failed with exit status {done.returncode}", file=sys.stderr)
        return done.returncode
    return report(out / "metrics_long.csv", args.reference)


def report(new: Path, reference: Path) -> int:
    counts, lines = compare(read(new), read(reference))
    for line in lines:
        print(line)
    total = sum(counts.values())
    print(f"{new} vs {reference}: {total} numbers: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0 if counts["different"] == 0 and not any(line.startswith("only") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
