"""Balance quality under stale information: a discrete-event simulation of the real decision.

The balancer's own `select_substation` and `PendingLedger` decide, fed `Snapshot`s exactly as
Prometheus would provide them at a given scrape interval: each substation's true load at the
last scrape, stamped with that scrape time, and its load forecast as the substation exports it
(`substation_load_forecast_kw`: the load h seconds after the sample if every session charging
runs to its declared energy). Substations are the authority: they refuse what would exceed
capacity. Every strategy sees the identical arrival sequence (seeded, bench/workloads.py) and
gets up to 3 attempts per request, like the real balancer.

With several balancer replicas, requests are spread over them round robin; each has its own
ledger and random generator and sees the others only through the scrapes.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from balancer.ledger import PendingLedger
from balancer.policy import Policy, load_policy
from balancer.selection import select_substation
from balancer.snapshot import Snapshot, SubstationView
from bench.workloads import DECLARED, WORKLOADS, Arrival
from gridlb.charge import FORECAST_HORIZONS_S

POLICIES = Path(__file__).resolve().parent.parent / "policies"
CAPACITIES_KW = (100.0, 200.0, 300.0, 500.0)
MAX_ATTEMPTS = 3
# The horizons (s) of substation_load_forecast_kw, as the substations export them.
HORIZONS_S = FORECAST_HORIZONS_S
FORECAST = "least-forecast-utilization"

Forecast = tuple[tuple[float, float], ...]


class Grid:
    """The true state: what the substations really carry, and when each session is declared
    to end (the substation's forecast) and really ends."""

    def __init__(self, capacity: dict[str, float],
                 horizons_s: tuple[float, ...] = HORIZONS_S, replicas: int = 1) -> None:
        self.capacity = capacity
        self.replicas = replicas   # the balancer replicas the scrapes show
        self.horizons_s = horizons_s
        self.load = dict.fromkeys(capacity, 0.0)
        # Per substation, its sessions charging now as (declared end, id, kW), sorted.
        self.charging: dict[str, list[tuple[float, int, float]]] = {n: [] for n in capacity}
        # All sessions by actual end: (actual end, id, substation, kW, declared end).
        self.ends: list[tuple[float, int, str, float, float]] = []
        self.ids = 0
        # The oracle's view, updated on change; built in grid order so that ties are broken
        # the same way in every run (a set's order changes with the process's hash seed).
        self.fresh = {n: SubstationView(n, n, True, 0.0, 0.0, c, 0.0) for n, c in capacity.items()}
        self.changed: set[str] = set()
        self._ends_cache: dict[str, tuple[list[float], list[float]]] = {}

    def advance(self, now: float) -> None:
        while self.ends and self.ends[0][0] <= now:
            _, sid, name, kw, declared_end = heapq.heappop(self.ends)
            charging = self.charging[name]
            del charging[bisect_left(charging, (declared_end, sid))]
            # An empty substation carries exactly 0: no float drift survives it.
            self.load[name] = max(0.0, self.load[name] - kw) if charging else 0.0
            self.changed.add(name)
            self._ends_cache.pop(name, None)

    def admit(self, name: str, a: Arrival) -> bool:
        if self.load[name] + a.kw > self.capacity[name] + 1e-9:
            return False
        self.ids += 1
        self.load[name] += a.kw
        insort(self.charging[name], (a.at + a.declared_s, self.ids, a.kw))
        heapq.heappush(self.ends, (a.at + a.actual_s, self.ids, name, a.kw, a.at + a.declared_s))
        self.changed.add(name)
        self._ends_cache.pop(name, None)
        return True

    def forecast(self, name: str, at: float, horizons: Iterable[float] | None = None
                 ) -> Forecast:
        """As the substation exports it: for each horizon h, its load minus the kW of the
        sessions charging now whose declared end is after `at` and at or before at + h. A
        session still charging past its declared end (running long) is not forecast to end:
        the substation cannot know when it will."""
        ends, load = self.charging[name], self.load[name]
        if not ends:
            return tuple((h, 0.0) for h in (self.horizons_s if horizons is None else horizons))
        cached = self._ends_cache.get(name)
        if cached is None:   # (declared ends, kW ending by each) until the sessions change
            total, cumulative = 0.0, [0.0]
            for _, _, kw in ends:
                total += kw
                cumulative.append(total)
            cached = self._ends_cache[name] = ([e[0] for e in ends], cumulative)
        times, cumulative = cached
        last, overdue = len(times), bisect_right(times, at)
        out = []
        for h in self.horizons_s if horizons is None else horizons:
            ended = bisect_right(times, at + h)
            gone = cumulative[ended] - cumulative[overdue]
            out.append((h, 0.0 if ended == last and not overdue else max(0.0, load - gone)))
        return tuple(out)

    def snapshot(self, at: float, scores: Callable[[str], float | None],
                 with_forecast: bool = False) -> Snapshot:
        if with_forecast:
            views = {n: SubstationView(n, n, True, at, self.load[n], self.capacity[n], scores(n),
                                       forecast=self.forecast(n, at))
                     for n in self.capacity}
        else:
            views = {n: SubstationView(n, n, True, at, self.load[n], self.capacity[n], scores(n))
                     for n in self.capacity}
        return Snapshot("sim", at, views, balancers=self.replicas)

    def fresh_snapshot(self, at: float) -> Snapshot:
        """The truth now, scored as least-utilization would (rebuilding changed views only)."""
        for n in self.changed:
            load, cap = self.load[n], self.capacity[n]
            self.fresh[n] = SubstationView(n, n, True, at, load, cap, load / cap)
        self.changed.clear()
        return Snapshot("oracle", at, self.fresh)

    def spread(self) -> float:
        utils = [self.load[n] / c for n, c in self.capacity.items()]
        return max(utils) - min(utils)


@dataclass
class Replica:
    """One balancer: its own ledger and random generator; it hears only its own answers."""

    ledger: PendingLedger
    rng: random.Random
    rr: int = 0


Chooser = Callable[[Replica, Arrival, list[str]], "str | None"]


@dataclass
class Outcome:
    strategy: str
    spreads: list[float] = field(default_factory=list)
    overload_attempts: int = 0
    refused_requests: int = 0
    requests: int = 0

    def add(self, other: Outcome) -> None:
        """Pool another run (another seed) into this one."""
        self.spreads += other.spreads
        self.overload_attempts += other.overload_attempts
        self.refused_requests += other.refused_requests
        self.requests += other.requests

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.spreads)
        return {"spread_p50": statistics.median(ordered),
                "spread_p99": ordered[int(0.99 * (len(ordered) - 1))],
                "spread_max": ordered[-1],
                "overload_attempts": self.overload_attempts,
                "refused_requests": self.refused_requests, "requests": self.requests}


