"""The reconciler (ingress/reconciler.py) over an in-memory store and a scripted balancer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from ingress.balancers import BalancerAnswer
from ingress.idempotency import KeyRecord, RecordState
from ingress.reconciler import Reconciler
from ingress.store import LocalKeyLocks, SessionRoute


class MemoryStore:
    def __init__(self, *records: KeyRecord) -> None:
        self.records = {(r.tenant, r.key): r for r in records}
        self.routes: dict[str, SessionRoute] = {}
        self.writes: list[KeyRecord] = []
        self.locks = LocalKeyLocks()

    async def pending(self, updated_before: float, limit: int) -> list[KeyRecord]:
        due = [r for r in self.records.values()
               if r.state is RecordState.PENDING and r.updated_at < updated_before]
        return sorted(due, key=lambda r: r.updated_at)[:limit]

    async def record(self, tenant: str, key: str) -> KeyRecord | None:
        return self.records.get((tenant, key))

    async def claim(self, record: KeyRecord, previous_epoch: int | None) -> bool:
        stored = self.records.get((record.tenant, record.key))
        if (None if stored is None else stored.epoch) != previous_epoch:
            return False
        await self.save(record)
        return True

    def key_lock(self, tenant: str, key: str) -> AbstractAsyncContextManager[None]:
        return self.locks(tenant, key)

    async def save(self, record: KeyRecord | None = None, route: SessionRoute | None = None
                   ) -> None:
        if record is not None:
            self.records[(record.tenant, record.key)] = record
            self.writes.append(record)
        if route is not None:
            self.routes[route.session_id] = route


def pending(key: str, updated_at: float = 0.0, epoch: int = 2) -> KeyRecord:
    return KeyRecord("t", key, f"sess-{key}", "print", epoch, RecordState.PENDING,
                     created_at=0.0, updated_at=updated_at)


FOUND = BalancerAnswer(200, {"status": "charging", "substation": "a", "routed_to": "1.2.3.4:1",
                             "policy": "p", "session": {"vehicle_id": "ev-9", "power_kw": 11.0,
                                                        "energy_kwh": 30.0}})
ENDED = BalancerAnswer(200, {"status": "completed", "substation": "b", "routed_to": "h:2",
                             "policy": "p", "session": {"vehicle_id": "ev-9", "power_kw": 7.4,
                                                        "energy_kwh": 5.0}})
ABSENT = BalancerAnswer(404, {"error": "unknown_session", "session_may_exist": False,
                              "resolved": True})
UNKNOWN = BalancerAnswer(503, {"error": "outcome_unknown", "session_may_exist": True,
                               "resolved": False})


class Script:
    def __init__(self, answers: dict[str, BalancerAnswer]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, record: KeyRecord) -> BalancerAnswer:
        self.asked.append((record.key, record.epoch))
        return self.answers[record.key]


def reconciler(store: MemoryStore, script: Script, now: float = 100.0) -> Reconciler:
    return Reconciler(store, script, lambda: now, min_age_s=2.0)


async def test_each_answer_moves_the_record_by_its_evidence() -> None:
    store = MemoryStore(pending("found"), pending("ended"), pending("absent"),
                        pending("unknown"), pending("gone", epoch=7))
    script = Script({"found": FOUND, "ended": ENDED, "absent": ABSENT, "unknown": UNKNOWN,
                     "gone": BalancerAnswer(failure="unreachable", detail="no balancer")})
    results = await reconciler(store, script).round()
    assert results == {"found": 2, "absent": 1, "pending": 2}
    states = {k: r.state for (_, k), r in store.records.items()}
    assert states == {"found": RecordState.DONE, "ended": RecordState.DONE,
                      "absent": RecordState.ABSENT, "unknown": RecordState.PENDING,
                      "gone": RecordState.PENDING}
    # Each was resolved at its next epoch, written before the balancer was asked.
    assert sorted(script.asked) == [("absent", 3), ("ended", 3), ("found", 3), ("gone", 8),
                                    ("unknown", 3)]
    first_writes: dict[str, int] = {}
    for written in store.writes:
        first_writes.setdefault(written.key, written.epoch)
    assert first_writes == dict(script.asked)
    found = store.records[("t", "found")]
    assert (found.status, found.response) == (200, {
        "status": "charging", "session_id": "sess-found", "substation": "a",
        "routed_to": "1.2.3.4:1", "policy": "p", "requested_kw": 11.0, "energy_kwh": 30.0})
    assert store.records[("t", "ended")].response["status"] == "completed"  # type: ignore[index]
    route = store.routes["sess-found"]
    assert (route.tenant, route.substation, route.routed_to, route.vehicle_id) == \
        ("t", "a", "1.2.3.4:1", "ev-9")
    assert set(store.routes) == {"sess-found", "sess-ended"}


async def test_records_being_answered_or_too_young_or_settled_are_left_alone() -> None:
    young = pending("young", updated_at=99.0)
    busy = pending("busy")
    done = dataclasses.replace(pending("done"), state=RecordState.DONE)
    store = MemoryStore(young, busy, done)
    store.locks.held.add(("t", "busy"))       # a request (here or on another replica) has it
    script = Script({})
    results = await reconciler(store, script).round()
    assert results == {"skipped": 1} and script.asked == []
    assert store.writes == []


async def test_a_record_settled_between_the_listing_and_its_turn_is_not_dispatched() -> None:
    store = MemoryStore(pending("k"))
    script = Script({"k": FOUND})
    rec = reconciler(store, script)
    original = store.record

    async def record_then_settled(tenant: str, key: str) -> KeyRecord | None:
        was = await original(tenant, key)
        return None if was is None else dataclasses.replace(was, state=RecordState.ABSENT)
    store.record = record_then_settled          # type: ignore[method-assign]
    assert await rec.round() == {"skipped": 1} and script.asked == []


async def test_a_record_retried_since_the_listing_is_left_to_the_next_round() -> None:
    """Another replica (or its client) moved it to a newer epoch after this one listed it."""
    store = MemoryStore(pending("k", epoch=2))
    script = Script({"k": FOUND})
    rec = reconciler(store, script)
    original = store.record

    async def record_then_retried(tenant: str, key: str) -> KeyRecord | None:
        was = await original(tenant, key)
        return None if was is None else dataclasses.replace(was, epoch=3)
    store.record = record_then_retried          # type: ignore[method-assign]
    assert await rec.round() == {"skipped": 1} and script.asked == []


async def test_an_epoch_claimed_by_another_replica_first_is_not_resolved() -> None:
    store = MemoryStore(pending("k", epoch=2))
    script = Script({"k": FOUND})

    async def lost_the_race(record: KeyRecord, previous_epoch: int | None) -> bool:
        return False
    store.claim = lost_the_race                 # type: ignore[method-assign]
    assert await reconciler(store, script).round() == {"skipped": 1} and script.asked == []


async def test_the_lock_is_held_while_resolving_and_released_after() -> None:
    store = MemoryStore(pending("k"))
    held: list[bool] = []

    async def resolve(record: KeyRecord) -> BalancerAnswer:
        held.append(("t", "k") in store.locks.held)
        await asyncio.sleep(0)
        return ABSENT
    rec = Reconciler(store, resolve, lambda: 100.0)
    await rec.round()
    assert held == [True] and store.locks.held == set()


async def test_a_failing_resolve_releases_the_lock_and_leaves_the_record_pending() -> None:
    store = MemoryStore(pending("k"))

    async def resolve(record: KeyRecord) -> BalancerAnswer:
        raise OSError("disk")
    with pytest.raises(OSError, match="disk"):
        await Reconciler(store, resolve, lambda: 100.0).round()
    assert store.locks.held == set() and store.records[("t", "k")].state is RecordState.PENDING


def test_the_batch_is_bounded_and_oldest_first() -> None:
    store = MemoryStore(*(pending(f"k{i}", updated_at=float(50 - i)) for i in range(10)))
    assert [r.key for r in asyncio.run(store.pending(100.0, 3))] == ["k9", "k8", "k7"]

    async def go() -> Any:
        script = Script(dict.fromkeys((f"k{i}" for i in range(10)), UNKNOWN))
        rec = Reconciler(store, script, lambda: 100.0, batch=3)
        await rec.round()
        return script.asked
    assert sorted(k for k, _ in asyncio.run(go())) == ["k7", "k8", "k9"]


async def test_each_settled_record_is_logged_once_and_an_unsettled_one_not(
        caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore(pending("found"), pending("absent"), pending("unknown"),
                        pending("gone"))
    script = Script({"found": FOUND, "absent": ABSENT, "unknown": UNKNOWN,
                     "gone": BalancerAnswer(failure="unreachable", detail="no balancer")})
    caplog.set_level(logging.INFO, logger="ingress.reconciler")
    await reconciler(store, script).round()
    assert sorted(r.getMessage() for r in caplog.records) == [
        "reconciled key 'absent' of t: absent (unknown_session)",
        "reconciled key 'found' of t: done (charging)"]


async def test_the_defaults_wait_two_seconds_take_200_and_resolve_8_at_once() -> None:
    store = MemoryStore(*(pending(f"k{i}", updated_at=float(i % 2) * 99.0) for i in range(202)),
                        pending("young", updated_at=98.5))
    running, most = 0, 0

    async def resolve(record: KeyRecord) -> BalancerAnswer:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)
        running -= 1
        return UNKNOWN
    results = await Reconciler(store, resolve, lambda: 100.0).round()
    # Written 1 s ago (99.0) and 1.5 s ago (98.5): not due; the 101 written at 0.0 are.
    assert sum(results.values()) == 101 and most == 8
    many = MemoryStore(*(pending(f"k{i}") for i in range(250)))
    assert sum((await Reconciler(many, resolve, lambda: 100.0).round()).values()) == 200


async def test_a_found_session_without_a_vehicle_is_routed_all_the_same() -> None:
    body = {**FOUND.body, "session": "not an object"}
    store = MemoryStore(pending("odd"))
    await reconciler(store, Script({"odd": BalancerAnswer(200, body)})).round()
    route = store.routes["sess-odd"]
    assert (route.substation, route.routed_to, route.vehicle_id, route.policy) == \
        ("a", "1.2.3.4:1", "", "p")
