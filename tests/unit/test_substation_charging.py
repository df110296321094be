from __future__ import annotations

import pytest

from gridlb.durable import Durability
from substation.charging import (
    CHARGING,
    COMPLETED,
    STOPPED,
    ChargingSession,
    OverCapacity,
    SessionConflict,
    SessionFenced,
    SessionTable,
    TooManySessions,
)
from substation.store import SessionStore


def table(capacity: float = 100.0, speed: float = 3600.0, **kw: float) -> SessionTable:
    # speed 3600: one simulated hour per real second keeps the arithmetic readable
    return SessionTable(capacity, speed_factor=speed, **kw)  # type: ignore[arg-type]


def session_state(t: SessionTable, session_id: str) -> str | None:
    session = t.get(session_id)
    return None if session is None else session.state


def test_admits_up_to_exactly_the_capacity_and_not_a_watt_more() -> None:
    t = table()
    t.admit("a", "ev-a", 60.0, 10.0, now=0.0)
    t.admit("b", "ev-b", 40.0, 10.0, now=0.0)
    assert t.load_kw == 100.0
    with pytest.raises(OverCapacity, match=r"0\.001 kW does not fit: load 100 kW of 100 kW"):
        t.admit("c", "ev-c", 0.001, 1.0, now=0.0)


def test_a_repeated_session_id_is_the_same_session() -> None:
    t = table()
    first = t.admit("a", "ev-a", 11.0, 30.0, now=0.0)
    again = t.admit("a", "ev-a", 11.0, 30.0, now=1.0)
    assert not first.duplicate and again.duplicate
    assert again.session is first.session and t.load_kw == 11.0


def test_a_repeat_of_an_ended_session_reports_its_real_state_and_does_not_restart_it() -> None:
    t = table()
    t.admit("a", "ev-a", 11.0, 30.0, now=0.0)
    t.stop("a", now=0.1)
    again = t.admit("a", "ev-a", 11.0, 30.0, now=0.2)
    assert again.duplicate and again.session.state == STOPPED and t.load_kw == 0.0


def test_the_session_cap_bounds_how_many_charge_at_once() -> None:
    t = table(capacity=1000.0, max_sessions=2)
    t.admit("a", "ev", 1.4, 1.0, now=0.0)
    t.admit("b", "ev", 1.4, 1.0, now=0.0)
    with pytest.raises(TooManySessions, match="2 sessions are charging, the most"):
        t.admit("c", "ev", 1.4, 1.0, now=0.0)
    t.stop("a", now=0.1)
    t.admit("c", "ev", 1.4, 1.0, now=0.2)


def test_every_change_of_load_raises_the_reading_sequence() -> None:
    t = table(load_seq=1000)
    seqs = [t.load_seq]
    t.admit("a", "ev", 10.0, 10.0, now=0.0)
    seqs.append(t.load_seq)
    t.admit("a", "ev", 10.0, 10.0, now=0.0)      # a repeat changes nothing
    seqs.append(t.load_seq)
    t.stop("a", now=0.1)
    seqs.append(t.load_seq)
    assert seqs == [1000, 1001, 1001, 1002]


def test_the_same_id_with_other_values_is_a_conflict() -> None:
    t = table()
    t.admit("a", "ev-a", 11.0, 30.0, now=0.0)
    with pytest.raises(SessionConflict, match="session a exists with other values"):
        t.admit("a", "ev-a", 22.0, 30.0, now=0.0)


def test_energy_is_delivered_at_the_session_power_until_complete() -> None:
    t = table()
    t.admit("a", "ev-a", 10.0, 25.0, now=0.0)
    t.advance(1.0)                   # one simulated hour at 10 kW
    session = t.get("a")
    assert session is not None and session.delivered_kwh == pytest.approx(10.0)
    completed = t.advance(3.0)
    assert [s.session_id for s in completed] == ["a"]
    assert session.state == COMPLETED and session.delivered_kwh == 25.0
    assert t.load_kw == 0.0 and t.delivered_total_kwh == pytest.approx(25.0)


