"""`plexbench score PRED.npz [--ood OOD.npz] [--fit TRAIN.npz] [--bootstrap N] [--seed S] [--json]`.

Scores a prediction file (format v1, docs/prediction-format.md) with the metric set of
`plexbench.metrics.scoreset.score`. Writes nothing but stdout: with --json one JSON object
(non-finite values as null), otherwise a table. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import math
import sys


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
    from plexbench.metrics.predictions import load_fit_file, load_prediction_file
    from plexbench.metrics.scoreset import score

    if args.fit and not args.ood:
        raise PlexbenchError("--fit needs --ood (the Mahalanobis fit is only used for OOD scores)")
    if args.bootstrap < 0:
        raise PlexbenchError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    preds = load_prediction_file(args.predictions)
    ood = load_prediction_file(args.ood, require_labels=False) if args.ood else None
    fit = load_fit_file(args.fit) if args.fit else None
    values = score(preds, ood=ood, fit=fit, bootstrap=args.bootstrap, seed=args.seed)
    if ood is not None and (preds.logits is None or ood.logits is None):
        which = args.predictions if preds.logits is None else args.ood
        print(f"plexbench: note: ood/mlogit/* left out: {which} holds probabilities, not logits", file=sys.stderr)
    print(json.dumps({k: _json_number(v) for k, v in values.items()}) if args.json else _table(values))
    return 0


def _json_number(value: float):
    return value if math.isfinite(value) else None


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
