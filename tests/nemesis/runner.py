"""`make chaos ARGS="--nemesis --seed N --duration S"`: a randomized nemesis, Jepsen-style.

The whole stack of `make up` runs on free loopback ports (Prometheus, three substations keeping a
history, balancer replicas, the ingress: one on SQLite, or several replicas sharing a PostgreSQL
server, which is then one more process the faults reach). Clients send charges as documented: most
with an Idempotency-Key, retried with it (obeying `Retry-After`) until a definite answer; some
without a key, re-sent only when the answer says nothing was sent or nothing was started. Meanwhile
a seeded schedule (tests/nemesis/schedule.py) combines faults on every process. With several
ingress replicas each attempt goes to one of them at random, so a retry of a key often lands on
another replica than the first try, and a stop on another than the charge. With adaptive power
(`Workload.adaptive_share`) some requests carry a floor `min_kw` and a `departure_at`: their power
changes as others come and go, which must never count as a second booking. Then everything is
healed, the clients finish their retries, the stack stops gracefully, and the checker
(tests/nemesis/checker.py) reads every substation's history and final state and every answer. The
report prints the schedule, what was done when, the counts, and every violation with its history
excerpt; the same seed gives the same schedule and the same client workload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gridlb import postgres
from gridlb.charge import DEFAULT_MIN_KW
from gridlb.grid import GridConfig, SubstationSpec
from gridlb.promconfig import write_targets
from gridlb.stack import (
    ProcessGroup,
    ServiceSpec,
    balancer_name,
    balancer_spec,
    free_port,
    ingress_name,
    ingress_spec,
    postgres_data_dir,
    postgres_spec,
    prometheus_spec,
    routable,
    substation_spec,
    wait_ready,
)
from ingress.public import rfc3339
from tests.nemesis.checker import (
    DEFINITE_NO_START,
    INVARIANTS,
    NOT_SENT,
    Attempt,
    Event,
    FinalSession,
    Request,
    Violation,
    check,
)
from tests.nemesis.history import read_final, read_history
from tests.nemesis.schedule import (
    CAPACITY,
    HANG,
    KILL,
    PAUSE,
    REPLICAS,
    RESTART,
    SLOW_DISK,
    TARGETS,
    Fault,
    Topology,
    make_schedule,
    render,
)

TOKEN = "nemesis-internal-token"
START_ATTEMPTS = 6
API_KEY = "nemesis-api-key"
SCRAPE_INTERVAL_S = 0.5
# One simulated hour per 10 s: sessions of a few seconds to complete within a run.
SPEED_FACTOR = 360.0
CAPACITIES_KW = {"sub-a": 60.0, "sub-b": 60.0, "sub-c": 40.0}
POWERS_KW = (3.7, 7.4, 11.0, 22.0)
# Above every substation's capacity: a definite answer, never worth a retry.
HUGE_KW = 500.0
# Ended sessions are forgotten after this long (600 s by default): a key left unresolved longer
# than its session lasted must still never charge the vehicle again.
ENDED_RETENTION_S = 8.0
# Adaptive requests: their floor as a share of requested_kw, and how long after the first send
# the driver leaves (wall-clock seconds; at SPEED_FACTOR 360, 10 s is an hour of charging).
FLOOR_SHARE = 1 / 3
DEPARTURE_IN_S = (3.0, 15.0)
STORES = ("sqlite", "postgresql")
# Final 4xx: the request itself is wrong, a retry gets the same.
_FINAL_4XX = {400, 401, 413, 415, 422}


@dataclass(frozen=True)
class Workload:
    rate_per_s: float = 3.0
    keyless_share: float = 0.25
    stop_share: float = 0.25
    huge_share: float = 0.02
    session_s: tuple[float, float] = (1.5, 6.0)
    # How long a client keeps retrying one request, at most.
    patience_s: float = 25.0
    keyless_attempts: int = 8
    # Adaptive power: this share of the requests give a floor (`FLOOR_SHARE` of their power,
    # at least the grid's minimum) and a departure a few seconds after they are first sent.
    adaptive_share: float = 0.0


@dataclass
class Action:
    at: float
    what: str

    def describe(self, t0: float) -> str:
        return f"{self.at - t0:+8.2f} s  {self.what}"


@dataclass
class NemesisReport:
    seed: int
    duration_s: float
    schedule: list[Fault]
    actions: list[Action] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    stops: Counter[str] = field(default_factory=Counter)
    events: list[Event] = field(default_factory=list)
    final: list[FinalSession] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    t0: float = 0.0
    ready: bool = False
    replicas: int = 1
    ingresses: int = 1
    store: str = "sqlite"
    adaptive_share: float = 0.0

    @property
    def clean(self) -> bool:
        return self.ready and not self.violations

    @property
    def answers(self) -> Counter[str]:
        return Counter(f"{a.status} {a.error}".strip() if a.status != 200 else "200"
                       for r in self.requests for a in r.attempts)

    def outcome(self, request: Request) -> str:
        final = request.attempts[-1] if request.attempts else None
        if final is None:
            return "not sent"
        if final.status == 200:
            return "200"
        if final.error in DEFINITE_NO_START or final.status in _FINAL_4XX:
            return "refused"
        return "unresolved"

    def render(self) -> str:
        outcomes = Counter(self.outcome(r) for r in self.requests)
        keyed = sum(1 for r in self.requests if r.key)
        floors = sum(1 for r in self.requests if r.min_kw is not None)
        by_sub = Counter(e.substation for e in self.events if e.event == "admit")
        broken = Counter(v.invariant for v in self.violations)
        lines = [
            f"nemesis run: seed {self.seed}, {self.duration_s:g} s of faults and traffic, "
            f"{self.replicas} balancer replica(s) by default, {self.ingresses} ingress "
            f"replica(s) on {self.store}"
            + (f", {self.adaptive_share:.0%} of the requests with a floor and a departure"
               if self.adaptive_share else ""),
            render(self.seed, self.schedule),
            "what was done (seconds after the traffic started):",
            *(f"  {a.describe(self.t0)}" for a in self.actions),
            f"requests: {len(self.requests)} ({keyed} with a key, {len(self.requests) - keyed} "
            f"without; {floors} with a floor), {sum(len(r.attempts) for r in self.requests)} "
            "attempts; outcomes "
            f"{dict(outcomes)}",
            f"answers: {dict(sorted(self.answers.items()))}",
            f"stops sent: {dict(self.stops)}",
            f"history: {len(self.events)} events, admissions {dict(sorted(by_sub.items()))}; "
            f"final state: {len(self.final)} sessions",
            "invariants: " + ", ".join(f"{name} {broken[name]}" for name in INVARIANTS),
        ]
        if not self.ready:
            lines.append("the stack never got ready: nothing was checked")
        for v in self.violations:
            lines.append(f"VIOLATION {v.invariant} ({v.subject}): {v.detail}")
            lines.extend(v.excerpt)
        lines.append("result: " + ("PASS" if self.clean else "FAIL"))
        return "\n".join(lines)


class NemesisStack:
    """The processes, and the faults' hands on them. Every operation on one process holds its
    lock (faults on one target never overlap, but the final heal may meet a fault's undo)."""

    def __init__(self, run_dir: Path, topology: Topology) -> None:
        self.run_dir = run_dir
        self.topology = topology
        subs = tuple(SubstationSpec(s, free_port(), CAPACITIES_KW[s])
                     for s in topology.substations)
        ports = [free_port() for _ in topology.balancers]
        ingress_ports = [free_port() for _ in topology.ingresses]
        self.grid = GridConfig(substations=subs, policy="least-utilization",
                               ingress_port=ingress_ports[0], balancer_port=ports[0],
                               prometheus_port=free_port(), scrape_interval_s=SCRAPE_INTERVAL_S,
                               speed_factor=SPEED_FACTOR, ingress_replicas=len(ingress_ports),
                               ingress_store=topology.store, postgres_port=free_port())
        self.group = ProcessGroup(run_dir / "logs")
        env = {"GRID_INTERNAL_TOKEN": TOKEN}
        self.specs: dict[str, ServiceSpec] = {"prometheus": prometheus_spec(self.grid, run_dir)}
        self.low_capacity: dict[str, ServiceSpec] = {}
        for s in subs:
            extra = ("--history", "--fault-file", str(self.fault_file(s.id)),
                     "--ended-retention", str(ENDED_RETENTION_S))
            self.specs[s.id] = substation_spec(self.grid, s.id, s.port, s.capacity_kw, run_dir,
                                               env, extra)
            self.low_capacity[s.id] = substation_spec(self.grid, s.id, s.port,
                                                      s.capacity_kw / 2, run_dir, env, extra)
        self.balancer_urls = [f"http://127.0.0.1:{p}" for p in ports]
        for n, port in enumerate(ports, start=1):
            spec = balancer_spec(self.grid, env, ("--max-snapshot-age", "3",
                                                  "--forward-timeout", "1"),
                                 replica=n, port=port)
            self.specs[spec.name] = spec
        store_url = None
        if self.grid.uses_postgres:
            self.specs["postgres"] = postgres_spec(self.grid, run_dir)
            store_url = postgres.url(self.grid.postgres_port)
        self.ingress_urls = [f"http://127.0.0.1:{p}" for p in ingress_ports]
        for n, port in enumerate(ingress_ports, start=1):
            spec = ingress_spec(self.grid, run_dir, {**env, "GRID_API_KEYS": API_KEY},
                                self.balancer_urls, ("--request-timeout", "5"), replica=n,
                                port=port, store_url=store_url)
            self.specs[spec.name] = spec
        self.addresses = {s.id: f"127.0.0.1:{s.port}" for s in subs}
        self.locks = {name: threading.Lock() for name in self.specs}
        self.replicas = topology.replicas
        self.actions: list[Action] = []

    def fault_file(self, sub: str) -> Path:
        return self.run_dir / f"slow-disk-{sub}.ms"

    def state_file(self, sub: str) -> Path:
        return self.run_dir / f"substation-{sub}.sqlite3"

    def note(self, what: str) -> None:
        self.actions.append(Action(time.time(), what))

    # -- processes
    def start(self, name: str, spec: ServiceSpec | None = None) -> None:
        """Start it unless it runs; a start that fails is tried again: its port not yet free,
        or (PostgreSQL after a SIGKILL) its old backends still holding the shared memory until
        they notice their postmaster is gone."""
        spec = spec or self.specs[name]
        with self.locks[name]:
            proc = self.group.procs.get(name)
            if proc is not None and proc.poll() is None:
                return
            for attempt in range(START_ATTEMPTS):
                try:
                    wait_ready(spec.ready_url, self.group.start(spec))
                    return
                except RuntimeError as exc:
                    self.note(f"start {name} failed ({str(exc)[:200]}); attempt {attempt + 1} "
                              f"of {START_ATTEMPTS}")
                    self.group.kill(name)
                    time.sleep(0.2 * (attempt + 1))     # backing off: what held it lets go

    def kill(self, name: str) -> None:
        with self.locks[name]:
            self.group.kill(name)

    def stop(self, name: str) -> None:
        with self.locks[name]:
            self.group.stop(name)

    def signal(self, name: str, sig: signal.Signals) -> None:
        with self.locks[name]:
            proc = self.group.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)

    def set_replicas(self, count: int) -> None:
        for n, name in enumerate(self.topology.balancers, start=1):
            if n <= count:
                self.start(name)
            else:
                self.stop(name)
        self.replicas = count
        self.write_balancer_targets()

    def write_balancer_targets(self) -> None:
        write_targets(self.run_dir / "prometheus", "balancer",
                      [u.removeprefix("http://") for u in self.balancer_urls[:self.replicas]],
                      self.grid.name)

    def list_substations(self, subs: Sequence[str]) -> None:
        write_targets(self.run_dir / "prometheus", "substation",
                      [self.addresses[s] for s in subs], self.grid.name)

    def start_all(self) -> None:
        for sub in self.topology.substations:
            self.fault_file(sub).write_text("0")
        self.start("prometheus")
        if self.grid.uses_postgres:
            # Its account must reach the data directory (a temporary directory is 0700).
            self.run_dir.chmod(0o755)
            postgres.init_data_dir(postgres_data_dir(self.run_dir), sync=False)
            self.start("postgres")
        for sub in self.topology.substations:
            self.start(sub)
        for name in self.topology.balancers[:self.replicas]:
            self.start(name)
        for name in self.topology.ingresses:
            self.start(name)
        self.list_substations(self.topology.substations)
        self.write_balancer_targets()

    # -- faults
    def apply(self, fault: Fault) -> None:
        self.note(f"{fault.kind} {fault.target}" + (f" {fault.value}" if fault.value else ""))
        if fault.kind == KILL:
            self.kill(fault.target)
        elif fault.kind in (PAUSE, HANG):
            self.signal(fault.target, signal.SIGSTOP)
        elif fault.kind == RESTART:
            self.stop(fault.target)
            self.start(fault.target)
        elif fault.kind == CAPACITY:
            self.stop(fault.target)
            self.start(fault.target, self.low_capacity[fault.target])
        elif fault.kind == SLOW_DISK:
            self.fault_file(fault.target.removeprefix("disk:")).write_text(fault.value)
        elif fault.kind == TARGETS:
            self.list_substations([s for s in fault.value.split(",") if s])
        elif fault.kind == REPLICAS:
            self.set_replicas(int(fault.value))

    def undo(self, fault: Fault) -> None:
        if fault.kind == RESTART:
            return
        self.note(f"undo {fault.kind} {fault.target}")
        if fault.kind == KILL:
            self.start(fault.target)
        elif fault.kind == PAUSE:
            self.signal(fault.target, signal.SIGCONT)
        elif fault.kind == HANG:
            self.kill(fault.target)
            self.start(fault.target)
        elif fault.kind == CAPACITY:
            self.stop(fault.target)
            self.start(fault.target)
        elif fault.kind == SLOW_DISK:
            self.fault_file(fault.target.removeprefix("disk:")).write_text("0")
        elif fault.kind == TARGETS:
            self.list_substations(self.topology.substations)
        elif fault.kind == REPLICAS:
            self.set_replicas(self.topology.replicas)

    def heal(self) -> None:
        """Everything back as it started: resumed, running, listed, fast disks."""
        self.note("heal: every process resumed and running, every substation listed")
        for name in self.specs:
            self.signal(name, signal.SIGCONT)
        for sub in self.topology.substations:
            self.fault_file(sub).write_text("0")
        self.start("prometheus")
        if self.grid.uses_postgres:
            self.start("postgres")
        for sub in self.topology.substations:
            self.start(sub)
        self.set_replicas(self.topology.replicas)
        for name in self.topology.ingresses:
            self.start(name)
        self.list_substations(self.topology.substations)

    def shutdown(self) -> None:
        """Every process resumed (a stopped one would not hear SIGTERM), then stopped gracefully:
        each substation saves what it holds."""
        for name in self.specs:
            self.signal(name, signal.SIGCONT)
        self.group.stop_all()

    async def sees_every_substation(self, http: aiohttp.ClientSession) -> bool:
        wanted = set(self.addresses)
        for url in self.balancer_urls[:self.replicas]:
            try:
                async with http.get(f"{url}/policy") as resp:
                    view = await resp.json()
            except (aiohttp.ClientError, ValueError):
                return False
            if not wanted <= routable(view):
                return False
        return True