def test_stop_frees_capacity_at_once_and_is_idempotent() -> None:
    t = table()
    t.admit("a", "ev-a", 100.0, 500.0, now=0.0)
    stopped = t.stop("a", now=0.5)
    assert stopped is not None and stopped.state == STOPPED and t.load_kw == 0.0
    assert t.stop("a", now=0.6) is stopped
    t.admit("b", "ev-b", 100.0, 1.0, now=0.7)
    assert t.stop("never-started", now=0.8) is None


def test_a_fence_refuses_late_copies_of_older_epochs_only() -> None:
    t = table()
    assert t.fence("s", epoch=3, now=0.0) is None
    with pytest.raises(SessionFenced, match="epoch 2 is older than the fence at epoch 3"):
        t.admit("s", "ev", 11.0, 30.0, now=0.1, epoch=2)
    assert t.load_kw == 0.0
    admitted = t.admit("s", "ev", 11.0, 30.0, now=0.2, epoch=3)
    assert not admitted.duplicate and t.load_kw == 11.0 and "s" not in t.fences


def test_fences_only_rise_and_report_a_session_that_is_here() -> None:
    t = table()
    t.fence("s", epoch=5, now=0.0)
    t.fence("s", epoch=2, now=0.1)
    assert t.fences["s"][0] == 5
    t.admit("here", "ev", 11.0, 30.0, now=0.0)
    found = t.fence("here", epoch=9, now=0.2)
    assert found is not None and found.state == CHARGING and "here" not in t.fences


def test_fences_are_pruned_by_age_and_count() -> None:
    t = table(fence_retention_s=10.0, max_fences=2)
    for i in range(3):
        t.fence(f"f{i}", epoch=2, now=float(i))
    assert list(t.fences) == ["f1", "f2"]
    t.advance(100.0)
    assert not t.fences


def test_ended_sessions_are_pruned_by_age_and_count() -> None:
    t = table(retention_s=10.0, max_ended=2)
    for i in range(3):
        t.admit(f"s{i}", "ev", 1.0, 1.0, now=float(i))
        t.stop(f"s{i}", now=float(i))
    assert list(t.ended) == ["s1", "s2"]
    t.advance(100.0)
    assert not t.ended


async def test_a_restart_resumes_sessions_and_fences(tmp_path: object) -> None:
    path = f"{tmp_path}/state.sqlite3"
    store = SessionStore(path, Durability.FULL)
    t = table()
    t.admit("a", "ev-a", 10.0, 50.0, now=0.0)
    t.admit("b", "ev-b", 5.0, 1.0, now=0.0)
    t.advance(2.0)                   # a: 20 kWh delivered; b completed
    await store.save([*t.active.values(), *t.ended.values()])
    await store.save_fence("late", 4, 1.0)
    await store.aclose()
    reopened = SessionStore(path)
    fresh = table()
    for session in reopened.load():
        fresh.resume(session, now=50.0)       # down from 2 to 50: nothing delivered then
    for session_id, epoch, at in reopened.load_fences():
        fresh.resume_fence(session_id, epoch, at)
    await reopened.aclose()
    with pytest.raises(SessionFenced):
        fresh.admit("late", "ev", 11.0, 1.0, now=50.0, epoch=3)
    a = fresh.get("a")
    assert a is not None and a.delivered_kwh == pytest.approx(20.0) and a.state == "charging"
    assert fresh.load_kw == 10.0
    fresh.advance(51.0)
    assert a.delivered_kwh == pytest.approx(30.0)
    b = fresh.get("b")
    assert b is not None and b.state == COMPLETED


def test_a_session_is_credited_from_its_own_start_not_the_last_tick() -> None:
    t = table()
    t.admit("early", "ev", 10.0, 100.0, now=0.0)
    t.advance(1.0)
    t.admit("late", "ev", 10.0, 100.0, now=1.5)
    t.advance(2.0)
    early, late = t.get("early"), t.get("late")
    assert early is not None and late is not None
    assert early.delivered_kwh == pytest.approx(20.0)
    assert late.delivered_kwh == pytest.approx(5.0)
    t.stop("late", now=2.5)                  # credited up to the stop, alone
    assert late.delivered_kwh == pytest.approx(10.0)