_POLICY_CACHE: dict[str, Policy] = {}


def policy(name: str) -> Policy:
    if name not in _POLICY_CACHE:
        _POLICY_CACHE[name] = load_policy(POLICIES / f"{name}.yaml")
    return _POLICY_CACHE[name]


class Simulation:
    """One strategy over one arrival sequence at one scrape interval, with 1+ replicas."""

    def __init__(self, capacity: dict[str, float], scrape_s: float, seed: int,
                 replicas: int = 1, horizons_s: tuple[float, ...] = HORIZONS_S) -> None:
        self.grid = Grid(dict(capacity), horizons_s, replicas)
        self.scrape_s = scrape_s
        # One replica draws from Random(seed) exactly as the single balancer always did.
        self.replicas = [Replica(PendingLedger(clock_skew_s=0.0), random.Random(seed + 7919 * i))
                         for i in range(replicas)]
        self.stale: Snapshot = self.grid.snapshot(0.0, lambda n: 0.0)
        self.scraped = -1          # the number of the last scrape (at scraped * scrape_s)
        self.policy: Policy | None = None
        self.forecast = False

    def scrape(self, now: float) -> None:
        """The last scrape at or before `now`, as every replica's refresher reads it. Only the
        last one matters: a later scrape settles all an earlier one would."""
        number = math.floor(now / self.scrape_s + 1e-9)
        if number <= self.scraped:
            return
        self.scraped = number
        at = number * self.scrape_s
        self.grid.advance(at)
        self.stale = self.grid.snapshot(at, self.score, self.forecast)
        for replica in self.replicas:
            ledger = replica.ledger
            for name in set(ledger.pending_by_instance) | set(ledger.observed_by_instance):
                ledger.settle(name, at)

    def score(self, name: str) -> float | None:
        """What each shipped policy's PromQL would return for this substation."""
        load, cap = self.grid.load[name], self.grid.capacity[name]
        if self.policy is None or self.policy.name == "least-load":
            return load
        if self.policy.name in ("least-utilization", FORECAST):
            return load / cap
        return max(cap - load, 0.0)   # rate-weighted, without the rate discount

    def run(self, strategy: str, trace: list[Arrival]) -> Outcome:
        outcome = Outcome(strategy)
        if strategy in ("least-load", "least-utilization", "rate-weighted", "seed", FORECAST):
            self.policy = policy("least-load" if strategy == "seed" else strategy)
        self.forecast = strategy == FORECAST
        choose: Chooser = getattr(self, f"_choose_{strategy.replace('-', '_')}",
                                  self._choose_policy)
        grid, replicas = self.grid, self.replicas
        for i, arrival in enumerate(trace):
            self.scrape(arrival.at)
            grid.advance(arrival.at)
            replica = replicas[i % len(replicas)]
            ledger = replica.ledger
            if self.forecast:
                ledger.expire(arrival.at)
            outcome.requests += 1
            tried: list[str] = []
            placed = False
            for _ in range(MAX_ATTEMPTS):
                name = choose(replica, arrival, tried)
                if name is None:
                    break
                sid = f"r{i}"
                ledger.reserve(name, sid, arrival.kw)
                if grid.admit(name, arrival):
                    if self.forecast:   # the accept answer says when its energy is delivered
                        ledger.confirm(name, sid, arrival.at,
                                       ends_at=arrival.at + arrival.declared_s)
                    else:
                        ledger.confirm(name, sid, arrival.at)
                    self.observe(ledger, name, arrival.at)
                    placed = True
                    break
                ledger.release(name, sid)
                self.observe(ledger, name, arrival.at)
                outcome.overload_attempts += 1
                tried.append(name)
            outcome.refused_requests += not placed
            outcome.spreads.append(grid.spread())
        return outcome

    def observe(self, ledger: PendingLedger, name: str, now: float) -> None:
        """The substation's answer: its load now and, as the real one's does, its forecast."""
        ledger.observe(name, self.grid.load[name], now,
                       forecast=self.grid.forecast(name, now) if self.forecast else None)

    # -- strategies -------------------------------------------------------------------------
    def _choose_policy(self, r: Replica, a: Arrival, tried: list[str]) -> str | None:
        assert self.policy is not None
        choice = select_substation(self.stale, r.ledger, self.policy, a.kw, r.rng,
                                   exclude=tried)
        return choice.instance if choice else None

    def _choose_least_forecast_utilization(self, r: Replica, a: Arrival, tried: list[str]
                                           ) -> str | None:
        assert self.policy is not None
        choice = select_substation(self.stale, r.ledger, self.policy, a.kw, r.rng,
                                   exclude=tried, now=a.at)
        return choice.instance if choice else None

    def _choose_seed(self, r: Replica, a: Arrival, tried: list[str]) -> str | None:
        # The original: the apparently least loaded on the last scrape, nothing remembered.
        assert self.policy is not None
        choice = select_substation(self.stale, PendingLedger(), self.policy, a.kw, r.rng,
                                   exclude=tried)
        return choice.instance if choice else None

    def _choose_oracle(self, r: Replica, a: Arrival, tried: list[str]) -> str | None:
        # Fresh-data least-utilization: the true loads at this instant, nothing pending.
        choice = select_substation(self.grid.fresh_snapshot(a.at), PendingLedger(),
                                   policy("least-utilization"), a.kw, r.rng, exclude=tried)
        return choice.instance if choice else None

    def _choose_random(self, r: Replica, a: Arrival, tried: list[str]) -> str | None:
        names = [n for n in self.grid.capacity if n not in tried]
        return r.rng.choice(names) if names else None

    def _choose_round_robin(self, r: Replica, a: Arrival, tried: list[str]) -> str | None:
        names = list(self.grid.capacity)
        for _ in names:
            r.rr = (r.rr + 1) % len(names)
            if names[r.rr] not in tried:
                return names[r.rr]
        return None

    def _choose_power_of_two(self, r: Replica, a: Arrival, tried: list[str]) -> str | None:
        names = [n for n in self.grid.capacity if n not in tried]
        if not names:
            return None
        pair = r.rng.sample(names, min(2, len(names)))
        views = self.stale.substations
        return min(pair, key=lambda n: (views[n].load_kw or 0.0) / self.grid.capacity[n])


