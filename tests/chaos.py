"""`make chaos`: steady traffic through the ingress while parts of the system fail.

Faults, in order: one substation is killed (SIGKILL) and later restarted with its state file;
Prometheus is stopped for longer than the balancer's maximum snapshot age, then restarted.
The client behaves as a careful client should: every request carries an Idempotency-Key and is
retried with the same key on 5xx (other than no_capacity) or a connection error.

The report counts what must be zero: other errors, sessions the ingress reported that the
substation does not know, several sessions for one idempotency key, overloads in Prometheus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from gridlb.grid import GridConfig, SubstationSpec
from gridlb.promconfig import write_targets
from gridlb.stack import (
    ProcessGroup,
    ServiceSpec,
    balancer_spec,
    free_port,
    ingress_spec,
    prometheus_spec,
    substation_spec,
    wait_ready,
)

TOKEN = "chaos-internal-token"
API_KEY = "chaos-api-key"
CAPACITY_KW = 150.0


@dataclass
class ChaosReport:
    requests_sent: int = 0
    answered_200: int = 0
    answered_503: dict[str, int] = field(default_factory=dict)
    other_errors: dict[str, int] = field(default_factory=dict)
    unknown_sessions: int = 0
    duplicate_sessions: int = 0
    overloads_seen: int = 0
    recovery_s: dict[str, float | None] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.other_errors or self.unknown_sessions or self.duplicate_sessions
                    or self.overloads_seen)

    def render(self) -> str:
        lines = [
            "chaos run report",
            f"  requests sent                     {self.requests_sent}",
            f"  answered 200                      {self.answered_200}",
            f"  answered 503 with a reason        {sum(self.answered_503.values())} "
            f"{dict(self.answered_503) or ''}",
            f"  other errors (must be 0)          {sum(self.other_errors.values())} "
            f"{dict(self.other_errors) or ''}",
            f"  sessions unknown to substation    {self.unknown_sessions}  (must be 0)",
            f"  duplicate sessions for one key    {self.duplicate_sessions}  (must be 0)",
            f"  overloads seen in Prometheus      {self.overloads_seen}  (must be 0)",
        ]
        for fault, seconds in self.recovery_s.items():
            shown = "did not recover" if seconds is None else f"{seconds:.1f} s"
            lines.append(f"  recovery: {fault:<24}{shown}")
        lines.append("  result: " + ("PASS" if self.clean else "FAIL"))
        return "\n".join(lines)


@dataclass
class Outcome:
    key: str
    status: int = 0
    error: str = ""
    session_ids: set[str] = field(default_factory=set)
    substation: str = ""
    answered_at: float = 0.0


class ChaosStack:
    def __init__(self, run_dir: Path, max_snapshot_age_s: float) -> None:
        self.run_dir = run_dir
        subs = (SubstationSpec("sub-a", free_port(), CAPACITY_KW),
                SubstationSpec("sub-b", free_port(), CAPACITY_KW))
        self.grid = GridConfig(substations=subs, policy="least-utilization",
                               ingress_port=free_port(), balancer_port=free_port(),
                               prometheus_port=free_port(), scrape_interval_s=0.5,
                               speed_factor=3600.0)
        self.group = ProcessGroup(run_dir / "logs")
        env = {"GRID_INTERNAL_TOKEN": TOKEN}
        self.specs: dict[str, ServiceSpec] = {"prometheus": prometheus_spec(self.grid, run_dir)}
        for s in subs:
            self.specs[s.id] = substation_spec(self.grid, s.id, s.port, s.capacity_kw, run_dir,
                                               env)
        self.specs["balancer"] = balancer_spec(
            self.grid, env, ("--max-snapshot-age", str(max_snapshot_age_s)))
        self.specs["ingress"] = ingress_spec(self.grid, run_dir,
                                             {**env, "GRID_API_KEYS": API_KEY})
        self.addresses = {s.id: f"127.0.0.1:{s.port}" for s in subs}

    def start(self, name: str) -> None:
        spec = self.specs[name]
        wait_ready(spec.ready_url, self.group.start(spec))

    def start_all(self) -> None:
        for name in self.specs:
            self.start(name)
        write_targets(self.run_dir / "prometheus", "substation", self.addresses.values())

    async def is_normal(self, http: aiohttp.ClientSession) -> bool:
        return await self.mode(http) == "normal"

    async def sees_every_substation(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(f"{self.grid.balancer_url}/readyz") as resp:
                body = await resp.json()
        except aiohttp.ClientError:
            return False
        return bool(body.get("usable_substations") == len(self.addresses))

    async def mode(self, http: aiohttp.ClientSession) -> str:
        try:
            async with http.get(f"{self.grid.balancer_url}/readyz") as resp:
                return str((await resp.json()).get("mode"))
        except aiohttp.ClientError:
            return "unreachable"


async def charge_until_final(http: aiohttp.ClientSession, url: str, outcome: Outcome,
                             kw: float) -> None:
    """One logical request, retried with its Idempotency-Key as a careful client would."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": outcome.key}
    body = {"vehicle_id": f"ev-{outcome.key}", "requested_kw": kw, "energy_kwh": kw * 0.05}
    for _ in range(12):
        try:
            async with http.post(url, json=body, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=10)) as resp:
                data = await resp.json(content_type=None) or {}
                outcome.status, outcome.error = resp.status, str(data.get("error", ""))
                if resp.status == 200:
                    outcome.session_ids.add(data["session_id"])
                    outcome.substation = data["substation"]
                    break
                if resp.status == 503 and outcome.error == "no_capacity":
                    break
                if resp.status < 500:
                    break
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            outcome.status, outcome.error = 0, type(exc).__name__
        await asyncio.sleep(0.5)
    outcome.answered_at = time.time()


