"""T5 forward throughput (tokens/s) and model FLOP utilisation, as ratios from one run.

    .venv/bin/python benchmarks/t5.py [--quick] [--dtype float32|bfloat16] [--batch-sizes 4,8] [--mini-batch-sizes 64,256]

Measures, on the default JAX backend (CPU here; a GPU where there is one):

1. peak: FLOP/s of a jitted square matmul of the compute dtype (benchmarks/inference.py's
   `matmul_peak`, n = 2048 on CPU, 8192 on GPU), measured before, between and after the model
   measurements; the best is used, so utilisation is a lower bound;
2. for a T5-small-sized Plex model (registry `plex-t5-small-mnli`: T5.1.1-small, d 512, 8 + 8
   layers, BatchEnsemble E = 5 on the last decoder MLP, SNGP head; random weights from
   models.checkpoint.random_flat_params) at input length 512 and for the tiny zoo model
   `t5-plex-mini` (input length 64), on random token ids without padding, at several batch
   sizes: tokens/s (= examples/s x input length) end to end through `predict` (host arrays ->
   device, forward, fetch, store writes; compile excluded by a warm-up; best of two runs) and of
   the compiled forward alone on a device-resident batch; MFU = (model matmul FLOPs per example,
   plexbench.models.flops.t5_flops_per_example, x examples/s) / peak. XLA's cost analysis of the
   compiled step (all ops) is printed beside the analytic count.

`--quick` runs one batch size per model and fewer batches.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PLEXBENCH_QUIET", "1")

SMALL = "plex-t5-small-mnli"
MINI = "t5-plex-mini"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one batch size per model, fewer batches")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    p.add_argument("--batch-sizes", help=f"comma-separated batch sizes for {SMALL} (default depends on backend)")
    p.add_argument("--mini-batch-sizes", help=f"comma-separated batch sizes for {MINI} (default depends on backend)")
    p.add_argument("--batches", type=int, help="timed batches per batch size (default 3, --quick 2)")
    p.add_argument("--length", type=int, default=512, help=f"input length of {SMALL} (default 512)")
    return p.parse_args(argv)


def matmul_peak(dtype: str, n: int) -> float:
    """benchmarks/inference.py's matmul_peak (one definition of the peak for both benchmarks)."""
    spec = importlib.util.spec_from_file_location("plexbench_bench_inference", Path(__file__).with_name("inference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.matmul_peak(dtype, n)


def random_handle(name: str):
    """A T5 handle of the registry config `name` with random weights (speed does not depend on them)."""
    from plexbench.inference import handle_from_t5_config
    from plexbench.models.checkpoint import random_flat_params, unflatten_params
    from plexbench.models.registry import get_model

    config = get_model(name).config
    return handle_from_t5_config(config, unflatten_params(random_flat_params(config, seed=0)), name=name), config


def xla_flops(engine, tokens: np.ndarray) -> float:
    """XLA's cost analysis of the engine's compiled step for one batch, per example."""
    import jax

    step = engine._build_step(tuple(tokens.shape[1:]), np.int32)
    x = jax.ShapeDtypeStruct(tokens.shape, np.int32, sharding=engine._rows)
    ids = jax.ShapeDtypeStruct((len(tokens),), np.int32, sharding=engine._rows)
    cost = step.lower(engine.params, x, ids, engine.key).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / len(tokens)


def forward_only(engine, tokens: np.ndarray, reps: int) -> float:
    """examples/s of the compiled step alone on a device-resident batch, best of reps."""
    import jax

    step = engine._build_step(tuple(tokens.shape[1:]), np.int32)
    x = jax.device_put(tokens, engine._rows)
    ids = jax.device_put(np.arange(len(tokens), dtype=np.int32), engine._rows)
    jax.block_until_ready(step(engine.params, x, ids, engine.key))
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(step(engine.params, x, ids, engine.key))
        best = min(best, time.perf_counter() - t)
    return len(tokens) / best


def throughput(handle, config, length: int, batch: int, batches: int, dtype: str, store: str):
    """(examples/s through predict, examples/s of the forward alone, XLA FLOPs per example)."""
    from plexbench.inference import predict, token_source
    from plexbench.inference.engine import engine_for

    rng = np.random.default_rng(batch)
    n = batch * batches
    tokens = rng.integers(3, min(config.vocab_size, 32000), (n, length)).astype(np.int32)
    tokens[:, -1] = 1  # EOS
    labels = np.zeros(n, np.int64)
    warm = token_source(f"warmup{batch}", "test", tokens[:batch], labels[:batch])
    predict(handle, warm.dataset, "test", store_dir=store, batch_size=batch, dtype=dtype, source=warm,
            chunk_size=batch, verbose=False)
    seconds = float("inf")
    for rep in range(2):
        source = token_source(f"synthetic{batch}-{rep}", "test", tokens, labels)
        t = time.perf_counter()
        predict(handle, source.dataset, "test", store_dir=store, batch_size=batch, dtype=dtype, source=source,
                chunk_size=n, verbose=False)
        seconds = min(seconds, time.perf_counter() - t)
    engine = engine_for(handle, dtype=dtype, seed=0, with_pre_logits=True)
    g = engine.global_batch_size(batch)
    xla = xla_flops(engine, tokens[:g]) if engine.num_devices == 1 else float("nan")
    return n / seconds, forward_only(engine, tokens[:g], max(2, batches)), xla


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from plexbench.models.flops import t5_flops_per_example

    backend = jax.default_backend()
    accel = backend in ("gpu", "cuda", "rocm", "tpu")
    dtype = args.dtype or ("bfloat16" if accel else "float32")
    if args.batch_sizes:
        sizes = [int(s) for s in args.batch_sizes.split(",")]
    else:
        sizes = ([64] if args.quick else [16, 64, 256]) if accel else ([4] if args.quick else [2, 8])
    if args.mini_batch_sizes:
        mini_sizes = [int(s) for s in args.mini_batch_sizes.split(",")]
    else:
        mini_sizes = ([1024] if args.quick else [256, 1024, 4096]) if accel else ([256] if args.quick else [32, 256])
    batches = args.batches or (2 if args.quick else 3)
    n_peak = 8192 if accel else 2048
    devices = jax.devices()
    print(f"backend {backend}, {len(devices)} device(s): {devices[0].device_kind}; dtype {dtype}; {os.cpu_count()} CPU cores")
    peaks = [matmul_peak(dtype, n_peak)]
    store = tempfile.mkdtemp(prefix="plexbench-bench-t5-")
    rows = []
    try:
        for name, length, batch_sizes in ((SMALL, args.length, sizes), (MINI, None, mini_sizes)):
            handle, config = random_handle(name)
            length = length or config.input_length
            model_flops = t5_flops_per_example(config, length)["total"]
            for b in batch_sizes:
                rows.append((name, length, b, model_flops, *throughput(handle, config, length, b, batches, dtype, store)))
                peaks.append(matmul_peak(dtype, n_peak))
            del handle
    finally:
        shutil.rmtree(store, ignore_errors=True)
    peak = max(peaks)
    print(f"matmul peak ({n_peak}x{n_peak} {dtype}): {peak / 1e9:,.1f} GFLOP/s "
          f"(best of {len(peaks)} measurements spread over the run; lowest {min(peaks) / 1e9:,.1f})")
    print("\nGFLOP/ex: model matmul FLOPs per example (plexbench.models.flops.t5_flops_per_example); XLA: the compiled"
          " program's cost analysis (all ops). e2e = predict() on host token arrays (transfer, forward, fetch, store"
          " writes); fwd = the compiled step on a device-resident batch. tokens/s = examples/s x input length."
          " MFU = model FLOP/s / matmul peak.")
    print(f"{'model':<22}{'L':>5}{'batch':>6}{'GFLOP/ex':>10}{'XLA':>9}{'tok/s e2e':>12}{'MFU e2e':>9}"
          f"{'tok/s fwd':>12}{'MFU fwd':>9}")
    for name, length, b, model_flops, rate, fwd, xla in rows:
        print(f"{name:<22}{length:>5}{b:>6}{model_flops / 1e9:>10.4f}{xla / 1e9:>9.4f}{rate * length:>12,.0f}"
              f"{rate * model_flops / peak:>9.1%}{fwd * length:>12,.0f}{fwd * model_flops / peak:>9.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
