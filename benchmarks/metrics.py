"""Speed and memory of plexbench's metrics on 50,000 x 1,000 float32 probabilities, in one run.

Run: .venv/bin/python benchmarks/metrics.py [--n 50000] [--k 1000] [--rounds 3] [--resamples 1000]
                                            [--memory-rows 10000,100000,1000000] [--memory-k 10,1000]

Prints, measured in this one run (wall-clock medians of `--rounds` interleaved rounds):

1. per metric: plexbench's public function on the raw float32 arrays (validation included), plain
   numpy (the one metric written directly, no validation), and robustness_metrics (Plex's TF metric
   library). robustness_metrics needs TensorFlow and is not installable here, so its numbers come
   from `RMReimplementation` below: its definitions written in numpy in float32, each metric on its
   own as its metric objects are (argmax / max per metric, Keras' SparseCategoricalCrossentropy for
   NLL, MeanSquaredError on one-hot labels x K for Brier, 15 equal-width bins for ECE, 100 bins for
   OracleCollaborativeAccuracy, Keras AUC with 200 thresholds for CalibrationAUC); when the package
   is importable its own metrics are timed too;
2. the score set (what `plexbench score` computes after reading the file: validation, per-example
   statistics, the 11 numbers through the task kinds) against a hand-fused numpy computation of the
   same 11 numbers (one argmax, one sort, no validation; target: plexbench within 1.5x) and against
   the robustness_metrics reimplementation of the 9 numbers it defines (target: >= 10x faster);
3. the bootstrap: `score --bootstrap` time per resample, the ratio of `--resamples` resamples to one
   evaluation of the score set (target: < 20x), and the naive O(N K) resample for comparison;
4. peak memory of `plexbench score` (file read included; tracemalloc, in a fresh process per case)
   in bytes per row against the input arrays' bytes per row (target: <= 2x + a constant), for each
   K of --memory-k and N of --memory-rows, with and without --ood.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plexbench import metrics as M  # noqa: E402
from plexbench.commands.score import score  # noqa: E402
from plexbench.metrics.predictions import load_prediction_stats, prediction_stats  # noqa: E402
from plexbench.metrics.stats import CORE  # noqa: E402

FRACTIONS = {"oc_acc@0.5%": 0.005, "oc_acc@1%": 0.01, "oc_acc@2%": 0.02, "oc_acc@5%": 0.05}


def synthetic(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 softmax probabilities, about 60% accurate, and int64 labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    x = rng.standard_normal((n, k), dtype=np.float32) * 1.5
    x[np.arange(n), labels] += 6.0 if k > 100 else 2.0
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return labels, x


# ----------------------------------------------------------------------------- plain numpy
def numpy_metric(name: str, y: np.ndarray, p: np.ndarray) -> float:
    """One metric written directly in numpy (no validation, the input's dtype where it suffices)."""
    n = y.shape[0]
    if name == "accuracy":
        return float(np.mean(p.argmax(1) == y))
    if name == "nll":
        return float(-np.log(np.maximum(p[np.arange(n), y].astype(np.float64), 1e-7)).mean())
    if name == "brier":
        return float((np.einsum("ij,ij->i", p, p) - 2.0 * p[np.arange(n), y] + 1.0).mean())
    conf, correct = p.max(1).astype(np.float64), p.argmax(1) == y
    if name == "ece":
        bins = np.minimum((conf * 15).astype(np.int64), 14)
        return float(np.abs(np.bincount(bins, correct, 15) - np.bincount(bins, conf, 15)).sum() / n)
    order = np.argsort(-conf, kind="stable")
    wrong = ~correct[order]
    if name == "calib_auc":
        return _auc_sorted_desc(conf[order], wrong)
    if name == "oc_acc@1%":
        m = int(math.floor(round(n * 0.01, 9)))
        return float((m + correct[order[: n - m]].sum()) / n)
    risk = np.cumsum(wrong) / np.arange(1, n + 1)
    if name == "aurc":
        return float(risk.mean())
    if name == "eaurc":
        e = int(wrong.sum())
        k = np.arange(n - e + 1, n + 1)
        return float(risk.mean() - np.sum((k - (n - e)) / k) / n)
    raise KeyError(name)


def _auc_sorted_desc(conf_desc: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC of `positive` scored by 1 - conf, from conf sorted descending (ties 1/2)."""
    score = 1.0 - conf_desc
    starts = np.flatnonzero(np.r_[True, score[1:] != score[:-1]])
    ends = np.r_[starts[1:], score.size]
    ranks = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    p = int(positive.sum())
    return float((ranks[positive].sum() - p * (p + 1) / 2) / (p * (score.size - p)))


def fused_numpy(y: np.ndarray, p: np.ndarray, float32_squares: bool = False) -> dict[str, float]:
    """The 11 numbers of the score set, hand-fused: one row sum, one argmax, one sort, no validation,
    whole-array numpy, float64 sums (the same numbers as plexbench to about 1e-15).

    `float32_squares=True`: the Brier term's sum of squares in float32 (a faster einsum whose Brier
    is about 1e-8 off); printed beside, for reference.
    """
    n = y.shape[0]
    r = np.arange(n)
    s = p.sum(1, dtype=np.float64)
    pred = p.argmax(1)
    conf = p[r, pred] / s
    p_y = p[r, y] / s
    if float32_squares:
        sq = np.einsum("ij,ij->i", p, p).astype(np.float64) / (s * s)
    else:
        sq = np.einsum("ij,ij->i", p, p, dtype=np.float64) / (s * s)
    correct = pred == y
    out = {"accuracy": float(correct.mean()), "nll": float(-np.log(np.maximum(p_y, 1e-7)).mean()),
           "brier": float((sq - 2.0 * p_y + 1.0).mean())}
    bins = np.minimum((conf * 15).astype(np.int64), 14)
    out["ece"] = float(np.abs(np.bincount(bins, correct, 15) - np.bincount(bins, conf, 15)).sum() / n)
    order = np.argsort(-conf, kind="stable")
    wrong = ~correct[order]
    out["calib_auc"] = _auc_sorted_desc(conf[order], wrong)
    errors = np.cumsum(wrong)
    total_correct = n - int(errors[-1])
    for key, f in FRACTIONS.items():
        m = int(math.floor(round(n * f, 9)))
        out[key] = (m + total_correct - (m - int(errors[-1] - errors[n - m - 1]))) / n
    risk = errors / np.arange(1, n + 1)
    e = int(errors[-1])
    k = np.arange(n - e + 1, n + 1)
    out["aurc"] = float(risk.mean())
    out["eaurc"] = out["aurc"] - float(np.sum((k - (n - e)) / k) / n)
    return out


# ----------------------------------------------------------------------------- robustness_metrics
class RMReimplementation:
    """robustness_metrics' definitions (robustness_metrics/metrics/uncertainty.py and base.py),
    written in numpy with TF's default float32; each metric computes what its metric object computes
    from the (N, K) probabilities, on its own. Written here because robustness_metrics (TensorFlow)
    cannot be installed on this machine."""

    @staticmethod
    def accuracy(y, p):  # "accuracy": Keras Accuracy on argmax
        return float(np.mean((p.argmax(1) == y).astype(np.float32)))

    @staticmethod
    def nll(y, p):  # "nll": Keras SparseCategoricalCrossentropy(from_logits=False)
        eps = np.float32(1e-7)
        lp = np.log(np.clip(p, eps, 1 - eps))  # then sparse softmax cross-entropy on log p
        m = lp.max(1, keepdims=True)
        lse = np.log(np.exp(lp - m).sum(1)) + m[:, 0]
        return float(np.mean(lse - lp[np.arange(y.shape[0]), y]))

    @staticmethod
    def brier(y, p):  # "brier": K * Keras MeanSquaredError(one_hot(y), p)
        one_hot = np.eye(p.shape[1], dtype=np.float32)[y]
        return float(p.shape[1] * np.mean(np.mean((p - one_hot) ** 2, axis=1)))

    @staticmethod
    def _binned(y, p, num_bins):
        pred, conf = p.argmax(1), p.max(1)
        correct = (pred == y).astype(np.float32)
        bins = np.clip(np.floor(conf * num_bins), 0, num_bins - 1).astype(np.int64)  # histogram_fixed_width_bins
        counts = np.bincount(bins, minlength=num_bins).astype(np.float32)
        return (counts, np.bincount(bins, correct, num_bins).astype(np.float32),
                np.bincount(bins, conf, num_bins).astype(np.float32))

    @classmethod
    def ece(cls, y, p, num_bins=15):  # "ece": _KerasECEMetric
        counts, correct_sums, prob_sums = cls._binned(y, p, num_bins)
        full = counts != 0
        acc, conf = correct_sums[full] / counts[full], prob_sums[full] / counts[full]
        return float(np.sum(counts[full] / counts.sum() * np.abs(acc - conf)))

    @classmethod
    def oc_acc(cls, y, p, fraction, num_bins=100):  # "collaborative_accuracy": binned referral
        counts, correct_sums, _ = cls._binned(y, p, num_bins)
        total = counts.sum()
        oracle = np.floor(total * fraction)
        full = counts != 0
        counts, correct_sums = counts[full], correct_sums[full]
        cum = np.cumsum(counts)
        final = int(np.argmax(cum > oracle))
        used = cum[final - 1] if final > 0 else 0.0
        remaining = oracle - used
        final_correct = correct_sums[final] / counts[final] * (counts[final] - remaining)
        return float((oracle + final_correct + correct_sums[final + 1:].sum()) / total)

    @staticmethod
    def calib_auc(y, p, num_thresholds=200):  # CalibrationAUC: Keras AUC, incorrect positive, 1 - conf
        pred, conf = p.argmax(1), p.max(1)
        positive = pred != y
        score = 1.0 - conf
        # Keras' evenly spaced thresholds: counts per bucket, then cumulated (its optimised path).
        buckets = np.clip(np.ceil(score * (num_thresholds - 1)), 0, num_thresholds - 1).astype(np.int64)
        tp = np.cumsum(np.bincount(buckets, positive, num_thresholds)[::-1])[::-1]
        fp = np.cumsum(np.bincount(buckets, ~positive, num_thresholds)[::-1])[::-1]
        tpr, fpr = tp / tp[0], fp / fp[0]
        return float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))

    @classmethod
    def score_set(cls, y, p) -> dict[str, float]:
        out = {"accuracy": cls.accuracy(y, p), "nll": cls.nll(y, p), "ece": cls.ece(y, p), "brier": cls.brier(y, p),
               "calib_auc": cls.calib_auc(y, p)}
        out.update({key: cls.oc_acc(y, p, f) for key, f in FRACTIONS.items()})
        return out


def rm_metric(name: str, y, p) -> float:
    rm = RMReimplementation
    return rm.oc_acc(y, p, 0.01) if name == "oc_acc@1%" else getattr(rm, name)(y, p)


def real_robustness_metrics():
    """robustness_metrics' own metric callables when the package imports, else None."""
    try:
        import robustness_metrics  # noqa: F401
    except Exception:  # noqa: BLE001 - not installable here (needs TensorFlow 2 + its extras)
        return None
    return robustness_metrics


# ----------------------------------------------------------------------------- timing helpers
class Timing(float):
    """A median wall time in seconds (the float) with the median CPU time of the process beside it
    (`cpu`): on a shared machine the CPU time is what an idle machine's wall time would be."""

    cpu: float

    def __new__(cls, wall: float, cpu: float):
        out = super().__new__(cls, wall)
        out.cpu = cpu
        return out

    def __str__(self) -> str:
        return f"{float(self):.4f} ({self.cpu:.4f})"


def interleaved(functions: dict, rounds: int) -> dict:
    """Timing of each function over `rounds` rounds, the functions interleaved in each round
    (after one untimed warm-up call each: imports, first-touch allocations)."""
    for fn in functions.values():
        fn()
    wall = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {name: Timing(statistics.median(wall[name]), statistics.median(cpu[name])) for name in functions}


def ratio(a: Timing, b: Timing) -> str:
    """a / b in wall time, and in CPU time in parentheses."""
    return f"{a / b:.2f}x ({a.cpu / b.cpu:.2f}x CPU)"


def plexbench_score(y, p) -> dict[str, float]:
    """What `plexbench score` computes after reading the file."""
    return score(prediction_stats({"labels": y, "probs": p}))


# ----------------------------------------------------------------------------- memory
def memory_case(k: int, n: int, ood: bool) -> dict:
    """Peak traced bytes of reading the file(s) and scoring them, in this (fresh) process."""
    import tracemalloc

    with tempfile.TemporaryDirectory() as tmp:
        y, p = synthetic(n, k)
        M.save_prediction_file(Path(tmp) / "pred.npz", labels=y, probs=p)
        input_bytes = p.nbytes + y.nbytes
        if ood:
            _, q = synthetic(n, k, seed=1)
            M.save_prediction_file(Path(tmp) / "ood.npz", probs=q)
            input_bytes += q.nbytes
            del q
        del y, p
        tracemalloc.start()
        want = ("conf", "correct", "brier", "nll") + (("entropy", "mlogit") if ood else ())
        preds = load_prediction_stats(Path(tmp) / "pred.npz", want=want)
        other = load_prediction_stats(Path(tmp) / "ood.npz", require_labels=False, want=want) if ood else None
        score(preds, ood=other, release=True)  # as the command does
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {"k": k, "n": n, "ood": ood, "peak": peak, "input": input_bytes}


def memory_table(ks, rows, max_values: float) -> list[dict]:
    out = []
    for k in ks:
        for n in rows:
            if k * n > max_values:
                out.append({"k": k, "n": n, "ood": None, "skipped": True})
                continue
            for ood in (False, True):
                cmd = [sys.executable, __file__, "--memory-case", f"{k},{n},{int(ood)}"]
                done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PLEXBENCH_QUIET="1"))
                if done.returncode != 0:
                    out.append({"k": k, "n": n, "ood": ood, "error": done.stderr.strip().splitlines()[-1:]})
                else:
                    out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


