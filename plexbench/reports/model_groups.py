"""Models that are scored, ranked and drawn together: same input modality, same number of classes.

A 6-class model runs other tasks than a 10-class one (the runner matches tasks to models by K),
so one table over both would compare numbers measured on different tasks: the paper preset,
which needs every column, would give every model NaN, and the plexbench preset would rank a model
scored on 5 columns beside one scored on 64. The same holds across modalities: the 6-class
language zoo models (fortunes topics) and the 6-class Fashion-MNIST vision models share K but
not a single task. Leaderboards, plots (the radar, score vs cost), report.md and the demo all
group with `model_groups`.

The rule: a model's group key is (its modality, its own K).
- K: the `model_num_classes` column the runner writes (the model's own class count, also on rows
  whose K differs, e.g. few-shot probes).
- modality: the `modality` column (plexbench.results_schema: "image" or "text", what the task's
  dataset holds, declared once by the data registry's `DatasetInfo.text`; older results get it on
  read from their run.json). A model's modality is the set of its rows' non-empty modalities
  joined with '+' (a model evaluated on both would be "image+text", a group of its own); a
  model whose rows all have an empty modality (unknown) is grouped by K alone, apart from models
  whose modality is known.
Nothing is decided from model, task or dataset names.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from plexbench.results_schema import Results

# How a group title names a modality (the column's values: plexbench.results_schema.MODALITIES).
MODALITY_TITLES = {"image": "vision", "text": "language"}


@dataclass(frozen=True)
class ModelGroup:
    """Models scored against each other: `slug` names their plot folder, `title` their section."""

    slug: str
    title: str
    models: tuple[str, ...]


def model_modalities(long: pd.DataFrame) -> dict[str, str]:
    """model -> its modality (module docstring): the sorted non-empty values of its rows' `modality`
    joined with '+', or "" when none is known (or the table has no such column).

    >>> df = pd.DataFrame({"model": ["a", "a", "b", "c"], "modality": ["image", "image", "text", ""]})
    >>> model_modalities(df)
    {'a': 'image', 'b': 'text', 'c': ''}
    """
    models = list(dict.fromkeys(long["model"]))
    if "modality" not in long.columns:
        return {m: "" for m in models}
    seen: dict[str, set[str]] = {m: set() for m in models}
    for m, value in zip(long["model"], long["modality"]):
        if isinstance(value, str) and value:
            seen[m].add(value)
    return {m: "+".join(sorted(seen[m])) for m in models}


def model_groups(long: pd.DataFrame) -> list[ModelGroup]:
    """Models grouped by (modality, own number of classes), see the module docstring.

    Groups are ordered by the first appearance of their first model; models keep their order of
    first appearance. The slug is the dataset of the group's first row (e.g. `fashion_mnist`,
    `fashion_mnist6`, `fortunes`), made unique with `-2`, `-3`, ... The title is "K-class models";
    when the table holds more than one modality, it names the group's ("6-class vision models",
    "6-class language models"). When some model's K is unknown (a table without the column),
    everything is one group named after the first row's dataset.

    >>> df = pd.DataFrame({"model": ["a", "b", "c"], "dataset": ["x", "x6", "x"], "model_num_classes": [10, 6, 10]})
    >>> [(g.slug, g.models) for g in model_groups(df)]
    [('x', ('a', 'c')), ('x6', ('b',))]
    >>> df = df.assign(modality=["image", "image", "text"])
    >>> [(g.slug, g.title, g.models) for g in model_groups(df)]
    [('x', '10-class vision models', ('a',)), ('x6', '6-class vision models', ('b',)), ('x-2', '10-class language models', ('c',))]
    """
    models = list(dict.fromkeys(long["model"]))
    if "model_num_classes" not in long.columns or long["model_num_classes"].isna().any():
        return [ModelGroup(_slug(str(long["dataset"].iloc[0])), "all models", tuple(models))]
    k_of = {m: int(k) for m, k in zip(long["model"], long["model_num_classes"])}
    modality_of = model_modalities(long)
    first_dataset = {m: d for m, d in zip(long["model"][::-1], long["dataset"][::-1])}  # first row wins
    by_key: dict[tuple[str, int], list[str]] = {}
    for m in models:
        by_key.setdefault((modality_of[m], k_of[m]), []).append(m)
    named = len({modality for modality, _ in by_key}) > 1
    out, used = [], set()
    for (modality, k), members in by_key.items():
        slug = base = _slug(first_dataset[members[0]])
        i = 2
        while slug in used:
            slug, i = f"{base}-{i}", i + 1
        used.add(slug)
        out.append(ModelGroup(slug, _title(k, modality if named else ""), tuple(members)))
    return out


def _title(k: int, modality: str) -> str:
    if not modality:
        return f"{k}-class models"
    words = "+".join(MODALITY_TITLES.get(part, part) for part in modality.split("+"))
    return f"{k}-class {words} models"


def group_results(results: Results, group: ModelGroup) -> Results:
    """`results` restricted to the group's models (rows and task files; run.json kept)."""
    return results.restricted(group.models)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._+-" else "-" for ch in text).strip("-") or "models"
