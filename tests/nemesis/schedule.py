"""The nemesis's seeded fault schedule: the same seed and topology give the same schedule.

Faults arrive at random (exponential gaps) and last a random while; several overlap, on different
targets. A target takes one fault at a time: a process (SIGKILL and start it later; SIGSTOP then
SIGCONT; hang: SIGSTOP, then SIGKILL and start, as a supervisor does with a hung process, so
that what it had read and not answered is lost; a graceful restart; a restart with less
capacity), a substation's disk (slow commits),
Prometheus's list of substations (empty, or some left out), the balancer replica count. A slow
disk and a kill of the same substation are different targets, so they can overlap: a crash
while admissions are waiting for their commit.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

KILL, PAUSE, HANG, RESTART = "kill", "pause", "hang", "restart"
CAPACITY, SLOW_DISK, TARGETS, REPLICAS = "capacity", "slow_disk", "targets", "replicas"
KINDS = (KILL, PAUSE, HANG, RESTART, CAPACITY, SLOW_DISK, TARGETS, REPLICAS)
# How often each kind is drawn (out of the sum).
WEIGHTS = {KILL: 4, PAUSE: 4, HANG: 3, RESTART: 2, CAPACITY: 1, SLOW_DISK: 3, TARGETS: 2,
           REPLICAS: 2}
SLOW_DISK_MS = (200, 800, 2500)


@dataclass(frozen=True)
class Topology:
    substations: tuple[str, ...]
    balancers: tuple[str, ...]          # every replica that may run; the first `replicas` do
    replicas: int                       # how many run when no fault says otherwise
    ingresses: tuple[str, ...] = ("ingress",)   # every ingress replica (all run)
    store: str = "sqlite"               # the ingresses' store: `postgresql` is a process too

    @property
    def others(self) -> tuple[str, ...]:
        return (*self.ingresses, "prometheus",
                *(("postgres",) if self.store == "postgresql" else ()))

    @property
    def processes(self) -> tuple[str, ...]:
        return (*self.substations, *self.balancers[:self.replicas], *self.others)


@dataclass(frozen=True)
class Fault:
    at: float                 # seconds after the traffic started
    kind: str
    target: str               # a process, `disk:<substation>`, `targets` or `replicas`
    duration: float           # until it is undone (0: a restart, undone at once)
    value: str = ""           # slow disk: ms; targets: the substations listed; replicas: count

    def describe(self) -> str:
        extra = {SLOW_DISK: f" {self.value} ms per commit",
                 TARGETS: f" listing [{self.value}]", REPLICAS: f" to {self.value}",
                 CAPACITY: f" at {self.value} of its capacity"}.get(self.kind, "")
        lasting = f" for {self.duration:.2f} s" if self.duration else ""
        return f"{self.at:+8.2f} s  {self.kind:<9} {self.target:<14}{extra}{lasting}"


def make_schedule(seed: int, duration_s: float, topology: Topology, mean_gap_s: float = 1.5,
                  warmup_s: float = 2.0) -> list[Fault]:
    """Faults from `warmup_s` on, each undone by `duration_s`; one at a time per target."""
    rng = random.Random(seed)
    busy_until: dict[str, float] = {}
    faults: list[Fault] = []
    kinds, weights = list(WEIGHTS), [WEIGHTS[k] for k in WEIGHTS]
    t = warmup_s
    while True:
        t += rng.expovariate(1.0 / mean_gap_s)
        at = round(t, 2)
        if at > duration_s - 1.0:
            return faults
        kind = rng.choices(kinds, weights)[0]
        candidates = [c for c in _targets(kind, topology)
                      if all(busy_until.get(b, 0.0) <= at for b in _holds(c, topology))]
        if not candidates:
            continue
        target = rng.choice(candidates)
        length = 0.0 if kind == RESTART else \
            min(rng.uniform(0.5, 6.0 if kind != SLOW_DISK else 8.0), duration_s - at)
        length = math.floor(length * 100) / 100     # shown to the hundredth, never longer
        value = _value(kind, rng, topology)
        faults.append(Fault(at, kind, target, length, value))
        # A restart or a revert takes a moment: the target rests a second after it.
        for held in _holds(target, topology):
            busy_until[held] = at + length + 1.0


def _holds(target: str, topology: Topology) -> tuple[str, ...]:
    """What a fault on `target` keeps for itself: the replica count starts and stops every
    replica but the first, so it excludes other faults on them and theirs exclude it."""
    if target == "replicas":
        return ("replicas", *topology.balancers[1:])
    if target in topology.balancers[1:]:
        return (target, "replicas")
    return (target,)


def _targets(kind: str, topology: Topology) -> Sequence[str]:
    if kind in (KILL, PAUSE, HANG, RESTART):
        # Only replicas that run by default: the replica-count fault starts and stops the rest.
        return topology.processes
    if kind == CAPACITY:
        return topology.substations
    if kind == SLOW_DISK:
        return [f"disk:{s}" for s in topology.substations]
    if kind == TARGETS:
        return ["targets"]
    return ["replicas"] if len(topology.balancers) > topology.replicas else []


def _value(kind: str, rng: random.Random, topology: Topology) -> str:
    if kind == SLOW_DISK:
        return str(rng.choice(SLOW_DISK_MS))
    if kind == TARGETS:
        # Empty (a fresh service discovery) as often as a changed list.
        keep = [] if rng.random() < 0.5 else \
            rng.sample(topology.substations, rng.randint(1, len(topology.substations) - 1))
        return ",".join(sorted(keep))
    if kind == REPLICAS:
        others = [n for n in range(1, len(topology.balancers) + 1) if n != topology.replicas]
        return str(rng.choice(others))
    if kind == CAPACITY:
        return "0.5"
    return ""


def render(seed: int, faults: Sequence[Fault]) -> str:
    mix = Counter(f.kind for f in faults)
    lines = [f"schedule (seed {seed}): {len(faults)} faults, "
             + ", ".join(f"{k} {mix[k]}" for k in KINDS if mix[k])]
    lines += [f"  {f.describe()}" for f in faults]
    return "\n".join(lines)
