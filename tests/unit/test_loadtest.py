from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp import web

from loadtest.__main__ import main
from loadtest.promcheck import PrometheusLoads, loads_after
from loadtest.report import render, shares_pct, summary
from loadtest.rush import RequestResult, RushResult, run_rush_hour


def fake_ingress(max_in_flight: list[int]) -> web.Application:
    in_flight = 0
    count = 0

    async def charge(request: web.Request) -> web.Response:
        nonlocal in_flight, count
        in_flight += 1
        max_in_flight[0] = max(max_in_flight[0], in_flight)
        body = await request.json()
        await asyncio.sleep(0.005)
        in_flight -= 1
        count += 1
        if count % 5 == 0:
            return web.json_response({"error": "no_capacity", "detail": "full"}, status=503)
        sub = "s1" if count % 2 else "s2"
        return web.json_response({"status": "charging", "substation": sub,
                                  "requested_kw": body["requested_kw"]})
    app = web.Application()
    app.router.add_post("/charge", charge)
    return app


async def test_rush_hour_counts_statuses_kw_and_respects_concurrency(aiohttp_server: Any
                                                                     ) -> None:
    peak = [0]
    server = await aiohttp_server(fake_ingress(peak))
    result = await run_rush_hour(str(server.make_url("")), requests=20, concurrency=4,
                                 kw_choices=(11.0,))
    assert len(result.results) == 20
    assert result.statuses == {"200": 16, "503 no_capacity": 4}
    assert sum(result.per_substation.values()) == 16
    assert sum(result.kw_per_substation.values()) == 16 * 11.0
    assert peak[0] <= 4 and result.definite
    assert 0 < result.latency_ms(0.5) <= result.latency_ms(0.99)


async def test_unreachable_ingress_is_a_connection_error_not_a_crash() -> None:
    result = await run_rush_hour("http://127.0.0.1:9", requests=3, concurrency=1)
    assert result.statuses == {"connection_error": 3} and not result.definite


def fake_prometheus(scrape_ts: float) -> web.Application:
    async def query(request: web.Request) -> web.Response:
        q = request.query["query"]
        if q.startswith("timestamp"):
            result = [{"metric": {"instance": "a"}, "value": [0, str(scrape_ts)]}]
        else:
            result = [{"metric": {"substation": "s1", "instance": "a"}, "value": [0, "22"]}]
        return web.json_response({"status": "success",
                                  "data": {"resultType": "vector", "result": result}})
    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    return app


async def test_loads_are_read_after_a_newer_scrape(aiohttp_server: Any) -> None:
    server = await aiohttp_server(fake_prometheus(scrape_ts=2000.0))
    loads = await asyncio.to_thread(loads_after, str(server.make_url("")), 1000.0, 1.0)
    assert loads == PrometheusLoads({"s1": 22.0})
    stale = await asyncio.to_thread(loads_after, str(server.make_url("")), 3000.0, 0.3)
    assert stale.error is not None and "no scrape newer than the run" in stale.error


def test_prometheus_unreachable_is_reported_not_raised() -> None:
    loads = loads_after("http://127.0.0.1:9", since=0.0, wait_s=0.0)
    assert loads.loads_kw == {} and "did not answer" in (loads.error or "")


async def test_report_shows_agreement_with_prometheus(aiohttp_server: Any) -> None:
    peak = [0]
    server = await aiohttp_server(fake_ingress(peak))
    result = await run_rush_hour(str(server.make_url("")), requests=4, concurrency=1)
    data = summary(result, PrometheusLoads({"s1": 0.0}), PrometheusLoads({"s1": 22.0,
                                                                        "s2": 5.0}))
    rows = {r["substation"]: r for r in data["substations"]}
    assert rows["s1"]["requests"] == 2 and rows["s1"]["agrees"] is True
    assert rows["s2"]["agrees"] is False     # 22 kW assigned, Prometheus says 5
    text = render(data)
    assert "s1" in text and "yes" in text and "NO" in text and "p99" in text
    assert json.loads(json.dumps(data))["statuses"] == {"200": 4}


@pytest.mark.parametrize(("counts", "shares"), [
    ({"a": 1, "b": 1, "c": 1}, {"a": 34, "b": 33, "c": 33}),
    ({"a": 2, "b": 1, "c": 0}, {"a": 67, "b": 33, "c": 0}),
    ({"a": 25, "b": 25}, {"a": 50, "b": 50}),
    ({f"s{i}": 1 for i in range(7)}, {"s0": 15, "s1": 15, **{f"s{i}": 14 for i in range(2, 7)}}),
    ({"a": 0, "b": 0}, {"a": 0, "b": 0}),
])
def test_shares_are_whole_percents_adding_up_to_100(counts: dict[str, int],
                                                     shares: dict[str, int]) -> None:
    assert shares_pct(counts) == shares
    assert sum(shares.values()) in (0, 100)


