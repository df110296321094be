"""`make chaos`: steady traffic through the ingress while parts of the system fail.

It begins with a renamed-substation restart: a grid whose substations carry other ids (the
shipped grid's `substation1`, `substation2`, with load) runs until Prometheus has scraped it,
and is replaced by the run's grid (`sub-a`, `sub-b`) on the same ports and the same Prometheus
database, which still shows the previous ids' series for its 5-minute lookback (a restarted
Prometheus writes no staleness markers for them). Every balancer replica must score the new
ids and a charge must be routed to one within two scrape intervals of the stack being ready
(every process ready and every replica seeing the new ids, what `make up` waits for before its
banner).

Then faults, in order, each started when the system is in the state it breaks (conditions, not
timers): one substation is killed (SIGKILL) and restarted with its state file; Prometheus is
stopped for longer than the balancer's maximum snapshot age (degraded mode must be entered) and
restarted (normal mode must come back); a balancer replica is killed (SIGKILL) with requests in
flight and restarted. `make chaos` runs it with one balancer and again with two replicas.

The client behaves as a careful client should: every request carries an Idempotency-Key and is
retried with the same key until a definite answer (200, no_capacity, or a 4xx other than 409).

The report counts what must be zero: double bookings (a session id held by two substations),
untrue answers (a non-replay "200 charging" naming a substation that does not hold the session,
or that admitted it after the answer), keys that received two session ids, overloads in
Prometheus, and 5xx answers beyond their bounds.

`make chaos ARGS="--nemesis --seed N --duration S"` runs the randomized nemesis instead
(tests/nemesis/runner.py): a seeded schedule of overlapping faults on every process, and a
checker over every substation's durable history (docs/nemesis.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    routable,
    substation_spec,
    wait_ready,
)

TOKEN = "chaos-internal-token"
API_KEY = "chaos-api-key"
CAPACITY_KW = 150.0
SCRAPE_INTERVAL_S = 0.5
# The grid before the renamed restart: the same ports under other ids, with another capacity
# and some load, so that a left-over series could not pass for the new substations' own.
PREVIOUS_IDS = ("substation1", "substation2")
PREVIOUS_CAPACITY_KW = 100.0
PREVIOUS_LOAD_KW = 22.0
# Answers after which a careful client stops retrying.
_FINAL_4XX = {400, 401, 413, 415, 422}
# 5xx answers a client may see while a part is down, each bounded by the share of requests
# sent while it was (the retries then succeed).
_TRANSIENT = ("outcome_unknown", "balancer_unavailable", "balancer_timeout", "no_snapshot",
              "no_substations", "deadline_exceeded", "bad_gateway")


@dataclass
class ChaosReport:
    replicas: int = 1
    requests_sent: int = 0
    answered_200: int = 0
    no_capacity: int = 0
    transient_5xx: dict[str, int] = field(default_factory=dict)
    other_errors: dict[str, int] = field(default_factory=dict)
    double_bookings: int = 0
    untrue_answers: int = 0
    keys_with_two_sessions: int = 0
    unknown_sessions: int = 0
    overloads_seen: int = 0
    degraded_entered: bool = False
    recovery_s: dict[str, float | None] = field(default_factory=dict)
    scrape_interval_s: float = SCRAPE_INTERVAL_S
    # The renamed restart: series of the previous ids Prometheus still showed when the stack
    # was ready (the case under test: must be > 0); seconds from every process being ready to
    # every replica seeing the new ids (Prometheus's first scrapes after its restart); seconds
    # from then until every replica scored the new ids and a charge was routed to one.
    renamed_leftover_series: int = 0
    renamed_seen_s: float | None = None
    renamed_routed_s: float | None = None

    @property
    def renamed_bound_s(self) -> float:
        return 2 * self.scrape_interval_s

    @property
    def renamed_ok(self) -> bool:
        return self.renamed_leftover_series > 0 and self.renamed_routed_s is not None \
            and self.renamed_routed_s <= self.renamed_bound_s

    @property
    def transient_bound(self) -> int:
        """At most one transient answer per three requests sent: each fault lasts seconds of
        a run of a minute; more means the system did not recover."""
        return max(20, self.requests_sent // 3)

    @property
    def clean(self) -> bool:
        return not (self.other_errors or self.double_bookings or self.untrue_answers
                    or self.keys_with_two_sessions or self.unknown_sessions
                    or self.overloads_seen) \
            and sum(self.transient_5xx.values()) <= self.transient_bound \
            and self.degraded_entered and all(v is not None for v in self.recovery_s.values()) \
            and self.renamed_ok

    def render(self) -> str:
        lines = [
            f"chaos run report ({self.replicas} balancer replica"
            f"{'s' if self.replicas > 1 else ''})",
            f"  requests sent                     {self.requests_sent}",
            f"  answered 200                      {self.answered_200}",
            f"  answered 503 no_capacity          {self.no_capacity}",
            f"  transient 5xx seen (retried)      {sum(self.transient_5xx.values())} "
            f"(bound {self.transient_bound}) {dict(self.transient_5xx) or ''}",
            f"  other errors (must be 0)          {sum(self.other_errors.values())} "
            f"{dict(self.other_errors) or ''}",
            f"  double bookings (must be 0)       {self.double_bookings}",
            f"  untrue answers (must be 0)        {self.untrue_answers}",
            f"  keys with two session ids         {self.keys_with_two_sessions}  (must be 0)",
            f"  sessions unknown to substations   {self.unknown_sessions}  (must be 0)",
            f"  overloads seen in Prometheus      {self.overloads_seen}  (must be 0)",
            f"  degraded mode entered and left    {'yes' if self.degraded_entered else 'NO'}",
        ]
        for fault, seconds in self.recovery_s.items():
            shown = "did not recover" if seconds is None else f"{seconds:.1f} s"
            lines.append(f"  recovery: {fault:<24}{shown}")
        seen, routed = self.renamed_seen_s, self.renamed_routed_s
        lines += [
            f"  renamed restart: {', '.join(PREVIOUS_IDS)} -> sub-a, sub-b on the same ports "
            "and the same Prometheus data",
            f"    previous ids' series visible    {self.renamed_leftover_series}  "
            "(must be > 0: the case under test)",
            "    stack ready                     " + (
                "never (the run stopped here)" if seen is None else
                f"{seen:.1f} s after every process was (every replica sees the new ids)"),
            "    scored and routed               " + (
                "never" if routed is None else f"{routed:.2f} s after the stack was ready") +
            f" (bound {self.renamed_bound_s:g} s: two scrape intervals) "
            + ("ok" if self.renamed_ok else "FAIL"),
        ]
        lines.append("  result: " + ("PASS" if self.clean else "FAIL"))
        return "\n".join(lines)


@dataclass
class Answer:
    status: int
    error: str
    body: dict[str, Any]
    replayed: bool
    at: float


@dataclass
class Outcome:
    key: str
    answers: list[Answer] = field(default_factory=list)

    @property
    def final(self) -> Answer | None:
        return self.answers[-1] if self.answers else None

    @property
    def session_ids(self) -> set[str]:
        return {a.body["session_id"] for a in self.answers if a.status == 200}


class ChaosStack:
    def __init__(self, run_dir: Path, max_snapshot_age_s: float, replicas: int = 1) -> None:
        self.run_dir = run_dir
        subs = (SubstationSpec("sub-a", free_port(), CAPACITY_KW),
                SubstationSpec("sub-b", free_port(), CAPACITY_KW))
        self.grid = GridConfig(substations=subs, policy="least-utilization",
                               ingress_port=free_port(), balancer_port=free_port(),
                               prometheus_port=free_port(), scrape_interval_s=SCRAPE_INTERVAL_S,
                               speed_factor=3600.0)
        self.group = ProcessGroup(run_dir / "logs")
        env = {"GRID_INTERNAL_TOKEN": TOKEN}
        self.specs: dict[str, ServiceSpec] = {"prometheus": prometheus_spec(self.grid, run_dir)}
        self.previous = [substation_spec(self.grid, old, s.port, PREVIOUS_CAPACITY_KW, run_dir,
                                         env) for old, s in zip(PREVIOUS_IDS, subs, strict=True)]
        for s in subs:
            self.specs[s.id] = substation_spec(self.grid, s.id, s.port, s.capacity_kw, run_dir,
                                               env)
        ports = [self.grid.balancer_port] + [free_port() for _ in range(replicas - 1)]
        self.balancer_urls = [f"http://127.0.0.1:{p}" for p in ports]
        for n, port in enumerate(ports):
            spec = balancer_spec(self.grid, env, ("--max-snapshot-age", str(max_snapshot_age_s),
                                                  "--forward-timeout", "1"),
                                 replica=n + 1, port=port)
            self.specs[spec.name] = spec
        self.specs["ingress"] = ingress_spec(self.grid, run_dir,
                                             {**env, "GRID_API_KEYS": API_KEY},
                                             self.balancer_urls, ("--request-timeout", "5"))
        self.addresses = {s.id: f"127.0.0.1:{s.port}" for s in subs}

    def start(self, name: str) -> None:
        spec = self.specs[name]
        wait_ready(spec.ready_url, self.group.start(spec))

    def run_previous_grid(self, timeout_s: float = 60.0) -> None:
        """The grid before the renamed restart, until Prometheus has scraped its load.
        Prometheus stops before the substations, so it writes no staleness markers for them
        (as when `make up` stops it before it scrapes them again): their series stay visible."""
        self.start("prometheus")
        for spec in self.previous:
            wait_ready(spec.ready_url, self.group.start(spec))
            base = spec.ready_url.removesuffix("/healthz")
            body = {"session_id": f"previous-{spec.name}", "epoch": 1, "vehicle_id": "ev-old",
                    "requested_kw": PREVIOUS_LOAD_KW, "energy_kwh": 1000}
            request = urllib.request.Request(
                f"{base}/charge", data=json.dumps(body).encode(), method="POST",
                headers={"Content-Type": "application/json",
                         "Authorization": f"Bearer {TOKEN}"})
            urllib.request.urlopen(request, timeout=10).close()   # raises unless 2xx
        query = f'substation_load{{substation=~"{"|".join(PREVIOUS_IDS)}"}} > 0'
        deadline = time.monotonic() + timeout_s
        while len(prometheus_query(self.grid.prometheus_url, query)) < len(self.previous):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not scrape {PREVIOUS_IDS} in {timeout_s} s")
            time.sleep(0.2)
        self.group.stop("prometheus")
        for spec in self.previous:
            self.group.stop(spec.name)

    def start_all(self) -> None:
        for name in self.specs:
            self.start(name)
        write_targets(self.run_dir / "prometheus", "substation", self.addresses.values(),
                      self.grid.name)
        write_targets(self.run_dir / "prometheus", "balancer",
                      [u.removeprefix("http://") for u in self.balancer_urls], self.grid.name)

    async def readyz(self, http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
        try:
            async with http.get(f"{url}/readyz") as resp:
                return dict(await resp.json())
        except (aiohttp.ClientError, ValueError):
            return {}

    async def policy_views(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """Each replica's GET /policy ({} for one that does not answer)."""
        views = []
        for url in self.balancer_urls:
            try:
                async with http.get(f"{url}/policy") as resp:
                    views.append(dict(await resp.json()))
            except (aiohttp.ClientError, ValueError):
                views.append({})
        return views

    async def sees_every_substation(self, http: aiohttp.ClientSession) -> bool:
        """Every replica can route to every substation under its id in this grid (what
        `make up` waits for before its banner)."""
        wanted = set(self.addresses)
        return all(wanted <= routable(view) for view in await self.policy_views(http))

    async def mode(self, http: aiohttp.ClientSession) -> str:
        return str((await self.readyz(http, self.balancer_urls[0])).get("mode", "unreachable"))

    async def in_flight(self, http: aiohttp.ClientSession, url: str) -> float:
        try:
            async with http.get(f"{url}/metrics") as resp:
                text = await resp.text()
        except aiohttp.ClientError:
            return 0.0
        for line in text.splitlines():
            if line.startswith("balancer_dispatches_in_flight "):
                return float(line.split()[1])
        return 0.0


