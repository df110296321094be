"""Property-based test of the placement protocol (balancer/placement.py) with the ingress's
idempotency records (ingress/idempotency.py), against fake substations built on the real
session table (substation/charging.py) that can accept, refuse, lose a request before or after
admitting it, deliver it late, stall (SIGSTOP), die and come back.

After every step: a session is active on at most one substation (I1); a client told "charging"
(not a replay) was told so while the session was charging there (I2); a key whose record says
the session exists nowhere has it nowhere (I3); no key ever got two session ids.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from balancer.placement import Deadline, OutcomeKind, Placement, Reply
from gridlb.charge import SessionCharge
from ingress.idempotency import (
    Dispatch,
    KeyRecord,
    RecordState,
    Replay,
    Reused,
    after_answer,
    evidence_of,
    next_step,
)
from substation.charging import CHARGING, Refusal, SessionTable

SUBSTATIONS = ("s0", "s1", "s2")
KEYS = ("k0", "k1", "k2", "k3")
MODES = ("ok", "ok", "ok", "down", "lose_before", "lose_after", "error_after", "stall")
KW = 11.0


@dataclasses.dataclass
class LateCopy:
    instance: str
    op: str                  # "charge" or "fence"
    args: tuple[Any, ...]


class FakeGrid:
    """`SubstationClient` over real session tables, with a fault mode per substation."""

    def __init__(self) -> None:
        self.tables = {s: SessionTable(30.0, speed_factor=1.0) for s in SUBSTATIONS}
        self.modes = dict.fromkeys(SUBSTATIONS, "ok")
        self.scripted: dict[str, list[str]] = {s: [] for s in SUBSTATIONS}  # one call each
        self.late: list[LateCopy] = []
        # Calls to a stopped substation: resolved True when it is resumed, False when the
        # caller's timeout fires first (its request then sits in the stopped process's socket).
        self.stalled: list[tuple[str, asyncio.Future[bool]]] = []
        self.now = 0.0

    def process(self, copy: LateCopy) -> Reply:
        table = self.tables[copy.instance]
        if copy.op == "fence":
            session_id, epoch = copy.args
            found = table.fence(session_id, epoch, self.now)
            body = {"state": "absent"} if found is None else found.to_json()
            return Reply(sent=True, status=200, body=body)
        charge: SessionCharge = copy.args[0]
        try:
            admission = table.admit(charge.session_id, charge.vehicle_id, charge.requested_kw,
                                    charge.energy_kwh, self.now, charge.epoch)
        except Refusal as exc:
            return Reply(sent=True, status=409, body={"error": exc.code})
        return Reply(sent=True, status=200, body=admission.session.to_json())

    async def call(self, copy: LateCopy) -> Reply:
        script = self.scripted[copy.instance]
        mode = script.pop(0) if script else self.modes[copy.instance]
        if mode == "down":
            return Reply(sent=False, detail="connection refused")
        if mode == "stall":                     # SIGSTOP: it answers when it is resumed
            resumed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self.stalled.append((copy.instance, resumed))
            if not await resumed:
                self.late.append(copy)          # processed whenever it is resumed
                return Reply(sent=True, detail="timeout")
            if self.modes[copy.instance] == "down":
                return Reply(sent=True, detail="reset")
            return self.process(copy)
        if mode == "lose_before":               # on its way still: may arrive any time
            self.late.append(copy)
            return Reply(sent=True, detail="timeout")
        reply = self.process(copy)
        if mode == "lose_after":
            return Reply(sent=True, detail="timeout")
        if mode == "error_after":
            return Reply(sent=True, status=500, body={"error": "internal_error"})
        return reply

    async def charge(self, instance: str, charge: SessionCharge, timeout_s: float) -> Reply:
        return await self.call(LateCopy(instance, "charge", (charge,)))

    async def fence(self, instance: str, session_id: str, epoch: int, timeout_s: float
                    ) -> Reply:
        return await self.call(LateCopy(instance, "fence", (session_id, epoch)))

    def unstall(self, instance: str | None, resumed: bool) -> None:
        """Resume `instance` (every stalled call gets its answer), or with None and
        resumed=False, let every stalled call's timeout fire."""
        for entry in [e for e in self.stalled if instance in (None, e[0])]:
            self.stalled.remove(entry)
            if not entry[1].done():
                entry[1].set_result(resumed)

    def holders(self, session_id: str) -> list[str]:
        return [s for s, t in self.tables.items()
                if (got := t.active.get(session_id)) is not None and got.state == CHARGING]