async def drive_traffic(http: aiohttp.ClientSession, stack: ChaosStack, duration_s: float,
                        rate_per_s: float, outcomes: list[Outcome]) -> None:
    """Append one Outcome per logical request to `outcomes` (read live by the fault script)."""
    url = f"{stack.grid.ingress_url}/charge"
    tasks = []
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < duration_s:
        outcome = Outcome(key=f"chaos-{i}")
        outcomes.append(outcome)
        tasks.append(asyncio.create_task(charge_until_final(http, url, outcome, 7.4)))
        if i % 10 == 0:   # the same key twice at once: must give one session
            tasks.append(asyncio.create_task(charge_until_final(http, url, outcome, 7.4)))
        i += 1
        await asyncio.sleep(1.0 / rate_per_s)
    await asyncio.gather(*tasks)


async def inject_faults(http: aiohttp.ClientSession, stack: ChaosStack, duration_s: float,
                        max_age_s: float, outcomes: list[Outcome]) -> dict[str, float | None]:
    recovery: dict[str, float | None] = {}
    await asyncio.sleep(duration_s * 0.15)
    stack.group.kill("sub-a")
    await asyncio.sleep(duration_s * 0.15)
    await asyncio.to_thread(stack.start, "sub-a")
    restarted = time.time()
    recovery["substation killed"] = await until(
        lambda: any(o.substation == "sub-a" and o.answered_at > restarted for o in outcomes),
        duration_s, since=restarted)
    await asyncio.sleep(max(0.0, duration_s * 0.5 - (time.time() - restarted)) / 2)
    stack.group.stop("prometheus")
    await asyncio.sleep(max_age_s + 2.0)
    await asyncio.to_thread(stack.start, "prometheus")
    back = time.time()
    recovery["prometheus stopped"] = await until_async(lambda: stack.is_normal(http),
                                                       duration_s, since=back)
    return recovery


async def until(condition: Callable[[], bool], timeout_s: float, since: float
                ) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.time() - since
        await asyncio.sleep(0.1)
    return None


async def until_async(condition: Callable[[], Awaitable[bool]], timeout_s: float,
                      since: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return time.time() - since
        await asyncio.sleep(0.1)
    return None


async def audit(http: aiohttp.ClientSession, stack: ChaosStack, outcomes: list[Outcome],
                report: ChaosReport, window_s: float) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    holders: dict[str, list[str]] = defaultdict(list)
    for outcome in outcomes:
        report.duplicate_sessions += max(0, len(outcome.session_ids) - 1)
        for session_id in outcome.session_ids:
            for sub, address in stack.addresses.items():
                async with http.get(f"http://{address}/sessions/{session_id}",
                                    headers=headers) as resp:
                    if resp.status == 200:
                        holders[session_id].append(sub)
            if not holders[session_id]:
                report.unknown_sessions += 1
            report.duplicate_sessions += max(0, len(holders[session_id]) - 1)
    query = (f"max_over_time(substation_load[{int(window_s) + 30}s]) "
             "> on (instance) substation_capacity_kw")
    async with http.get(f"{stack.grid.prometheus_url}/api/v1/query",
                        params={"query": query}) as resp:
        report.overloads_seen = len((await resp.json())["data"]["result"])


async def run_chaos(duration_s: float = 60.0, rate_per_s: float = 15.0,
                    max_snapshot_age_s: float = 3.0, run_dir: Path | None = None
                    ) -> ChaosReport:
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        stack = ChaosStack(run_dir or Path(tmp), max_snapshot_age_s)
        report = ChaosReport()
        try:
            await asyncio.to_thread(stack.start_all)
            async with aiohttp.ClientSession() as http:
                # A fresh Prometheus has no samples for a few seconds: start once it has.
                if await until_async(lambda: stack.sees_every_substation(http), 60.0,
                                     time.time()) is None:
                    raise RuntimeError("the balancer did not see every substation in 60 s")
                outcomes: list[Outcome] = []
                traffic = asyncio.create_task(
                    drive_traffic(http, stack, duration_s, rate_per_s, outcomes))
                report.recovery_s = await inject_faults(http, stack, duration_s,
                                                        max_snapshot_age_s, outcomes)
                await traffic
                summarize(report, outcomes)
                await audit(http, stack, outcomes, report, duration_s)
        finally:
            stack.group.stop_all()
        return report


def summarize(report: ChaosReport, outcomes: list[Outcome]) -> None:
    refused: Counter[str] = Counter()
    other: Counter[str] = Counter()
    report.requests_sent = len(outcomes)
    for o in outcomes:
        if o.status == 200:
            report.answered_200 += 1
        elif o.status == 503 and o.error:
            refused[o.error] += 1
        else:
            other[f"{o.status} {o.error}".strip()] += 1
    report.answered_503, report.other_errors = dict(refused), dict(other)


def main() -> None:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--max-snapshot-age", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(run_chaos(args.duration, args.rate, args.max_snapshot_age))
    print(json.dumps(asdict(report), indent=2) if args.json else report.render())
    sys.exit(0 if report.clean else 1)


if __name__ == "__main__":
    main()