async def test_the_share_column_is_of_the_placed_requests_and_adds_up_to_100(
        aiohttp_server: Any) -> None:
    server = await aiohttp_server(fake_ingress([0]))
    result = await run_rush_hour(str(server.make_url("")), requests=20, concurrency=1)
    assert result.statuses == {"200": 16, "503 no_capacity": 4}
    data = summary(result, PrometheusLoads({}), PrometheusLoads({"s1": 88.0, "s2": 88.0,
                                                                 "s3": 0.0}))
    assert [row["share_pct"] for row in data["substations"]] == [50, 50, 0]
    shares = [int(line.split()[2].rstrip("%")) for line in render(data).splitlines()
              if line.startswith(("s1 ", "s2 ", "s3 "))]
    assert shares == [50, 50, 0]


def test_the_report_says_why_prometheus_does_not_confirm_the_run() -> None:
    rush = RushResult(results=[RequestResult("200", "s1", 11.0, 0.01),
                               RequestResult("200", "s2", 11.0, 0.01),
                               RequestResult("200", "s3", 11.0, 0.01)], wall_s=1.0)
    data = summary(rush, PrometheusLoads({"s1": 100.0, "s2": 50.0}),
                   PrometheusLoads({"s1": 111.0, "s2": 55.0}))
    assert data["disagreements"] == [
        "s2: 11.0 kW placed, but its substation_load went from 50.0 to 55.0 kW (+5.0)",
        "s3: 11.0 kW placed, but Prometheus has no substation_load for it"]
    assert "Prometheus does not confirm the run:\n  s2: 11.0 kW placed" in render(data)
    unasked = summary(rush, PrometheusLoads({}), PrometheusLoads({}, "it did not answer"))
    assert unasked["disagreements"] == ["Prometheus could not confirm the run: it did not answer"]
    agreed = summary(rush, PrometheusLoads({"s1": 0.0, "s2": 0.0, "s3": 0.0}),
                     PrometheusLoads({"s1": 11.0, "s2": 11.2, "s3": 10.6}))
    assert agreed["disagreements"] == [] and "confirm" not in render(agreed)


def grid_behind(loads: dict[str, float], counted: bool) -> tuple[web.Application,
                                                                 web.Application]:
    """An ingress placing every charge on s1 or s2 in turn, and a Prometheus reporting their
    load: with the charges counted, or (a broken scrape, a lying substation) without."""
    placed = [0]

    async def charge(request: web.Request) -> web.Response:
        body = await request.json()
        placed[0] += 1
        sub = f"s{placed[0] % 2 + 1}"
        if counted:
            loads[sub] += body["requested_kw"]
        return web.json_response({"status": "charging", "substation": sub})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def query(request: web.Request) -> web.Response:
        if request.query["query"].startswith("timestamp"):   # scraped after the run
            result = [{"metric": {"instance": "a"}, "value": [0, str(time.time() + 3600)]}]
        else:
            result = [{"metric": {"substation": s}, "value": [0, str(kw)]}
                      for s, kw in loads.items()]
        return web.json_response({"status": "success",
                                  "data": {"resultType": "vector", "result": result}})
    ingress, prometheus = web.Application(), web.Application()
    ingress.router.add_post("/charge", charge)
    ingress.router.add_get("/healthz", healthz)
    prometheus.router.add_get("/api/v1/query", query)
    return ingress, prometheus


@pytest.mark.parametrize(("counted", "exit_status"), [(True, 0), (False, 3)])
async def test_make_loadtest_fails_when_prometheus_does_not_confirm_the_run(
        aiohttp_server: Any, capsys: pytest.CaptureFixture[str], counted: bool,
        exit_status: int) -> None:
    ingress, prometheus = grid_behind({"s1": 100.0, "s2": 0.0}, counted)
    ingress_server = await aiohttp_server(ingress)
    prometheus_server = await aiohttp_server(prometheus)
    status = await asyncio.to_thread(main, [
        "--requests", "6", "--concurrency", "2", "--no-progress",
        "--ingress-url", str(ingress_server.make_url("")),
        "--prometheus-url", str(prometheus_server.make_url(""))])
    assert status == exit_status
    err = capsys.readouterr().err
    if counted:
        assert "Prometheus" not in err
    else:
        assert "loadtest: Prometheus does not confirm what the ingress answered: s1: 33.0 kW " \
            "placed, but its substation_load went from 100.0 to 100.0 kW (+0.0)" in err
