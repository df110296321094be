"""The arrival traces of the balance-quality simulation (bench/quality.py), each seeded.

Every request asks for a power (3.7-150 kW) and declares an energy, hence a DECLARED duration
(energy / power): when its substation expects it to end. Its ACTUAL duration is how long it
really charges. They are equal unless the workload says drivers stop early or run long.

    today       Poisson arrivals offering 56 % of the grid, sessions of 10 minutes on average
                (exponential), plus a rush-hour burst every 5 minutes: a quarter of the grid's
                capacity within one second.
    short       the same with sessions of 1 minute on average: many end between two scrapes.
    lognormal   heavy-tailed sessions: log-normal, mean 5 minutes, median 1.6 minutes, the
                longest hours.
    stop-early  `short`'s requests (same times, powers, declarations), but each session
                really lasts declared x uniform(0.5, 1.5): the substations' forecasts are wrong.
    burst10     `today` where the burst in the middle of the trace is 10 times the size
                (2.5 times the grid's capacity within one second).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

POWERS_KW = (3.7, 7.4, 11.0, 22.0, 50.0, 150.0)
POWER_WEIGHTS = (20, 25, 25, 15, 10, 5)
MEAN_KW = sum(p * w for p, w in zip(POWERS_KW, POWER_WEIGHTS, strict=True)) / sum(POWER_WEIGHTS)
BURST_EVERY_S = 300.0
BURST_SHARE = 0.25          # of the grid's capacity, within one second
POISSON_SHARE = 0.8 * 0.7   # of the grid's capacity, offered by the background arrivals


@dataclass(frozen=True)
class Arrival:
    at: float
    kw: float
    declared_s: float   # from the declared energy: when the substation expects it to end
    actual_s: float     # how long it really charges


Durations = Callable[[random.Random], float]


def exponential(mean_s: float) -> Durations:
    return lambda rng: rng.expovariate(1.0 / mean_s)


def lognormal(mean_s: float, sigma: float) -> Durations:
    mu = math.log(mean_s) - sigma * sigma / 2.0    # so that the mean is mean_s
    return lambda rng: rng.lognormvariate(mu, sigma)


def arrivals(capacity_total_kw: float, horizon_s: float, seed: int,
             durations: Durations | None = None, mean_duration_s: float = 600.0,
             burst_sizes: Callable[[int], float] = lambda start: 1.0) -> list[Arrival]:
    """Poisson arrivals offering POISSON_SHARE of the grid, plus a burst every BURST_EVERY_S
    worth BURST_SHARE of its capacity (times `burst_sizes(start)`) within one second; session
    durations drawn by `durations` (default: exponential with mean `mean_duration_s`)."""
    rng = random.Random(seed)
    durations = durations or exponential(mean_duration_s)
    rate = POISSON_SHARE * capacity_total_kw / (MEAN_KW * mean_duration_s)
    out: list[Arrival] = []

    def one(at: float) -> Arrival:
        kw = rng.choices(POWERS_KW, POWER_WEIGHTS)[0]
        duration = durations(rng)
        return Arrival(at, kw, duration, duration)
    t = 0.0
    while (t := t + rng.expovariate(rate)) < horizon_s:
        out.append(one(t))
    burst = BURST_SHARE * capacity_total_kw / MEAN_KW
    for start in range(int(BURST_EVERY_S), int(horizon_s), int(BURST_EVERY_S)):
        out += [one(start + rng.random()) for _ in range(max(1, int(burst * burst_sizes(start))))]
    return sorted(out, key=lambda a: a.at)


def wrong_declarations(trace: list[Arrival], seed: int, low: float = 0.5, high: float = 1.5
                       ) -> list[Arrival]:
    """The same requests, each really lasting its declared duration x uniform(low, high)."""
    rng = random.Random(seed)
    return [replace(a, actual_s=a.declared_s * rng.uniform(low, high)) for a in trace]


def _burst10(capacity_total_kw: float, horizon_s: float, seed: int) -> list[Arrival]:
    middle = BURST_EVERY_S * max(1, round(horizon_s / 2 / BURST_EVERY_S))
    return arrivals(capacity_total_kw, horizon_s, seed,
                    burst_sizes=lambda start: 10.0 if start == middle else 1.0)


def _short(capacity_total_kw: float, horizon_s: float, seed: int) -> list[Arrival]:
    return arrivals(capacity_total_kw, horizon_s, seed, exponential(60.0), 60.0)


WORKLOADS: dict[str, Callable[[float, float, int], list[Arrival]]] = {
    "today": lambda cap, horizon, seed: arrivals(cap, horizon, seed),
    "short": _short,
    "lognormal": lambda cap, horizon, seed: arrivals(cap, horizon, seed,
                                                     lognormal(300.0, 1.5), 300.0),
    "stop-early": lambda cap, horizon, seed: wrong_declarations(_short(cap, horizon, seed),
                                                                seed + 1),
    "burst10": _burst10,
}
# Whether the sessions last what they declared (the forecast is right).
DECLARED = {"today": True, "short": True, "lognormal": True, "stop-early": False,
            "burst10": True}
