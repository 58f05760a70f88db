"""Reports over several targets: which layer answered each case, side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lab.hostile.replay import NOBODY, Result


def cell(result: Result) -> str:
    """Return one table cell: the answer and the layer, marked when wrong or a known gap."""
    answer = result.answer.summary()
    text = answer if result.layer == NOBODY else f"{answer} {result.layer}"
    if result.gaps:
        return f"{text} (gap)"
    return text if result.passed else f"{text} FAIL"


def matrix(columns: Mapping[str, Sequence[Result]]) -> str:
    """Return a markdown table: one row per case, one column per target (same cases each)."""
    names = list(columns)
    rows = list(zip(*(columns[name] for name in names), strict=True))
    lines = [
        "| case | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for row in rows:
        case = row[0].case
        lines.append(f"| {case.label} | " + " | ".join(cell(result) for result in row) + " |")
    return "\n".join(lines)


def layer_counts(columns: Mapping[str, Sequence[Result]]) -> str:
    """Return a markdown table: per target, how many cases each layer answered."""
    layers = sorted({r.layer for results in columns.values() for r in results})
    lines = [
        "| target | " + " | ".join(layers) + " | known gaps | failed |",
        "|---|" + "---|" * (len(layers) + 2),
    ]
    for name, results in columns.items():
        counts = [sum(r.layer == layer for r in results) for layer in layers]
        gaps = sum(bool(r.gaps) for r in results)
        failed = sum(not r.passed for r in results)
        lines.append(f"| {name} | " + " | ".join(map(str, [*counts, gaps, failed])) + " |")
    return "\n".join(lines)
