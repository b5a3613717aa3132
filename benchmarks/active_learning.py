"""Active learning, measured in one run: seconds per round in probe and finetune mode, and the
fine-tuning step throughput as model FLOP utilisation against the matmul peak of the same run.

    .venv/bin/python benchmarks/active_learning.py [--quick] [--data-dir DIR] [--store DIR]
        [--models det-mini,plex-mini] [--steps 40] [--batch 512]

On the embedded transfer setting (zoo models, pool = digits train (1,154 images resized to
28x28), validation = digits validation, test = digits test, 10 classes), with the spec's
fine-tuning settings except the step count:

1. probe mode: one round of plexbench.training.active_learning.ProbeLearner (logistic probes per
   member on frozen pre-logits from the prediction store, l2 grid 2^-4..2^10 chosen on the
   validation split) at 20, 100 and 500 labels: fit + test metrics + margin scores on the pool;
2. finetune mode: one round of FinetuneLearner at 20 labels: `--steps` SGD steps of `--batch`
   examples (patience off so every round runs them all), validation accuracy every 5 steps, test
   metrics, pool scoring; reported: seconds per round, the training steps alone (no validation;
   the labelled images preprocessed once, as the learner does), steps/s;
3. MFU of the fine-tuning steps: 3 x forward matmul FLOPs per example (plexbench.models.flops;
   backward ~ 2 x forward) x examples/s / peak, the best jitted 2048^2 float32 matmul measured
   before and after (compile excluded: the first round of each model is a warm-up, not timed).
`--quick`: probe at 20 labels only, 15 steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PLEXBENCH_QUIET", "1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer sizes and steps")
    p.add_argument("--data-dir", help="TFDS data dir (digits is prepared there when missing)")
    p.add_argument("--store", help="prediction store for the probe mode's pre-logits")
    p.add_argument("--models", default="det-mini,plex-mini", help="comma-separated zoo / registry models")
    p.add_argument("--steps", type=int, help="fine-tuning steps per round (default 40, --quick 15)")
    p.add_argument("--batch", type=int, default=512, help="fine-tuning batch (spec: 512)")
    return p.parse_args(argv)


def matmul_peak() -> float:
    """Best FLOP/s of a jitted float32 2048^2 matmul: benchmarks/inference.py's measurement (this
    script's directory is first on sys.path when it runs as a script)."""
    from inference import matmul_peak as peak

    return peak("float32", 2048)


def digits(data_dir) -> dict:
    from plexbench.data.load import load_arrays
    from plexbench.tasks.runner import prepare_embedded

    prepare_embedded(["digits"], data_dir)
    return {role: load_arrays("digits", role, data_dir) for role in ("train", "validation", "test")}


def frozen_splits(name: str, data_dir, store) -> dict:
    """Pre-logits of digits (resize(28)) from the prediction store, as FrozenSplit per role."""
    from plexbench.inference import handle_from_registry, predict, tfds_source
    from plexbench.training.active_learning import FrozenSplit

    handle = handle_from_registry(name)
    out = {}
    for role in ("train", "validation", "test"):
        source = tfds_source("digits", role, preprocess=f"resize(28)|{handle.preprocess}", data_dir=data_dir)
        entry = predict(handle, "digits", role, data_dir=data_dir, store_dir=store, source=source, verbose=False)
        out[role] = FrozenSplit(np.array(entry.pre_logits), np.array(entry.labels).astype(np.int64))
    return out


def timed_round(learner, rows, seed=0) -> tuple[float, dict]:
    from plexbench.training.active_learning import acquire, round_rng

    t = time.perf_counter()
    fitted = learner.fit(rows, seed, 0)
    metrics = fitted.test_metrics()
    acquire(fitted, rows, learner.pool.labels, "margin", "topk", 10, round_rng(seed, 0))
    return time.perf_counter() - t, {**metrics, **fitted.info}


