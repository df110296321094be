"""Sharing power: how much of the requested energy each way of sharing delivers by departure.

A time-slotted simulation (bench/power_workloads.py: a Caltech-ACN-shaped workplace day at
5-minute slots, and the `today` trace with drivers who stay longer than they charge, at 1-minute
slots; each with floors at the grid's minimum power, as a car sends them, and as the `-fill`
scenario, where each driver asks for the power that fills the car by departure) over a sweep of
capacity from 20 % to 100 % of the uncontrolled peak (every car at its maximum from arrival
until full), split evenly over
1 or 10 substations. Every strategy sees the
same arrivals; within a slot arrivals are placed in arrival order, then each substation decides
one power per session for the slot; a session leaves at its departure or when full. No strategy
gives a session more than it can still take in the slot.

    today         today's service: a session gets exactly its requested_kw or is refused
                  (placed at the least utilized substation where it fits).
    fcfs, edf,    acnportal's sorted algorithms: no admission (every car plugs in, possibly at
    llf           0 kW); each slot, sessions in order of arrival / departure / laxity (time to
                  departure - remaining energy / max power) each take the most that still fits.
    round-robin   acnportal's round robin in the limit of small increments: water-filling
                  (max-min fair), no admission.
    ours          the issue's design: admission by floors (substation.allocation.floor_fits,
                  refused when the floor fits nowhere) and the allocation module's default
                  (committed floors, then least-laxity-first by laxity steps, departures being
                  known); routed to the substation that can deliver the session the most energy
                  by its departure, then the least committed energy and floors per kW.
    ours-queue    the same, but a session whose floor fits nowhere is not refused: it is taken
                  on a best-effort basis (`committed=False`: 0 kW or at least its floor, from
                  what the committed floors leave, least laxity first) and committed as soon as
                  its floor fits beside the committed ones. No promise is ever broken.
    ours-no-promise  every session best effort: floors are only minimum powers (0 or at least
                  min_kw, as EVerest grants minimum currents), nothing is reserved; the
                  allocation is then least-laxity-first with a minimum power.
    optimum       the offline LP (bench/power_lp.py), every arrival known in advance, a session
                  allowed to split across substations: an upper bound.
    optimum-routed  the same LP with ours's routing fixed (a refused session at the substation
                  ours ranked first): how much of the gap is routing.
    optimum-promised  the same LP with ours's admissions and routing fixed (a refused session
                  gets nothing) and ours's promises kept: every admitted session at least its
                  floor in every slot until full (bench/power_lp.py's cumulative bound). An
                  upper bound on what any allocation keeping ours's promises delivers: where it
                  is below LLF, no allocation can bring ours up to LLF without breaking a
                  promise or changing whom it admits.

The baselines route like ours but without the floor check (the most deliverable energy, then
the least committed energy per kW). Metrics, pooled over the seeds: share of the requested energy
delivered by departure, share of sessions fully served, requests refused, the peak power as a
share of the capacity, and how often a session's power changes (by 0.01 kW or more from one
slot to the next while it charges; not for the LPs, whose solutions are any optimal vertex).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.power_lp import offline_optimum
from bench.power_workloads import TRACES, Session, Trace, shape
from substation.allocation import CHANGE_THRESHOLD_KW, Demand, allocate, floor_fits, water_fill

TODAY, FCFS, EDF, LLF, ROUND_ROBIN, OURS = "today", "fcfs", "edf", "llf", "round-robin", "ours"
QUEUE, NO_PROMISE = "ours-queue", "ours-no-promise"
OPTIMUM, OPTIMUM_ROUTED, OPTIMUM_PROMISED = "optimum", "optimum-routed", "optimum-promised"
SIMULATED = (TODAY, FCFS, EDF, LLF, ROUND_ROBIN, OURS, QUEUE, NO_PROMISE)
ALLOCATED = (OURS, QUEUE, NO_PROMISE)   # by substation.allocation
LPS = (OPTIMUM, OPTIMUM_ROUTED, OPTIMUM_PROMISED)
STRATEGIES = (*SIMULATED, *LPS)
CAPACITY_PCTS = (20, 30, 40, 50, 60, 70, 80, 90, 100)
DONE_KWH = 1e-9   # less than this left: the session is full


@dataclass
class Run:
    """One strategy on one trace at one capacity."""

    delivered: dict[int, float]
    refused: set[int] = field(default_factory=set)
    peak_kw: float = 0.0
    changes: int = 0
    placed: dict[int, int] = field(default_factory=dict)   # session -> substation (or preferred)


def uncontrolled_peak_kw(trace: Trace) -> float:
    """Every car at its maximum from arrival until full (or gone): the site's peak."""
    load = [0.0] * trace.slots
    for s in trace.sessions:
        left = s.energy_kwh
        for t in range(s.arrival, s.departure):
            if left <= DONE_KWH:
                break
            kw = min(s.max_kw, left / trace.slot_h)
            load[t] += kw
            left -= kw * trace.slot_h
    return max(load)


