"""Every dashboard panel's PromQL returns data from a live Prometheus under load."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.dashboard_queries import dashboard_queries
from tests.integration.conftest import StartCluster, wait_for

pytestmark = pytest.mark.integration


def test_every_dashboard_panel_returns_data_under_load(cluster: StartCluster) -> None:
    c = cluster([("a", 100.0), ("b", 100.0)])
    # Enough to fill the grid, so refusals (and their panels) have data too.
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: c.charge(f"ev-{i}", 11.0), range(24)))
    assert {status for status, _ in results} == {200, 503}
    for title, exprs in dashboard_queries():
        def answered(exprs: list[str] = exprs) -> list[str]:
            return [e for e in exprs if c.prometheus.query(e)]
        assert wait_for(answered, f"panel {title!r} to return data", timeout_s=30)
        for expr in exprs:
            c.prometheus.query(expr)   # every target at least evaluates (no 4xx)