def prometheus_query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(f"{prometheus_url}/api/v1/query?{query}", timeout=5) as resp:
            return list(json.loads(resp.read())["data"]["result"])
    except OSError:   # not up yet
        return []


async def charge_once(http: aiohttp.ClientSession, url: str, outcome: Outcome,
                      kw: float) -> Answer:
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": outcome.key}
    body = {"vehicle_id": f"ev-{outcome.key}", "requested_kw": kw, "energy_kwh": kw * 0.05}
    try:
        async with http.post(url, json=body, headers=headers,
                             timeout=aiohttp.ClientTimeout(total=10)) as resp:
            data = await resp.json(content_type=None) or {}
            answer = Answer(resp.status, str(data.get("error", "")), data,
                            resp.headers.get("Idempotent-Replayed") == "true", time.time())
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        answer = Answer(0, type(exc).__name__, {}, False, time.time())
    outcome.answers.append(answer)
    return answer


async def charge_until_final(http: aiohttp.ClientSession, url: str, outcome: Outcome,
                             kw: float) -> None:
    """One logical request, retried with its Idempotency-Key as a careful client would."""
    for _ in range(60):
        answer = await charge_once(http, url, outcome, kw)
        if answer.status == 200 or answer.status in _FINAL_4XX or answer.error == "no_capacity":
            return
        await asyncio.sleep(0.5)


