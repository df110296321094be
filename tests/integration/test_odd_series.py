"""One substation exporting odd series (a duplicate, NaN) on a real Prometheus: the others keep
being scored and chosen, whatever the policy."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from aiohttp import web

from gridlb.promconfig import REPO_ROOT
from gridlb.stack import free_port
from tests.integration.conftest import Cluster, Prometheus, StartCluster, http_json, wait_for

pytestmark = pytest.mark.integration

ODD_EXPORTS = {
    # Two load series for one substation (an extra label): `/ on (instance)` is many-to-many.
    "duplicate": 'substation_load{substation="odd",phase="a"} 80\n'
                 'substation_load{substation="odd",phase="b"} 90\n'
                 'substation_capacity_kw{substation="odd"} 100\n',
    "nan": 'substation_load{substation="odd"} NaN\n'
           'substation_capacity_kw{substation="odd"} 100\n',
}
# A policy written the way the shipped ones were before: one odd series fails it as a whole.
FRAGILE = """\
name: least-utilization
query: substation_load{job="substation"} / on (instance) substation_capacity_kw{job="substation"}
result: {substation_label: instance, better: lower, select: best, pending_adjustment: utilization}
refresh_interval: 1s
"""


def reload_policy(c: Cluster, name: str) -> tuple[int, dict[str, object]]:
    status, body = http_json("POST", f"{c.grid.balancer_url}/-/reload", {"policy": name},
                             headers=c.internal)
    return status, body


class OddExporter:
    """A metrics endpoint in a background thread, scraped as one more substation."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app, access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.text, content_type="text/plain")

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> OddExporter:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(params=sorted(ODD_EXPORTS))
def odd(request: pytest.FixtureRequest) -> Iterator[OddExporter]:
    with OddExporter(ODD_EXPORTS[request.param]) as exporter:
        yield exporter


def add_odd_target(c: Cluster, prometheus: Prometheus, odd: OddExporter) -> None:
    prometheus.set_targets("substation", [*c.addresses.values(), odd.address])
    wait_for(lambda: odd.address in prometheus.values('up{job="substation"} == 1'),
             "Prometheus to scrape the odd substation")
    wait_for(lambda: any(r["instance"] == odd.address for r in c.policy()["substations"]),
             "the balancer to evaluate with the odd substation present")
    c.reload()   # evaluate now, with every series in place


def charges_land_on_the_others(c: Cluster, count: int) -> None:
    landed = []
    for _ in range(count):
        status, body = c.charge(f"ev-{time.monotonic_ns()}", 11.0)
        assert status == 200, body
        landed.append(body["substation"])
    assert set(landed) == {"a", "b"}, landed


def test_one_odd_substation_never_stops_the_others_being_scored_and_chosen(
        cluster: StartCluster, prometheus: Prometheus, odd: OddExporter) -> None:
    shipped = (REPO_ROOT / "policies" / "least-utilization.yaml").read_text()
    c = cluster([("a", 100.0), ("b", 100.0)], policy_overrides={
        "least-utilization": FRAGILE,
        "shipped": shipped.replace("name: least-utilization", "name: shipped")})
    add_odd_target(c, prometheus, odd)

    # A policy with a fragile join: the odd substation fails the query for everyone, so the
    # grid is still read and every substation is ranked by utilization instead.
    view = c.policy()
    rows = {r["substation"]: r for r in view["substations"]}
    assert rows["a"]["load_kw"] == 0.0 and rows["b"]["load_kw"] == 0.0
    if "phase" in odd.text:   # the duplicate fails the query as a whole: nobody is scored
        assert view["last_error"]["reason"] == "execution", view
        assert "matching" in view["last_error"]["detail"]   # many-to-one or many-to-many
        assert any("ranked by utilization" in p for p in view["problems"])
    else:                     # NaN is per series: the others keep their scores
        assert rows["a"]["score"] == 0.0 and rows["b"]["score"] == 0.0, view
    assert view["mode"] == "normal"
    charges_land_on_the_others(c, 4)

    # The shipped policy (one series per side, joined on every identifying label) keeps
    # scoring the others: the odd one is scored pessimistically (duplicate) or not at all (NaN).
    status, body = reload_policy(c, "shipped")
    assert status == 200, body
    c.wait_scraped(since=time.time())
    reload_policy(c, "shipped")
    view = c.policy()
    scores = {r["substation"]: r["score"] for r in view["substations"]}
    assert scores["a"] is not None and scores["b"] is not None, view
    assert scores["a"] < 0.5 and scores["b"] < 0.5
    assert scores["odd"] == (0.9 if "phase" in odd.text else None), view
    assert view["last_error"] is None, view["last_error"]
    charges_land_on_the_others(c, 4)
