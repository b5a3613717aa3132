"""Can the host feed the released ViT-Plex models at ImageNet scale? Input pipeline vs model, one run.

    .venv/bin/python benchmarks/pipeline.py                 # this machine (CPU): parts 1-3, a few minutes
    .venv/bin/python benchmarks/pipeline.py --cpu-smoke     # every part, part 4 too, at tiny sizes (seconds)
    benchmarks/gpu_check.sh                                 # an accelerator host: parts 1-4 (runs --accelerator)

1. Pipeline. Synthetic ImageNet-like JPEGs, generated here and written as a TFDS dataset
   `imagenet2012` (split `validation`) in a cache folder (`synthetic_imagenet`): sizes around
   500x375 (see `image_sizes`), photo-like content of ~100 KB per file (ImageNet's validation
   files average ~128 KB). Images/s of TFDS decode + preprocessing through
   `plexbench.data.pipeline.batches` (batch 32, prefetch 2) for the fine-tuned spec
   `resize(384)|value_range(-1,1)` and the upstream spec `resize_small(256)|central_crop(224)|value_range(-1,1)`,
   each in a subprocess pinned to 1 and to 2 cores (sched_setaffinity; the pipeline sizes its
   parallelism from the affinity), along three paths:
     numpy     the numpy ops on a thread pool after tf.data's decode (`tf_ops=False`; the path before issue 17)
     tf        the ops' TensorFlow twins inside tf.data's parallel map, float32 images out
     tf+uint8  the same, the final value_range left to the device (`uint8_images=True`)
     decode    the floor: the same TFDS read and JPEG decode, no preprocessing (one row for both specs)
   Each measurement is one pass over the images after a warm-up, in its own process; rounds of all
   of them are interleaved and medians reported. Wall-clock images/s, images per CPU-second (user +
   system time of all the process's threads: the per-core rate, robust to other load on shared
   cores), and the growth of resident memory over the pass (peak RSS minus RSS after the warm-up).
   The 16-core figure is 16 x the per-core rate, an EXTRAPOLATION (linear scaling assumed; the
   2-core/1-core wall-clock ratio shows how far it held here).
2. Model side. The matmul peak measured in this run (float32 2048^2 on CPU; bfloat16 8192^2 on an
   accelerator) and the matmul FLOPs per image of plex-vit-{b32,l32}-imagenet (plexbench.models.flops):
   images/s at that peak; and images/s of an H100/H200 at 60% of NVIDIA's published dense bfloat16
   peak, 989.4 TFLOP/s (H100 SXM and H200 SXM datasheets: 1,979 TFLOP/s "with sparsity", half of
   that dense), which the input must match.
3. Heteroscedastic head, released configuration (K 1000, R 15, S 1000, E 3: 3B rows): seconds per
   batch of the jitted head alone (plexbench.models.heads, random features (3B, 1024)), at batch
   32 and 128 in float32 and bfloat16, with the MC-chunk size the code picks, and its share of a
   step whose L/32 trunk runs AT the measured matmul peak of that dtype (on CPU the full L/32 does
   not fit the time budget, so the trunk is this FLOP-count estimate, and the share is an upper
   bound: a real trunk runs below peak).
4. (--accelerator, or --cpu-smoke at tiny sizes) bfloat16 forward of plex-vit-b32-imagenet and
   plex-vit-l32-imagenet at 384 px from random official-layout checkpoints (models.checkpoint):
   images/s of the compiled step on device-resident uint8 batches (value table applied on the
   device), MFU against the device's measured matmul peak, the head alone at that batch (its
   real share); the pipeline (tf+uint8, all host cores) and engine.run fed by it (end to end);
   and whether the input keeps up.

Load: the 2-core machine this runs on is shared, so every rate is noisy; the load average is
printed before and after, and medians (pipeline) or bests (device steps, peaks) are reported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PLEXBENCH_QUIET", "1")

SPECS = {
    "finetuned 384": "resize(384)|value_range(-1,1)",
    "upstream 224": "resize_small(256)|central_crop(224)|value_range(-1,1)",
}
PATHS = {"numpy": {"tf_ops": False}, "tf": {"tf_ops": True}, "tf+uint8": {"tf_ops": True, "uint8_images": True},
         "decode": None}  # the floor: TFDS read + JPEG decode alone, no preprocessing
MODELS = ("plex-vit-b32-imagenet", "plex-vit-l32-imagenet")
PUBLISHED_BF16_DENSE = 989.4e12  # H100 SXM / H200 SXM, NVIDIA datasheets (1,979 with sparsity)
TARGET_MFU = 0.6
EXTRAPOLATE_CORES = 16
BATCH = 32


# ----------------------------------------------------------------------------------- synthetic data


def image_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(height, width) of n ImageNet-like images: 3 in 4 landscape around 375x500, 1 in 4 portrait
    around 500x375, each side scaled by its own U(0.8, 1.2) (so 300..450 x 400..600)."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(n):
        h, w = round(375 * rng.uniform(0.8, 1.2)), round(500 * rng.uniform(0.8, 1.2))
        sizes.append((h, w) if rng.uniform() < 0.75 else (w, h))
    return sizes


def synthetic_jpeg(height: int, width: int, seed: int, quality: int = 90) -> bytes:
    """A JPEG with photo-like statistics: a smooth random colour field (1/16-size noise upsampled
    bicubically) plus pixel noise of std 16. About 100 KB at 500x375 and quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (height // 16 + 2, width // 16 + 2, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), np.float32)
    field += rng.normal(0, 16, field.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _one_jpeg(args: tuple[int, int, int]) -> bytes:
    return synthetic_jpeg(*args)


def _make_jpegs(jobs: list[tuple[int, int, int]]) -> list[bytes]:
    """synthetic_jpeg(h, w, seed) for each job, in order; on many cores in worker processes (forked
    before TensorFlow is imported here)."""
    if len(jobs) < 256 or (os.cpu_count() or 1) <= 2:
        return [_one_jpeg(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_one_jpeg, jobs, chunksize=32))


def write_synthetic_imagenet(data_dir: Path, n: int, seed: int = 0) -> dict:
    """Write n synthetic JPEGs as the TFDS dataset `imagenet2012` (split `validation`, the
    registry's `test` role) under `data_dir`, once; returns {'images', 'mean_kb', 'mean_hw'}.

    The features are ImageNet's that plexbench reads: `image` (None, None, 3) JPEG, `label` of
    1000 classes (random). Order = generation order (shuffling disabled).
    """
    data_dir = Path(data_dir)
    stats_file = data_dir / "synthetic.json"
    if stats_file.is_file():
        return json.loads(stats_file.read_text())
    sizes = image_sizes(n, seed)
    jpegs = _make_jpegs([(h, w, seed * 1_000_003 + i) for i, (h, w) in enumerate(sizes)])
    labels = np.random.default_rng(seed).integers(0, 1000, n)
    import tensorflow_datasets as tfds

    class SyntheticImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "imagenet2012"
        VERSION = tfds.core.Version("5.1.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, description="SYNTHETIC ImageNet-like JPEGs (plexbench benchmarks/pipeline.py)",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=1000),
                }), disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {"validation": self._generate_examples()}

        def _generate_examples(self):
            for i, (data, label) in enumerate(zip(jpegs, labels)):
                yield i, {"image": io.BytesIO(data), "label": int(label)}

    SyntheticImagenet(data_dir=str(data_dir)).download_and_prepare()
    stats = {"images": n, "mean_kb": float(np.mean([len(j) for j in jpegs]) / 1024),
             "mean_hw": [float(np.mean([s[0] for s in sizes])), float(np.mean([s[1] for s in sizes]))]}
    stats_file.write_text(json.dumps(stats))
    return stats


def ensure_synthetic_imagenet(data_dir: Path, n: int) -> dict:
    """`write_synthetic_imagenet` in a fresh process (no JAX threads when it forks its workers)."""
    stats_file = Path(data_dir) / "synthetic.json"
    if not stats_file.is_file():
        subprocess.run([sys.executable, __file__, "--make-data", str(data_dir), str(n)], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(stats_file.read_text())


# ----------------------------------------------------------------------------------- part 1: pipeline


def measure_pipeline(job: dict) -> dict:
    """In this process (pinned to job['cores'] cores first): one warm-up, then job['repeats'] timed
    passes of `pipeline.batches` over the synthetic split. Returns the wall-clock rates (images/s),
    the rates per CPU-second (images / (user + system seconds of all threads): what the work costs,
    nearly independent of other load on shared cores), and the peak RSS growth in MiB."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:job["cores"]]))
    import resource

    from plexbench.data import pipeline

    def cpu_seconds() -> float:
        use = resource.getrusage(resource.RUSAGE_SELF)
        return use.ru_utime + use.ru_stime

    def one_pass(stop=None) -> tuple[int, float, float]:
        t, c = time.perf_counter(), cpu_seconds()
        n = 0
        if job["path"] == "decode":
            batches = decode_only(job["data_dir"], stop, job["batch"])
        else:
            batches = pipeline.batches("imagenet2012", "test", batch_size=job["batch"], preprocess=job["spec"],
                                       data_dir=job["data_dir"], stop=stop, **PATHS[job["path"]])
        for batch in batches:
            n += int(batch["mask"].sum())
        return n, time.perf_counter() - t, cpu_seconds() - c

    one_pass(stop=2 * job["batch"])  # warm-up: imports, TFDS metadata, tf.data graphs, thread pools
    base_mib = _rss_mib()
    rates, cpu_rates = [], []
    for _ in range(job["repeats"]):
        n, seconds, cpu = one_pass()
        rates.append(n / seconds)
        cpu_rates.append(n / cpu)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rates": rates, "cpu_rates": cpu_rates, "rss_growth_mib": max(0.0, peak_mib - base_mib),
            "workers": pipeline.input_workers(), "rate": statistics.median(rates)}


def decode_only(data_dir: str, stop: int | None, batch: int):
    """Batches of {'mask'} after the same TFDS read and JPEG decode as the pipeline (same parallelism
    and threading options), each image reduced to its shape: the cost of decoding alone."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from plexbench.data import load, pipeline

    info, folder = load.locate("imagenet2012", data_dir)
    spec = load.split_range("imagenet2012", "test", data_dir).tfds_spec(0, stop)
    workers = pipeline.input_workers()
    ds = load.read_dataset(info, folder, spec).map(lambda ex: {"mask": tf.shape(ex["image"])[0] > 0},
                                                   num_parallel_calls=workers, deterministic=True)
    options = tf.data.Options()
    options.threading.private_threadpool_size = workers
    options.threading.max_intra_op_parallelism = 1
    yield from tfds.as_numpy(ds.batch(batch).prefetch(1).with_options(options))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_pipeline_job(job: dict) -> dict:
    """`measure_pipeline(job)` in a fresh subprocess (so each gets its own affinity, pools and RSS)."""
    out = subprocess.run([sys.executable, __file__, "--pipeline-job", json.dumps(job)], capture_output=True, check=False,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise RuntimeError(f"pipeline job {job} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pipeline_part(data_dir: Path, cores: list[int], repeats: int, paths: list[str], stats: dict) -> dict:
    """Every (spec, path, cores) once per round, rounds interleaved so that changes in the machine's
    load spread over all of them; medians over the rounds."""
    print(f"\n== 1. pipeline: {stats['images']} synthetic JPEGs, mean {stats['mean_hw'][0]:.0f}x{stats['mean_hw'][1]:.0f}, "
          f"{stats['mean_kb']:.0f} KB; batch {BATCH}, prefetch 2; decode (TFDS) + preprocess; median of {repeats} "
          "interleaved rounds")
    runs: dict = {}
    for _ in range(repeats):
        for label, spec in SPECS.items():
            for path in paths:
                if path == "decode" and label != next(iter(SPECS)):
                    continue  # no preprocessing: the same for every spec
                for c in cores:
                    job = {"cores": c, "spec": spec, "path": path, "data_dir": str(data_dir), "repeats": 1, "batch": BATCH}
                    runs.setdefault((label, path, c), []).append(run_pipeline_job(job))
    results = {key: {"rate": statistics.median(r["rates"][0] for r in rs),
                     "cpu_rate": statistics.median(r["cpu_rates"][0] for r in rs),
                     "rss_growth_mib": max(r["rss_growth_mib"] for r in rs)} for key, rs in runs.items()}
    head = "".join(f"{f'{c} core' + ('s' if c > 1 else '') + ' img/s':>15}" for c in cores)
    print(f"{'spec':<15}{'path':<10}{head}{'img/CPU-s':>11}{f'x{EXTRAPOLATE_CORES} (extrap.)':>16}{'RSS growth':>12}")
    for label in SPECS:
        for path in paths:
            if (label, path, cores[0]) not in results:
                continue
            row = [results[label, path, c] for c in cores]
            per_core = statistics.median(r["cpu_rate"] for r in row)
            print(f"{label:<15}{path:<10}" + "".join(f"{r['rate']:>15,.0f}" for r in row)
                  + f"{per_core:>11,.0f}{per_core * EXTRAPOLATE_CORES:>16,.0f}"
                  + f"{max(r['rss_growth_mib'] for r in row):>8,.0f} MiB")
            for r in row:
                r["per_core"] = per_core
    print("img/s: wall clock on that many pinned cores (other processes share them); img/CPU-s: images per second "
          f"of CPU time of all the process's threads, the per-core rate; x{EXTRAPOLATE_CORES}: {EXTRAPOLATE_CORES} x the "
          "per-core rate, an EXTRAPOLATION assuming linear scaling over cores")
    if len(cores) > 1:
        lo, hi = min(cores), max(cores)
        ratios = [results[k, p, hi]["rate"] / results[k, p, lo]["rate"] for k in SPECS for p in paths
                  if (k, p, hi) in results]
        print(f"wall-clock scaling {hi} cores / {lo}: {min(ratios):.2f}..{max(ratios):.2f} (ideal {hi / lo:.0f}; "
              "below it when other work holds the cores, see the load average)")
    return results


# ----------------------------------------------------------------------------------- part 2: model side


def matmul_peak(dtype: str, n: int, reps: int = 5, rounds: int = 3) -> float:
    """Best FLOP/s (2 n^3 / s) of a jitted (n, n) @ (n, n) in `dtype` over `rounds` x `reps` runs."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(rounds * reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def model_flops(name: str) -> dict[str, int]:
    from plexbench.models.flops import flops_per_example
    from plexbench.models.registry import get_model

    return flops_per_example(get_model(name).config)


def model_part(peak: float, peak_desc: str, host_rate: float | None) -> None:
    print(f"\n== 2. model side: matmul peak measured here {peak / 1e9:,.1f} GFLOP/s ({peak_desc}); "
          f"GPU target {TARGET_MFU:.0%} of {PUBLISHED_BF16_DENSE / 1e12:.1f} TFLOP/s (NVIDIA H100/H200 SXM dense bf16)")
    print(f"{'model':<24}{'GFLOP/img':>10}{'img/s here at peak':>20}{'img/s GPU @60% MFU':>20}{'per core needed':>17}")
    for name in MODELS:
        flops = model_flops(name)["total"]
        need = TARGET_MFU * PUBLISHED_BF16_DENSE / flops
        print(f"{name:<24}{flops / 1e9:>10.1f}{peak / flops:>20,.2f}{need:>20,.0f}{need / EXTRAPOLATE_CORES:>17,.0f}")
    if host_rate is not None:
        l32 = TARGET_MFU * PUBLISHED_BF16_DENSE / model_flops(MODELS[-1])["total"]
        verdict = "keeps up" if host_rate >= l32 else "does NOT keep up"
        print(f"16-core host extrapolation of the fastest path (fine-tuned 384): {host_rate:,.0f} img/s -> "
              f"{verdict} with L/32 at 60% MFU ({l32:,.0f} img/s)")


# ----------------------------------------------------------------------------------- part 3: head


def head_seconds(batch: int, dtype: str, *, num_classes=1000, num_factors=15, num_samples=1000, features=1024,
                 members=3, chunk: int | None = None, reps: int = 3) -> tuple[float, int]:
    """(best seconds, MC chunk) of the jitted heteroscedastic head alone on members*batch random rows."""
    import jax
    import jax.numpy as jnp

    from plexbench.models.heads import HeteroscedasticHead, default_chunk_size

    rows = members * batch
    head = HeteroscedasticHead(num_classes, num_factors, 1.25, num_samples, mc_chunk_size=chunk, dtype=jnp.dtype(dtype))
    x = jax.random.normal(jax.random.PRNGKey(0), (rows, features), jnp.float32)
    keys = jax.random.split(jax.random.key(1), rows)
    params = jax.jit(head.init)(jax.random.key(2), x, keys)
    f = jax.jit(head.apply)
    f(params, x, keys).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(params, x, keys).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best, chunk or default_chunk_size(num_samples, rows, num_classes)


def head_part(peaks: dict[str, float], batches: list[int], reps: int) -> None:
    flops = model_flops(MODELS[-1])
    trunk = flops["total"] - flops["head"] - flops["mc_sampling"]
    print(f"\n== 3. heteroscedastic head alone (K 1000, R 15, S 1000, E 3), jitted; trunk = L/32 at 384 px, "
          f"{trunk / 1e9:.1f} GFLOP/img, timed AT the measured matmul peak (so the head's share is an upper bound)")
    print(f"{'batch':>6}{'dtype':>10}{'rows':>6}{'chunk':>7}{'head s':>9}{'ms/img':>9}{'trunk s @peak':>15}{'head share':>12}")
    for b in batches:
        for dtype in ("float32", "bfloat16"):
            seconds, chunk = head_seconds(b, dtype, reps=reps)
            trunk_s = b * trunk / peaks[dtype]
            print(f"{b:>6}{dtype:>10}{3 * b:>6}{chunk:>7}{seconds:>9.3f}{1e3 * seconds / b:>9.2f}{trunk_s:>15.2f}"
                  f"{seconds / (seconds + trunk_s):>12.1%}")


# ----------------------------------------------------------------------------------- part 4: device


def smoke_config():
    """A tiny model with the released fine-tuned layout (E 3, BE on the last block, heteroscedastic
    head R 15, K 1000) at 384 px, for --cpu-smoke; S 16 MC samples keep it fast."""
    from plexbench.models.config import ModelConfig

    return ModelConfig(image_size=384, patch_size=32, hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2,
                       num_classes=1000, ensemble_size=3, be_layers=(1,), head="heteroscedastic", num_factors=15,
                       temperature=1.25, num_mc_samples=16)


def device_handle(name: str, folder: Path, smoke: bool):
    """(handle, config) over a random official-layout checkpoint (bfloat16 arrays, `opt/target/`
    prefix, as released) written to `folder`."""
    from plexbench.inference.handle import handle_from_config, handle_from_registry
    from plexbench.models import checkpoint
    from plexbench.models.registry import get_model

    config = smoke_config() if smoke else get_model(name).config
    path = folder / f"{name}-random.npz"
    checkpoint.write_random_checkpoint(config, path, dtype="bfloat16")
    if not smoke:
        return handle_from_registry(name, path), config
    return handle_from_config(config, name=f"{name} (smoke size)", identity={"kind": "smoke"},
                              load_params=lambda: checkpoint.load_params(config, path)), config


def forward_rate(engine, batch: int, image: int, reps: int) -> float:
    """images/s of the compiled step on a device-resident uint8 batch with the value table (best of reps)."""
    import jax

    from plexbench.data.preprocess import value_range_table

    images = np.random.default_rng(0).integers(0, 256, (batch, image, image, 3), dtype=np.uint8)
    args = (engine.params, jax.device_put(images, engine._rows),
            jax.device_put(np.arange(batch, dtype=np.int32), engine._rows), engine.key,
            jax.device_put(value_range_table(-1, 1), engine._replicated))
    step = engine._build_step((image, image, 3), with_table=True)
    jax.block_until_ready(step(*args))
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(step(*args))
        best = min(best, time.perf_counter() - t)
    return batch / best


def end_to_end_rate(engine, data_dir: Path, spec: str, batch: int) -> float:
    """images/s of engine.run fed by the tf+uint8 pipeline over the synthetic split (compile excluded)."""
    from plexbench.data import pipeline

    def run(stop=None) -> tuple[int, float]:
        t = time.perf_counter()
        n = 0
        stream = pipeline.batches("imagenet2012", "test", batch_size=batch, preprocess=spec, data_dir=data_dir,
                                  stop=stop, uint8_images=True)
        for out in engine.run(stream, batch):
            n += int(out["mask"].sum())
        return n, time.perf_counter() - t

    run(stop=batch)
    n, seconds = run()
    return n / seconds


def device_part(args, data_dir: Path | None, stats: dict | None) -> None:
    import jax

    from plexbench.inference.engine import Engine
    from plexbench.models.flops import flops_per_example

    smoke = args.cpu_smoke
    dtype = "bfloat16"
    dev = jax.devices()[0]
    n_peak = 256 if smoke else 8192
    peak = matmul_peak(dtype, n_peak)
    batch = args.device_batch or (4 if smoke else 256)
    print(f"\n== 4. device: {jax.default_backend()} {dev.device_kind} x{jax.device_count()}; {os.cpu_count()} host cores; "
          f"matmul peak {n_peak}^2 {dtype}: {peak / 1e12:,.2f} TFLOP/s measured"
          + (f" ({peak / PUBLISHED_BF16_DENSE:.0%} of the published 989.4)" if not smoke else "")
          + ("; SMOKE SIZES (tiny model, S 16): the figures only show that every part runs" if smoke else ""))
    host = None
    if data_dir is not None:
        job = {"cores": os.cpu_count(), "spec": SPECS["finetuned 384"], "path": "tf+uint8", "data_dir": str(data_dir),
               "repeats": 1 if smoke else 2, "batch": BATCH}
        host = run_pipeline_job(job)
        print(f"pipeline tf+uint8, fine-tuned 384, {host['workers']} worker cores: {host['rate']:,.0f} img/s "
              f"(RSS growth {host['rss_growth_mib']:,.0f} MiB)")
    else:
        print("pipeline: NOT MEASURED on this host (tensorflow / tensorflow-datasets missing); "
              "compare with the 16-core extrapolation in docs/performance.md")
    print(f"{'model':<24}{'batch':>6}{'GFLOP/img':>10}{'fwd img/s':>11}{'MFU':>7}{'head s':>9}{'head share':>11}"
          f"{'e2e img/s':>11}  input keeps up?")
    with tempfile.TemporaryDirectory(prefix="plexbench-gpu-check-") as tmp:
        for name in MODELS[:1] if smoke else MODELS:
            handle, config = device_handle(name, Path(tmp), smoke)
            engine = Engine(handle, dtype=dtype, seed=0, with_pre_logits=False)
            flops = flops_per_example(config)["total"]
            fwd = forward_rate(engine, batch, config.image_size, reps=3)
            head_s, _ = head_seconds(batch, dtype, num_samples=config.num_mc_samples, features=config.hidden_size,
                                     reps=3)
            e2e = end_to_end_rate(engine, data_dir, SPECS["finetuned 384"], batch) if data_dir is not None else None
            host_rate = host["rate"] if host is not None else args.host_rate
            keeps = "n/a" if host_rate is None else ("yes" if host_rate >= fwd else f"NO ({host_rate / fwd:.0%} of the model's rate)")
            if host is None and host_rate is not None:
                keeps += f" (vs --host-rate {host_rate:,.0f}, not measured here)"
            print(f"{name:<24}{batch:>6}{flops / 1e9:>10.2f}{fwd:>11,.1f}{fwd * flops / peak:>7.1%}{head_s:>9.4f}"
                  f"{head_s / (batch / fwd):>11.1%}{(f'{e2e:,.1f}' if e2e else 'n/a'):>11}  {keeps}")
            del engine, handle


# ----------------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, help="synthetic JPEGs (default 256; --cpu-smoke 48; --accelerator 4096)")
    p.add_argument("--repeats", type=int, help="rounds of pipeline measurements (default 3)")
    p.add_argument("--cores", help="comma-separated worker cores for part 1 (default 1,2)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"pipeline paths to time (default {','.join(PATHS)})")
    p.add_argument("--head-batches", default="32,128", help="batch sizes of part 3 (default 32,128)")
    p.add_argument("--cache-dir", default=str(REPO / ".cache" / "bench-pipeline"),
                   help="where the synthetic dataset is written, once per (images, seed)")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--skip-head", action="store_true")
    p.add_argument("--accelerator", action="store_true", help="part 4 (default: when JAX's backend is gpu/tpu)")
    p.add_argument("--device-batch", type=int, help="batch of part 4 (default 256; --cpu-smoke 4)")
    p.add_argument("--cpu-smoke", action="store_true", help="every part at tiny sizes, on the CPU")
    p.add_argument("--host-rate", type=float,
                   help="part 4 without tensorflow: compare the model with this input rate (img/s) measured elsewhere")
    p.add_argument("--pipeline-job", help=argparse.SUPPRESS)
    p.add_argument("--make-data", nargs=2, metavar=("DIR", "N"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _have_tensorflow() -> bool:
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tensorflow_datasets", "PIL"))
    except (ImportError, ValueError):
        return False


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pipeline_job:
        print(json.dumps(measure_pipeline(json.loads(args.pipeline_job))))
        return 0
    if args.make_data:
        write_synthetic_imagenet(Path(args.make_data[0]), int(args.make_data[1]))
        return 0
    if args.cpu_smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    backend = jax.default_backend()
    accel = backend in ("gpu", "cuda", "rocm", "tpu")
    smoke = args.cpu_smoke
    n = args.images or (48 if smoke else 4096 if accel or args.accelerator else 256)
    repeats = args.repeats or (1 if smoke else 3)
    cores = [int(c) for c in args.cores.split(",")] if args.cores else ([1] if smoke else [1, 2])
    cores = [c for c in cores if c <= len(os.sched_getaffinity(0))]
    paths = [p for p in args.paths.split(",") if p] if not (smoke and args.paths == ",".join(PATHS)) else ["tf+uint8"]
    print(f"backend {backend} ({jax.devices()[0].device_kind}); {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")

    data_dir, stats = None, None
    if _have_tensorflow() and not (args.skip_pipeline and not (accel or args.accelerator or smoke)):
        data_dir = Path(args.cache_dir) / f"jpeg-{n}-seed0"
        t = time.perf_counter()
        stats = ensure_synthetic_imagenet(data_dir, n)
        print(f"synthetic dataset: {data_dir} ({time.perf_counter() - t:.1f} s)")
    host16 = None
    if not args.skip_pipeline and data_dir is not None and not accel:
        results = pipeline_part(data_dir, cores, repeats, paths, stats)
        host16 = max(results["finetuned 384", p, min(cores)]["per_core"] for p in paths if p != "decode") * EXTRAPOLATE_CORES

    peak_dtype, n_peak = ("bfloat16", 8192) if accel else ("float32", 256 if smoke else 2048)
    peaks = {peak_dtype: matmul_peak(peak_dtype, n_peak)}
    if not accel:
        peaks["bfloat16"] = matmul_peak("bfloat16", 256 if smoke else 1024, reps=2, rounds=1)
    else:
        peaks["float32"] = matmul_peak("float32", n_peak)
    model_part(peaks[peak_dtype], f"{n_peak}^2 {peak_dtype}", host16)
    if not args.skip_head:
        head_part(peaks, [4] if smoke else [int(b) for b in args.head_batches.split(",")], reps=1 if smoke else 2)
    if accel or args.accelerator or smoke:
        device_part(args, data_dir, stats)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
