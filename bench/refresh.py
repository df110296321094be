"""Policy refresh cost (Prometheus query + parse) at 10, 100 and 1,000 substations, against a
real Prometheus scraping a simulator; and Prometheus queries per second against request rate.

The simulator is one aiohttp process serving /metrics/{i} for N substations. Prometheus scrapes
it as N targets: each file-SD target group sets its own `instance` and `__metrics_path__`, so
the balancer sees N distinct substations exactly as it would see N processes.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from aiohttp import web

from balancer.policy import load_policy
from balancer.prom import GridQueries, make_client, read_snapshot
from bench.stack import API_KEY, bench_stack
from gridlb.promconfig import prometheus_command, render_prometheus_dir
from gridlb.stack import ProcessGroup, ServiceSpec, free_port, wait_ready

POLICIES = Path(__file__).resolve().parent.parent / "policies"


def simulator_app(n: int) -> web.Application:
    rng = random.Random(n)
    capacity = [rng.choice((100.0, 200.0, 300.0, 500.0)) for _ in range(n)]

    async def metrics(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        name = f"sim-{i:04d}"
        load = capacity[i] * rng.random()
        text = (f'substation_load{{substation="{name}"}} {load}\n'
                f'substation_capacity_kw{{substation="{name}"}} {capacity[i]}\n'
                f'substation_charge_requests_total{{substation="{name}",outcome="accepted"}} '
                f"{int(time.time()) % 100000}\n")
        return web.Response(text=text, content_type="text/plain")
    app = web.Application()
    app.router.add_get("/metrics/{i}", metrics)
    return app


class Simulator:
    """The simulator's event loop in a background thread, stopped on exit."""

    def __init__(self, n: int) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(simulator_app(n), access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Simulator:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _query(url: str, promql: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?" +
                                urllib.parse.urlencode({"query": promql}), timeout=10) as r:
        return list(json.loads(r.read())["data"]["result"])


def refresh_cost(n: int, rounds: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="sglb-refresh-") as tmp, Simulator(n) as sim:
        work = Path(tmp)
        port = free_port()
        config = render_prometheus_dir(work / "prom", 5.0 if n >= 1000 else 1.0, {})
        groups = [{"targets": [f"127.0.0.1:{sim.port}"],
                   "labels": {"instance": f"sim-{i:04d}:9100", "__metrics_path__": f"/metrics/{i}"}}
                  for i in range(n)]
        (work / "prom" / "targets" / "substation.json").write_text(json.dumps(groups))
        group = ProcessGroup(work / "logs")
        spec = ServiceSpec("prometheus", prometheus_command(config, work / "data",
                                                            f"127.0.0.1:{port}"),
                           f"http://127.0.0.1:{port}/-/ready")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(spec.ready_url, group.start(spec))
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                got = _query(url, 'count(substation_load{job="substation"})')
                if got and float(got[0]["value"][1]) == n:   # type: ignore[index]
                    break
                time.sleep(0.5)
            client = make_client(url, timeout_s=10)
            for name in ("least-utilization", "least-forecast-utilization", "rate-weighted"):
                policy = load_policy(POLICIES / f"{name}.yaml")
                samples = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    snap = read_snapshot(client, policy, GridQueries(), time.time())
                    samples.append((time.perf_counter() - started) * 1000)
                samples.sort()
                rows.append({"substations": n, "policy": name,
                             "seen": sum(v.score is not None for v in snap.substations.values()),
                             "p50_ms": statistics.median(samples),
                             "p99_ms": samples[int(0.99 * (len(samples) - 1))]})
        finally:
            group.stop_all()
    return rows


def queries_per_second_vs_request_rate(seconds: float = 8.0) -> list[dict[str, object]]:
    """Prometheus's own count of instant queries while requests flow at two rates, with the
    forecast policy (the one that queries most: the grid, the replicas, the forecast, itself)."""
    rows: list[dict[str, object]] = []
    with bench_stack(policy="least-forecast-utilization") as stack:
        prom = stack.grid.prometheus_url
        total = 'sum(prometheus_http_requests_total{handler="/api/v1/query"})'
        for rate in (10, 100):
            before = float(_query(prom, total)[0]["value"][1])   # type: ignore[index]
            sent = _drive(stack.grid.ingress_url, rate, seconds)
            after = float(_query(prom, total)[0]["value"][1])    # type: ignore[index]
            rows.append({"request_rate_per_s": rate, "requests_sent": sent,
                         "prometheus_queries_per_s": (after - before) / seconds})
    return rows


def _drive(ingress: str, rate: int, seconds: float) -> int:
    body = json.dumps({"vehicle_id": "ev", "requested_kw": 1.4,
                       "energy_kwh": 0.001}).encode()
    sent, started = 0, time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        if sent < elapsed * rate:
            request = urllib.request.Request(
                f"{ingress}/charge", data=body, method="POST",
                headers={"Content-Type": "application/json",
                         "Authorization": f"Bearer {API_KEY}"})
            with urllib.request.urlopen(request, timeout=5):
                sent += 1
        else:
            time.sleep(0.001)
    return sent


def run_refresh(quick: bool = False) -> list[dict[str, object]]:
    rounds = 5 if quick else 20
    rows = [row for n in (10, 100, 1000) for row in refresh_cost(n, rounds)]
    return rows + queries_per_second_vs_request_rate(4.0 if quick else 8.0)


if __name__ == "__main__":   # pragma: no cover
    for row in run_refresh(quick=True):
        print(row)