STRATEGIES = ("seed", "random", "round-robin", "power-of-two", "least-load",
              "least-utilization", "rate-weighted", FORECAST, "oracle")
# On the workloads other than today's: the baseline, the forecast, the best stateless
# strategy and the reference.
FOCUS = ("least-utilization", FORECAST, "power-of-two", "oracle")
REPLICATED = ("least-utilization", FORECAST)


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...] = (2, 10, 100)
    intervals: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0)
    horizon_s: float = 3600.0
    short_horizon_s: float = 1800.0   # the 1-minute workloads have 10x the arrivals
    workloads: tuple[str, ...] = tuple(WORKLOADS)
    replicas: tuple[int, ...] = (2, 4)
    replica_workloads: tuple[str, ...] = ("today", "short")
    # Each cell pools the runs of several seeds (grid, arrivals, choices): a p99 over one
    # small grid's hour swings by a request's worth from seed to seed. Small grids are cheap.
    small_seeds: tuple[int, ...] = (7, 8, 9, 10)
    large_seeds: tuple[int, ...] = (7, 8)
    large_from: int = 100

    def horizon(self, workload: str) -> float:
        return self.short_horizon_s if workload in ("short", "stop-early") else self.horizon_s

    def seeds(self, n: int) -> tuple[int, ...]:
        return self.large_seeds if n >= self.large_from else self.small_seeds


