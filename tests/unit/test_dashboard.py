from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
import yaml

from tests.dashboard_queries import (
    ALL,
    DASHBOARD,
    dashboard,
    dashboard_queries,
    panels,
    substitute,
    variables,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
REGEX = promql_parser.MatchOp.Re
# Metrics whose series name a substation: their selectors follow the substation variable.
PER_SUBSTATION = {"substation_load", "substation_capacity_kw", "substation_load_forecast_kw",
                  "substation_active_sessions", "substation_energy_delivered_kwh_total",
                  "substation_charge_requests_total", "substation:substation_utilization:ratio",
                  "balancer_policy_score", "balancer_pending_ledger_kw",
                  "balancer_forward_refusals_total"}


def selectors(node: Any) -> Iterator[Any]:
    """Every VectorSelector of a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from selectors(arg)
    elif isinstance(node, (promql_parser.AggregateExpr, promql_parser.ParenExpr,
                           promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        yield from selectors(node.expr)


def matchers(selector: Any) -> dict[str, tuple[Any, str]]:
    return {m.name: (m.op, m.value) for m in selector.matchers.matchers}


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["title"] == "Smart Grid Load Balancer" and dash["uid"] == "smart-grid"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in panels():
        assert panel["title"] and panel["description"], panel["id"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["datasource"] == DATASOURCE, panel["id"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["id"]


def test_dashboard_is_importable_into_any_grafana_with_any_prometheus() -> None:
    dash = dashboard()
    (source,) = dash["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == \
        ("DS_PROMETHEUS", "datasource", "prometheus")
    variable = variables()["datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    # Grafana's import replaces ${DS_PROMETHEUS} with the chosen data source; provisioned, it
    # matches none and the variable falls back to the default Prometheus.
    assert variable["current"]["value"] == "${DS_PROMETHEUS}"

    def uids(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("uid"), str):
                yield node["uid"]
            for value in node.values():
                yield from uids(value)
        elif isinstance(node, list):
            for value in node:
                yield from uids(value)
    # No panel, target or variable names a particular data source.
    assert set(uids(dash["panels"])) | set(uids(dash["templating"])) == {"${datasource}"}


def test_grid_job_and_substation_variables_default_to_all_as_a_regex() -> None:
    found = variables()
    for name, label in (("grid", "grid"), ("job", "job"), ("substation", "substation")):
        variable = found[name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ALL
        assert variable["query"].startswith("label_values(")
        assert variable["query"].endswith(f", {label})"), variable["query"]
        promql_parser.parse(substitute(variable["query"][len("label_values("):-len(
            f", {label})")], {"job": ALL, "grid": ALL}))
    # Each list is narrowed by the variables before it.
    names = [v["name"] for v in dashboard()["templating"]["list"]]
    assert names == ["datasource", "grid", "job", "substation"]
    assert '$grid' in found["job"]["query"]
    assert '$grid' in found["substation"]["query"] and '$job' in found["substation"]["query"]


@pytest.mark.parametrize(("title", "exprs"), dashboard_queries())
def test_every_selector_follows_the_variables(title: str, exprs: list[str]) -> None:
    for expr in exprs:
        for selector in selectors(promql_parser.parse(expr)):
            found = matchers(selector)
            assert found.get("job") == (REGEX, "$job"), (title, selector.name)
            assert found.get("grid") == (REGEX, "$grid"), (title, selector.name)
            if selector.name in PER_SUBSTATION:
                assert found.get("substation") == (REGEX, "$substation"), (title, selector.name)


def test_a_summary_row_comes_first() -> None:
    first, *rest = dashboard()["panels"]
    assert (first["type"], first["title"], first["gridPos"]["y"]) == ("row", "Summary", 0)
    summary = [p for p in rest if p["gridPos"]["y"] == 1]
    assert {p["type"] for p in summary} == {"stat"}
    titles = " | ".join(p["title"].lower() for p in summary)
    for topic in ("substations up", "load vs capacity", "charges per second", "5xx ratio"):
        assert topic in titles, topic
    assert all(p["gridPos"]["y"] > 1 for p in rest if p not in summary)


def test_utilization_panels_draw_thresholds_and_let_an_overload_show() -> None:
    utilization = [p for p in panels() if p["fieldConfig"]["defaults"].get("unit") ==
                   "percentunit" and "utilization" in p["title"].lower()]
    assert len(utilization) >= 2
    for panel in utilization:
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] in {"line", "dashed", "line+area",
                                                                 "dashed+area"}, panel["title"]
        assert [s["value"] for s in defaults["thresholds"]["steps"]][1:] == [0.9, 1]
        # Not capped: a substation over its capacity must show above 100 %.
        assert "max" not in defaults and defaults["softMax"] == 1, panel["title"]


def test_dashboard_covers_what_an_operator_asks() -> None:
    titles = " | ".join(title.lower() for title, _ in dashboard_queries())
    for topic in ("load", "utilization", "requests per second", "decisions", "latency",
                  "snapshot age", "policy score", "active sessions", "energy", "curtailed"):
        assert topic in titles, topic


@pytest.mark.parametrize(("title", "exprs"), dashboard_queries())
def test_every_panel_query_parses_with_the_variables_substituted(title: str,
                                                                 exprs: list[str]) -> None:
    for values in ({"job": ALL, "substation": ALL, "grid": ALL},
                   {"job": "(substation|balancer|ingress)", "substation": "substation1",
                    "grid": ALL}):
        for expr in exprs:
            promql_parser.parse(substitute(expr, values))


def test_substitute_leaves_no_variable_and_refuses_an_unknown_one() -> None:
    assert substitute('x{a=~"$job", b=~"${grid}"}', {"job": "j", "grid": ".*"}) == \
        'x{a=~"j", b=~".*"}'
    with pytest.raises(KeyError, match=r"no value for \$nope"):
        substitute('x{a=~"$nope"}', {})


def test_provisioning_points_at_the_dashboard_and_datasource() -> None:
    root = DASHBOARD.parent.parent / "provisioning"
    datasource = yaml.safe_load((root / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    assert datasource["datasources"][0]["isDefault"] is True   # what ${datasource} falls back to
    provider = yaml.safe_load((root / "dashboards" / "dashboards.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
