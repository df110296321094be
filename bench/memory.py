"""Resident memory of each service before and after many sessions have come and gone.

Sessions are tiny (they complete within a second at the stack's speed factor), so what stays
resident is what the services keep: the substations' ended-session table (bounded by count and
age), the balancer's session pins (bounded), the ingress's store (on disk)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from bench.stack import API_KEY, bench_stack


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def push_sessions(ingress: str, count: int, concurrency: int = 32) -> int:
    body = {"vehicle_id": "ev", "requested_kw": 1.4, "energy_kwh": 0.0005}   # the minimum power
    headers = {"Authorization": f"Bearer {API_KEY}"}
    ok = 0
    remaining = iter(range(count))

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal ok
        for _ in remaining:
            async with http.post(f"{ingress}/charge", json=body, headers=headers) as resp:
                ok += resp.status == 200
                await resp.read()
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return ok


def run_memory(quick: bool = False) -> list[dict[str, object]]:
    total = 10_000 if quick else 100_000
    rows: list[dict[str, object]] = []
    with bench_stack() as stack:
        names = ["ingress", "balancer", *(s.id for s in stack.grid.substations)]
        before = {n: rss_mib(stack.pid(n)) for n in names}
        checkpoints: dict[int, dict[str, float]] = {}
        done = 0
        started = time.monotonic()
        for step in (total // 2, total - total // 2):
            done += asyncio.run(push_sessions(stack.grid.ingress_url, step))
            checkpoints[done] = {n: rss_mib(stack.pid(n)) for n in names}
        elapsed = time.monotonic() - started
        for name in names:
            rows.append({"service": name, "rss_before_mib": before[name],
                         **{f"rss_after_{k}_mib": v[name] for k, v in checkpoints.items()}})
        rows.append({"sessions": done, "seconds": elapsed})
    return rows