def grid_of(n: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed + n)
    return {f"s{i:03d}": rng.choice(CAPACITIES_KW) for i in range(n)}


def target(rows: dict[tuple[str, int], dict[str, float]], cell: dict[str, object],
           allowance: float, declared: bool) -> dict[str, object]:
    """The issue's targets for forecast-aware least-utilization against the oracle in one cell:
    p99 spread within `allowance` (utilization points), requests refused within 2 % of the
    requests, and no overload attempts when the declarations hold."""
    replicas = int(cell["replicas"])   # type: ignore[call-overload]
    f, o = rows[(FORECAST, replicas)], rows[("oracle", 1)]
    lu = rows[("least-utilization", replicas)]
    gap = f["spread_p99"] - o["spread_p99"]
    refused_gap = f["refused_requests"] - o["refused_requests"]
    refused_allowance = 0.02 * f["requests"]
    spread_met, refused_met = gap <= allowance + 1e-12, refused_gap <= refused_allowance
    # With replicas the issue asks only to report them: a replica cannot see the others'
    # forwards until a scrape or an answer shows them.
    overload_met = f["overload_attempts"] == 0 or not declared or replicas > 1
    return {**cell, "strategy": "target", "gap_p99": gap, "allowance": allowance,
            "lu_gap_p99": lu["spread_p99"] - o["spread_p99"],
            "refused_gap": refused_gap, "refused_allowance": refused_allowance,
            "refused_rel": refused_gap / max(1.0, o["refused_requests"]),
            "overload_attempts": f["overload_attempts"],
            "lu_overload_attempts": lu["overload_attempts"],
            "met": spread_met and refused_met and overload_met,
            "spread_met": spread_met, "refused_met": refused_met, "overload_met": overload_met}