async def drive_traffic(http: aiohttp.ClientSession, stack: ChaosStack, duration_s: float,
                        rate_per_s: float, outcomes: list[Outcome], faults_done: asyncio.Event
                        ) -> None:
    """Append one Outcome per logical request to `outcomes` (read live by the fault script),
    for `duration_s` and until every fault has been injected and recovered from (at most
    three times as long)."""
    url = f"{stack.grid.ingress_url}/charge"
    tasks = []
    started = time.monotonic()
    i = 0
    while (time.monotonic() - started < duration_s or not faults_done.is_set()) and \
            time.monotonic() - started < 3 * duration_s:
        outcome = Outcome(key=f"chaos-{stack.run_dir.name}-{i}")
        outcomes.append(outcome)
        tasks.append(asyncio.create_task(charge_until_final(http, url, outcome, 7.4)))
        if i % 10 == 0:   # the same key twice at once: must give one session
            tasks.append(asyncio.create_task(charge_until_final(http, url, outcome, 7.4)))
        i += 1
        await asyncio.sleep(1.0 / rate_per_s)
    await asyncio.gather(*tasks)


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float,
                since: float | None = None) -> float | None:
    """Seconds from `since` until `condition()` holds, or None if it does not in time."""
    since = time.time() if since is None else since
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return time.time() - since
        await asyncio.sleep(0.1)
    return None