def main(argv=None) -> int:
    args = parse_args(argv)
    from plexbench import paths
    from plexbench.data.preprocess import parse
    from plexbench.inference import handle_from_registry
    from plexbench.models.flops import flops_per_example
    from plexbench.models.registry import get_model
    from plexbench.training import FinetuneConfig, TrainableModel, TrainData, finetune
    from plexbench.training.acquisition import initial_set
    from plexbench.training.active_learning import FinetuneLearner, ProbeLearner
    from plexbench.training.evaluate import EvalData

    data_dir = paths.data_dir(args.data_dir)
    steps = args.steps or (15 if args.quick else 40)
    sizes = (20,) if args.quick else (20, 100, 500)
    arrays = digits(data_dir)
    peaks = [matmul_peak()]
    probe_rows, tune_rows = [], []
    for name in args.models.split(","):
        splits = frozen_splits(name, data_dir, args.store)
        probe = ProbeLearner(splits["train"], splits["validation"], splits["test"], 10, 2.0 ** np.arange(-4, 11))
        timed_round(probe, initial_set(splits["train"].labels, 20, 10, 0))  # warm-up
        for n in sizes:
            seconds, info = timed_round(probe, initial_set(splits["train"].labels, n, 10, 0))
            probe_rows.append((name, n, seconds, info["accuracy"]))

        handle = handle_from_registry(name)
        config = get_model(name).config
        model = TrainableModel.from_handle(handle, config)
        prep = parse(f"resize(28)|{handle.preprocess}")
        data = {r: EvalData(a["image"], a["label"], a["id"], prep) for r, a in arrays.items()}
        mc = 16 if config.head == "heteroscedastic" else None
        cfg = FinetuneConfig(learning_rate=0.01, momentum=0.9, clip_norm=1.0, batch_size=args.batch, max_steps=steps,
                             sampling="repeat", eval_every=5, patience=None)
        learner = FinetuneLearner(model, data["train"], data["validation"], data["test"], 10, cfg, train_mc_samples=mc)
        rows = initial_set(data["train"].labels, 20, 10, 0)
        timed_round(FinetuneLearner(model, data["train"], data["validation"], data["test"], 10,
                                    dataclasses.replace(cfg, max_steps=2), train_mc_samples=mc), rows)  # compile
        t = time.perf_counter()  # the training steps alone (no validation passes)
        finetune(learner.train_apply, learner.start_params(),
                 TrainData(data["train"].take(rows), data["train"].labels[rows]),
                 dataclasses.replace(cfg, eval_every=None))
        train_seconds = time.perf_counter() - t
        seconds, info = timed_round(learner, rows)
        tune_rows.append((name, seconds, train_seconds, steps / train_seconds, 3 * flops_per_example(config)["total"],
                          info["accuracy"]))
    peaks.append(matmul_peak())
    peak = max(peaks)
    print(f"matmul peak (2048x2048 float32): {peak / 1e9:,.1f} GFLOP/s (best of {len(peaks)}, lowest {min(peaks) / 1e9:,.1f})")
    print("probe mode, one round (fit over 15 l2 per member + test metrics + margin scores on 1,154 pool images):")
    print(f"  {'model':<12}{'labels':>7}{'s/round':>9}{'test acc':>10}")
    for name, n, seconds, acc in probe_rows:
        print(f"  {name:<12}{n:>7}{seconds:>9.3f}{acc:>10.3f}")
    print(f"finetune mode, one round at 20 labels ({steps} steps of {args.batch}, validation every 5 steps, "
          "test and pool forward passes):")
    print(f"  {'model':<12}{'s/round':>9}{'train s':>9}{'steps/s':>9}{'GFLOP/ex':>10}{'MFU':>8}{'test acc':>10}")
    for name, seconds, train_s, sps, flops, acc in tune_rows:
        print(f"  {name:<12}{seconds:>9.2f}{train_s:>9.2f}{sps:>9.2f}{flops / 1e9:>10.4f}"
              f"{sps * args.batch * flops / peak:>8.1%}{acc:>10.3f}")
    print("(spec budget: at most 2000 steps per round, so a full-length round of the zoo models takes "
          "<= 2000 / steps/s seconds of training)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
