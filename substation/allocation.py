"""Sharing one substation's capacity among its charging sessions: how many kW each one draws.

Plain logic with time passed in (like charging.py), so it is tested without waiting. A session
asks for `max_kw` (its `requested_kw`) and accepts anything down to its floor `min_kw` (the least
power worth charging at; by default `requested_kw`, which is today's fixed-power behaviour). The
substation admits a session only when its floor fits beside the floors it has already committed
(`floor_fits`), and then shares what the floors leave among its sessions (`allocate`), whenever
one starts, ends or stops and on every tick:

- never more than `capacity_kw` in all (up to FIT_TOLERANCE_KW of float residue);
- every session at least its floor (or what it still needs, if less: `need_kw`), or 0 kW while
  it waits (see below);
- nothing left over while a session could take more (work-conserving up to each one's need);
- the same sessions in any order give the same answer.

What the floors leave goes by the strategy: water-filling (max-min fair: one level L, each
session clamp(L, floor, need)) by default; least-laxity-first when departures are known, laxity
being the time to departure minus the time the remaining energy takes at the session's maximum
power. Sessions whose laxities fall in the same step (`laxity_step_s`) share by water-filling
among themselves: strict LLF swaps two nearly tied sessions on every tick (the one charging keeps
its laxity, the waiting one's falls below it), which is the oscillation a substation must not
show. Sessions without a departure come last, water-filled.

A session whose floor does not fit need not be refused: the caller may admit it on a best-effort
basis (`committed=False`): it then charges at 0 kW or at least its floor, in the strategy's
order, from what the committed floors leave, and never takes from them. Should the committed
floors themselves no longer fit (the capacity fell below them), they are granted whole or not at
all (as EVerest's energy manager does with its minimum currents) in the strategy's order (least
laxity first under least-laxity, then the oldest admission). Sessions left at 0 kW are `paused`:
below the floors, sharing becomes admission.

`Smoother` passes a session's new power on only when it really changes (by at least 0.01 kW), never
above capacity, and at most once per tick: on a tick (`update`) every session moves to its new
allocation; between two ticks (`between_ticks`, an admission or a stop) nobody rises, and a
newcomer whose floor needs room takes it from sessions above their floors, each going straight
down to its floor: a session at its floor has nothing more to give, so whatever else is admitted
before the next tick finds room without moving anyone twice (the floors of all fit: that is the
admission rule).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gridlb.charge import FIT_TOLERANCE_KW, fits

WATER_FILLING = "water-filling"
LEAST_LAXITY = "least-laxity"
EARLIEST_DEADLINE = "earliest-deadline"
# Least-laxity when any session says when it leaves, water-filling otherwise.
AUTO = "auto"
STRATEGIES = (AUTO, WATER_FILLING, LEAST_LAXITY, EARLIEST_DEADLINE)
# A change of power smaller than this is not passed on to a charger (Smoother).
CHANGE_THRESHOLD_KW = 0.01
# Laxities within one step of charging time (5 minutes, whatever the speed factor) are a tie,
# shared by water-filling.
LAXITY_STEP_S = 300.0


@dataclass(frozen=True)
class Demand:
    """One charging session as the allocation sees it. Times are on the caller's clock (seconds);
    `speed_factor` of `allocate` converts them to charging hours as SessionTable does."""

    session_id: str
    min_kw: float                       # its floor: admitted only if this fits
    max_kw: float                       # its requested_kw
    remaining_kwh: float = math.inf     # still to deliver
    departure_at: float | None = None   # when the driver leaves, if known
    admitted_at: float = 0.0            # among equals, the oldest keeps its floor first
    # Its floor was committed at admission (floor_fits). False: admitted on a best-effort basis,
    # it charges at its floor or more only when that fits in what the committed floors leave.
    committed: bool = True


@dataclass(frozen=True)
class Allocation:
    kw: dict[str, float]        # every session's power, 0.0 for a paused one
    paused: tuple[str, ...]     # at 0 kW, their floor not fitting (waiting best effort too)


def floor_fits(capacity_kw: float, committed_floors_kw: Iterable[float], min_kw: float) -> bool:
    """Whether a new session with floor `min_kw` may be admitted beside the floors already
    committed: the capacity check of today's fixed-power admission, applied to floors."""
    return fits(math.fsum(committed_floors_kw), min_kw, capacity_kw)


def need_kw(demand: Demand, slot_s: float | None = None, speed_factor: float = 1.0) -> float:
    """The most the session can use: its max_kw, or less when `slot_s` (how long this allocation
    holds) would deliver more than it still needs."""
    if slot_s is None or math.isinf(demand.remaining_kwh):
        return demand.max_kw
    hours = slot_s * speed_factor / 3600.0
    return min(demand.max_kw, demand.remaining_kwh / hours)


def laxity_s(demand: Demand, now: float, speed_factor: float = 1.0) -> float:
    """Time to departure minus the time its remaining energy takes at max_kw (acnportal's LLF);
    +inf without a departure: it can always wait."""
    if demand.departure_at is None:
        return math.inf
    return demand.departure_at - now - demand.remaining_kwh / demand.max_kw * 3600.0 \
        / speed_factor


