"""Models that are scored, ranked and drawn together: those with the same number of classes.

A 6-class model runs other tasks than a 10-class one (the runner matches tasks to models by K),
so one table over both would compare numbers measured on different tasks: the paper preset,
which needs every column, would give every model NaN, and the plexbench preset would rank a model
scored on 5 columns beside one scored on 64. Leaderboards, plots, report.md and the demo all
group with `model_groups`, from the `model_num_classes` column the runner writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from plexbench.results_schema import Results


@dataclass(frozen=True)
class ModelGroup:
    """Models scored against each other: `slug` names their plot folder, `title` their section."""

    slug: str
    title: str
    models: tuple[str, ...]


def model_groups(long: pd.DataFrame) -> list[ModelGroup]:
    """Models grouped by their own number of classes (the `model_num_classes` column), see the
    module docstring.

    Groups are ordered by the first appearance of their first model; models keep their order of
    first appearance. The slug is the dataset of the group's first row (e.g. `fashion_mnist`,
    `fashion_mnist6`), made unique with `-2`, `-3`, ... When some model's K is unknown (a table
    without the column), everything is one group named after the first row's dataset.

    >>> df = pd.DataFrame({"model": ["a", "b", "c"], "dataset": ["x", "x6", "x"], "model_num_classes": [10, 6, 10]})
    >>> [(g.slug, g.models) for g in model_groups(df)]
    [('x', ('a', 'c')), ('x6', ('b',))]
    """
    models = list(dict.fromkeys(long["model"]))
    if "model_num_classes" not in long.columns or long["model_num_classes"].isna().any():
        return [ModelGroup(_slug(str(long["dataset"].iloc[0])), "all models", tuple(models))]
    k_of = {m: int(k) for m, k in zip(long["model"], long["model_num_classes"])}
    first_dataset = {m: d for m, d in zip(long["model"][::-1], long["dataset"][::-1])}  # first row wins
    by_k: dict[int, list[str]] = {}
    for m in models:
        by_k.setdefault(k_of[m], []).append(m)
    out, used = [], set()
    for k, members in by_k.items():
        slug = base = _slug(first_dataset[members[0]])
        i = 2
        while slug in used:
            slug, i = f"{base}-{i}", i + 1
        used.add(slug)
        out.append(ModelGroup(slug, f"{k}-class models", tuple(members)))
    return out


def group_results(results: Results, group: ModelGroup) -> Results:
    """`results` restricted to the group's models (rows and task files; run.json kept)."""
    return results.restricted(group.models)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._+-" else "-" for ch in text).strip("-") or "models"
