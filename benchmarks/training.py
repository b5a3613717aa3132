"""The training layer, measured in one run: few-shot probes before/after, and fine-tuning throughput.

    .venv/bin/python benchmarks/training.py [--quick] [--data-dir DIR] [--store DIR]

1. Few-shot probes (the `fmnist_few_shot` task's protocol): pre-logits of det-mini (E = 1) and
   plex-mini (E = 3) on digits and Fashion-MNIST (train / test, through the prediction store; the
   first run infers them), then for every (target, shot, member) the 30 logistic probes of the l2
   grid 2^-10..2^19, fitted
   - before: as the few_shot kind did before the training layer, one scikit-learn
     LogisticRegression(C = 1 / l2, max_iter = 150) per l2;
   - after: plexbench.training.probe.fit_probe, the whole grid of a member in one lockstep solver;
   interleaved (before, after, before, after, ...), the median of the rounds; printed: seconds,
   the ratio, and the largest test-accuracy difference between the two (over every fit).
2. Fine-tuning step throughput of plexbench.training.finetune for the zoo trunks (det-mini,
   plex-mini with 16 training MC samples) at batch 128 and 512 on random images: steps/s end to end
   (host batch assembly included), compile excluded (a warm-up run first); model FLOP utilisation =
   3 x forward matmul FLOPs per example (plexbench.models.flops; backward ~ 2 x forward) x
   examples/s / the matmul peak (best jitted 2048^2 float32 matmul, measured before and after).
`--quick`: one probe round, batch 128 only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PLEXBENCH_QUIET", "1")

GRID = 2.0 ** np.arange(-10, 20)
SHOTS = (1, 5, 10, 25)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one probe round, one batch size")
    p.add_argument("--data-dir", help="TFDS data dir (the embedded datasets are prepared there when missing)")
    p.add_argument("--store", help="prediction store for the pre-logits (default: the user's store)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved probe rounds (median reported)")
    return p.parse_args(argv)


def matmul_peak() -> float:
    """Best FLOP/s of a jitted float32 2048^2 matmul: benchmarks/inference.py's measurement (this
    script's directory is first on sys.path when it runs as a script)."""
    from inference import matmul_peak as peak

    return peak("float32", 2048)


# ----------------------------------------------------------------------------- probes


def few_shot_data(data_dir, store) -> dict:
    """{model: {target: (train Split, test Split)}} of the fmnist_few_shot task, via the runner."""
    from plexbench.tasks import registry as R
    from plexbench.tasks.runner import ModelPredictions, RunOptions, make_sources, plan_requests, prepare_embedded

    prepare_embedded(["fashion_mnist", "digits"], data_dir)
    options = RunOptions(suite="embedded", out_dir=Path("."), models=("det-mini", "plex-mini"), data_dir=data_dir,
                         store_dir=store, verbose=False)
    task = R.load_task("fmnist_few_shot")
    kind = R.get_kind(task.kind)
    out = {}
    for source in make_sources(options):
        preds = ModelPredictions(source, plan_requests([task], options), options, [])
        splits = {need.role: preds.split(need) for need in kind.needs(task)}
        out[source.name] = {t: (splits[f"train:{t}"], splits[f"test:{t}"]) for t in ("digits", "fashion_mnist")}
    return out


def problems(data: dict):
    """Every (train features (n, D), labels, test features (N, D), test labels) per member, shot, target."""
    from plexbench.tasks.kinds.few_shot import first_per_class
    from plexbench.training.probe import standardise

    for targets in data.values():
        for train, test in targets.values():
            for shots in SHOTS:
                rows = first_per_class(train.labels, train.ids, shots)
                classes = np.unique(train.labels[rows])
                y, yt = np.searchsorted(classes, train.labels[rows]), np.searchsorted(classes, test.labels)
                for m in range(train.embeddings.shape[0]):
                    x, xt = standardise(train.embeddings[m][rows], test.embeddings[m])
                    yield x, y, xt, yt, len(classes)


