"""Several grids on one Prometheus: each balancer discovers, scores and routes to its own grid's
substations only, and its policy's graph link shows only its grid.

Two grids (`north`, `south`) share the test Prometheus and the same job name, as a staging and a
production grid scraped by one cluster Prometheus do. Their targets carry their grid's label
(targets/substation-<grid>.json, gridlb/promconfig.py), each balancer runs with `--grid`.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridlb.stack import ProcessGroup, ServiceSpec, free_port, wait_ready
from tests.integration.conftest import Prometheus, http_json, wait_for

pytestmark = pytest.mark.integration

TOKEN = "grids-internal-token"
ENV = {"GRID_INTERNAL_TOKEN": TOKEN}
GRIDS = {"north": ("n1", "n2"), "south": ("s1", "s2")}
Grids = dict[str, tuple[str, dict[str, str]]]


@pytest.fixture
def grids(prometheus: Prometheus, tmp_path: Path) -> Iterator[Grids]:
    """grid -> (its balancer's URL, {substation id: address})."""
    prometheus.forget("substation")
    group = ProcessGroup(tmp_path / "logs")
    started: Grids = {}
    try:
        for grid, subs in GRIDS.items():
            addresses: dict[str, str] = {}
            for sub in subs:
                port = free_port()
                spec = ServiceSpec(sub, [sys.executable, "-m", "substation", "--id", sub,
                                         "--port", str(port), "--capacity-kw", "500",
                                         "--speed-factor", "1"],
                                   f"http://127.0.0.1:{port}/healthz", env=ENV)
                wait_ready(spec.ready_url, group.start(spec))
                addresses[sub] = f"127.0.0.1:{port}"
            prometheus.set_targets("substation", list(addresses.values()), grid=grid,
                                   name=f"substation-{grid}")
            port = free_port()
            spec = ServiceSpec(f"balancer-{grid}", [
                sys.executable, "-m", "balancer", "--port", str(port), "--grid", grid,
                "--prometheus-url", prometheus.url, "--policy", "least-utilization"],
                f"http://127.0.0.1:{port}/healthz", env=ENV)
            wait_ready(spec.ready_url, group.start(spec))
            started[grid] = (f"http://127.0.0.1:{port}", addresses)
        yield started
    finally:
        group.stop_all()
        for grid in GRIDS:
            prometheus.set_targets("substation", [], grid=grid, name=f"substation-{grid}")
        prometheus.forget("substation")


def listed(balancer: str) -> set[str]:
    return {row["instance"] for row in http_json("GET", f"{balancer}/policy")[1]["substations"]
            if row["score"] is not None}


def test_two_grids_on_one_prometheus_never_route_to_each_other(
        grids: Grids, prometheus: Prometheus) -> None:
    for grid, (balancer, addresses) in grids.items():
        wait_for(lambda b=balancer, a=addresses: listed(b) == set(a.values()),  # type: ignore[misc]
                 f"the {grid} balancer to score exactly its own substations")
    for grid, (balancer, addresses) in grids.items():
        routed: Counter[str] = Counter()
        for n in range(12):
            status, body = http_json(
                "POST", f"{balancer}/dispatch",
                {"session_id": f"{grid}-{n}", "epoch": 1, "vehicle_id": f"ev-{n}",
                 "requested_kw": 11.0, "energy_kwh": 30.0},
                headers={"Authorization": f"Bearer {TOKEN}"})
            assert status == 200, body
            routed[body["routed_to"]] += 1
        assert set(routed) <= set(addresses.values()), (grid, routed)
        assert sum(routed.values()) == 12
        # The policy as evaluated names the grid; its graph link shows only that grid's series.
        view = http_json("GET", f"{balancer}/policy")[1]
        assert view["grid"] == grid and f'grid="{grid}"' in view["query"]
        assert "$grid" not in view["query"]
        link = urllib.parse.urlsplit(view["prometheus_graph_url"])
        expr = urllib.parse.parse_qs(link.query)["g0.expr"][0]
        assert expr == view["query"]
        shown = {s["metric"]["instance"] for s in prometheus.query(expr)}
        assert shown == set(addresses.values()), (grid, shown)


def test_without_a_grid_a_balancer_sees_only_series_without_the_label(
        grids: Grids, prometheus: Prometheus, tmp_path: Path) -> None:
    """`--grid` unset selects series that have no grid label: a labelled grid is not read as
    one big grid by a balancer that was not told its name."""
    for grid, (balancer, addresses) in grids.items():
        wait_for(lambda b=balancer, a=addresses: listed(b) == set(a.values()),  # type: ignore[misc]
                 f"the {grid} balancer to score its substations")
    port = free_port()
    group = ProcessGroup(tmp_path / "logs-unnamed")
    try:
        spec = ServiceSpec("balancer-unnamed", [
            sys.executable, "-m", "balancer", "--port", str(port),
            "--prometheus-url", prometheus.url],
            f"http://127.0.0.1:{port}/healthz", env=ENV)
        wait_ready(spec.ready_url, group.start(spec))
        wait_for(lambda: http_json("GET", f"http://127.0.0.1:{port}/policy")[1]["evaluated_at"],
                 "the unnamed balancer's first evaluation")
        assert listed(f"http://127.0.0.1:{port}") == set()
    finally:
        group.stop_all()
