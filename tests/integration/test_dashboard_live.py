"""Every dashboard panel's PromQL returns data from a live Prometheus under load, with the
dashboard's variables as Grafana fills them in: every one at All (`.*`), and each at a value
its own query finds in that Prometheus."""

from __future__ import annotations

import re
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.dashboard_queries import ALL, dashboard_queries, substitute, variables
from tests.integration.conftest import Cluster, Prometheus, StartCluster, http_json, wait_for

pytestmark = pytest.mark.integration

_LABEL_VALUES = re.compile(r"label_values\((.+), (\w+)\)")
_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|\[\]{}])")


def grafana_regex(values: list[str]) -> str:
    """A multi-value selection as Grafana writes it into `=~"..."` (escaped, then joined)."""
    escaped = [_REGEX_SPECIAL.sub(r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def variable_values(prometheus: Prometheus, name: str, chosen: dict[str, str]) -> list[str]:
    """What the variable's `label_values(selector, label)` lists, as Grafana asks for it (the
    label values API, over the dashboard's 15 minutes), with earlier variables substituted."""
    match = _LABEL_VALUES.fullmatch(variables()[name]["query"])
    assert match, variables()[name]["query"]
    selector, label = substitute(match.group(1), chosen), match.group(2)
    params = urllib.parse.urlencode({"match[]": selector, "start": f"{time.time() - 900:.0f}"})
    status, body = http_json("GET", f"{prometheus.url}/api/v1/label/{label}/values?{params}")
    assert status == 200, body
    return sorted(body["data"])


def assert_every_panel_returns_data(c: Cluster, values: dict[str, str]) -> None:
    for title, exprs in dashboard_queries():
        queries = [substitute(e, values) for e in exprs]

        def answered(queries: list[str] = queries) -> list[str]:
            return [q for q in queries if c.prometheus.query(q)]
        assert wait_for(answered, f"panel {title!r} to return data with {values}",
                        timeout_s=30)
        for query in queries:
            c.prometheus.query(query)   # every target at least evaluates (no 4xx)


def test_every_dashboard_panel_returns_data_under_load(cluster: StartCluster) -> None:
    c = cluster([("a", 100.0), ("b", 100.0)])
    # Enough to fill the grid, so refusals (and their panels) have data too.
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: c.charge(f"ev-{i}", 11.0), range(24)))
    assert {status for status, _ in results} == {200, 503}
    assert_every_panel_returns_data(c, {"job": ALL, "substation": ALL, "grid": ALL})

    # Values as a user picks them from each variable's list, in the dashboard's order.
    chosen = {"job": ALL, "substation": ALL, "grid": ALL}
    grids = variable_values(c.prometheus, "grid", chosen)
    # Until the services carry a `grid` label the list is empty and All (`.*`) stays.
    chosen["grid"] = grafana_regex(grids[:1]) if grids else ALL
    jobs = variable_values(c.prometheus, "job", chosen)
    assert {"substation", "balancer", "ingress"} <= set(jobs), jobs
    chosen["job"] = grafana_regex(jobs)        # several selected
    substations = variable_values(c.prometheus, "substation", chosen)
    assert {"a", "b"} <= set(substations), substations
    chosen["substation"] = grafana_regex(["a"])
    assert_every_panel_returns_data(c, chosen)