def floors_fit_everywhere(trace: Trace, capacity_kw: float) -> bool:
    """Whether the floors of all cars present at once (till departure) never exceed the site's
    capacity: where refusing is never needed (pooled; a router may still fail to pack them)."""
    floors = [0.0] * trace.slots
    for s in trace.sessions:
        for t in range(s.arrival, s.departure):
            floors[t] += s.min_kw
    return max(floors) <= capacity_kw + 1e-9


def _greedy(order: Sequence[int], need: dict[int, float], capacity: float) -> dict[int, float]:
    """acnportal's sorted algorithms: each in turn takes the most that still fits."""
    rates: dict[int, float] = {}
    left = capacity
    for i in order:
        rates[i] = min(need[i], max(0.0, left))
        left -= rates[i]
    return rates


class Simulation:
    def __init__(self, trace: Trace, capacities_kw: Sequence[float], strategy: str) -> None:
        self.trace, self.capacities, self.strategy = trace, list(capacities_kw), strategy
        self.by_id = {s.id: s for s in trace.sessions}
        self.remaining = {s.id: s.energy_kwh for s in trace.sessions}
        self.present: list[list[int]] = [[] for _ in capacities_kw]
        # The sessions whose floor is committed (ours); the others present are best effort.
        self.committed: set[int] = set()

    # -- routing ------------------------------------------------------------------------
    def _committed_kwh(self, k: int, s: Session, t: int) -> float:
        """The energy the cars at k must still get before s leaves, if each spreads its own
        remaining energy evenly over its own stay."""
        horizon = s.departure - t
        return sum(self.remaining[j] * min(1.0, horizon / (self.by_id[j].departure - t))
                   for j in self.present[k])

    def _rank(self, s: Session, t: int) -> list[int]:
        """Substations, best first: the most deliverable energy by departure, then the least
        committed floors (ours) or energy (baselines) per kW, then the lowest index."""
        horizon_h = (s.departure - t) * self.trace.slot_h
        keys = []
        for k, capacity in enumerate(self.capacities):
            committed = self._committed_kwh(k, s, t)
            deliverable = min(s.energy_kwh, s.max_kw * horizon_h,
                              capacity * horizon_h - committed)
            per_kw = 1.0 / capacity if capacity else math.inf
            floors = self._floors_kw(k) if self.strategy in ALLOCATED else 0.0
            keys.append((-deliverable, committed * per_kw, floors * per_kw, k))
        return [k for *_, k in sorted(keys)]

    def _place(self, s: Session, t: int, run: Run) -> None:
        if self.strategy == TODAY:
            loads = [sum(self.by_id[j].max_kw for j in p) for p in self.present]
            fitting = [k for k, c in enumerate(self.capacities) if loads[k] + s.max_kw <= c + 1e-9]
            if not fitting:
                run.refused.add(s.id)
                return
            k = min(fitting, key=lambda k: (loads[k] / self.capacities[k], k))
        else:
            ranked = self._rank(s, t)
            if self.strategy in ALLOCATED:
                run.placed[s.id] = ranked[0]   # where it would go: the routed LP's routing
                fitting = [k for k in ranked if self._floor_fits(k, s.id)]
                if fitting and self.strategy != NO_PROMISE:
                    k = fitting[0]
                    self.committed.add(s.id)
                elif self.strategy == OURS:
                    run.refused.add(s.id)
                    return
                else:
                    k = fitting[0] if fitting else ranked[0]   # best effort
            else:
                k = ranked[0]
        run.placed[s.id] = k
        self.present[k].append(s.id)

    def _floors_kw(self, k: int) -> float:
        return sum(self.by_id[j].min_kw for j in self.present[k] if j in self.committed)

    def _floor_fits(self, k: int, i: int) -> bool:
        return floor_fits(self.capacities[k], (self.by_id[j].min_kw for j in self.present[k]
                                               if j in self.committed), self.by_id[i].min_kw)

    def _promote(self, k: int, t: int) -> None:
        """ours-queue: best-effort sessions whose floor now fits beside the committed ones are
        committed, least laxity first."""
        s = self.by_id
        waiting = [i for i in self.present[k] if i not in self.committed]
        for i in sorted(waiting, key=lambda i: (self._laxity_h(i, t), s[i].arrived_at_s, i)):
            if self._floor_fits(k, i):
                self.committed.add(i)

    def _laxity_h(self, i: int, t: int) -> float:
        s = self.by_id[i]
        return (s.departure - t) * self.trace.slot_h - self.remaining[i] / s.max_kw

    # -- allocation ---------------------------------------------------------------------
    def _rates(self, k: int, t: int) -> dict[int, float]:
        ids, capacity, slot_h = self.present[k], self.capacities[k], self.trace.slot_h
        need = {i: min(self.by_id[i].max_kw, self.remaining[i] / slot_h) for i in ids}
        if self.strategy in (TODAY,):
            return need
        if self.strategy in ALLOCATED:
            now = t * self.trace.slot_s
            demands = [Demand(str(i), self.by_id[i].min_kw, self.by_id[i].max_kw,
                              self.remaining[i], self.by_id[i].departure * self.trace.slot_s,
                              self.by_id[i].arrived_at_s, committed=i in self.committed)
                       for i in ids]
            kw = allocate(capacity, demands, now, slot_s=self.trace.slot_s).kw
            return {i: kw[str(i)] for i in ids}
        if self.strategy == ROUND_ROBIN:
            return dict(zip(ids, water_fill([(0.0, need[i]) for i in ids], capacity),
                            strict=True))
        s = self.by_id
        if self.strategy == FCFS:
            order = sorted(ids, key=lambda i: (s[i].arrived_at_s, i))
        elif self.strategy == EDF:
            order = sorted(ids, key=lambda i: (s[i].departure, s[i].arrived_at_s, i))
        elif self.strategy == LLF:
            order = sorted(ids, key=lambda i: (self._laxity_h(i, t), s[i].arrived_at_s, i))
        else:
            raise ValueError(f"unknown strategy {self.strategy!r}")
        return _greedy(order, need, capacity)

    def run(self) -> Run:
        run = Run(delivered=dict.fromkeys(self.by_id, 0.0))
        arriving = list(self.trace.sessions)   # sorted by arrival
        next_arrival = 0
        last: dict[int, float] = {}
        slot_h = self.trace.slot_h
        for t in range(self.trace.slots):
            for k, ids in enumerate(self.present):   # gone or full: leaves, its floor with it
                self.present[k] = [i for i in ids if self.by_id[i].departure > t
                                   and self.remaining[i] > DONE_KWH]
                if self.strategy == QUEUE:
                    self._promote(k, t)
            while next_arrival < len(arriving) and arriving[next_arrival].arrival <= t:
                self._place(arriving[next_arrival], t, run)
                next_arrival += 1
            total = 0.0
            now: dict[int, float] = {}
            for k in range(len(self.capacities)):
                for i, kw in self._rates(k, t).items():
                    given = min(self.remaining[i], kw * slot_h)
                    self.remaining[i] -= given
                    run.delivered[i] += given
                    total += kw
                    now[i] = kw
                    if i in last and abs(kw - last[i]) >= CHANGE_THRESHOLD_KW:
                        run.changes += 1
            last = now
            run.peak_kw = max(run.peak_kw, total)
        return run


