"""The numbers published with the paper's figures (spec §10) and their plexbench columns.

`plex_paper_numbers.csv` (shipped as package data, a copy of shared/reference) has columns
`figure, axis, dataset, model, value, budget_or_quantile, source`. Each paper axis maps to
plexbench metric names (`AXIS_MAP`, below, is the documented table); a leaderboard shows a
paper number as a reference row (model `paper:<model>`, e.g. `paper:plex_l`) in every
column (metric, dataset) that a run also measured.

Mapping (paper axis @ dataset -> plexbench metric @ same dataset):

| paper axis | plexbench metric |
| --- | --- |
| `in_domain_accuracy` | `accuracy` |
| `label_uncertainty_soft_label_loss` | `soft_ce`, `soft_cross_entropy`, `loss`, `nll` (cross-entropy against the vote fractions) |
| `ood_<scorer>_<metric>_vs_<ood>` | `ood/<ood>/<scorer>/<metric>`; `places365` is `places365_small` (TFDS name) first |
| `subpopulation_accuracy_<q>` | `subpop/<q>` |
| `subpopulation_accuracy` with quantile `p05..p95` | `subpop/p05` ... `subpop/p95`; `p50` is `subpop/median` |
| `active_learning_accuracy` with budget `N labels` | `active_learning/margin/N/accuracy` (test accuracy with N labels acquired by margin, the acquisition the paper reports for Plex; the deterministic and SOTA numbers of the radar are shown in the same column, at the same label count) |
| `selective_prediction_accuracy_auc_ood` | none: area under the accuracy-vs-referral curve on the country-shifted retina set; plexbench has no retina dataset |

Datasets keep their names except `cifar10h`, which is plexbench's `cifar10_h` (tried first).
Candidates are tried in order (metric first, then dataset); the first one the run has is used.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

from plexbench.errors import PlexbenchError
from plexbench.reports.columns import Column

PAPER_CSV = "plex_paper_numbers.csv"
PAPER_COLUMNS = ("figure", "axis", "dataset", "model", "value", "budget_or_quantile", "source")
REFERENCE_PREFIX = "paper:"
REFERENCE_SOURCE = "Tran et al. 2022 (Plex), published figure numbers"

# Fixed axes; the `ood_*` family and the parametrised ones are handled in `plexbench_metrics`.
AXIS_MAP: dict[str, tuple[str, ...]] = {
    "in_domain_accuracy": ("accuracy",),
    "label_uncertainty_soft_label_loss": ("soft_ce", "soft_cross_entropy", "loss", "nll"),
    "selective_prediction_accuracy_auc_ood": (),
}
OOD_DATASET_ALIASES = {"places365": ("places365_small", "places365")}
# Paper dataset name -> plexbench dataset names, tried in order.
DATASET_ALIASES = {"cifar10h": ("cifar10_h", "cifar10h")}
_OOD_AXIS = re.compile(r"ood_(?P<scorer>[a-z]+)_(?P<metric>auroc|auprc|fpr95)_vs_(?P<ood>\w+)")
_SUBPOP_AXIS = re.compile(r"subpopulation_accuracy_(?P<q>p\d\d|mean|median|variance)")
_LABELS = re.compile(r"(\d+)\s*labels?")


@lru_cache(maxsize=1)
def _cached_numbers() -> pd.DataFrame:
    path = resources.files("plexbench.reports").joinpath("data").joinpath(PAPER_CSV)
    with resources.as_file(path) as p:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    missing = [c for c in PAPER_COLUMNS if c not in df.columns]
    if missing:
        raise PlexbenchError(f"{PAPER_CSV} lacks columns {', '.join(missing)}")
    df["value"] = df["value"].astype(np.float64)
    return df


def load_paper_numbers() -> pd.DataFrame:
    """The published numbers (a fresh copy): text columns as str, `value` float64."""
    return _cached_numbers().copy()


def plexbench_metrics(axis: str, budget_or_quantile: str = "") -> tuple[str, ...]:
    """Candidate plexbench metric names for a paper axis, best first; () when there is none.

    >>> plexbench_metrics("ood_msp_auroc_vs_places365")
    ('ood/places365_small/msp/auroc', 'ood/places365/msp/auroc')
    >>> plexbench_metrics("subpopulation_accuracy", "p50")
    ('subpop/median',)
    >>> plexbench_metrics("active_learning_accuracy", "1000 labels")
    ('active_learning/margin/1000/accuracy',)
    """
    if axis in AXIS_MAP:
        return AXIS_MAP[axis]
    if m := _OOD_AXIS.fullmatch(axis):
        oods = OOD_DATASET_ALIASES.get(m["ood"], (m["ood"],))
        return tuple(f"ood/{o}/{m['scorer']}/{m['metric']}" for o in oods)
    if m := _SUBPOP_AXIS.fullmatch(axis):
        return (f"subpop/{m['q']}",)
    if axis == "subpopulation_accuracy" and re.fullmatch(r"p\d\d", budget_or_quantile or ""):
        return ("subpop/median",) if budget_or_quantile == "p50" else (f"subpop/{budget_or_quantile}",)
    if axis == "active_learning_accuracy" and (labels := label_budget(budget_or_quantile)) is not None:
        return (f"active_learning/margin/{labels}/accuracy",)
    return ()


def label_budget(budget_or_quantile: str | None) -> int | None:
    """The number of labels of an active-learning budget of the CSV ("1000 labels"), or None.

    >>> label_budget("1000 labels"), label_budget("p50")
    (1000, None)
    """
    m = _LABELS.search(budget_or_quantile or "")
    return int(m[1]) if m else None


def mapping_table() -> list[dict]:
    """One dict per distinct (axis, budget_or_quantile) of the CSV: its plexbench candidates."""
    df = load_paper_numbers().drop_duplicates(["axis", "budget_or_quantile"])
    return [{"paper_axis": a, "budget_or_quantile": b, "plexbench_metrics": list(plexbench_metrics(a, b))}
            for a, b in zip(df["axis"], df["budget_or_quantile"])]


def reference_rows(columns, numbers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Paper numbers as long-format rows for the columns a run measured.

    `columns`: the `Column`s (metric, dataset) the run measured.
    Returns a DataFrame in the `metrics_long.csv` layout (+ `results_dir` = the CSV name),
    model `paper:<model>`, task `paper:<figure>`, NaN intervals and n. Rows with model
    `none` (no-pretraining variants of the subpopulation figure) are kept as `paper:none`.
    """
    numbers = load_paper_numbers() if numbers is None else numbers
    have = set(columns)
    rows = []
    for r in numbers.itertuples(index=False):
        candidates = [Column(m, d) for m in plexbench_metrics(r.axis, r.budget_or_quantile)
                      for d in DATASET_ALIASES.get(r.dataset, (r.dataset,))]
        col = next((c for c in candidates if c in have), None)
        if col is not None:
            rows.append({"model": REFERENCE_PREFIX + r.model, "task": f"paper:{r.figure}", "task_version": "",
                         "dataset": col.dataset, "split": "", "metric": col.metric, "value": r.value,
                         "ci_low": np.nan, "ci_high": np.nan, "n": np.nan, "results_dir": PAPER_CSV})
    cols = ["model", "task", "task_version", "dataset", "split", "metric", "value", "ci_low", "ci_high", "n", "results_dir"]
    return pd.DataFrame(rows, columns=cols)