def test_ending_one_session_frees_only_its_power() -> None:
    t = table()
    t.admit("a", "ev", 30.0, 1000.0, now=0.0)
    t.admit("b", "ev", 20.0, 1.0, now=0.0)
    t.advance(1.0)                          # b completes (20 kWh in an hour), a goes on
    assert t.load_kw == 30.0 and session_state(t, "b") == COMPLETED
    t.admit("c", "ev", 5.0, 1000.0, now=1.0)
    t.stop("c", now=1.5)
    assert t.load_kw == 30.0


def test_a_completed_session_records_when_it_ended() -> None:
    t = table()
    t.admit("a", "ev", 10.0, 5.0, now=0.0)
    t.advance(2.0)
    session = t.get("a")
    assert session is not None and (session.state, session.ended_at) == (COMPLETED, 2.0)


def test_a_first_admission_is_not_a_duplicate() -> None:
    assert table().admit("a", "ev", 1.4, 1.0, now=0.0).duplicate is False


def test_a_charge_without_an_epoch_is_the_first_dispatch() -> None:
    t = table()
    t.fence("s", epoch=2, now=0.0)
    with pytest.raises(SessionFenced, match="epoch 1 is older than the fence at epoch 2"):
        t.admit("s", "ev", 11.0, 30.0, now=0.1)


def test_the_session_cap_message_is_exact() -> None:
    t = table(capacity=1000.0, max_sessions=1)
    t.admit("a", "ev", 1.4, 1.0, now=0.0)
    with pytest.raises(TooManySessions) as caught:
        t.admit("b", "ev", 1.4, 1.0, now=0.0)
    assert str(caught.value) == "1 sessions are charging, the most this substation takes"


def test_resumed_sessions_all_count_towards_the_load() -> None:
    t = table()
    for sid, kw in (("a", 10.0), ("b", 15.0)):
        t.resume(ChargingSession(sid, "ev", kw, 100.0, 0.0, CHARGING, started_at=0.0), now=5.0)
    assert t.load_kw == 25.0 and len(t.active) == 2


def test_ended_sessions_are_kept_for_exactly_the_retention_oldest_first() -> None:
    t = table(retention_s=10.0, max_ended=2)
    t.admit("old", "ev", 1.4, 100.0, now=1000.0)
    t.stop("old", now=1000.0)
    t.admit("new", "ev", 1.4, 100.0, now=1005.0)
    t.stop("new", now=1005.0)
    t.prune(1010.0)                          # old: exactly the retention; both kept
    assert list(t.ended) == ["old", "new"]
    t.prune(1010.5)
    assert list(t.ended) == ["new"]


def test_fences_are_kept_for_exactly_their_retention() -> None:
    t = table(fence_retention_s=10.0)
    t.fence("f", epoch=2, now=100.0)
    t.prune(110.0)
    assert "f" in t.fences
    t.prune(110.5)
    assert "f" not in t.fences


def test_the_defaults_the_service_relies_on() -> None:
    # The substation service passes capacity, speed, retention, the session cap and the
    # sequence seed; the bounds on remembered sessions and fences are these defaults.
    t = SessionTable(100.0)
    t.admit("a", "ev", 10.0, 1000.0, now=0.0)
    assert t.load_seq == 1                   # the first change from a fresh table
    t.advance(60.0)                          # 60x: a minute is a simulated hour
    a = t.get("a")
    assert a is not None and a.delivered_kwh == pytest.approx(10.0)
    t.stop("a", now=60.0)
    t.prune(660.0)
    assert "a" in t.ended                    # ended sessions are readable for 10 minutes
    t.prune(660.5)
    assert "a" not in t.ended
    t.fence("f", epoch=2, now=0.0)
    t.prune(24 * 3600.0)
    assert "f" in t.fences                   # fences are kept a day
    t.prune(24 * 3600.0 + 0.5)
    assert "f" not in t.fences


