"""The charging sessions of the power-sharing benchmark (bench/power.py), each trace seeded.

Time is slotted (the simulation and the offline optimum decide one power per session per slot):
a session is present from its arrival slot to its departure slot (exclusive, at least one slot
later) and declares the energy it wants, never more than its maximum power delivers in its stay
(so 100 % is reachable when capacity is ample). Its floor (`min_kw`, the least power worth
charging at) follows one of two rules, each trace in both:

    minimum   the grid's minimum power (1.4 kW, or the car's maximum if lower): what the car and
              its charger send (ISO 15118's minimum charge power, ACN's minimum pilot signal),
              while the driver states only the departure and the energy. The default workloads.
    fill      the power that delivers its energy by its departure, at least the grid's minimum
              and at most its maximum: a driver who asks for a guarantee (held for its whole
              stay, the floor alone fills the car). The `-fill` workloads.

    acn     a workplace day shaped like Caltech's ACN as ACN-Sim published it (March 2019):
            a morning arrival peak (70 % around 8:30, the rest spread 10:00-20:00), stays
            log-normal with median 6.1 h, energy log-normal with median 6.7 kWh, on-board
            chargers of 3.3 kW (30 %) and 6.6 kW (70 %), hence a median laxity near 4.5 h;
            60 sessions per substation, 5-minute slots over 24 h.
    today   bench/workloads.py's `today` trace (Poisson arrivals offering 56 % of 300 kW per
            substation, 10-minute sessions at 3.7-150 kW, a burst every 5 minutes), each
            driver staying 1-3 times its charging time: 1-minute slots over the hour and until
            the last departure.
    acn-fill, today-fill   the same cars, each with the `fill` floor.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

from bench.workloads import arrivals
from gridlb.charge import DEFAULT_MIN_KW

ACN_SLOT_S = 300.0
ACN_SESSIONS_PER_SUBSTATION = 60
ACN_MAX_KW = (3.3, 6.6)
ACN_MAX_KW_WEIGHTS = (30, 70)
TODAY_SLOT_S = 60.0
TODAY_KW_PER_SUBSTATION = 300.0
TODAY_HORIZON_S = 3600.0


@dataclass(frozen=True)
class Session:
    id: int
    arrival: int        # first slot it can charge in
    departure: int      # first slot it is gone (exclusive), > arrival
    energy_kwh: float   # what it asks for
    max_kw: float       # its requested_kw
    min_kw: float       # its floor
    arrived_at_s: float  # its arrival time, which orders arrivals within a slot


@dataclass(frozen=True)
class Trace:
    name: str
    slot_s: float
    slots: int           # slots until the last departure
    sessions: tuple[Session, ...]

    @property
    def slot_h(self) -> float:
        return self.slot_s / 3600.0


def floor_kw(energy_kwh: float, stay_h: float, max_kw: float) -> float:
    """The `fill` rule: the power that fills the car by departure, within [grid minimum,
    max_kw]."""
    return min(max_kw, max(DEFAULT_MIN_KW, energy_kwh / stay_h))


def minimum_floor_kw(max_kw: float) -> float:
    """The `minimum` rule: the grid's minimum power (the car's maximum, if lower)."""
    return min(max_kw, DEFAULT_MIN_KW)


def session(sid: int, arrived_s: float, stay_s: float, energy_kwh: float, max_kw: float,
            slot_s: float) -> Session:
    """Slotted: arrival and departure rounded to the nearest slot, at least one slot apart;
    the energy capped by what max_kw delivers in the stay."""
    first = round(arrived_s / slot_s)
    last = max(first + 1, round((arrived_s + stay_s) / slot_s))
    stay_h = (last - first) * slot_s / 3600.0
    energy = min(energy_kwh, max_kw * stay_h)
    return Session(sid, first, last, energy, max_kw, floor_kw(energy, stay_h, max_kw), arrived_s)


def acn_fill(substations: int, seed: int) -> Trace:
    rng = random.Random(seed)
    day_s = 24 * 3600.0
    out: list[Session] = []
    for sid in range(ACN_SESSIONS_PER_SUBSTATION * substations):
        if rng.random() < 0.7:
            hour = min(12.0, max(5.0, rng.gauss(8.5, 1.0)))
        else:
            hour = rng.uniform(10.0, 20.0)
        arrived = hour * 3600.0
        stay = min(rng.lognormvariate(math.log(6.1), 0.5) * 3600.0, day_s - arrived - 1.0)
        stay = max(stay, 1800.0)
        energy = rng.lognormvariate(math.log(6.7), 0.6)
        max_kw = rng.choices(ACN_MAX_KW, ACN_MAX_KW_WEIGHTS)[0]
        out.append(session(sid, arrived, stay, energy, max_kw, ACN_SLOT_S))
    return _trace("acn-fill", ACN_SLOT_S, out)


def today_fill(substations: int, seed: int) -> Trace:
    rng = random.Random(seed + 1)
    trace = arrivals(TODAY_KW_PER_SUBSTATION * substations, TODAY_HORIZON_S, seed)
    out = [session(sid, a.at, a.declared_s * rng.uniform(1.0, 3.0), a.kw * a.declared_s / 3600.0,
                   a.kw, TODAY_SLOT_S) for sid, a in enumerate(trace)]
    return _trace("today-fill", TODAY_SLOT_S, out)


def _trace(name: str, slot_s: float, sessions: list[Session]) -> Trace:
    ordered = tuple(sorted(sessions, key=lambda s: (s.arrived_at_s, s.id)))
    return Trace(name, slot_s, max(s.departure for s in ordered), ordered)


def minimum_floors(trace: Trace, name: str) -> Trace:
    """The same cars, each with the `minimum` floor."""
    return replace(trace, name=name, sessions=tuple(replace(s, min_kw=minimum_floor_kw(s.max_kw))
                                                    for s in trace.sessions))


def acn(substations: int, seed: int) -> Trace:
    return minimum_floors(acn_fill(substations, seed), "acn")


def today(substations: int, seed: int) -> Trace:
    return minimum_floors(today_fill(substations, seed), "today")


# The default workloads (what a car sends) and the `fill` scenarios (a driver who asks for a
# guarantee), the same cars and arrivals in each pair.
TRACES: dict[str, Callable[[int, int], Trace]] = {
    "acn": acn, "acn-fill": acn_fill, "today": today, "today-fill": today_fill,
}


def shape(trace: Trace) -> dict[str, float]:
    """The medians docs/benchmarks.md compares with ACN-Sim's (hours, kWh)."""
    stays = [(s.departure - s.arrival) * trace.slot_h for s in trace.sessions]
    laxities = [(s.departure - s.arrival) * trace.slot_h - s.energy_kwh / s.max_kw
                for s in trace.sessions]
    return {"sessions": float(len(trace.sessions)),
            "median_stay_h": statistics.median(stays),
            "median_energy_kwh": statistics.median(s.energy_kwh for s in trace.sessions),
            "median_laxity_h": statistics.median(laxities)}
