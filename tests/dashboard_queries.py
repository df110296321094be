"""The Grafana dashboard's queries, for tests that check them against Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent.parent / "grafana" / "dashboards" / "smart-grid.json"
# The query variables' "All": a regex that also matches series without the label, so a panel
# works whether or not its series carry it (`grid` until that label is added).
ALL = ".*"
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    """The panels that query (rows only group them)."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[tuple[str, list[str]]]:
    """(panel title, [expr of each target]) for every panel."""
    return [(p["title"], [t["expr"] for t in p["targets"]]) for p in panels()]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` as Grafana sends it with these variable values (`$name` and `${name}`); a
    variable without a value is an error, not left in the query."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]
    return _VARIABLE.sub(value, expr)
