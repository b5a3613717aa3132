"""`plexbench demo`: the embedded benchmark end to end, offline, into one results directory.

The demo computes into `results/demo` (not tracked by git) and, at the end, compares every value
with the committed reference result `results/embedded` (plexbench.reports.reproducibility): the
last line says how many reference values this machine reproduced. `--out results/embedded`
regenerates the reference itself (then there is nothing to compare with).

Stages, each calling the library directly (no subprocess), each printing one line:

1. data: prepare every dataset the suite's tasks read (Fashion-MNIST, digits, the 75
   Fashion-MNIST-C configs and the fortunes texts for `embedded`), through the data registry;
   prepared ones are skipped;
2. run: `plexbench.tasks.runner.run` of the suite over the zoo models (prediction store, reuse of
   finished results);
3. leaderboard: `leaderboard_paper.*` and `leaderboard_plexbench.*` (as `plexbench leaderboard`);
4. plots: `plexbench.reports.plots.plot_results` once per model group (models with the same input
   modality and number of classes, see `plexbench.reports.model_groups`) into `plots/<group>/`, so
   the radar and the score-vs-cost figures compare models that ran the same tasks;
5. compare: `reproducibility.json`, the verdict against the reference directory (skipped when the
   reference is missing or is the output directory itself);
6. report: `demo.json` (this run's stage timings, appended to the earlier runs' ones) and
   `report.md` (`plexbench.reports.report_md.write_report`).

Files the previous demo drew (listed in `demo.json`) and did not draw again are removed, so
`plots/` never shows a stale figure; other files in the directory are never touched. When nothing
the figures are drawn from changed since the previous demo drew them (`plots_key`: results, run.json's
models, plotting code, matplotlib version) and its files are all there, they are kept, not redrawn.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from plexbench.commands import DATA_DIR_HELP, STORE_HELP
from plexbench.errors import PlexbenchError


SUITE = "embedded"
# The vision zoo (Fashion-MNIST) and the language zoo (fortunes); each model runs the suite tasks of its modality.
ZOO_MODELS = ("plex-mini", "det-mini", "plex-mini-fmnist6", "det-mini-fmnist6", "t5-plex-mini", "t5-det-mini")
PRESETS = ("paper", "plexbench")
STAGES = ("data", "run", "leaderboard", "plots", "compare", "report")
DEFAULT_OUT = Path("results") / "demo"  # untracked: the demo never rewrites the committed reference
REFERENCE = Path("results") / SUITE  # the committed reference result, relative to the repository root
HISTORY_LIMIT = 20


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="the embedded benchmark end to end: data, zoo models, leaderboards, plots, report.md",
        description="Prepare the embedded datasets, run the embedded suite on the model zoo, write both "
                    "leaderboards, the figures and report.md into one results directory. Everything is "
                    "cached: a second run reuses the prepared data, the prediction store and the finished "
                    "task results.")
    p.add_argument("--out", metavar="DIR", help=f"results directory (default: {DEFAULT_OUT})")
    p.add_argument("--reference", metavar="DIR",
                   help="results directory to compare with (default: results/embedded of the plexbench checkout)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--store", metavar="DIR", help=STORE_HELP)
    p.add_argument("--models", default=",".join(ZOO_MODELS), metavar="A,B,...",
                   help=f"registered models (default: {','.join(ZOO_MODELS)})")
    p.add_argument("--tasks", default="", metavar="T1,T2,...", help="only these tasks of the suite (default: all)")
    p.add_argument("--limit", type=int, metavar="N", help="smoke mode: only the first N examples of every split")
    p.add_argument("--batch-size", type=int, default=256, help="inference batch size (default 256)")
    p.add_argument("--tasks-dir", help="tasks directory (default: $PLEXBENCH_TASKS_DIR or <repo>/tasks)")
    p.set_defaults(func=run_demo)


@dataclass
class DemoOptions:
    """What `plexbench demo` takes (flags above); `None` paths mean plexbench.paths defaults."""

    out_dir: Path = DEFAULT_OUT
    reference_dir: Path | None = None  # None: <repository root>/results/embedded
    data_dir: Path | None = None
    store_dir: Path | None = None
    models: tuple[str, ...] = ZOO_MODELS
    tasks: tuple[str, ...] | None = None
    limit: int | None = None
    batch_size: int = 256
    tasks_dir: Path | None = None
    suite: str = SUITE


@dataclass
class DemoRecord:
    """One demo run: wall seconds per stage (STAGES order) and what each stage did."""

    started: str
    load_average: float | None
    stages: dict[str, float] = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)  # printed after the stages (the summary of skips)

    @property
    def total_s(self) -> float:
        return sum(self.stages.values())


def run_demo(args) -> int:
    options = options_from_args(args)
    record = demo(options)
    for line in record.lines:
        print(line)
    print(summary(record, options.out_dir))
    return 0


def options_from_args(args) -> DemoOptions:
    models = _names(args.models)
    if not models:
        raise PlexbenchError("--models is empty: give registered model names, e.g. " + ",".join(ZOO_MODELS))
    if args.limit is not None and args.limit < 1:
        raise PlexbenchError(f"--limit must be >= 1 (got {args.limit})")
    if args.batch_size < 1:
        raise PlexbenchError(f"--batch-size must be >= 1 (got {args.batch_size})")
    return DemoOptions(
        out_dir=Path(args.out) if args.out else DEFAULT_OUT,
        reference_dir=Path(args.reference) if getattr(args, "reference", None) else None,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        store_dir=Path(args.store) if args.store else None,
        models=models, tasks=_names(args.tasks) or None, limit=args.limit, batch_size=args.batch_size,
        tasks_dir=Path(args.tasks_dir) if args.tasks_dir else None)


def _names(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n.strip() for n in (text or "").split(",") if n.strip()))


# --------------------------------------------------------------------------- the stages


def demo(options: DemoOptions, extra_models: Sequence = ()) -> DemoRecord:
    """Run the five stages (module docstring); returns the record also written to `demo.json`.

    `extra_models`: model sources (plexbench.tasks.sources.ModelSource) run beside `options.models`
    (Python API only, e.g. a model defined in a notebook).
    """
    from plexbench import fileio, paths

    run_options = _run_options(options)
    _, tasks = _load_tasks(run_options)  # unknown suite / --tasks / models fail here, before any work
    _check_models(options.models)
    fileio.check_output_dir(options.out_dir, "results directory (--out)")
    paths.store_dir(options.store_dir)
    record = DemoRecord(started=_now(), load_average=_load_average())
    out = Path(options.out_dir)
    previous = _previous_record(out)

    with _stage(record, "data") as say:
        ready, prepared = prepare_datasets(tasks, options.data_dir)
        record.facts["datasets"] = ready
        record.facts["datasets_prepared"] = prepared
        say(f"{ready} datasets ready ({prepared} prepared now) in {_data_dir(options.data_dir)}")
    with _stage(record, "run") as say:
        from plexbench.tasks import runner

        report = runner.run(run_options, extra_models)
        record.facts.update(results_computed=len(report.computed), results_reused=len(report.reused),
                            results_skipped=len(report.skipped))
        say(f"{len(report.computed)} (task, model) results computed, {len(report.reused)} reused, "
            f"{len(report.skipped)} skipped -> {out}")
        record.lines += runner.skip_summary(report.skipped)
    with _stage(record, "leaderboard") as say:
        written = write_leaderboards(out)
        say("wrote " + ", ".join(p.name for p in written))
    with _stage(record, "plots") as say:
        key = plots_key(out)
        record.facts["plots_key"] = key
        if previous.get("plots_key") == key and previous.get("plots") and all(
                (out / rel).is_file() for rel in previous["plots"]):
            # nothing a figure is drawn from changed since the last demo drew them: keep them
            record.facts["plots"], record.facts["plot_notes"] = previous["plots"], previous.get("plot_notes") or []
            say(f"{len(previous['plots'])} files in {out / 'plots'} kept: results and plotting code unchanged "
                "since they were drawn")
        else:
            plots, notes = draw_plots(out)
            removed = remove_stale(out, previous.get("plots") or [], plots)
            record.facts["plots"] = plots
            record.facts["plot_notes"] = notes
            say(f"{len(plots)} files in {out / 'plots'}"
                + (f"; not drawn (no data): {not_drawn(notes)}" if notes else "")
                + (f"; removed {removed} stale files" if removed else ""))
    with _stage(record, "compare") as say:
        verdict = compare_with_reference(out, options.reference_dir)
        record.facts["reproducibility"] = {k: verdict[k] for k in ("compared", "reproduced", "differ", "missing")} \
            if "compared" in verdict else verdict
        say(verdict.get("line") or verdict["skipped"])
    _write_demo_json(out, record, options, previous)  # the report shows these timings
    with _stage(record, "report") as say:
        from plexbench.reports.report_md import write_report

        path = write_report(out)
        say(f"wrote {path}")
    _write_demo_json(out, record, options, previous)  # now with the report stage
    return record


def not_drawn(notes: Sequence[str]) -> str:
    """Figures not drawn, per model group: notes "group: figure: reason" -> "group: fig1, fig2; ...".

    Example: ["6-class: radar: fewer than 3 axes", "6-class: score vs flops: no model ..."] ->
    "6-class: radar, score vs flops". The reasons are in demo.json (`plot_notes`).
    """
    groups: dict[str, list[str]] = {}
    for note in notes:
        group, _, rest = note.partition(": ")
        figure = rest.partition(": ")[0] or rest
        groups.setdefault(group, []).append(figure)
    return "; ".join(f"{g}: {', '.join(dict.fromkeys(f))}" for g, f in groups.items())


class _stage:
    """Context manager timing one stage; prints `[i/5] stage: line (x.x s)` when it ends."""

    def __init__(self, record: DemoRecord, name: str):
        self.record, self.name, self.line = record, name, ""

    def __enter__(self):
        print(f"[{STAGES.index(self.name) + 1}/{len(STAGES)}] {self.name} ...", file=sys.stderr, flush=True)
        self.start = time.perf_counter()
        return self._say

    def _say(self, line: str) -> None:
        self.line = line

    def __exit__(self, exc_type, *_):
        seconds = time.perf_counter() - self.start
        if exc_type is None:
            self.record.stages[self.name] = round(seconds, 2)
            print(f"[{STAGES.index(self.name) + 1}/{len(STAGES)}] {self.name}: {self.line} ({seconds:.1f} s)",
                  flush=True)
        return False


def _run_options(options: DemoOptions):
    from plexbench.tasks.runner import RunOptions

    return RunOptions(suite=options.suite, out_dir=Path(options.out_dir), models=tuple(options.models),
                      tasks=options.tasks, data_dir=options.data_dir, store_dir=options.store_dir,
                      tasks_dir=options.tasks_dir, batch_size=options.batch_size, limit=options.limit)


def _check_models(names: Sequence[str]) -> None:
    """Unknown model names fail at once (one line, with close matches), not after data preparation."""
    from plexbench.models import get_model

    for name in names:
        get_model(name)


def _load_tasks(run_options):
    from plexbench.tasks.runner import load_suite_tasks

    return load_suite_tasks(run_options)


def prepare_datasets(tasks, data_dir) -> tuple[int, int]:
    """Prepare every dataset the tasks read; returns (datasets needed, datasets prepared now).

    Only embedded datasets (offline builders) are prepared here; a task reading another one is an
    error naming it and how to prepare it (the demo never downloads).
    """
    from plexbench import paths
    from plexbench.data.prepare import prepare
    from plexbench.data.registry import get_dataset, is_available
    from plexbench.progress import track
    from plexbench.tasks import registry as R

    names = list(dict.fromkeys(name for task in tasks for name, _ in R.get_kind(task.kind).datasets(task)))
    foreign = [n for n in names if not get_dataset(n).embedded]
    if foreign:
        info = get_dataset(foreign[0])
        raise PlexbenchError(f"the demo prepares only embedded datasets; {', '.join(foreign[:3])} "
                             f"{'is' if len(foreign) == 1 else 'are'} not ({info.prepare_hint})")
    target = paths.data_dir(data_dir)
    prepared = 0
    with _quiet_tfds(any(not is_available(n, target) for n in names)):
        for name in track(names, len(names), "datasets", unit="ds"):
            prepared += bool(prepare(name, target))
    return len(names), prepared


@contextlib.contextmanager
def _quiet_tfds(active: bool):
    """TFDS's own per-split progress bars off while preparing (one bar per dataset is enough)."""
    if not active:
        yield
        return
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    try:
        yield
    finally:
        tfds.enable_progress_bar()