def simulate(trace: Trace, capacities_kw: Sequence[float], strategy: str) -> Run:
    return Simulation(trace, capacities_kw, strategy).run()


@dataclass
class Tally:
    """One strategy in one cell, pooled over seeds."""

    requested_kwh: float = 0.0
    delivered_kwh: float = 0.0
    sessions: int = 0
    served: int = 0
    refused: int = 0
    peak_pct: float = 0.0
    changes: int | None = 0

    def add(self, trace: Trace, delivered: dict[int, float], capacity_kw: float,
            refused: int = 0, peak_kw: float | None = None, changes: int | None = None) -> None:
        self.requested_kwh += sum(s.energy_kwh for s in trace.sessions)
        self.delivered_kwh += sum(delivered.values())
        self.sessions += len(trace.sessions)
        self.served += sum(1 for s in trace.sessions
                           if delivered[s.id] >= s.energy_kwh * (1 - 1e-6) - 1e-9)
        self.refused += refused
        if peak_kw is not None:
            self.peak_pct = max(self.peak_pct, 100.0 * peak_kw / capacity_kw)
        self.changes = None if changes is None or self.changes is None else \
            self.changes + changes

    def row(self) -> dict[str, object]:
        return {"energy_pct": round(100.0 * self.delivered_kwh / self.requested_kwh, 2),
                "served_pct": round(100.0 * self.served / self.sessions, 2),
                "refused": self.refused, "sessions": self.sessions,
                "peak_pct_of_capacity": round(self.peak_pct, 1),
                "changes_per_session": "" if self.changes is None else
                round(self.changes / self.sessions, 2)}


