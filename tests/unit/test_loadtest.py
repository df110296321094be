from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from loadtest.promcheck import PrometheusLoads, loads_after
from loadtest.report import render, summary
from loadtest.rush import run_rush_hour


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
