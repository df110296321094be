"""The rush hour: many charge requests at once through the public API."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True)
class RequestResult:
    status: str            # "200", "503 no_capacity", "connection_error", ...
    substation: str | None
    kw: float
    latency_s: float


@dataclass
class RushResult:
    results: list[RequestResult] = field(default_factory=list)
    started_at: float = 0.0   # wall clock, to compare with Prometheus scrape times
    wall_s: float = 0.0

    @property
    def per_substation(self) -> Counter[str]:
        return Counter(r.substation for r in self.results if r.substation)

    @property
    def kw_per_substation(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for r in self.results:
            if r.substation:
                totals[r.substation] = totals.get(r.substation, 0.0) + r.kw
        return totals

    @property
    def statuses(self) -> Counter[str]:
        return Counter(r.status for r in self.results)

    def latency_ms(self, quantile: float) -> float:
        ordered = sorted(r.latency_s for r in self.results)
        if not ordered:
            return 0.0
        index = min(len(ordered) - 1, max(0, round(quantile * len(ordered)) - 1))
        return ordered[index] * 1000.0

    @property
    def definite(self) -> bool:
        """Every request got a definite answer: charging, or refused with a reason."""
        return all(r.status == "200" or r.status.startswith(("4", "503 ")) for r in self.results)


async def _one(http: aiohttp.ClientSession, url: str, vehicle: str, kw: float, kwh: float,
               headers: dict[str, str]) -> RequestResult:
    started = time.perf_counter()
    body = {"vehicle_id": vehicle, "requested_kw": kw, "energy_kwh": kwh}
    try:
        async with http.post(url, json=body, headers=headers) as resp:
            data = await resp.json(content_type=None)
            status = str(resp.status)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "connection_error"
        return RequestResult(kind, None, kw, time.perf_counter() - started)
    except ValueError:
        return RequestResult(f"{status} not_json", None, kw, time.perf_counter() - started)
    latency = time.perf_counter() - started
    if status == "200" and isinstance(data, dict):
        return RequestResult(status, str(data.get("substation")), kw, latency)
    error = data.get("error", "") if isinstance(data, dict) else ""
    return RequestResult(f"{status} {error}".strip(), None, kw, latency)


async def run_rush_hour(ingress_url: str, requests: int = 50, concurrency: int = 10,
                        kw_choices: tuple[float, ...] = (11.0,), energy_kwh: float = 30.0,
                        api_key: str | None = None, duration_s: float = 60.0,
                        timeout_s: float = 10.0, seed: int = 1,
                        progress: Callable[[int, int], None] | None = None) -> RushResult:
    """Send `requests` charges with at most `concurrency` in flight; stop early at
    `duration_s`. One ClientSession for the whole run."""
    rng = random.Random(seed)
    kws = [rng.choice(kw_choices) for _ in range(requests)]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    result = RushResult(started_at=time.time())
    url = f"{ingress_url.rstrip('/')}/charge"
    queue = iter(enumerate(kws))
    deadline = time.monotonic() + duration_s
    started = time.perf_counter()

    async def worker(http: aiohttp.ClientSession) -> None:
        for i, kw in queue:   # the shared iterator hands each request to one worker
            if time.monotonic() > deadline:
                return
            result.results.append(await _one(http, url, f"ev-{i:05d}", kw, energy_kwh,
                                             headers))
            if progress is not None:
                progress(len(result.results), requests)

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        await asyncio.gather(*(worker(http) for _ in range(max(1, concurrency))))
    result.wall_s = time.perf_counter() - started
    return result


async def ingress_reachable(ingress_url: str) -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http, \
                http.get(f"{ingress_url.rstrip('/')}/healthz") as resp:
            return resp.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False
