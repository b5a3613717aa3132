"""`plexbench run` (a suite over models into a results directory) and `plexbench task info NAME`.

Heavy imports (JAX, TensorFlow) happen inside the handlers.
"""

from __future__ import annotations

from pathlib import Path

from plexbench.commands import DATA_DIR_HELP, STORE_HELP
from plexbench.errors import PlexbenchError, shown


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run a task suite over models and write a results directory",
        description="Run every task of a suite over the given models. Predictions go through the prediction "
                    "store (each model/dataset/split/preprocessing inferred once); finished (task, model) results "
                    "are written at once and reused by a rerun whose inputs are unchanged. Writes "
                    "metrics_long.csv, tasks/<task>/<model>.json and run.json.")
    p.add_argument("--suite", required=True, help="suite name (tasks/suites/<name>.yaml), e.g. embedded, plex-vision")
    p.add_argument("--models", default="", metavar="A,B,...",
                   help="registered model names (see `plexbench list models`)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="weights for the model NAME of --models (repeatable); released Plex checkpoints: "
                        "gs://plex-paper/ (docs/checkpoints.md)")
    p.add_argument("--model", action="append", default=[], metavar="MODULE:FUNCTION", dest="callables",
                   help="a user model: imports MODULE (the working directory first) and runs FUNCTION(), which "
                        "returns (flax_module, params[, info]); the module gets float32 (B,H,W,3) images "
                        "(docs/your-model.md) (repeatable)")
    p.add_argument("--predictions", action="append", default=[], metavar="NAME=DIR_OR_FILES",
                   help="a model given by prediction files <dataset>__<split>.npz (format v1; repeatable)")
    p.add_argument("--tasks", default="", metavar="T1,T2,...", help="run only these tasks of the suite")
    p.add_argument("--out", metavar="DIR", help="results directory (default: results/<suite>)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the tasks, the missing datasets and which tasks each model runs (unknown model "
                        "names are errors); run nothing")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--tasks-dir", help="tasks directory (default: $PLEXBENCH_TASKS_DIR or <repo>/tasks)")
    p.add_argument("--batch-size", type=int, default=256, help="global inference batch size (default 256)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    p.add_argument("--seed", type=int, default=0, help="inference seed (heteroscedastic heads; default 0)")
    p.add_argument("--limit", type=int, metavar="N", help="smoke mode: only the first N examples of every split")
    p.add_argument("--skip-missing", action="store_true",
                   help="skip the tasks whose datasets are not prepared instead of stopping")
    p.set_defaults(func=run_command)

    t = sub.add_parser("task", help="about one task").add_subparsers(dest="task_command", metavar="ACTION")
    t.required = True
    info = t.add_parser("info", help="show a task: kind, datasets, metrics, parameters, suites")
    info.add_argument("name")
    info.add_argument("--tasks-dir", help="tasks directory (default: $PLEXBENCH_TASKS_DIR or <repo>/tasks)")
    info.set_defaults(func=task_info_command)


def parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    """['a=x', 'b=y'] -> {'a': 'x', 'b': 'y'}; one-line errors for a missing '=' or a repeated name."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise PlexbenchError(f"bad {flag} {shown(item)}: expected NAME=VALUE")
        if name.strip() in out:
            raise PlexbenchError(f"{flag} given twice for {shown(name.strip())}")
        out[name.strip()] = value.strip()
    return out


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def options_from_args(args):
    from plexbench.tasks.runner import RunOptions

    if args.limit is not None and args.limit < 1:
        raise PlexbenchError(f"--limit must be >= 1 (got {args.limit})")
    if args.batch_size < 1:
        raise PlexbenchError(f"--batch-size must be >= 1 (got {args.batch_size})")
    return RunOptions(
        suite=args.suite,
        out_dir=Path(args.out) if args.out else Path("results") / args.suite,
        models=_names(args.models),
        checkpoints=parse_pairs(args.checkpoint, "--checkpoint"),
        callables=tuple(args.callables),
        predictions=parse_pairs(args.predictions, "--predictions"),
        tasks=_names(args.tasks) or None,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        store_dir=Path(args.store) if args.store else None,
        tasks_dir=Path(args.tasks_dir) if args.tasks_dir else None,
        batch_size=args.batch_size,
        limit=args.limit,
        dtype=args.dtype,
        seed=args.seed,
        skip_missing=args.skip_missing,
    )


def run_command(args) -> int:
    from plexbench.progress import summary_line
    from plexbench.tasks import runner

    options = options_from_args(args)
    if args.dry_run:
        print("\n".join(runner.dry_run(options)))
        return 0
    report = runner.run(options)
    print(f"results in {report.out_dir}: {len(report.computed)} computed, {len(report.reused)} reused, "
          f"{len(report.skipped)} skipped (task, model) pairs")
    for line in runner.skip_summary(report.skipped):
        print(line)
    print(summary_line("run", len(report.computed) + len(report.reused), report.seconds, "task results"))
    return 0


def task_info_command(args) -> int:
    from plexbench.tasks.info import task_info

    print(task_info(args.name, args.tasks_dir))
    return 0