@dataclass(frozen=True)
class PowerPlan:
    workloads: tuple[str, ...] = ("acn", "acn-fill", "today", "today-fill")
    sizes: tuple[int, ...] = (1, 10)
    capacity_pcts: tuple[int, ...] = CAPACITY_PCTS
    seeds: tuple[int, ...] = (1, 2, 3)
    strategies: tuple[str, ...] = STRATEGIES


def promised_optimum(trace: Trace, capacities_kw: Sequence[float], ours: Run
                     ) -> tuple[dict[int, float], float]:
    """optimum-promised: per substation (ours's routing makes them independent), the LP over
    the sessions ours admitted there, each one's floor held. The energy per session and the
    site's peak."""
    delivered = dict.fromkeys((s.id for s in trace.sessions), 0.0)
    load = [0.0] * trace.slots
    for k, capacity in enumerate(capacities_kw):
        mine = [s for s in trace.sessions if s.id not in ours.refused and ours.placed[s.id] == k]
        if not mine:
            continue
        best = offline_optimum(mine, [capacity], trace.slot_h, promised={s.id for s in mine})
        delivered.update(best.delivered_kwh)
        for t, kw in enumerate(best.load_kw):
            load[t] += kw
    return delivered, max(load, default=0.0)


def run_cell(traces: Sequence[Trace], n: int, pct: int, strategies: Sequence[str]
             ) -> tuple[dict[str, Tally], bool]:
    tallies = {s: Tally() for s in strategies}
    floors_fit = True
    for trace in traces:
        site_kw = pct / 100.0 * uncontrolled_peak_kw(trace)
        capacities = [site_kw / n] * n
        floors_fit = floors_fit and floors_fit_everywhere(trace, site_kw)
        ours: Run | None = None
        for strategy in strategies:
            if strategy in SIMULATED:
                run = simulate(trace, capacities, strategy)
                if strategy == OURS:
                    ours = run
                tallies[strategy].add(trace, run.delivered, site_kw, len(run.refused),
                                      run.peak_kw, run.changes)
            elif strategy == OPTIMUM:
                best = offline_optimum(trace.sessions, capacities, trace.slot_h, pooled=True)
                tallies[strategy].add(trace, best.delivered_kwh, site_kw,
                                      peak_kw=max(best.load_kw, default=0.0))
            elif strategy == OPTIMUM_ROUTED and n > 1:
                ours = ours or simulate(trace, capacities, OURS)
                routed = offline_optimum(trace.sessions, capacities, trace.slot_h,
                                         routing=ours.placed)
                tallies[strategy].add(trace, routed.delivered_kwh, site_kw,
                                      peak_kw=max(routed.load_kw, default=0.0))
            elif strategy == OPTIMUM_PROMISED:
                ours = ours or simulate(trace, capacities, OURS)
                delivered, peak = promised_optimum(trace, capacities, ours)
                tallies[strategy].add(trace, delivered, site_kw, peak_kw=peak)
    for strategy in LPS:
        if strategy in tallies:
            tallies[strategy].changes = None
    return {s: t for s, t in tallies.items() if t.sessions}, floors_fit