# ----------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--k", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1_000)
    parser.add_argument("--memory-rows", default="10000,100000,1000000")
    parser.add_argument("--memory-k", default="10,1000")
    parser.add_argument("--max-memory-values", type=float, default=2e8,
                        help="skip memory cases with more than this many (N*K) values per file (default 2e8)")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        k, n, ood = (int(x) for x in args.memory_case.split(","))
        print(json.dumps(memory_case(k, n, bool(ood))))
        return 0
    os.environ.setdefault("PLEXBENCH_QUIET", "1")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    y, p = synthetic(args.n, args.k)
    lp = np.log(p)
    print(f"metrics on N={args.n:,} x K={args.k:,} float32 probabilities; {cores} cores, load average "
          f"{os.getloadavg()[0]:.1f}; medians of {args.rounds} interleaved rounds, wall seconds (CPU seconds)")

    # 1. per metric
    names = ["accuracy", "nll", "ece", "brier", "calib_auc", "oc_acc@1%", "aurc", "eaurc"]
    ours = {"accuracy": M.accuracy, "ece": M.ece, "brier": M.brier, "calib_auc": M.calib_auc, "aurc": M.aurc,
            "eaurc": M.eaurc, "oc_acc@1%": functools.partial(M.oracle_collaborative_accuracy, fraction=0.01)}
    functions = {}
    for name in names:
        functions[("plexbench", name)] = (lambda n=name: M.nll(y, lp)) if name == "nll" else (
            lambda fn=ours[name]: fn(y, p))
        functions[("numpy", name)] = lambda n=name: numpy_metric(n, y, p)
        if name not in ("aurc", "eaurc"):
            functions[("rm", name)] = lambda n=name: rm_metric(n, y, p)
    t = interleaved(functions, args.rounds)
    print("\n1. per metric, seconds (plexbench: public function on the raw float32 arrays, validation included;"
          " nll from float32 log-probs)")
    print(f"   {'metric':12s} {'plexbench':>18s} {'numpy':>18s} {'robustness_metrics*':>20s}")
    for name in names:
        rm = str(t[("rm", name)]) if ("rm", name) in t else "(not defined)"
        print(f"   {name:12s} {str(t[('plexbench', name)]):>18s} {str(t[('numpy', name)]):>18s} {rm:>20s}")
    real = real_robustness_metrics()
    print("   * robustness_metrics " + ("imports here, but only the reimplementation is timed" if real else
          "is not installable here (TensorFlow): its definitions reimplemented in numpy float32 (RMReimplementation)"))

    # 2. the score set
    t = interleaved({"plexbench": lambda: plexbench_score(y, p), "fused": lambda: fused_numpy(y, p),
                     "fused32": lambda: fused_numpy(y, p, float32_squares=True),
                     "rm": lambda: RMReimplementation.score_set(y, p)}, args.rounds)
    got, fused, rm = plexbench_score(y, p), fused_numpy(y, p), RMReimplementation.score_set(y, p)
    diff_fused = max(abs(got[key] - fused[key]) for key in fused)
    fused32 = fused_numpy(y, p, float32_squares=True)
    diff_fused32 = max(abs(got[key] - fused32[key]) for key in fused32)
    diff_rm = {key: abs(got[key] - rm[key]) for key in rm}
    print("\n2. the score set (plexbench: validate + per-example statistics + the 11 numbers through the task kinds)")
    print(f"   plexbench score set              : {t['plexbench']} s")
    print(f"   hand-fused numpy, same 11 numbers: {t['fused']} s   plexbench / numpy = "
          f"{ratio(t['plexbench'], t['fused'])} (target <= 1.5x); max |difference| {diff_fused:.1e}")
    print(f"   (the same with float32 squares   : {t['fused32']} s   plexbench / numpy = "
          f"{ratio(t['plexbench'], t['fused32'])}; max |difference| {diff_fused32:.1e})")
    print(f"   robustness_metrics*, its 9 numbers: {t['rm']} s   robustness_metrics / plexbench = "
          f"{ratio(t['rm'], t['plexbench'])} (target >= 10x); largest difference "
          f"{max(diff_rm, key=diff_rm.get)} {max(diff_rm.values()):.1e} (binned oc_acc and 200-threshold AUC)")

    # 3. bootstrap
    preds = prediction_stats({"labels": y, "probs": p})
    naive_fns = [M.accuracy, M.ece, M.brier, M.calib_auc, M.aurc, M.eaurc] + [
        functools.partial(M.oracle_collaborative_accuracy, fraction=f) for f in FRACTIONS.values()]

    def naive_two():
        for fn in naive_fns:
            M.bootstrap_ci(fn, y, p, num_samples=2, seed=0)
        M.bootstrap_ci(M.nll, y, lp, num_samples=2, seed=0)

    t = interleaved({"one": lambda: score(prediction_stats({"labels": y, "probs": p})),
                     "without": lambda: score(preds),
                     "with": lambda: score(preds, bootstrap=args.resamples, seed=0)}, max(1, args.rounds - 2))
    naive = interleaved({"naive": naive_two}, 1)["naive"]
    boot = Timing(t["with"] - t["without"], t["with"].cpu - t["without"].cpu)
    per = Timing(boot / args.resamples, boot.cpu / args.resamples)
    print(f"\n3. bootstrap of the score set ({args.resamples} resamples, O(N) each on per-example statistics)")
    print(f"   per resample: {per * 1e3:.2f} ms ({per.cpu * 1e3:.2f} ms CPU); the naive O(N K) resample of the same "
          f"11 numbers: {naive / 2 * 1e3:.0f} ms ({naive.cpu / 2 * 1e3:.0f} ms CPU)")
    print(f"   {args.resamples} resamples / one evaluation ({t['one']} s) = {ratio(boot, t['one'])} (target < 20x)")

    # ... and with --ood (the OOD rows resampled separately; msp and entropy scores)
    want = CORE + ("entropy",)
    ind = prediction_stats({"labels": y, "probs": p}, want=want)
    _, p_ood = synthetic(args.n, args.k, seed=1)
    ood = prediction_stats({"probs": np.roll(p_ood, 1, axis=1)}, require_labels=False, want=want)
    t = interleaved({"one": lambda: score(ind, ood=ood),
                     "with": lambda: score(ind, ood=ood, bootstrap=args.resamples, seed=0)}, max(1, args.rounds - 2))
    per = Timing((t["with"] - t["one"]) / args.resamples, (t["with"].cpu - t["one"].cpu) / args.resamples)
    print(f"   with --ood ({args.n:,} OOD rows, 2 scorers x 3 metrics more): {per * 1e3:.2f} ms per resample "
          f"({per.cpu * 1e3:.2f} ms CPU)")

    # 4. memory
    ks = [int(x) for x in args.memory_k.split(",") if x]
    rows = [int(float(x)) for x in args.memory_rows.split(",") if x]
    print("\n4. peak memory of `plexbench score` (file read + score; tracemalloc), bytes per row")
    print(f"   {'K':>5s} {'N':>9s} {'ood':>4s} {'input/row':>10s} {'peak/row':>9s} {'peak/input':>11s}")
    for case in memory_table(ks, rows, args.max_memory_values):
        if case.get("skipped"):
            print(f"   {case['k']:5d} {case['n']:9d}  skipped (N*K above --max-memory-values)")
            continue
        if "error" in case:
            print(f"   {case['k']:5d} {case['n']:9d} {'yes' if case['ood'] else 'no':>4s}  failed: {case['error']}")
            continue
        n = case["n"]
        print(f"   {case['k']:5d} {n:9d} {'yes' if case['ood'] else 'no':>4s} {case['input'] / n:10.0f} "
              f"{case['peak'] / n:9.0f} {case['peak'] / case['input']:10.2f}x")
    print("   (target: peak <= 2 x input + a constant; the constant is the float64 chunks of the statistics pass,"
          " about 4 MiB, which dominates at 10,000 rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