def test_the_default_session_cap_is_ten_thousand() -> None:
    t = SessionTable(100_000.0)
    for i in range(10_000):
        t.admit(f"s{i}", "ev", 1.4, 1.0, now=0.0)
    with pytest.raises(TooManySessions):
        t.admit("one-more", "ev", 1.4, 1.0, now=0.0)


def test_at_most_a_hundred_thousand_ended_sessions_and_fences_are_kept() -> None:
    t = SessionTable(1000.0)
    for i in range(100_001):
        t._remember_ended(ChargingSession(f"s{i}", "ev", 1.4, 1.0, 1.0, STOPPED, 0.0,
                                          ended_at=0.0))
        t.fence(f"f{i}", epoch=2, now=0.0)
    assert len(t.ended) == 100_000 and "s0" not in t.ended and "s100000" in t.ended
    assert len(t.fences) == 100_000 and "f0" not in t.fences and "f100000" in t.fences


def test_a_session_past_its_retention_still_answers_fences_and_late_copies() -> None:
    """Issue 16: a key left unresolved while this substation could not be reached for longer
    than its retention is resolved to how its session ended, never charged a second time."""
    t = table(retention_s=10.0, fence_retention_s=1000.0)
    t.admit("s1", "ev", 10.0, 10.0, now=0.0)
    t.advance(1.0)                                   # 10 kWh at 10 kW: complete after 1 h
    assert session_state(t, "s1") == COMPLETED
    t.prune(20.0)                                    # past the retention: not shown any more
    assert t.get("s1") is None and "s1" in t.forgotten
    found = t.fence("s1", epoch=5, now=20.0)
    assert found is not None and found.state == COMPLETED and found.delivered_kwh == 10.0
    repeat = t.admit("s1", "ev", 10.0, 10.0, now=21.0, epoch=7)   # a retry placed here again
    assert repeat.duplicate and repeat.session.state == COMPLETED and t.load_kw == 0.0
    with pytest.raises(SessionConflict):
        t.admit("s1", "ev", 22.0, 10.0, now=21.0)
    t.prune(1002.0)                                  # as long as fences last, then gone
    assert "s1" not in t.forgotten and t.fence("s1", epoch=6, now=1002.0) is None


# --- messages, bounds and bookkeeping the tests above left open (docs/mutation.md) -----------

def test_over_capacity_messages_are_exact() -> None:
    t = table(capacity=10.0)
    t.admit("a", "ev", 10.0, 10.0, now=0.0)
    # at exactly the capacity: full, not above it
    with pytest.raises(OverCapacity) as full:
        t.admit("b", "ev", 1.4, 1.0, now=0.0)
    assert str(full.value) == "1.4 kW does not fit: load 10 kW of 10 kW capacity"
    # without a saving figure, nothing is being saved
    assert str(OverCapacity(3.0, 10.0, 8.0)) == "8 kW does not fit: load 3 kW of 10 kW capacity"
    assert str(OverCapacity(12.0, 10.0, 1.4)) == (
        "1.4 kW does not fit: load 12 kW of 10 kW capacity; above its capacity since it was "
        "restarted with less, it takes no new session until its load is under it")


def test_reservations_count_against_admission_and_are_released_exactly() -> None:
    t = table(capacity=10.0)
    t.reserve("a", "ev", 3.0, 10.0, now=0.0)
    t.reserve("b", "ev", 4.0, 10.0, now=0.0)
    with pytest.raises(OverCapacity) as both:
        t.reserve("c", "ev", 4.0, 10.0, now=0.0)
    assert str(both.value) == "4 kW does not fit: load 0 kW (+7 kW being saved) of 10 kW capacity"
    t.confirm("a", now=0.0)                 # a is charging; b is still being saved
    with pytest.raises(OverCapacity) as one:
        t.reserve("c", "ev", 3.5, 10.0, now=0.0)
    assert str(one.value) == "3.5 kW does not fit: load 3 kW (+4 kW being saved) of 10 kW capacity"
    t.reserve("c", "ev", 3.0, 10.0, now=0.0)   # exactly what is left
    t.withdraw("b")
    t.withdraw("c")
    t.admit("d", "ev", 7.0, 10.0, now=0.0)     # the withdrawn ones left nothing behind
    assert t.load_kw == 10.0