def water_fill(bounds: Sequence[tuple[float, float]], budget_kw: float) -> list[float]:
    """Max-min fair shares: the level L at which sum(clamp(L, low, high)) - sum(low) equals
    `budget_kw`, each share clamp(L, low, high). Everyone gets `high` when the budget allows."""
    if budget_kw >= math.fsum(high - low for low, high in bounds):
        return [high for _, high in bounds]
    if budget_kw <= 0.0:
        return [low for low, _ in bounds]
    # Raise the level from the lowest floor, breakpoint by breakpoint (every low and high):
    # between two, the shares grow by one kW per kW of level for each session whose range holds
    # the level. O(n log n), for a substation's thousands of sessions on every tick.
    lows = sorted(low for low, _ in bounds)
    highs = sorted(high for _, high in bounds)
    count = len(bounds)
    i = j = rising = 0
    level, extra = lows[0], 0.0
    while True:
        while i < count and lows[i] <= level:
            rising, i = rising + 1, i + 1
        while j < count and highs[j] <= level:
            rising, j = rising - 1, j + 1
        if j == count:
            break
        point = lows[i] if i < count and lows[i] < highs[j] else highs[j]
        step = rising * (point - level)
        if extra + step >= budget_kw:
            level += (budget_kw - extra) / rising
            break
        extra, level = extra + step, point
    return [min(high, max(low, level)) for low, high in bounds]


def _order_key(demand: Demand, strategy: str, now: float, speed_factor: float,
               laxity_step_s: float) -> float:
    """Priority class of a session (lower first); equal classes share by water-filling."""
    if strategy == EARLIEST_DEADLINE:
        return math.inf if demand.departure_at is None else demand.departure_at
    if strategy == LEAST_LAXITY:
        lax = laxity_s(demand, now, speed_factor)
        if laxity_step_s > 0.0 and math.isfinite(lax):   # the step is in charging time
            return float(math.floor(lax * speed_factor / laxity_step_s))
        return lax
    return 0.0   # water-filling: one class


