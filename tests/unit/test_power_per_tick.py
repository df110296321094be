"""The substation's sessions under a burst of admissions and stops between ticks, as a hypothesis
state machine over the real SessionTable: whatever the order, the capacity is never exceeded,
every session keeps at least its floor, a session's power moves at most once between two ticks
(its start is not a move), and at each tick the capacity is shared again (up to the Smoother's
threshold) so that power freed by a stop reaches the others within one tick."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from substation.allocation import CHANGE_THRESHOLD_KW, Demand, allocate
from substation.charging import OverCapacity, SessionTable

EPS = 1e-6


class BurstsBetweenTicks(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = SessionTable(100.0, speed_factor=60.0)
        self.now = 0.0
        self.count = 0
        self.told: dict[str, float] = {}     # each session's power as last seen
        self.moves: dict[str, int] = {}      # its moves since the last tick

    @initialize(capacity=st.sampled_from((22.0, 50.0, 100.0, 500.0)))
    def substation(self, capacity: float) -> None:
        self.table = SessionTable(capacity, speed_factor=60.0)

    def observe(self) -> None:
        for sid, session in self.table.active.items():
            if sid in self.told and session.granted_kw != self.told[sid]:
                self.moves[sid] = self.moves.get(sid, 0) + 1
            self.told[sid] = session.granted_kw
        for sid in set(self.told) - set(self.table.active):
            del self.told[sid]
            self.moves.pop(sid, None)

    @rule(power=st.sampled_from((3.7, 7.4, 11.0, 22.0, 50.0)),
          floor_share=st.sampled_from((None, 0.13, 1 / 3, 0.5, 1.0)),
          departs_in_s=st.none() | st.floats(60.0, 8 * 3600.0))
    def admit(self, power: float, floor_share: float | None, departs_in_s: float | None) -> None:
        self.count += 1
        floor = None if floor_share is None else max(1.4, round(power * floor_share, 2))
        departure = None if departs_in_s is None else self.now + departs_in_s
        try:
            self.table.admit(f"s{self.count}", "ev", power, 1000.0, now=self.now,
                             min_kw=floor, departure_at=departure)
        except OverCapacity:
            committed = math.fsum(s.floor_kw for s in self.table.active.values())
            assert committed + (power if floor is None else floor) > self.table.capacity_kw
        self.observe()

    @precondition(lambda self: bool(self.table.active))
    @rule(pick=st.integers(0, 10**6))
    def stop(self, pick: int) -> None:
        ids = sorted(self.table.active)
        self.table.stop(ids[pick % len(ids)], self.now)
        self.observe()

    @rule(seconds=st.floats(0.0, 1.0))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.table.advance(self.now)
        self.moves.clear()
        self.observe()
        self.moves.clear()     # the tick's own moves belong to the new interval's start
        demands = [Demand(s.session_id, s.floor_kw, s.power_kw,
                          max(0.0, s.energy_kwh - s.delivered_kwh), s.departure_at,
                          s.started_at) for s in self.table.active.values()]
        target = allocate(self.table.capacity_kw, demands, self.now,
                          speed_factor=self.table.speed_factor).kw
        for sid, session in self.table.active.items():
            assert abs(session.granted_kw - target[sid]) < CHANGE_THRESHOLD_KW + EPS
        assert math.fsum(target.values()) - self.table.granted_kw <= CHANGE_THRESHOLD_KW + EPS

    @invariant()
    def never_above_capacity_nor_below_a_floor(self) -> None:
        granted = math.fsum(s.granted_kw for s in self.table.active.values())
        assert granted <= self.table.capacity_kw + EPS
        assert self.table.granted_kw == pytest.approx(granted, abs=EPS)
        for session in self.table.active.values():
            assert session.granted_kw >= session.floor_kw - EPS
            assert session.granted_kw <= session.power_kw + EPS

    @invariant()
    def at_most_one_move_between_ticks(self) -> None:
        assert all(n <= 1 for n in self.moves.values()), self.moves


BurstsBetweenTicks.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                                deadline=None)
test_bursts_between_ticks = BurstsBetweenTicks.TestCase