async def sleep_until(at: float) -> None:
    delay = at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_fault(stack: NemesisStack, fault: Fault, t0: float) -> None:
    await sleep_until(t0 + fault.at)
    await asyncio.to_thread(stack.apply, fault)
    await sleep_until(t0 + fault.at + fault.duration)
    await asyncio.to_thread(stack.undo, fault)


def retry_after(headers: Any) -> float:
    try:
        return min(5.0, max(0.2, float(headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


class Clients:
    """Charge requests from a seeded workload, each retried as its kind of client would."""

    def __init__(self, http: aiohttp.ClientSession, ingress_urls: Sequence[str],
                 workload: Workload, seed: int) -> None:
        self.http = http
        self.urls = list(ingress_urls)
        # Which replica each attempt goes to: a stream of its own too.
        self.route = random.Random(f"ingress-{seed}")
        self.workload = workload
        self.seed = seed
        # The retries' jitter: a stream of its own, so the workload (plan_requests) is the
        # seed's whatever the timing.
        self.jitter = random.Random(f"jitter-{seed}")
        self.requests: list[Request] = []
        self.stops: Counter[str] = Counter()
        self.headers = {"Authorization": f"Bearer {API_KEY}"}

    async def send(self, request: Request) -> tuple[Attempt, float]:
        """One attempt: what was heard, and how long to wait before the next."""
        headers = dict(self.headers)
        if request.key:
            headers["Idempotency-Key"] = request.key
        body: dict[str, Any] = {"vehicle_id": request.vehicle_id,
                                "requested_kw": request.requested_kw,
                                "energy_kwh": request.energy_kwh}
        if request.min_kw is not None:
            body["min_kw"] = request.min_kw
        sent = time.time()
        if request.departure_in_s is not None:
            if request.departure_at is None:
                request.departure_at = rfc3339(sent + request.departure_in_s)
            body["departure_at"] = request.departure_at
        try:
            async with self.http.post(f"{self.ingress()}/charge", json=body, headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=12)) as resp:
                data = await resp.json(content_type=None) or {}
                status, wait = resp.status, retry_after(resp.headers)
                replayed = resp.headers.get("Idempotent-Replayed") == "true"
        except aiohttp.ClientConnectorError:
            return Attempt(sent, time.time(), 0, "connect_failed"), 0.5
        except asyncio.TimeoutError:
            return Attempt(sent, time.time(), 0, "client_timeout"), 0.5
        except (aiohttp.ClientError, ValueError) as exc:
            return Attempt(sent, time.time(), 0, type(exc).__name__), 0.5
        if not isinstance(data, dict):
            data = {}
        if status == 200:
            return Attempt(sent, time.time(), 200, "", replayed, data.get("session_id"),
                           data.get("substation"), data.get("status")), 0.0
        return Attempt(sent, time.time(), status, str(data.get("error", "")), replayed), wait

    def ingress(self) -> str:
        return self.route.choice(self.urls)

    async def charge(self, request: Request, deadline: float, stop_after: float | None) -> None:
        while True:
            attempt, wait = await self.send(request)
            request.attempts.append(attempt)
            if attempt.status == 200:
                if stop_after is not None and attempt.session_id:
                    await asyncio.sleep(stop_after)
                    await self.stop(attempt.session_id, deadline)
                return
            if request.key is not None:
                # Retried with the same key until a definite answer.
                if attempt.status in _FINAL_4XX or attempt.error in DEFINITE_NO_START:
                    return
            elif attempt.error not in NOT_SENT | DEFINITE_NO_START or \
                    len(request.attempts) >= self.workload.keyless_attempts:
                return     # without a key, only what says nothing was sent or started
            if time.time() + wait > deadline:
                return
            await asyncio.sleep(wait * self.jitter.uniform(1.0, 1.5))

    async def stop(self, session_id: str, deadline: float) -> None:
        while time.time() < deadline:
            try:
                async with self.http.post(f"{self.ingress()}/sessions/{session_id}/stop",
                                          headers=self.headers,
                                          timeout=aiohttp.ClientTimeout(total=12)) as resp:
                    self.stops[str(resp.status)] += 1
                    if resp.status < 500:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.stops[type(exc).__name__] += 1
            await asyncio.sleep(1.0)

    async def run(self, t0: float, duration_s: float, settle_s: float) -> None:
        """New requests for `duration_s`; their retries go on for at most `settle_s` after."""
        tasks = []
        for planned in plan_requests(self.seed, duration_s, self.workload):
            self.requests.append(planned.request)
            at = t0 + planned.at
            deadline = min(at + self.workload.patience_s, t0 + duration_s + settle_s)
            await sleep_until(at)
            tasks.append(asyncio.create_task(self.charge(planned.request, deadline,
                                                         planned.stop_after)))
        await asyncio.gather(*tasks)


@dataclass(frozen=True)
class Planned:
    at: float                   # seconds after the traffic starts
    request: Request
    stop_after: float | None    # stopped this long after its 200, if at all


def plan_requests(seed: int, duration_s: float, workload: Workload) -> list[Planned]:
    """The run's requests, from the seed alone: the same seed, the same requests."""
    rng = random.Random(f"workload-{seed}")
    adaptive = random.Random(f"adaptive-{seed}")
    planned: list[Planned] = []
    at = 0.0
    while True:
        at += rng.expovariate(workload.rate_per_s)
        if at > duration_s:
            return planned
        i = len(planned)
        keyed = rng.random() >= workload.keyless_share
        kw = HUGE_KW if rng.random() < workload.huge_share else rng.choice(POWERS_KW)
        session_s = rng.uniform(*workload.session_s)
        stop_after = rng.uniform(0.5, 4.0) if rng.random() < workload.stop_share else None
        request = Request(f"r{i}", f"ev-{i}", kw, round(kw * session_s * SPEED_FACTOR / 3600, 3),
                          key=f"nemesis-{i}" if keyed else None)
        # Drawn from a stream of their own: without adaptive power, the seed's requests are
        # what they always were.
        if adaptive.random() < workload.adaptive_share:
            request.min_kw = round(max(DEFAULT_MIN_KW, kw * FLOOR_SHARE), 2)
            request.departure_in_s = round(adaptive.uniform(*DEPARTURE_IN_S), 2)
        planned.append(Planned(at, request, stop_after))


def collect(stack: NemesisStack, report: NemesisReport) -> None:
    for sub in stack.topology.substations:
        report.events.extend(read_history(stack.state_file(sub)))
        report.final.extend(read_final(stack.state_file(sub), sub))


async def run_nemesis(seed: int, duration_s: float, workload: Workload = Workload(),
                      run_dir: Path | None = None, settle_s: float = 15.0,
                      ingresses: int = 1, store: str = "sqlite") -> NemesisReport:
    """`ingresses` > 1 needs `store` "postgresql" (replicas share their records there)."""
    if store not in STORES or (ingresses > 1 and store == "sqlite") or ingresses < 1:
        raise ValueError(f"{ingresses} ingress replica(s) on {store!r}: several replicas "
                         f"need a shared store, one of {STORES[1:]}")
    # One balancer replica or two, by the seed: with one, its faults reach the clients.
    replicas = random.Random(f"replicas-{seed}").choice([1, 2])
    topology = Topology(substations=tuple(CAPACITIES_KW),
                        balancers=tuple(balancer_name(n) for n in (1, 2, 3)), replicas=replicas,
                        ingresses=tuple(ingress_name(n) for n in range(1, ingresses + 1)),
                        store=store)
    schedule = make_schedule(seed, duration_s, topology)
    report = NemesisReport(seed, duration_s, schedule, replicas=replicas, ingresses=ingresses,
                           store=store, adaptive_share=workload.adaptive_share)
    keep = run_dir is not None
    with contextlib.ExitStack() as cleanup:
        if run_dir is None:
            run_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="nemesis-")))
        elif run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        stack = NemesisStack(run_dir, topology)
        report.actions = stack.actions
        try:
            await asyncio.to_thread(stack.start_all)
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 60
                while not await stack.sees_every_substation(http):
                    if time.monotonic() > deadline:
                        return report
                    await asyncio.sleep(0.2)
                report.ready = True
                report.t0 = t0 = time.time()
                stack.note("traffic starts")
                clients = Clients(http, stack.ingress_urls, workload, seed)
                traffic = asyncio.create_task(clients.run(t0, duration_s, settle_s))
                await asyncio.gather(*(run_fault(stack, f, t0) for f in schedule))
                await sleep_until(t0 + duration_s)
                await asyncio.to_thread(stack.heal)
                await traffic
                report.requests, report.stops = clients.requests, clients.stops
            stack.note("every client done: the stack stops (SIGTERM)")
        finally:
            await asyncio.to_thread(stack.shutdown)
        collect(stack, report)
        report.violations = check(report.events, report.requests, report.final, report.t0)
        if keep:
            # Everything the checker judged, to read again (the interleaving does not repeat).
            (run_dir / "nemesis-run.json").write_text(json.dumps(
                {"seed": seed, "t0": report.t0, "schedule": [asdict(f) for f in schedule],
                 "actions": [asdict(a) for a in report.actions],
                 "requests": [asdict(r) for r in report.requests],
                 "events": [asdict(e) for e in report.events],
                 "final": [asdict(f) for f in report.final],
                 "violations": [asdict(v) for v in report.violations]}, indent=1))
    return report
