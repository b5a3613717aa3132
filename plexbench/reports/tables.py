"""Rendering leaderboard tables as Markdown and LaTeX (booktabs). Pure string functions.

A table is `header: list[str]` plus `rows: list[list[str]]` of already formatted cells;
`format_number` turns floats into cells (NaN -> the missing mark). Bold marks the best
run model per metric row (by the metric's direction); ties are all bold.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

MISSING_MD = "–"
MISSING_TEX = "--"
_TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}


def format_number(value, digits: int = 4, missing: str = MISSING_MD) -> str:
    """`0.912345` -> `'0.9123'` (fixed `digits` decimals); NaN/None -> `missing`; ints stay ints."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def escape_tex(text: str) -> str:
    """Escape LaTeX special characters in plain text (`a_b & c` -> `a\\_b \\& c`)."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; `align` per column 'l' or 'r' (default: first l, rest r)."""
    align = list(align or ["l"] + ["r"] * (len(header) - 1))
    esc = [[str(c).replace("|", r"\|") for c in row] for row in [list(header), *rows]]
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(esc[0]) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines) + "\n"


def latex_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, caption: str = "", label: str = "",
                align: Sequence[str] | None = None) -> str:
    """A booktabs `table` environment; cells must already be LaTeX (use `escape_tex` on text)."""
    align = "".join(align or ["l"] + ["r"] * (len(header) - 1))
    lines = [r"\begin{table}[t]", r"\centering", r"\small"]
    if caption:
        lines.append(rf"\caption{{{caption}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def best_mask(values: Sequence[float], direction: str | None) -> list[bool]:
    """True at the best finite value(s) given 'higher'/'lower'; all False without a direction."""
    arr = np.asarray(values, dtype=np.float64)
    if direction not in ("higher", "lower") or not np.isfinite(arr).any():
        return [False] * len(arr)
    target = np.nanmax(arr) if direction == "higher" else np.nanmin(arr)
    return [bool(v == target) for v in arr]
