"""The whole charge path on a real Prometheus: ingress -> balancer -> substations."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import StartCluster, http_json

pytestmark = pytest.mark.integration

FIVE_MINUTE_REFRESH = """\
name: least-load
query: substation_load{job="substation"}
result: {substation_label: instance, better: lower, select: best, pending_adjustment: kw}
refresh_interval: 5m
"""


def rush_hour(charge: Callable[[str, float], tuple[int, Any]], count: int, kw: float,
              concurrency: int = 10) -> list[tuple[int, Any]]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda i: charge(f"ev-{i}", kw), range(count)))


def test_rush_hour_of_50_splits_evenly_over_two_equal_substations(cluster: StartCluster
                                                                   ) -> None:
    c = cluster([("substation1", 500.0), ("substation2", 500.0)])
    results = rush_hour(c.charge, 50, 11.0)
    assert [status for status, _ in results] == [200] * 50, results
    split = Counter(body["substation"] for _, body in results)
    assert set(split) == {"substation1", "substation2"}
    assert all(23 <= n <= 27 for n in split.values()), split
    # Prometheus agrees with what was assigned, once it has scraped after the last request.
    c.wait_scraped(since=time.time())
    reported = c.prometheus.values('substation_load{job="substation"}', label="substation")
    assert reported == {name: 11.0 * n for name, n in split.items()}


def test_least_utilization_fills_100_200_300_kw_to_the_same_level(cluster: StartCluster
                                                                   ) -> None:
    c = cluster([("small", 100.0), ("medium", 200.0), ("large", 300.0)])
    results = rush_hour(c.charge, 45, 10.0)
    assert [status for status, _ in results] == [200] * 45
    c.wait_scraped(since=time.time())
    utilization = c.prometheus.values(
        'substation_load{job="substation"} / on (instance) substation_capacity_kw', "instance")
    assert len(utilization) == 3
    # One 10 kW request is a 0.1 step on the 100 kW substation: greedy filling with fresh
    # numbers ends within one such step (the float sum needs the epsilon).
    assert max(utilization.values()) - min(utilization.values()) <= 0.10 + 1e-9, utilization
    assert max(utilization.values()) <= 1.0


def test_requests_beyond_total_capacity_get_no_capacity_and_nothing_overloads(
        cluster: StartCluster) -> None:
    c = cluster([("a", 50.0), ("b", 50.0)])
    results = rush_hour(c.charge, 14, 11.0)   # 8 fit (4 x 11 = 44 kW on each)
    statuses = Counter(status for status, _ in results)
    assert statuses == Counter({200: 8, 503: 6}), results
    refused = [body for status, body in results if status == 503]
    assert all(body["error"] == "no_capacity" for body in refused)
    c.wait_scraped(since=time.time())
    assert all(v <= 50.0 for v in c.prometheus.values("substation_load").values())


def test_a_refusing_substation_makes_the_balancer_pick_the_next(cluster: StartCluster) -> None:
    c = cluster([("a", 100.0), ("b", 100.0)], policy="least-load",
                balancer_args=("--max-snapshot-age", "600"),
                policy_overrides={"least-load": FIVE_MINUTE_REFRESH})
    status, _ = c.substation("b", "POST", "/charge", {"session_id": "pre-b", "vehicle_id": "x",
                                                       "requested_kw": 50, "energy_kwh": 500})
    assert status == 200
    c.wait_scraped(since=time.time())
    assert c.reload()[0] == 200                   # snapshot now: a = 0 kW, b = 50 kW
    status, _ = c.substation("a", "POST", "/charge", {"session_id": "pre-a", "vehicle_id": "y",
                                                       "requested_kw": 95, "energy_kwh": 500})
    assert status == 200                          # a is full, but the snapshot still says 0
    status, body = c.charge("ev-1", 11.0)
    assert status == 200
    assert body["substation"] == "b"
    with urllib.request.urlopen(f"{c.grid.balancer_url}/metrics") as resp:
        families = text_string_to_metric_families(resp.read().decode())
    refusals = {(s.labels["substation"], s.labels["reason"]): s.value
                for f in families if f.name == "balancer_forward_refusals"
                for s in f.samples if s.name.endswith("_total")}
    assert refusals == {("a", "over_capacity"): 1.0}


def test_policy_view_query_run_on_prometheus_gives_the_shown_scores(cluster: StartCluster
                                                                     ) -> None:
    c = cluster([("a", 100.0), ("b", 300.0)])
    rush_hour(c.charge, 6, 7.0)
    c.wait_scraped(since=time.time())
    c.reload()
    view = c.policy()
    direct = c.prometheus.values(view["query"], at=view["evaluated_at"])
    shown = {row["instance"]: row["score"] for row in view["substations"]}
    assert direct == pytest.approx(shown)
    assert view["prometheus_graph_url"].startswith(f"{c.prometheus.url}/graph?g0.expr=")


def test_a_broken_policy_edit_keeps_the_old_policy_serving(cluster: StartCluster) -> None:
    c = cluster([("a", 100.0), ("b", 100.0)])
    (c.policy_dir / "least-utilization.yaml").write_text(
        "name: least-utilization\nquery: nosuchfunc(substation_load)\n")
    status, body = c.reload()
    assert status == 422 and "unknown function with name 'nosuchfunc'" in body["detail"]
    view = c.policy()
    assert "nosuchfunc" not in view["query"] and "nosuchfunc" in view["reload_error"]
    status, body = c.charge("ev-1", 11.0)
    assert status == 200 and body["policy"] == "least-utilization"


def test_sessions_can_be_read_and_stopped_through_the_ingress(cluster: StartCluster) -> None:
    c = cluster([("a", 100.0)])
    status, body = c.charge("ev-1", 22.0, kwh=40.0)
    assert status == 200
    url = f"{c.grid.ingress_url}/sessions/{body['session_id']}"
    status, session = http_json("GET", url, headers=c.auth)
    assert status == 200 and session["state"] == "charging" and session["substation"] == "a"
    status, session = http_json("POST", f"{url}/stop", headers=c.auth)
    assert status == 200 and session["state"] == "stopped"
    status, session = http_json("GET", url, headers=c.auth)
    assert status == 200 and session["state"] == "stopped"
    status, load = c.substation("a", "GET", "/status")
    assert load["load_kw"] == 0.0