async def check_renamed_grid(http: aiohttp.ClientSession, stack: ChaosStack,
                             report: ChaosReport, outcomes: list[Outcome],
                             processes_ready: float) -> bool:
    """The stack restarted with renamed substations: ready once every replica sees the new ids
    (a restarted Prometheus first scrapes after a few seconds); then every replica must score
    them, with no left-over value, and a charge must be routed to one. False if the stack never
    got ready: there is no grid to run the faults on."""
    report.renamed_seen_s = await until(lambda: stack.sees_every_substation(http), 60.0,
                                        processes_ready)
    if report.renamed_seen_s is None:
        return False
    ready = time.time()
    leftovers = await asyncio.to_thread(
        prometheus_query, stack.grid.prometheus_url,
        f'substation_capacity_kw{{substation=~"{"|".join(PREVIOUS_IDS)}"}}')
    report.renamed_leftover_series = len(leftovers)
    new_ids = set(stack.addresses)
    probe = Outcome(key=f"renamed-{stack.run_dir.name}")
    outcomes.append(probe)      # audited with the rest

    async def scored_and_routed() -> bool:
        for view in await stack.policy_views(http):
            rows = {row["substation"]: row for row in view.get("substations", [])}
            if set(rows) != new_ids or view.get("mode") != "normal" or any(
                    row["score"] != 0.0 or row["load_kw"] != 0.0
                    or row["capacity_kw"] != CAPACITY_KW for row in rows.values()):
                return False
        answer = await charge_once(http, f"{stack.grid.ingress_url}/charge", probe, 7.4)
        return answer.status == 200 and answer.body.get("substation") in new_ids
    report.renamed_routed_s = await until(scored_and_routed, 30.0, ready)
    return True