def _check(capacity_kw: float, demands: Sequence[Demand], strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if not capacity_kw >= 0.0:
        raise ValueError(f"capacity_kw must be at least 0, got {capacity_kw:g}")
    seen: set[str] = set()
    for d in demands:
        if d.session_id in seen:
            raise ValueError(f"session {d.session_id} is listed twice")
        seen.add(d.session_id)
        if not 0.0 < d.min_kw <= d.max_kw:
            raise ValueError(f"session {d.session_id}: min_kw must be above 0 and at most "
                             f"max_kw, got {d.min_kw:g} and {d.max_kw:g}")
        if not d.remaining_kwh >= 0.0:
            raise ValueError(f"session {d.session_id}: remaining_kwh must be at least 0, "
                             f"got {d.remaining_kwh:g}")


def allocate(capacity_kw: float, demands: Sequence[Demand], now: float, strategy: str = AUTO,
             *, slot_s: float | None = None, speed_factor: float = 1.0,
             laxity_step_s: float = LAXITY_STEP_S) -> Allocation:
    """Each session's kW: floors first, the rest by `strategy` (see the module's docstring).
    `slot_s`: how long this allocation holds, so that a session about to finish is given only
    what it still needs and the rest goes to the others (None: until the next call, when the
    caller ends finished sessions itself)."""
    _check(capacity_kw, demands, strategy)
    if strategy == AUTO:
        strategy = LEAST_LAXITY if any(d.departure_at is not None for d in demands) \
            else WATER_FILLING
    needs = {d.session_id: need_kw(d, slot_s, speed_factor) for d in demands}
    keys = {d.session_id: _order_key(d, strategy, now, speed_factor, laxity_step_s)
            for d in demands}

    def order(d: Demand) -> tuple[float, float, str]:
        return keys[d.session_id], d.admitted_at, d.session_id

    def floor_of(d: Demand) -> float:
        return min(d.min_kw, needs[d.session_id])
    # Committed floors first, whole or not at all, in the strategy's order.
    floors: dict[str, float] = {}
    paused: list[str] = []
    committed_kw = 0.0   # a running sum: floor_fits over every floor is quadratic
    for d in sorted((d for d in demands if d.committed), key=order):
        if fits(committed_kw, floor_of(d), capacity_kw):
            floors[d.session_id] = floor_of(d)
            committed_kw += floor_of(d)
        else:
            paused.append(d.session_id)
    kw = dict.fromkeys((d.session_id for d in demands), 0.0)
    kw.update(floors)
    budget = capacity_kw - math.fsum(floors.values())
    # What they leave: class by class. In each, a best-effort session takes its floor if that
    # fits whole in what is left (otherwise it waits at 0 kW), then the class is water-filled.
    classes: dict[float, list[Demand]] = {}
    for d in demands:
        if d.session_id not in paused:
            classes.setdefault(keys[d.session_id], []).append(d)
    for key in sorted(classes):
        members = sorted(classes[key], key=order)
        for d in members:
            if not d.committed:
                if fits(0.0, floor_of(d), budget):
                    floors[d.session_id] = kw[d.session_id] = floor_of(d)
                    budget -= floor_of(d)
                else:
                    paused.append(d.session_id)
        members = [d for d in members if d.session_id in floors]
        if budget <= 0.0 or not members:
            continue
        bounds = [(floors[d.session_id], needs[d.session_id]) for d in members]
        shares = water_fill(bounds, budget)
        for d, share in zip(members, shares, strict=True):
            kw[d.session_id] = share
        budget -= math.fsum(share - low for share, (low, _) in zip(shares, bounds, strict=True))
    return Allocation(kw, tuple(sorted(paused)))


class Smoother:
    """The power each session was last told. A new allocation is passed on for a session only
    when it moved by at least `threshold_kw`; smaller moves keep the old value, unless keeping
    old values would exceed the capacity (then the largest kept excesses give way first) or
    leave more than `threshold_kw` of the allocation unused (the largest shortfalls move)."""

    def __init__(self, threshold_kw: float = CHANGE_THRESHOLD_KW) -> None:
        self.threshold_kw = threshold_kw
        self.granted: dict[str, float] = {}

    def update(self, capacity_kw: float, allocation: Mapping[str, float]) -> dict[str, float]:
        """Take this tick's allocation; return the sessions whose power changes, with their new
        power. Sessions absent from `allocation` are forgotten."""
        kept = {sid: self.granted[sid] for sid, kw in allocation.items()
                if sid in self.granted and abs(kw - self.granted[sid]) < self.threshold_kw}
        granted = {sid: kept.get(sid, kw) for sid, kw in allocation.items()}
        excess = math.fsum(granted.values()) - capacity_kw
        if excess > FIT_TOLERANCE_KW:
            # Kept values above the new allocation give way, largest first, until it fits.
            above = sorted((sid for sid in kept if kept[sid] > allocation[sid]),
                           key=lambda sid: (allocation[sid] - kept[sid], sid))
            for sid in above:
                if excess <= FIT_TOLERANCE_KW:
                    break
                excess -= granted[sid] - allocation[sid]
                granted[sid] = allocation[sid]
        # Nor may kept values below the new allocation leave more than one threshold of it
        # unused (many sessions each a little under their share): they move, the most under
        # first.
        unused = math.fsum(allocation.values()) - math.fsum(granted.values())
        if unused > self.threshold_kw:
            below = sorted((sid for sid in kept if kept[sid] < allocation[sid]),
                           key=lambda sid: (kept[sid] - allocation[sid], sid))
            for sid in below:
                if unused <= self.threshold_kw:
                    break
                unused -= allocation[sid] - granted[sid]
                granted[sid] = allocation[sid]
        changes = {sid: kw for sid, kw in granted.items() if self.granted.get(sid) != kw}
        self.granted = granted
        return changes

    def between_ticks(self, capacity_kw: float, allocation: Mapping[str, float],
                      floors: Mapping[str, float]) -> dict[str, float]:
        """A session started or ended between two ticks: return the sessions whose power changes.
        `allocation` is the new allocation of every session charging now, `floors` their floors.
        Sessions already told keep their power (rises wait for the next tick); a newcomer is
        given its allocated power from what is free, at least its floor. When the newcomers'
        floors do not fit in what is free, sessions above their floors give way, those the new
        allocation cuts most first, each straight down to its floor. So a session moves at most
        once between two ticks: once at its floor it has nothing more to give (a newcomer's start
        is not a move; it may give way once too). The room always suffices: every floor fits the
        capacity (the admission rule), and once all have given way every session sits at its
        floor. Should it not (the capacity fell below the floors: a restart with less, which
        re-allocates at once, not here), everyone takes the allocation."""
        granted = {sid: self.granted[sid] for sid in allocation if sid in self.granted}
        newcomers = sorted(sid for sid in allocation if sid not in granted)
        changes: dict[str, float] = {}
        need = math.fsum(granted.values()) + math.fsum(floors[sid] for sid in newcomers) \
            - capacity_kw
        if need > FIT_TOLERANCE_KW:
            givers = sorted((sid for sid in granted
                             if granted[sid] > floors[sid]),
                            key=lambda sid: (allocation[sid] - granted[sid], sid))
            for sid in givers:
                if need <= FIT_TOLERANCE_KW:
                    break
                need -= granted[sid] - floors[sid]
                granted[sid] = changes[sid] = floors[sid]
            if need > FIT_TOLERANCE_KW:
                return self.update(capacity_kw, allocation)
        free = capacity_kw - math.fsum(granted.values()) \
            - math.fsum(floors[sid] for sid in newcomers)
        for sid in newcomers:
            extra = min(max(0.0, allocation[sid] - floors[sid]), max(0.0, free))
            granted[sid] = changes[sid] = floors[sid] + extra
            free -= extra
        self.granted = granted
        return changes