def test_a_small_reservation_is_named_in_the_refusal() -> None:
    t = table(capacity=1.0)
    t.reserve("a", "ev", 0.5, 1.0, now=0.0)
    with pytest.raises(OverCapacity) as caught:
        t.reserve("b", "ev", 0.6, 1.0, now=0.0)
    assert str(caught.value) == \
        "0.6 kW does not fit: load 0 kW (+0.5 kW being saved) of 1 kW capacity"


def test_sessions_being_saved_count_towards_the_session_cap() -> None:
    t = table(capacity=1000.0, max_sessions=2)
    t.admit("a", "ev", 1.4, 1.0, now=0.0)
    t.reserve("b", "ev", 1.4, 1.0, now=0.0)
    with pytest.raises(TooManySessions) as caught:
        t.reserve("c", "ev", 1.4, 1.0, now=0.0)
    assert str(caught.value) == \
        "2 sessions are charging (with 1 being saved), the most this substation takes"


def test_a_reservation_without_an_epoch_is_the_first_dispatch() -> None:
    t = table()
    t.fence("s", epoch=2, now=0.0)
    with pytest.raises(SessionFenced, match="epoch 1 is older than the fence at epoch 2"):
        t.reserve("s", "ev", 11.0, 30.0, now=0.1)
    assert t.reserve("fresh", "ev", 11.0, 30.0, now=0.1).session.epoch == 1


def test_a_repeat_with_another_departure_is_a_conflict() -> None:
    t = table()
    t.admit("a", "ev", 11.0, 10.0, now=0.0, departure_at=100.0)
    assert t.admit("a", "ev", 11.0, 10.0, now=0.0, departure_at=100.0).duplicate
    with pytest.raises(SessionConflict, match="session a exists with other values"):
        t.admit("a", "ev", 11.0, 10.0, now=0.0, departure_at=200.0)
    with pytest.raises(SessionConflict):
        t.admit("a", "ev", 11.0, 10.0, now=0.0)


def test_ending_a_session_takes_back_exactly_the_power_it_asked_for() -> None:
    t = table()
    t.admit("a", "ev", 10.0, 100.0, now=0.0)
    t.admit("b", "ev", 20.0, 100.0, now=0.0)
    t.stop("b", now=0.5)
    assert (t.requested_kw, t.granted_kw, t.curtailed_kw) == (10.0, 10.0, 0.0)


def test_forgotten_sessions_are_pruned_by_exact_age_and_by_count_oldest_first() -> None:
    t = table(retention_s=10.0, fence_retention_s=1000.0, max_fences=2)
    base = 1_000_000.0                      # clock values like real ones, far above retentions
    for i in range(3):
        t.admit(f"s{i}", "ev", 1.4, 100.0, now=base + i)
        t.stop(f"s{i}", now=base + i)
    t.admit("recent", "ev", 1.4, 100.0, now=base + 995.0)
    t.stop("recent", now=base + 995.0)
    t.prune(base + 1000.0)                  # s0..s2 past the retention: forgotten, two kept
    assert list(t.ended) == ["recent"]
    assert list(t.forgotten) == ["s1", "s2"]
    t.prune(base + 1001.0)                  # s1: exactly the fence retention; kept
    assert list(t.forgotten) == ["s1", "s2"]
    t.prune(base + 1001.5)                  # while a recent ended session is still shown
    assert list(t.forgotten) == ["s2"] and list(t.ended) == ["recent"]
