"""What operators and Prometheus get wrong, on real processes and a real Prometheus: a policy
file that is not UTF-8 or holds a NaN, Prometheus answers cut off mid-body, a charge below the
minimum power, a substation at its session cap. Each is refused (4xx naming the file and field)
or counted, the previous policy keeps serving, and the refresh loop keeps evaluating once the
cause is gone."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from gridlb.stack import free_port
from tests.integration.conftest import Cluster, Prometheus, StartCluster, http_json, wait_for

pytestmark = pytest.mark.integration


class TruncatingProxy:
    """In front of Prometheus, in a background thread: passes its answers through, or cuts each
    one off mid-body (chunked encoding, then the connection closes) while `cut` is set."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.cut = threading.Event()
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.http is not None
        async with self.http.get(f"{self.upstream}{request.path_qs}") as upstream:
            body, status = await upstream.read(), upstream.status
        if not self.cut.is_set():
            return web.Response(body=body, status=status, content_type="application/json")
        response = web.StreamResponse(status=status,
                                      headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    async def _start(self) -> None:
        self.http = aiohttp.ClientSession()
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        await self.runner.cleanup()
        if self.http is not None:
            await self.http.close()

    def __enter__(self) -> TruncatingProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def metric(c: Cluster, name: str, **labels: str) -> float:
    """The balancer's own value of a metric, summed over its series with these labels."""
    with urllib.request.urlopen(f"{c.grid.balancer_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if (series == name or series.startswith(f"{name}{{")) and all(
                f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def evaluates_after(c: Cluster, since: float) -> None:
    """The refresh loop is alive: its evaluation time advances past `since`."""
    wait_for(lambda: (c.policy()["evaluated_at"] or 0) > since, f"an evaluation after {since}")


def assert_serves(c: Cluster) -> None:
    status, body = c.charge(f"ev-{time.monotonic_ns()}", 11.0)
    assert status == 200 and body["policy"] == "least-utilization", body


def test_policy_edits_that_are_not_utf8_or_hold_a_nan_are_refused_and_the_loop_goes_on(
        cluster: StartCluster) -> None:
    c = cluster([("a", 100.0), ("b", 100.0)])
    policy_file: Path = c.policy_dir / "least-utilization.yaml"
    good = policy_file.read_text()

    policy_file.write_bytes(good.encode() + b"# caf\xe9\n")
    edited = time.time()
    status, body = c.reload()
    assert status == 422 and body["error"] == "invalid_policy", body
    assert body["detail"].startswith(f"{policy_file}: file: not UTF-8 text"), body
    assert_serves(c)
    evaluates_after(c, edited)
    assert "not UTF-8" in c.policy()["reload_error"]

    policy_file.write_text(yaml.safe_dump({**yaml.safe_load(good), "tie_tolerance": float("nan")}))
    edited = time.time()
    status, body = c.reload()
    assert status == 422 and body["error"] == "invalid_policy", body
    assert body["detail"].startswith(f"{policy_file}: tie_tolerance: must be a finite number"), \
        body
    assert_serves(c)            # never a 500: the previous policy serves
    evaluates_after(c, edited)

    policy_file.write_text(good)
    status, body = c.reload()
    assert status == 200, body
    view = c.policy()
    assert view["reload_error"] is None and view["last_error"] is None, view
    assert metric(c, "balancer_policy_reloads_total", result="error") >= 2


def test_prometheus_answers_cut_off_mid_body_are_counted_and_the_loop_recovers(
        cluster: StartCluster, prometheus: Prometheus) -> None:
    with TruncatingProxy(prometheus.url) as proxy:
        c = cluster([("a", 100.0), ("b", 100.0)],
                    balancer_args=("--prometheus-url", proxy.url))
        proxy.cut.set()
        wait_for(lambda: metric(c, "balancer_prometheus_query_errors_total",
                                reason="truncated") >= 2, "two truncated answers counted")
        error = c.policy()["last_error"]
        assert error["reason"] == "truncated" and "cut off" in error["detail"], error
        status, ready = http_json("GET", f"{c.grid.balancer_url}/readyz")
        assert status == 200 and ready["refresh_loop"] == "running", ready
        assert ready["evaluations"]["consecutive_failures"] >= 2, ready
        assert metric(c, "balancer_policy_evaluation_consecutive_failures") >= 2
        assert_serves(c)            # the last snapshot serves meanwhile

        proxy.cut.clear()
        whole_again = time.time()
        evaluates_after(c, whole_again)
        assert c.policy()["last_error"] is None
        assert metric(c, "balancer_policy_evaluation_consecutive_failures") == 0
        assert c.policy()["mode"] == "normal"
        assert_serves(c)


def test_the_minimum_power_and_the_session_cap_hold_end_to_end(cluster: StartCluster) -> None:
    c = cluster([("a", 100.0)], substation_args=("--max-sessions", "2"))
    status, body = c.charge("ev-tiny", 5e-324)
    assert status == 422 and body["error"] == "invalid_request", body
    assert "requested_kw: must be at least 1.4 kW" in body["detail"], body
    for i in range(2):
        status, body = c.charge(f"ev-{i}", 1.4)      # the minimum itself is accepted
        assert status == 200, body
    status, body = c.charge("ev-third", 1.4)         # 97.2 kW free, but no session slot
    assert status == 503 and body["error"] == "no_capacity", body
    status, body = c.substation("a", "POST", "/charge", {
        "session_id": "direct", "epoch": 1, "vehicle_id": "ev", "requested_kw": 1.4,
        "energy_kwh": 1})
    assert status == 409 and body["error"] == "too_many_sessions", body
    status, load = c.substation("a", "GET", "/status")
    assert load["active_sessions"] == 2, load
