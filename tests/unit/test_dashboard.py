from __future__ import annotations

import promql_parser
import pytest
import yaml

from tests.dashboard_queries import DASHBOARD, dashboard, dashboard_queries


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["title"] == "Smart Grid Load Balancer" and dash["uid"] == "smart-grid"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in dash["panels"]:
        assert panel["title"] and panel["description"], panel["id"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["datasource"]["uid"] == "prometheus"
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])


def test_dashboard_covers_what_an_operator_asks() -> None:
    titles = " | ".join(title.lower() for title, _ in dashboard_queries())
    for topic in ("load", "utilization", "requests per second", "decisions", "latency",
                  "snapshot age", "policy score", "active sessions", "energy"):
        assert topic in titles, topic


@pytest.mark.parametrize(("title", "exprs"), dashboard_queries())
def test_every_panel_query_parses(title: str, exprs: list[str]) -> None:
    for expr in exprs:
        promql_parser.parse(expr)


def test_provisioning_points_at_the_dashboard_and_datasource() -> None:
    root = DASHBOARD.parent.parent / "provisioning"
    datasource = yaml.safe_load((root / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load((root / "dashboards" / "dashboards.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
