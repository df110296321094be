"""The Grafana dashboard's queries, for tests that check them against Prometheus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent.parent / "grafana" / "dashboards" / "smart-grid.json"


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_queries() -> list[tuple[str, list[str]]]:
    """(panel title, [expr of each target]) for every panel."""
    return [(p["title"], [t["expr"] for t in p["targets"]]) for p in dashboard()["panels"]]