def run_cell(workload: str, n: int, interval: float, runs: list[tuple[str, int]],
             seeds: tuple[int, ...], horizon_s: float
             ) -> tuple[dict[tuple[str, int], Outcome], float]:
    """Each (strategy, replicas) over the seeds' grids and traces, pooled; and the mean
    request in utilization points (mean kW over the mean capacity)."""
    pooled = {run: Outcome(run[0]) for run in runs}
    requests: list[float] = []
    for seed in seeds:
        capacity = grid_of(n, seed)
        trace = WORKLOADS[workload](sum(capacity.values()), horizon_s, seed + n)
        requests.append(statistics.mean(a.kw for a in trace) /
                        statistics.mean(capacity.values()))
        for strategy, k in runs:
            pooled[(strategy, k)].add(
                Simulation(capacity, interval, seed, replicas=k).run(strategy, trace))
    return pooled, statistics.mean(requests)


def with_wrong_declarations(rows: list[dict[str, object]]) -> None:
    """On stop-early's target rows: what the wrong declarations cost, against the same
    requests with their declarations right (`short`), both measured against the oracle."""
    def key(r: dict[str, object]) -> tuple[object, ...]:
        return r["substations"], r["scrape_s"], r["replicas"]
    right = {key(r): r for r in rows if r["strategy"] == "target" and r["workload"] == "short"}
    for row in rows:
        base = right.get(key(row))
        if row["strategy"] == "target" and row["workload"] == "stop-early" and base:
            row["extra_refused"] = float(row["refused_gap"]) - float(base["refused_gap"])  # type: ignore[arg-type]
            row["extra_overload_attempts"] = \
                float(row["overload_attempts"]) - float(base["overload_attempts"])  # type: ignore[arg-type]


def run_quality(plan: Plan | None = None, charts_dir: Path | None = None,
                progress: Callable[[str], None] = print) -> list[dict[str, object]]:
    """Every workload x size x interval (and replicas): strategy rows and target rows."""
    plan = plan or Plan()
    rows: list[dict[str, object]] = []
    started = time.monotonic()
    for workload in plan.workloads:
        strategies = STRATEGIES if workload == "today" else FOCUS
        replicas = plan.replicas if workload in plan.replica_workloads else ()
        runs = [(s, 1) for s in strategies] + [(s, k) for k in replicas for s in REPLICATED]
        for n in plan.sizes:
            seeds = plan.seeds(n)
            for interval in plan.intervals:
                pooled, request = run_cell(workload, n, interval, runs, seeds,
                                           plan.horizon(workload))
                cell: dict[str, object] = {"workload": workload, "substations": n,
                                           "scrape_s": interval, "seeds": len(seeds)}
                results = {run: outcome.summary() for run, outcome in pooled.items()}
                rows += [{**cell, "replicas": k, "strategy": strategy, **summary}
                         for (strategy, k), summary in results.items()]
                for k in (1, *replicas):
                    rows.append(target(results, {**cell, "replicas": k},
                                       request * (1 if k == 1 else 2), DECLARED[workload]))
            requests = int(results[("oracle", 1)]["requests"])
            progress(f"quality: {workload} at {n} substations ({requests} requests over "
                     f"{len(seeds)} seeds) done, {time.monotonic() - started:.0f} s")
    with_wrong_declarations(rows)
    if charts_dir is not None:
        from bench.charts import write_charts  # matplotlib only when charts are wanted
        for path in write_charts(rows, charts_dir):
            progress(f"quality: wrote {path}")
    return rows