async def inject_faults(http: aiohttp.ClientSession, stack: ChaosStack, duration_s: float,
                        outcomes: list[Outcome], report: ChaosReport) -> None:
    recovery = report.recovery_s
    served = sum(1 for o in outcomes if o.final is not None and o.final.status == 200)

    async def answered_since(count: int) -> bool:
        return sum(1 for o in outcomes if o.final is not None and o.final.status == 200) \
            >= count
    await until(lambda: answered_since(served + 20), duration_s)      # traffic is flowing
    stack.group.kill("sub-a")
    await asyncio.to_thread(stack.start, "sub-a")
    restarted = time.time()

    async def sub_a_serves() -> bool:
        return any(o.final is not None and o.final.status == 200
                   and o.final.body.get("substation") == "sub-a" and o.final.at > restarted
                   for o in outcomes)
    recovery["substation killed"] = await until(sub_a_serves, duration_s, restarted)

    stack.group.stop("prometheus")

    async def degraded() -> bool:
        return await stack.mode(http) == "degraded"
    report.degraded_entered = await until(degraded, duration_s) is not None
    await asyncio.to_thread(stack.start, "prometheus")
    back = time.time()

    async def normal() -> bool:
        return await stack.mode(http) == "normal"
    recovery["prometheus stopped"] = await until(normal, duration_s, back)
    report.degraded_entered = report.degraded_entered and \
        recovery["prometheus stopped"] is not None

    async def busy() -> bool:
        return await stack.in_flight(http, stack.balancer_urls[0]) >= 1
    await until(busy, duration_s)
    stack.group.kill("balancer")                  # with a request in flight if there was one
    await asyncio.to_thread(stack.start, "balancer")
    killed = time.time()

    async def balancer_serves() -> bool:
        return await answered_since(served + 1) and \
            any(o.final is not None and o.final.status == 200 and o.final.at > killed
                for o in outcomes)
    recovery["balancer killed"] = await until(balancer_serves, duration_s, killed)


async def audit(http: aiohttp.ClientSession, stack: ChaosStack, outcomes: list[Outcome],
                report: ChaosReport, window_s: float) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    held: dict[str, dict[str, dict[str, Any]]] = {}     # session id -> substation -> session
    for sub, address in stack.addresses.items():
        async with http.get(f"http://{address}/sessions", headers=headers) as resp:
            for session in (await resp.json())["sessions"]:
                held.setdefault(session["session_id"], {})[sub] = session
    report.double_bookings = sum(1 for subs in held.values() if len(subs) > 1)
    for outcome in outcomes:
        report.keys_with_two_sessions += len(outcome.session_ids) > 1
        for session_id in outcome.session_ids:
            report.unknown_sessions += session_id not in held
        for a in outcome.answers:
            if a.status != 200 or a.replayed or a.body.get("status") != "charging":
                continue
            session = held.get(a.body["session_id"], {}).get(a.body["substation"])
            # Charging when told: it was admitted there before the answer was received.
            if session is None or session["started_at"] > a.at:
                report.untrue_answers += 1
    # Matched on every label: the previous ids' series share the substations' instances.
    query = f"max_over_time(substation_load[{int(window_s) + 30}s]) > substation_capacity_kw"
    async with http.get(f"{stack.grid.prometheus_url}/api/v1/query",
                        params={"query": query}) as resp:
        report.overloads_seen = len((await resp.json())["data"]["result"])