def write_leaderboards(out: Path) -> list[Path]:
    """`leaderboard_<preset>.{csv,long.csv,json,md,tex}` for both presets, as `plexbench leaderboard`."""
    from plexbench.reports.leaderboard import build_leaderboard, write_leaderboard

    written = []
    for preset in PRESETS:
        lb = build_leaderboard([out], preset=preset)
        written += list(write_leaderboard(lb, out / f"leaderboard_{preset}.csv").values())
    return written


def plots_key(out: Path) -> str:
    """sha256 of everything the figures are drawn from: the results (`metrics_long.csv`, the task
    JSONs with their curves, the models of `run.json`), the plotting code and data
    (`plexbench/reports/`) and the matplotlib version. Equal keys: redrawing would give the same files."""
    import hashlib
    import json

    import matplotlib

    from plexbench.reports import plots as plots_module

    digest = hashlib.sha256(matplotlib.__version__.encode())
    files = [out / "metrics_long.csv", *sorted((out / "tasks").glob("*/*.json"))]
    code = Path(plots_module.__file__).parent
    files += sorted(p for p in code.rglob("*") if p.is_file() and p.suffix in (".py", ".csv", ".json"))
    for path in files:
        digest.update(str(path.relative_to(code if path.is_relative_to(code) else out)).encode())
        digest.update(path.read_bytes() if path.is_file() else b"-")
    try:
        models = json.loads((out / "run.json").read_text()).get("models")
    except (OSError, ValueError):
        models = None
    digest.update(json.dumps(models, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def draw_plots(out: Path) -> tuple[list[str], list[str]]:
    """All figures, one `plots/<group>/` folder per model group; returns (relative paths, notes)."""
    from plexbench.reports.plots import plot_results

    with _fixed_pdf_date():
        paths, notes = plot_results([out], out / "plots", group_folders=True)
    return [p.relative_to(out).as_posix() for p in paths], notes


@contextlib.contextmanager
def _fixed_pdf_date():
    """SOURCE_DATE_EPOCH=0 while drawing (unless the user set it): matplotlib then writes a fixed PDF
    creation date, so redrawing unchanged results leaves the committed PDFs byte for byte the same."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        yield
        return
    os.environ["SOURCE_DATE_EPOCH"] = "0"
    try:
        yield
    finally:
        os.environ.pop("SOURCE_DATE_EPOCH", None)


def compare_with_reference(out: Path, reference: Path | None) -> dict:
    """The reproducibility verdict of `out` against `reference` (default: the checkout's
    results/embedded), written to `out/reproducibility.json`; {'skipped': why} when there is none."""
    from plexbench.paths import repo_root
    from plexbench.reports import reproducibility as R

    reference = Path(reference) if reference is not None else repo_root() / REFERENCE
    if not (reference / "metrics_long.csv").is_file():
        return {"skipped": f"no reference result at {reference}"}
    if reference.resolve() == Path(out).resolve():
        (Path(out) / R.FILE_NAME).unlink(missing_ok=True)  # a verdict against itself would say nothing
        return {"skipped": f"{out} is the reference itself (regenerated, nothing to compare)"}
    verdict = R.compare(out, reference)
    R.write_verdict(out, verdict)
    return {**verdict, "line": R.verdict_line(verdict)}


def remove_stale(out: Path, before: Sequence[str], now: Sequence[str]) -> int:
    """Delete the files of `before` (paths relative to `out`, under plots/) not in `now`; returns the count."""
    keep, removed = set(now), 0
    for rel in before:
        path = out / rel
        if rel in keep or not rel.startswith("plots/") or ".." in Path(rel).parts or not path.is_file():
            continue
        path.unlink()
        removed += 1
    return removed


# --------------------------------------------------------------------------- demo.json and summary


def _previous_record(out: Path) -> dict:
    from plexbench.reports.report_md import read_demo_json

    try:
        return read_demo_json(out)
    except PlexbenchError:
        return {}  # an unreadable demo.json is replaced; it only held timings


def _write_demo_json(out: Path, record: DemoRecord, options: DemoOptions, previous: dict) -> None:
    """demo.json: this run (top level) and up to HISTORY_LIMIT earlier runs under `history` (oldest first)."""
    from plexbench import fileio, paths

    history = [h for h in previous.get("history") or [] if isinstance(h, dict)]
    if previous.get("started"):  # earlier runs keep their timings and facts, not their file lists
        history.append({k: v for k, v in previous.items() if k not in ("history", "plots", "plot_notes", "plots_key")})
    doc = {
        "started": record.started, "stages": dict(record.stages), "total_s": round(record.total_s, 2),
        "load_average": record.load_average, "load_average_end": _load_average(), "cpu_count": os.cpu_count(),
        "suite": options.suite, "models": list(options.models), "tasks": list(options.tasks or []),
        "limit": options.limit, "data_dir": str(paths.data_dir(options.data_dir)),
        "store_dir": str(paths.store_dir(options.store_dir)), **record.facts,
        "history": history[-HISTORY_LIMIT:],
    }
    fileio.write_json(out / "demo.json", doc)


def summary(record: DemoRecord, out: Path) -> str:
    """The closing lines: seconds per stage, total, and where the report is."""
    from plexbench.table import format_table

    rows = [{"stage": s, "seconds": f"{record.stages[s]:.1f}"} for s in STAGES if s in record.stages]
    rows.append({"stage": "total", "seconds": f"{record.total_s:.1f}"})
    load = f" (load average {record.load_average:.2f} at the start)" if record.load_average is not None else ""
    verdict = record.facts.get("reproducibility") or {}
    if "compared" in verdict:
        check = (f"\nreproducibility: {verdict['reproduced']} of {verdict['compared']} reference values "
                 f"reproduced, {verdict['differ']} differ, {verdict['missing']} not compared "
                 f"({Path(out) / 'reproducibility.json'})")
    else:
        check = f"\nreproducibility: {verdict.get('skipped', 'not checked')}"
    return (format_table(rows) + f"\ndemo finished in {record.total_s:.1f} s{load}; "
            f"report: {Path(out) / 'report.md'}" + check)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _data_dir(data_dir) -> Path:
    from plexbench import paths

    return paths.data_dir(data_dir)
