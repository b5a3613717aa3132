"""`plexbench leaderboard` and `plexbench plot` (reports area). Heavy imports happen in handlers."""

from __future__ import annotations

from pathlib import Path

from plexbench.errors import PlexbenchError, shown


def register(sub) -> None:
    p = sub.add_parser("leaderboard", help="reliability score and metric tables from results directories",
                       description="One row per model: reliability score (x100), category scores, best counts, "
                                   "mean ranks, then every metric@dataset. Writes FILE.csv, FILE.long.csv, "
                                   "FILE.json (conventions), FILE.md and FILE.tex.")
    p.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR")
    p.add_argument("--preset", choices=("paper", "plexbench"), default="paper",
                   help="paper: the paper's score with its quirks (default); plexbench: every lower-is-better "
                        "metric flipped, missing columns reported")
    p.add_argument("--out", metavar="FILE.csv", help="wide CSV path (default: RESULTS_DIR/leaderboard_<preset>.csv)")
    p.add_argument("--baseline", metavar="MODEL", help="divide every column by this model's value (it scores 100)")
    _score_options(p)
    p.add_argument("--no-paper", action="store_true", help="leave out the paper's reference rows")
    p.set_defaults(func=run_leaderboard)

    q = sub.add_parser("plot", help="paper-style figures (PDF and PNG) from results directories",
                       description="Radar chart, reliability diagrams, risk-coverage curves, OOD histograms and "
                                   "ROC curves, covariate shift by severity, subpopulation box plots and score "
                                   "against parameters/FLOPs with the Pareto front.")
    q.add_argument("results_dirs", nargs="*", metavar="RESULTS_DIR")
    q.add_argument("--out", metavar="DIR", help="output directory (default: RESULTS_DIR/plots, or ./paper_figures)")
    q.add_argument("--radar-axes", nargs="+", metavar="METRIC@DATASET",
                   help="radar axes, e.g. accuracy@cifar10 ece@cifar10 ood/svhn_cropped/msp/auroc@cifar10 "
                        "(default: chosen from what the run has)")
    q.add_argument("--preset", choices=("paper", "plexbench"), default="plexbench",
                   help="normalisation of radar values and the score on the Pareto plot (default: plexbench)")
    q.add_argument("--num-classes", action="append", metavar="DATASET=K", default=[],
                   help="number of classes of a dataset, for nll normalisation (repeatable)")
    q.add_argument("--paper-figures", action="store_true",
                   help="also draw the paper's radar and subpopulation figures from its published numbers")
    q.set_defaults(func=run_plot)


def _score_options(p) -> None:
    p.add_argument("--num-classes", action="append", metavar="DATASET=K", default=[],
                   help="number of classes of a dataset, for nll normalisation (repeatable)")
    p.add_argument("--include", nargs="+", metavar="PATTERN",
                   help="score only columns metric@dataset matching one of these fnmatch patterns")
    p.add_argument("--exclude", nargs="+", metavar="PATTERN", help="leave these metric@dataset patterns out of the score")


def parse_num_classes(items: list[str]) -> dict[str, int]:
    """['cifar10=10', 'digits=10'] -> {'cifar10': 10, 'digits': 10}; bad items raise PlexbenchError."""
    out = {}
    for item in items:
        name, sep, k = item.partition("=")
        if not sep or not name or not k.strip().isdigit() or int(k) < 2:
            raise PlexbenchError(f"bad --num-classes {shown(item)}: expected DATASET=K with an integer K >= 2")
        out[name.strip()] = int(k)
    return out


def run_leaderboard(args) -> int:
    from plexbench import fileio
    from plexbench.reports.leaderboard import build_leaderboard, write_leaderboard
    from plexbench.table import format_table

    out = Path(args.out) if args.out else Path(args.results_dirs[0]) / f"leaderboard_{args.preset}.csv"
    fileio.check_output_file(out, "--out" if args.out else "leaderboard file")
    lb = build_leaderboard(args.results_dirs, preset=args.preset, baseline=args.baseline,
                           num_classes=parse_num_classes(args.num_classes), include=args.include,
                           exclude=args.exclude, with_paper=not args.no_paper)
    paths = write_leaderboard(lb, out)
    several = len(lb.groups) > 1
    shown = [c for c in lb.wide.columns if c in ("model", "score_x100", "score_ci_low_x100", "score_ci_high_x100",
                                                "best", "mean_rank", "n_missing") or c.endswith("_score_x100")
             or (several and c == "group")]
    print(format_table(lb.wide[lb.wide["kind"] == "run"][shown].to_dict("records")))
    if several:
        print(f"scored within {len(lb.groups)} groups of models with the same modality and number of classes: "
              + "; ".join(f"{g.title}: {', '.join(g.models)}" for g, _ in lb.groups))
    for model, note in (lb.notes or {}).items():
        print(f"{model}: {note}")
    if lb.notes:
        print(f"(missing columns are listed in {paths['json'].name})")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def run_plot(args) -> int:
    from plexbench import fileio
    from plexbench.reports.plots import plot_paper_figures, plot_results

    if not args.results_dirs and not args.paper_figures:
        raise PlexbenchError("give a RESULTS_DIR, or --paper-figures to draw the paper's figures")
    default = Path(args.results_dirs[0]) / "plots" if args.results_dirs else Path("paper_figures")
    out = Path(args.out) if args.out else default
    fileio.check_output_dir(out, "--out" if args.out else "plots directory")
    written, notes = [], []
    if args.results_dirs:
        written, notes = plot_results(args.results_dirs, out, radar_axes=args.radar_axes, preset=args.preset,
                                      num_classes=parse_num_classes(args.num_classes))
    if args.paper_figures:
        written += plot_paper_figures(out)
    for note in notes:
        print(f"skipped {note}")
    print(f"wrote {len(written)} files to {out}")
    return 0
