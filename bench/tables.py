"""The results as Markdown tables, numbers written plainly: `2,390`, `23.9`, `0.0123`, never
`2.39e+03`; a missing value is `-`, never `None` or `nan`."""

from __future__ import annotations

import math


def plain(value: object) -> str:
    """One cell: three significant digits for fractions, whole numbers with thousands separators
    from 1,000 up."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        size = abs(value)
        if size >= 100 or value == 0:
            return f"{value:,.0f}"
        # Three significant digits, however small, without an exponent; 9.9996 is 10.0.
        decimals = 2 - math.floor(math.log10(size))
        if abs(round(value, decimals)) >= 10 ** (3 - decimals):
            decimals -= 1
        return f"{value:,.{max(decimals, 0)}f}"
    return str(value)


def table(rows: list[dict[str, object]]) -> str:
    """Markdown tables: one per shape of row (e.g. results and targets), in order of first."""
    if not rows:
        return "(no rows)"
    shapes = list(dict.fromkeys(frozenset(row) for row in rows))
    if len(shapes) > 1:
        return "\n\n".join(table([r for r in rows if frozenset(r) == shape])
                           for shape in shapes)
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(plain(row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join(lines)