async def run_chaos(duration_s: float = 60.0, rate_per_s: float = 15.0,
                    max_snapshot_age_s: float = 3.0, replicas: int = 1,
                    run_dir: Path | None = None) -> ChaosReport:
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        stack = ChaosStack(run_dir or Path(tmp), max_snapshot_age_s, replicas)
        report = ChaosReport(replicas=replicas)
        try:
            await asyncio.to_thread(stack.run_previous_grid)
            await asyncio.to_thread(stack.start_all)
            processes_ready = time.time()
            async with aiohttp.ClientSession() as http:
                outcomes: list[Outcome] = []
                if not await check_renamed_grid(http, stack, report, outcomes,
                                                processes_ready):
                    return report       # FAIL: the balancers never saw the renamed grid
                faults_done = asyncio.Event()
                traffic = asyncio.create_task(
                    drive_traffic(http, stack, duration_s, rate_per_s, outcomes, faults_done))
                try:
                    await inject_faults(http, stack, duration_s, outcomes, report)
                finally:
                    faults_done.set()
                await traffic
                summarize(report, outcomes)
                await audit(http, stack, outcomes, report, duration_s)
        finally:
            stack.group.stop_all()
        return report


def summarize(report: ChaosReport, outcomes: list[Outcome]) -> None:
    transient: Counter[str] = Counter()
    other: Counter[str] = Counter()
    report.requests_sent = len(outcomes)
    for o in outcomes:
        for a in o.answers:
            if (a.status >= 500 and a.error in _TRANSIENT) or (a.status == 409 and a.error in (
                    "request_in_progress", "dispatch_in_progress", "superseded")):
                transient[a.error] += 1
            elif a.status not in (200, 503) or (a.status == 503 and a.error != "no_capacity"):
                other[f"{a.status} {a.error}".strip()] += 1
        final = o.final
        if final is not None and final.status == 200:
            report.answered_200 += 1
        elif final is not None and final.error == "no_capacity":
            report.no_capacity += 1
        else:
            other[f"unresolved {final.status if final else 0}"] += 1
    report.transient_5xx, report.other_errors = dict(transient), dict(other)


def main() -> None:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--nemesis-rate", dest="rate_nemesis", type=float, default=3.0,
                        help="the nemesis: new charge requests per second")
    parser.add_argument("--max-snapshot-age", type=float, default=3.0)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2],
                        help="balancer replicas of each run (default: a run with 1, then 2)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--nemesis", action="store_true",
                        help="the randomized nemesis instead (tests/nemesis/): seeded faults on "
                             "every process and a history checker")
    parser.add_argument("--seed", type=int, default=1, help="the nemesis's seed")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="the nemesis: keep logs and state files here")
    parser.add_argument("--ingress-replicas", type=int, default=1,
                        help="the nemesis: ingress replicas (more than 1 needs --store "
                             "postgresql)")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the nemesis: the ingress store (postgresql: a server of the "
                             "run's own, one more process the faults reach)")
    parser.add_argument("--adaptive-share", type=float, default=0.0,
                        help="the nemesis: the share of requests with a floor (min_kw) and a "
                             "departure_at (adaptive power)")
    args = parser.parse_args()
    if args.nemesis:
        from tests.nemesis.runner import Workload, run_nemesis
        if args.ingress_replicas > 1 and args.store == "sqlite":
            parser.error("--ingress-replicas above 1 needs --store postgresql (the replicas "
                         "share their records there)")
        nemesis = asyncio.run(run_nemesis(
            args.seed, args.duration,
            Workload(rate_per_s=args.rate_nemesis, adaptive_share=args.adaptive_share),
            args.run_dir, ingresses=args.ingress_replicas, store=args.store))
        print(nemesis.render())
        sys.exit(0 if nemesis.clean else 1)
    reports = [asyncio.run(run_chaos(args.duration, args.rate, args.max_snapshot_age, n))
               for n in args.replicas]
    for report in reports:
        print(json.dumps(asdict(report), indent=2) if args.json else report.render())
    sys.exit(0 if all(r.clean for r in reports) else 1)


if __name__ == "__main__":
    main()