def before(cases) -> list[np.ndarray]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for x, y, xt, yt, _ in cases:
            out.append(np.array([np.mean(LogisticRegression(C=1 / l2, max_iter=150).fit(x, y).predict(xt) == yt)
                                 for l2 in GRID]))
    return out


def after(cases) -> list[np.ndarray]:
    from plexbench.training.probe import logistic_path

    return [np.array([np.mean(m.scores(xt).argmax(1) == yt) for m in logistic_path(x, y, k, GRID)])
            for x, y, xt, yt, k in cases]


def bench_probes(args) -> None:
    data = few_shot_data(args.data_dir, args.store)
    cases = list(problems(data))
    times = {"before": [], "after": []}
    results = {}
    for _ in range(1 if args.quick else args.rounds):
        for name, fn in (("before", before), ("after", after)):
            t = time.perf_counter()
            results[name] = fn(cases)
            times[name].append(time.perf_counter() - t)
    fits = len(cases) * len(GRID)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(results["before"], results["after"]))
    b, a = statistics.median(times["before"]), statistics.median(times["after"])
    print(f"few-shot probes: {len(cases)} (target, shot, member) x {len(GRID)} l2 = {fits} logistic fits "
          f"(det-mini + plex-mini, digits + fashion_mnist, shots {SHOTS})")
    print(f"  before (one scikit-learn fit per l2): {b:.2f} s   after (lockstep grid): {a:.2f} s   "
          f"speed-up {b / a:.1f}x   (median of {len(times['before'])} interleaved rounds)")
    print(f"  largest test-accuracy difference over all fits: {diff:.2e}")


# ----------------------------------------------------------------------------- fine-tuning


def bench_finetune(args) -> None:
    from plexbench.models.checkpoint import init_params
    from plexbench.models.flops import flops_per_example
    from plexbench.models.registry import get_model
    from plexbench.training import FinetuneConfig, TrainableModel, TrainData, finetune

    peaks = [matmul_peak()]
    rows = []
    for name, mc in (("det-mini", None), ("plex-mini", 16)):
        config = get_model(name).config
        model = TrainableModel(name, config, preprocess=None, identity={}, params=init_params(config, 0))
        apply = model.apply_fn(num_mc_samples=mc)
        for batch in ((128,) if args.quick else (128, 512)):
            rng = np.random.default_rng(0)
            data = TrainData(rng.uniform(-1, 1, (1024, 28, 28, 3)).astype(np.float32), rng.integers(0, 10, 1024))
            steps = 6 if args.quick else 10
            cfg = FinetuneConfig(learning_rate=0.01, batch_size=batch, max_steps=steps)
            finetune(apply, model.pretrained, data, cfg)  # compile (cached for the timed run)
            t = time.perf_counter()
            finetune(apply, model.pretrained, data, cfg)  # returns numpy parameters: the device work is done
            seconds = time.perf_counter() - t
            rate = steps * batch / seconds
            rows.append((name, batch, 3 * flops_per_example(config)["total"], steps / seconds, rate))
    peaks.append(matmul_peak())
    peak = max(peaks)
    print(f"matmul peak (2048x2048 float32): {peak / 1e9:,.1f} GFLOP/s (best of {len(peaks)}, lowest {min(peaks) / 1e9:,.1f})")
    print(f"{'model':<12}{'batch':>6}{'train GFLOP/ex':>16}{'steps/s':>9}{'ex/s':>10}{'MFU':>8}")
    for name, batch, flops, sps, rate in rows:
        print(f"{name:<12}{batch:>6}{flops / 1e9:>16.4f}{sps:>9.2f}{rate:>10,.0f}{rate * flops / peak:>8.1%}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from plexbench import paths

    args.data_dir = paths.data_dir(args.data_dir)
    bench_probes(args)
    bench_finetune(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
