"""Speed of the `plexbench score` metric set on 50,000 x 1,000 probabilities.

Run: .venv/bin/python benchmarks/metrics.py [--n 50000] [--k 1000] [--repeat 3]

Prints, from one run, the best-of-`repeat` wall time of
  1. plexbench: Predictions.from_probs (validation, renormalisation, log) + scoreset.score,
  2. plexbench: scoreset.score alone on ready Predictions,
  3. plexbench: load_prediction_file + score (what `plexbench score` does after start-up),
  4. a straightforward scikit-learn / numpy computation of the same numbers,
checks that both give the same numbers, and prints the ratio. Target: (1) <= 2 s on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plexbench.metrics import Predictions, load_prediction_file, save_prediction_file  # noqa: E402
from plexbench.metrics.scoreset import score  # noqa: E402

FRACTIONS = {"oc_acc@0.5%": 0.005, "oc_acc@1%": 0.01, "oc_acc@2%": 0.02, "oc_acc@5%": 0.05}


def synthetic(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 softmax probabilities, about 60% accurate, and int64 labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.standard_normal((n, k), dtype=np.float32) * 1.5
    logits[np.arange(n), labels] += 6.0
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return labels, logits


def baseline(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The same metric set written the obvious way with scikit-learn and numpy."""
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    p = probs.astype(np.float64)
    p /= p.sum(axis=1, keepdims=True)  # float32 rows sum to 1 only up to rounding
    k = p.shape[1]
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = pred == labels
    one_hot = np.eye(k)[labels]
    out = {
        "accuracy": accuracy_score(labels, pred),
        "nll": log_loss(labels, p, labels=np.arange(k)),
        "brier": float(np.mean(np.sum((p - one_hot) ** 2, axis=1))),
        "calib_auc": roc_auc_score(~correct, 1 - conf),
    }
    bins = np.minimum(np.floor(conf * 15), 14)
    out["ece"] = 0.0
    for b in range(15):
        in_bin = bins == b
        if in_bin.any():
            out["ece"] += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    order_up = np.argsort(conf, kind="stable")
    for key, f in FRACTIONS.items():
        m = int(math.floor(round(len(conf) * f, 9)))
        out[key] = (m + correct[order_up[m:]].sum()) / len(conf)
    risk = np.cumsum(~correct[np.argsort(-conf, kind="stable")]) / np.arange(1, len(conf) + 1)
    errors = int((~correct).sum())
    ideal = np.cumsum(np.r_[np.zeros(len(conf) - errors), np.ones(errors)]) / np.arange(1, len(conf) + 1)
    out["aurc"] = risk.mean()
    out["eaurc"] = risk.mean() - ideal.mean()
    return out


def best_of(repeat: int, fn):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--k", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 2:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    labels, probs = synthetic(args.n, args.k)
    print(f"metric set of `plexbench score` on N={args.n:,} x K={args.k:,} float32 probabilities, {cores} cores, "
          f"best of {args.repeat}")

    t_full, ours = best_of(args.repeat, lambda: score(Predictions.from_probs(probs, labels=labels)))
    preds = Predictions.from_probs(probs, labels=labels)
    t_score, _ = best_of(args.repeat, lambda: score(preds))
    with tempfile.TemporaryDirectory() as tmp:
        path = save_prediction_file(Path(tmp) / "pred.npz", labels=labels, probs=probs)
        t_file, _ = best_of(args.repeat, lambda: score(load_prediction_file(path)))
    t_base, theirs = best_of(args.repeat, lambda: baseline(labels, probs))

    worst = max(abs(ours[key] - theirs[key]) for key in theirs)
    print(f"  plexbench  from_probs + score : {t_full:6.3f} s   (target <= 2 s: {'ok' if t_full <= 2 else 'MISSED'})")
    print(f"  plexbench  score alone        : {t_score:6.3f} s")
    print(f"  plexbench  load file + score  : {t_file:6.3f} s")
    print(f"  sklearn/numpy straightforward : {t_base:6.3f} s")
    print(f"  speed-up (baseline / from_probs + score): {t_base / t_full:5.1f}x")
    print(f"  same numbers: max |difference| over {len(theirs)} metrics = {worst:.2e}")
    return 0 if worst < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
