"""`plexbench score PRED.npz [--ood OOD.npz] [--fit TRAIN.npz] [--bootstrap N] [--seed S] [--json]`.

Scores a prediction file (format v1, docs/prediction-format.md) by running the task kinds
in_distribution, calibration, selective_prediction and (with --ood) ood over it: the metric code,
the metric definitions and the bootstrap policy are those of `plexbench run`. Writes nothing but
stdout: with --json one JSON object of numbers, otherwise a table. Bad input: one line on stderr,
exit 2.

Memory: each file is validated and reduced to per-example statistics in one pass over row chunks
(plexbench.metrics.load_prediction_stats), and its (N, K) arrays are released before the next file
is read, so the peak stays within twice the files' array bytes plus a constant.
"""

from __future__ import annotations

import json
import math
import sys
import warnings

# The metric keys of `score` in order, as the task kinds name them (the OOD keys drop the kind's
# OOD-set component: `ood/<scorer>/<metric>`).
IN_DISTRIBUTION_METRICS = ("accuracy", "nll", "ece", "brier")
CALIBRATION_METRICS = ("calib_auc",)


def register(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score a prediction file (accuracy, NLL, ECE, Brier, selective and OOD metrics)",
        description="Score a prediction file (.npz, format v1). With --ood, OOD detection metrics "
        "against a second prediction file; with --fit (training-split 'embeddings' and 'labels'), "
        "also Mahalanobis and relative Mahalanobis scores.",
    )
    p.add_argument("predictions", metavar="PRED.npz", help="in-distribution prediction file (with labels)")
    p.add_argument("--ood", metavar="OOD.npz", help="prediction file on out-of-distribution data")
    p.add_argument("--fit", metavar="TRAIN.npz", help="training split 'embeddings' and 'labels' (needs --ood)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="add 95%% percentile intervals from N resamples")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="bootstrap seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from plexbench.errors import PlexbenchError
    from plexbench.metrics.predictions import load_fit_file, load_prediction_stats

    if args.fit and not args.ood:
        raise PlexbenchError("--fit needs --ood (the Mahalanobis fit is only used for OOD scores)")
    if args.bootstrap < 0:
        raise PlexbenchError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.seed < 0:
        raise PlexbenchError(f"--seed must be >= 0, got {args.seed}")
    want = _statistics(ood=bool(args.ood))
    preds = load_prediction_stats(args.predictions, want=want)
    ood = None
    if args.ood:
        ood = load_prediction_stats(args.ood, require_labels=False, want=want)
        if ood.num_classes != preds.num_classes:
            raise PlexbenchError(f"{args.ood} has {ood.num_classes} classes but {args.predictions} has "
                                 f"{preds.num_classes}; OOD scores compare predictions over the same classes")
    fit = load_fit_file(args.fit) if args.fit else None
    values = score(preds, ood=ood, fit=fit, bootstrap=args.bootstrap, seed=args.seed, release=True)
    if ood is not None and not (preds.has_logits and ood.has_logits):
        which = args.predictions if not preds.has_logits else args.ood
        print(f"plexbench: note: ood/mlogit/* left out: {which} holds probabilities, not logits", file=sys.stderr)
    print(json.dumps(values) if args.json else _table(values))
    return 0


def _statistics(ood: bool) -> tuple[str, ...]:
    from plexbench.metrics.stats import CORE

    return CORE + (("entropy", "mlogit") if ood else ())


def score(preds, *, ood=None, fit=None, bootstrap: int = 0, seed: int = 0, release: bool = False) -> dict[str, float]:
    """The `plexbench score` metric set as {key: finite float}, computed by the task kinds.

    preds: in-distribution predictions with labels, as plexbench.metrics.PredictionStats (from
    `load_prediction_stats` / `prediction_stats`) or plexbench.metrics.Predictions. ood: the same
    for OOD data (labels not needed; same class count). fit: training-split (embeddings, labels)
    for Mahalanobis scores (only with `ood`). bootstrap = B > 0 adds `<key>/ci_low` and
    `<key>/ci_high` after each key: the kinds' 95% percentile intervals from B resamples drawn with
    `seed` (OOD rows resampled separately from in-distribution rows). A value that is undefined
    (calib_auc when every prediction is right, or every one wrong) is left out with its interval,
    so every value is a finite number. `release=True` frees each statistic once no later kind reads
    it (what the command does, to bound memory; `preds` cannot be scored again afterwards).
    """
    from plexbench.errors import PlexbenchError
    from plexbench.metrics import UndefinedMetricWarning

    if fit is not None and ood is None:
        raise PlexbenchError("a Mahalanobis fit is only used together with OOD predictions")
    if isinstance(bootstrap, bool) or int(bootstrap) != bootstrap or bootstrap < 0:
        raise PlexbenchError(f"bootstrap must be a non-negative integer, got {bootstrap}")
    preds, ood = _as_prediction_stats(preds, ood is not None), _as_prediction_stats(ood, True)
    preds.stats.require_labels("predictions")
    if ood is not None and ood.num_classes != preds.num_classes:
        raise PlexbenchError(f"the OOD predictions have {ood.num_classes} classes but the predictions have "
                             f"{preds.num_classes}")
    from plexbench.tasks.kinds.base import shared_bootstrap

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # an undefined calib_auc is left out
        for group in _tasks(preds, ood, fit, int(bootstrap), int(seed)):
            # the kinds of a group measure the same data: one bootstrap, the same resamples for all
            with shared_bootstrap() as session:
                done = [row for kind, task, inputs in group for row in kind.evaluate(task, inputs, None).rows]
            rows += session.resolve(done)
            if release and ood is not None:
                # memory: what only the in-distribution kinds read, before the OOD scores are sorted
                preds.stats.release("brier", "nll", "order")
    out: dict[str, float] = {}
    for row in rows:
        key = _key(row.metric)
        if not math.isfinite(row.value):
            continue
        out[key] = row.value
        if bootstrap and math.isfinite(row.ci_low) and math.isfinite(row.ci_high):
            out[f"{key}/ci_low"], out[f"{key}/ci_high"] = row.ci_low, row.ci_high
    return out


def _as_prediction_stats(preds, ood: bool):
    """PredictionStats from PredictionStats (as is) or Predictions (its statistics)."""
    from plexbench.metrics.predictions import Predictions, PredictionStats

    if preds is None or isinstance(preds, PredictionStats):
        return preds
    if isinstance(preds, Predictions):
        stats = preds.stats
        for name in _statistics(ood):  # computed now, from the predictions as given
            getattr(stats, "log_p_true" if name == "nll" else name)
        return PredictionStats(stats, preds.embeddings, preds.ids, preds.logits is not None)
    raise TypeError(f"expected PredictionStats or Predictions, got {type(preds).__name__}")


def _split(ref, preds, labels=None):
    import numpy as np

    from plexbench.tasks.kinds.base import Split

    n = preds.num_examples
    if labels is None:
        # OOD data: labels are not used (a file may have none); -1 marks them unknown, without memory
        labels = preds.stats.labels if preds.stats.has_labels else np.broadcast_to(np.int64(-1), (n,))
    return Split(ref, labels, None, preds.ids, None, preds.embeddings, preds.stats)


def _tasks(preds, ood, fit, bootstrap: int, seed: int):
    """Groups of (kind, task, inputs) of the kinds `score` runs, in the order of its keys: the
    in-distribution kinds (one split), then the OOD kind."""
    from plexbench.errors import PlexbenchError
    from plexbench.tasks import registry as R
    from plexbench.tasks.kinds.calibration import CalibrationParams
    from plexbench.tasks.kinds.ood import OODParams, OODRef
    from plexbench.tasks.kinds.selective_prediction import SelectiveParams
    from plexbench.tasks.kinds.base import Split
    from plexbench.tasks.spec import DatasetRef, TaskSpec

    ref = DatasetRef("predictions")
    common = {"version": 1, "dataset": ref, "bootstrap": bootstrap, "seed": seed}
    inputs = {"eval": _split(ref, preds)}
    yield [(R.get_kind("in_distribution"), TaskSpec(kind="in_distribution", metrics=IN_DISTRIBUTION_METRICS,
                                                    **common), inputs),
           (R.get_kind("calibration"), TaskSpec(kind="calibration", metrics=CALIBRATION_METRICS,
                                                params=CalibrationParams(), **common), inputs),
           (R.get_kind("selective_prediction"), TaskSpec(kind="selective_prediction", params=SelectiveParams(),
                                                         **common), inputs)]
    if ood is None:
        return
    scorers = ["msp", "entropy"] + (["mlogit"] if preds.has_logits and ood.has_logits else [])
    ood_ref = OODRef("ood")
    ood_inputs = dict(inputs)
    ood_inputs[f"ood:{ood_ref.label}"] = _split(ood_ref, ood)
    if fit is not None:
        for which, p in (("predictions", preds), ("OOD predictions", ood)):
            if p.embeddings is None:
                raise PlexbenchError(f"Mahalanobis scores need embeddings, but the {which} have none")
        embeddings, labels = fit
        ood_inputs["fit"] = Split(ref, labels, None, None, None, embeddings)
        scorers += ["maha", "rmaha"]
    params = OODParams(ood=(ood_ref,), scorers=tuple(scorers))
    yield [(R.get_kind("ood"), TaskSpec(kind="ood", params=params, **common), ood_inputs)]


def _key(metric: str) -> str:
    """A kind's metric name as `score` prints it: `ood/<set>/<scorer>/<metric>` -> `ood/<scorer>/<metric>`."""
    parts = metric.split("/")
    return "/".join(["ood"] + parts[2:]) if parts[0] == "ood" else metric


def _table(values: dict[str, float]) -> str:
    from plexbench.metrics.vocabulary import direction
    from plexbench.table import format_table

    rows = []
    for key, value in values.items():
        if key.endswith(("/ci_low", "/ci_high")):
            continue
        row = {"metric": key, "value": value, "better": direction(key)}
        if f"{key}/ci_low" in values:
            row["95% CI"] = f"[{values[key + '/ci_low']:.4f}, {values[key + '/ci_high']:.4f}]"
        rows.append(row)
    return format_table(rows)