class LeastLoadedChooser:
    """Picks the least loaded substation not yet tried, whether or not it fits, so that
    refusals happen; bookkeeping is not under test here."""

    def __init__(self, grid: FakeGrid) -> None:
        self.grid = grid

    def choose(self, exclude: Collection[str]) -> str | None:
        left = [s for s in SUBSTATIONS if s not in exclude]
        return min(left, key=lambda s: (self.grid.tables[s].load_kw, s)) if left else None

    def reserve(self, instance: str) -> None:
        pass

    def accepted(self, instance: str, reply: Reply) -> None:
        pass

    def released(self, instance: str, reply: Reply | None, failed: bool) -> None:
        pass


@dataclasses.dataclass
class Running:
    key: str
    record: KeyRecord
    task: asyncio.Task[Any]
    before: KeyRecord | None = None     # the record before this dispatch
    resolve: bool = False
    abandoned: bool = False


@settings(max_examples=150, stateful_step_count=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
class PlacementMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.grid = FakeGrid()
        self.records: dict[str, KeyRecord] = {}
        self.running: list[Running] = []
        self.ids_answered: dict[str, set[str]] = {}

    def teardown(self) -> None:
        for instance in SUBSTATIONS:
            self.grid.modes[instance] = "ok"       # every placement can finish
            self.grid.unstall(instance, resumed=True)
        self.settle()
        for running in self.running:
            running.task.cancel()
        self.settle()
        self.loop.close()

    def settle(self) -> None:
        for _ in range(30):
            self.loop.run_until_complete(asyncio.sleep(0))
        self.collect()

    def collect(self) -> None:
        """Answer the clients whose dispatch ended (those the ingress did not give up on)."""
        for running in [r for r in self.running if r.task.done()]:
            self.running.remove(running)
            if running.task.cancelled():
                continue
            outcome = running.task.result()
            if running.abandoned:
                continue
            status = 200 if outcome.kind in (OutcomeKind.PLACED, OutcomeKind.ENDED) else 503
            if outcome.kind is OutcomeKind.PLACED:
                # I2: "charging" is true when it is said.
                assert outcome.instance in self.grid.holders(running.record.session_id)
            if status == 200:
                self.ids_answered.setdefault(running.key, set()).add(
                    running.record.session_id)
            # As the balancer answers it (balancer/views.py) and the ingress reads it.
            body = {"status": "charging" if outcome.kind is OutcomeKind.PLACED else
                    "completed" if outcome.kind is OutcomeKind.ENDED else outcome.kind.value,
                    "session_may_exist": outcome.session_may_exist,
                    "resolved": outcome.resolved}
            evidence = evidence_of("", status, body, running.resolve)
            self.records[running.key] = after_answer(
                running.before, running.record, evidence, status, body, self.grid.now)

    def busy(self, key: str) -> bool:
        return any(r.key == key and not r.abandoned for r in self.running)

    @rule(key=st.sampled_from(KEYS))
    def client_sends(self, key: str) -> None:
        if self.busy(key):
            return                       # the ingress answers 409 request_in_progress
        before = self.records.get(key)
        step = next_step(before, "tenant", key, "same-request", self.grid.now)
        assert not isinstance(step, Reused)
        if isinstance(step, Replay):
            return
        assert isinstance(step, Dispatch)
        record = self.records[key] = step.record
        charge = SessionCharge("ev", KW, 30.0, session_id=record.session_id,
                               epoch=record.epoch)
        placement = Placement(charge, self.grid, LeastLoadedChooser(self.grid),
                              Deadline(60.0, clock=lambda: self.grid.now), forward_timeout_s=1.0,
                              max_attempts=3)
        resolve_at = SUBSTATIONS if step.resolve else None
        task = self.loop.create_task(placement.run(resolve_at))
        self.running.append(Running(key, record, task, before=before, resolve=step.resolve))
        self.settle()

    @rule(instance=st.sampled_from(SUBSTATIONS), mode=st.sampled_from(MODES))
    def substation_changes(self, instance: str, mode: str) -> None:
        was = self.grid.modes[instance]
        self.grid.modes[instance] = mode
        if was == "stall" and mode != "stall":
            self.grid.unstall(instance, resumed=True)
        self.settle()

    @precondition(lambda self: bool(self.grid.late))
    @rule(data=st.data())
    def a_late_copy_arrives(self, data: st.DataObject) -> None:
        copy = self.grid.late.pop(data.draw(st.integers(0, len(self.grid.late) - 1)))
        if self.grid.modes[copy.instance] != "down":
            self.grid.process(copy)

    @precondition(lambda self: any(not r.abandoned for r in self.running))
    @rule(data=st.data())
    def the_ingress_gives_up(self, data: st.DataObject) -> None:
        waiting = [r for r in self.running if not r.abandoned]
        running = data.draw(st.sampled_from(waiting))
        running.abandoned = True          # 504: the record stays PENDING, the dispatch runs on
        self.records[running.key] = after_answer(
            running.before, running.record, evidence_of("timeout", 0, None, running.resolve),
            504, {}, self.grid.now)

    @rule()
    def time_passes_and_sessions_complete(self) -> None:
        # Calls cannot outlive their timeout: before time jumps far past every deadline, the
        # timeouts of calls to stopped substations fire (the placements then go on, perhaps
        # calling a stopped substation again, within their bounded attempts).
        for _ in range(50):
            if not self.grid.stalled:
                break
            self.grid.unstall(None, resumed=False)
            self.settle()
        assert not self.grid.stalled, "a placement kept calling stopped substations"
        self.grid.now += 1e6
        for table in self.grid.tables.values():
            table.advance(self.grid.now)

    @invariant()
    def a_session_is_active_on_at_most_one_substation(self) -> None:
        if not hasattr(self, "grid"):
            return
        for record in self.records.values():
            assert len(self.grid.holders(record.session_id)) <= 1, record

    @invariant()
    def a_session_said_to_exist_nowhere_exists_nowhere(self) -> None:
        if not hasattr(self, "grid"):
            return
        for record in self.records.values():
            if record.state is RecordState.ABSENT:
                assert self.grid.holders(record.session_id) == [], record

    @invariant()
    def no_key_got_two_session_ids(self) -> None:
        if not hasattr(self, "grid"):
            return
        assert all(len(ids) <= 1 for ids in self.ids_answered.values())

    @invariant()
    def no_substation_is_over_capacity(self) -> None:
        if not hasattr(self, "grid"):
            return
        assert all(t.load_kw <= t.capacity_kw + 1e-9 for t in self.grid.tables.values())


TestPlacementProtocol = PlacementMachine.TestCase


def test_the_machine_can_break_a_protocol_without_fences() -> None:
    """The property test has teeth: without the fence after an ambiguous forward (moving on as
    the first release did after a lost answer), a lost-before answer plus a late copy books
    one session on two substations."""
    grid = FakeGrid()
    grid.modes["s0"] = "lose_before"
    charge = SessionCharge("ev", KW, 30.0, session_id="x", epoch=1)

    async def naive() -> None:
        await grid.charge("s0", charge, 1.0)        # ambiguous: the copy is still on its way
        await grid.charge("s1", charge, 1.0)        # moved on without fencing s0
    asyncio.run(naive())
    grid.process(grid.late.pop())
    assert grid.holders("x") == ["s0", "s1"]

    safe = FakeGrid()
    safe.scripted["s0"] = ["lose_before"]
    placement = Placement(charge, safe, LeastLoadedChooser(safe),
                          Deadline(60.0, clock=lambda: grid.now), forward_timeout_s=1.0,
                          max_attempts=3)
    outcome = asyncio.run(placement.run())
    safe.process(safe.late.pop())
    assert outcome.kind is OutcomeKind.PLACED and safe.holders("x") == [outcome.instance]


@pytest.mark.parametrize("mode", ["lose_after", "error_after"])
def test_an_answer_lost_after_admission_is_found_by_the_fence(mode: str) -> None:
    grid = FakeGrid()
    grid.scripted["s0"] = [mode]
    charge = SessionCharge("ev", KW, 30.0, session_id="x", epoch=1)
    placement = Placement(charge, grid, LeastLoadedChooser(grid),
                          Deadline(60.0, clock=lambda: grid.now), forward_timeout_s=1.0,
                          max_attempts=3)
    outcome = asyncio.run(placement.run())
    assert (outcome.kind, outcome.instance) == (OutcomeKind.PLACED, "s0")
    assert grid.holders("x") == ["s0"]