def target(cell: dict[str, object], results: dict[str, dict[str, object]], floors_fit: bool,
           variant: str = OURS) -> dict[str, object]:
    """The targets for one of ours: at least LLF's energy; within 2 points of the optimum at
    30-100 %; nothing refused where the floors of every car present fit the capacity."""
    def energy(strategy: str) -> float:
        return float(results[strategy]["energy_pct"])   # type: ignore[arg-type]
    ours, llf, best = energy(variant), energy(LLF), energy(OPTIMUM)
    refused = int(results[variant]["refused"])   # type: ignore[call-overload]
    pct = int(cell["capacity_pct"])   # type: ignore[call-overload]
    beats_llf = ours >= llf
    near = best - ours <= 2.0 if pct >= 30 else None
    no_refusal = refused == 0 if floors_fit else None
    return {**cell, "strategy": "target", "variant": variant,
            "minus_llf_pp": round(ours - llf, 2), "below_optimum_pp": round(best - ours, 2),
            "floors_fit": floors_fit, "refused": refused, "ge_llf": beats_llf,
            "within_2pp": "" if near is None else near,
            "no_refusal": "" if no_refusal is None else no_refusal,
            "met": beats_llf and near is not False and no_refusal is not False}


def run_power(plan: PowerPlan | None = None, charts_dir: Path | None = None,
              progress: Callable[[str], None] = print) -> list[dict[str, object]]:
    plan = plan or PowerPlan()
    rows: list[dict[str, object]] = []
    started = time.monotonic()
    for workload in plan.workloads:
        for n in plan.sizes:
            traces = [TRACES[workload](n, seed) for seed in plan.seeds]
            shapes = [shape(t) for t in traces]
            progress(f"power: {workload} at {n} substation(s): "
                     f"{sum(int(s['sessions']) for s in shapes)} sessions over "
                     f"{len(traces)} seeds, median stay "
                     f"{sum(s['median_stay_h'] for s in shapes) / len(shapes):.2f} h, energy "
                     f"{sum(s['median_energy_kwh'] for s in shapes) / len(shapes):.2f} kWh, "
                     f"laxity {sum(s['median_laxity_h'] for s in shapes) / len(shapes):.2f} h")
            for pct in plan.capacity_pcts:
                tallies, floors_fit = run_cell(traces, n, pct, plan.strategies)
                cell: dict[str, object] = {"workload": workload, "substations": n,
                                           "capacity_pct": pct}
                results = {s: {**cell, "strategy": s, **t.row()} for s, t in tallies.items()}
                rows += results.values()
                rows += [target(cell, results, floors_fit, variant) for variant in ALLOCATED
                         if {variant, LLF, OPTIMUM} <= set(results)]
            progress(f"power: {workload} at {n} substation(s) done, "
                     f"{time.monotonic() - started:.0f} s")
    if charts_dir is not None:
        from bench.power_charts import write_power_charts  # matplotlib only when wanted
        for path in write_power_charts(rows, charts_dir):
            progress(f"power: wrote {path}")
    return rows


def pivot(rows: list[dict[str, object]], key: str = "energy_pct",
          strategies: Sequence[str] = STRATEGIES) -> str:
    """A markdown table of `key`: a row per workload, size and capacity, a column per strategy;
    then the mean over the capacity sweep (as ACN-Sim reports it)."""
    cells: dict[tuple[str, int, int], dict[str, object]] = {}
    for r in rows:
        if r["strategy"] != "target" and r["strategy"] in strategies:
            cell = (str(r["workload"]), int(r["substations"]),   # type: ignore[call-overload]
                    int(r["capacity_pct"]))   # type: ignore[call-overload]
            cells.setdefault(cell, {})[str(r["strategy"])] = r[key]
    shown = [s for s in strategies if any(s in c for c in cells.values())]
    lines = ["| workload | substations | capacity | " + " | ".join(shown) + " |",
             "|" + " --- |" * (3 + len(shown))]
    for (workload, n, pct), values in cells.items():
        lines.append(f"| {workload} | {n} | {pct} % | " +
                     " | ".join(f"{values[s]}" if s in values else "" for s in shown) + " |")
    for workload, n in dict.fromkeys((w, n) for w, n, _ in cells):
        means = []
        for s in shown:
            got = [float(v[s]) for (w, m, _), v in cells.items()   # type: ignore[arg-type]
                   if (w, m) == (workload, n) and s in v and v[s] != ""]
            means.append(f"**{sum(got) / len(got):.1f}**" if got else "")
        lines.append(f"| {workload} | {n} | **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines)
