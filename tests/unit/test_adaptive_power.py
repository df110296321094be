"""Adaptive power (issue 19): the charge's min_kw and departure_at, the session table sharing
its capacity (substation/charging.py over substation/allocation.py), and the state file."""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import sqlite3
from pathlib import Path

import orjson
import pytest

from gridlb.charge import Charge, ChargeLimits, SessionCharge, parse_charge, parse_session_charge
from ingress.idempotency import fingerprint
from substation.allocation import CHANGE_THRESHOLD_KW
from substation.charging import (
    CHARGING,
    ChargingSession,
    OverCapacity,
    SessionConflict,
    SessionTable,
)
from substation.store import SCHEMA_VERSION, SessionStore

BASE = {"vehicle_id": "ev-1", "requested_kw": 11, "energy_kwh": 30}


def table(capacity: float = 100.0) -> SessionTable:
    # speed 3600: one simulated hour per real second keeps the arithmetic readable
    return SessionTable(capacity, speed_factor=3600.0)


# --- the request ---------------------------------------------------------------------------

def test_a_request_without_the_new_fields_is_todays_request_and_fingerprint() -> None:
    charge = parse_charge(dict(BASE))
    assert charge == Charge("ev-1", 11.0, 30.0)
    assert isinstance(charge, Charge) and charge.canonical() == ("ev-1", 11.0, 30.0)
    assert charge.floor_kw == 11.0 and charge.adaptive_json() == {}
    # the fingerprint of the 3-tuple, as stored by earlier releases
    assert fingerprint(charge) == hashlib.sha256(orjson.dumps(["ev-1", 11.0, 30.0])).hexdigest()


def test_min_kw_and_departure_at_are_parsed_and_change_the_fingerprint() -> None:
    charge = parse_charge({**BASE, "min_kw": 3.7, "departure_at": "2026-12-07T21:03:04.500Z"})
    assert isinstance(charge, Charge)
    assert charge.min_kw == 3.7 and charge.floor_kw == 3.7
    assert charge.departure_at == pytest.approx(1796677384.5)
    assert fingerprint(charge) != fingerprint(Charge("ev-1", 11.0, 30.0))
    assert charge.adaptive_json() == {"min_kw": 3.7, "departure_at": charge.departure_at}
    offset = parse_charge({**BASE, "departure_at": "2026-12-07T22:03:04.5+01:00"})
    assert isinstance(offset, Charge) and offset.departure_at == charge.departure_at


@pytest.mark.parametrize("extra, field, reason", [
    ({"min_kw": 12}, "min_kw", r"must be at most requested_kw \(11 kW\), got 12"),
    ({"min_kw": 1.0}, "min_kw", r"must be at least 1\.4 kW, got 1"),
    ({"min_kw": "3"}, "min_kw", r"must be a number of kW, got str"),
    ({"min_kw": None}, "min_kw", r"must be a number of kW, got NoneType"),
    ({"departure_at": 1796677384}, "departure_at", r"must be an RFC 3339 time string, got int"),
    ({"departure_at": "tomorrow"}, "departure_at", r"must be an RFC 3339 time such as"),
    ({"departure_at": "2026-12-07T21:03:04"}, "departure_at", r"must give its UTC offset"),
    ({"departure_at": "2026-W01-1T00:00:00Z"}, "departure_at", r"must be an RFC 3339 time"),
    ({"departure_at": "2026-12-07T21:03:04,5Z"}, "departure_at", r"must be an RFC 3339 time"),
    ({"departure_at": "0001-01-01T00:00:00+01:00"}, "departure_at", r"must be from 1970"),
])
def test_bad_min_kw_or_departure_is_named(extra: dict[str, object], field: str,
                                          reason: str) -> None:
    problems = parse_charge({**BASE, **extra})
    assert isinstance(problems, dict) and set(problems) == {field}
    assert re.search(reason, problems[field]), problems[field]


def test_the_grids_minimum_power_bounds_min_kw() -> None:
    problems = parse_charge({**BASE, "min_kw": 3.0}, ChargeLimits(min_kw=3.7))
    assert isinstance(problems, dict)
    assert problems["min_kw"] == "must be at least 3.7 kW, got 3"


def test_the_internal_wire_carries_departure_as_unix_seconds() -> None:
    charge = SessionCharge("ev-1", 11.0, 30.0, 3.7, 1796677384.5, session_id="s", epoch=2)
    wire = charge.to_json()
    assert wire["min_kw"] == 3.7 and wire["departure_at"] == 1796677384.5
    assert parse_session_charge(wire) == charge
    plain = SessionCharge("ev-1", 11.0, 30.0, session_id="s").to_json()
    assert "min_kw" not in plain and "departure_at" not in plain
    bad = parse_session_charge({**wire, "departure_at": "2026-12-07T21:03:04Z"})
    assert isinstance(bad, dict) and bad["departure_at"].startswith("must be Unix seconds")


# --- the table -----------------------------------------------------------------------------

def test_floors_are_admitted_beside_committed_floors_not_requested_power() -> None:
    t = table(100.0)
    for i in range(27):            # 27 x 3.7 = 99.9 kW of floors; 27 x 11 would be 297
        t.admit(f"s{i}", "ev", 11.0, 10.0, now=0.0, min_kw=3.7)
    assert t.load_kw == pytest.approx(99.9)
    # Between ticks the ones that made room wait at their floors; the tick shares it all.
    assert all(s.granted_kw >= 3.7 for s in t.active.values()) and t.granted_kw <= 100.0
    t.advance(0.0)
    # The whole capacity is shared, up to the Smoother's threshold (0.01 kW).
    assert t.granted_kw == pytest.approx(100.0, abs=CHANGE_THRESHOLD_KW)
    assert all(s.granted_kw == pytest.approx(100 / 27, abs=CHANGE_THRESHOLD_KW)
               for s in t.active.values())
    with pytest.raises(OverCapacity, match=r"3\.7 kW does not fit: load 99\.9 kW of 100 kW"):
        t.admit("late", "ev", 11.0, 10.0, now=0.0, min_kw=3.7)
    assert t.curtailed_kw == pytest.approx(27 * 11 - 100, abs=CHANGE_THRESHOLD_KW)


def test_without_min_kw_each_session_draws_exactly_its_power_as_before() -> None:
    t = table(100.0)
    t.admit("a", "ev", 60.0, 10.0, now=0.0)
    t.admit("b", "ev", 40.0, 10.0, now=0.0)
    assert (t.load_kw, t.granted_kw, t.curtailed_kw) == (100.0, 100.0, 0.0)
    assert [s.granted_kw for s in t.active.values()] == [60.0, 40.0]
    with pytest.raises(OverCapacity):
        t.admit("c", "ev", 0.001, 1.0, now=0.0)


def test_a_stop_gives_its_power_to_the_others_at_the_next_tick() -> None:
    t = table(22.0)
    t.admit("a", "ev", 22.0, 100.0, now=0.0, min_kw=5.0)
    t.admit("b", "ev", 22.0, 100.0, now=0.0, min_kw=5.0)
    # a made room for b by going to its floor (once this tick); b took its share.
    assert (t.active["a"].granted_kw, t.active["b"].granted_kw) == (5.0, 11.0)
    t.advance(0.1)
    assert (t.active["a"].granted_kw, t.active["b"].granted_kw) == (11.0, 11.0)
    t.stop("b", now=0.5)
    assert t.active["a"].granted_kw == 11.0      # rising waits for the tick
    t.advance(0.5)
    assert t.active["a"].granted_kw == 22.0


def test_energy_is_delivered_at_the_granted_power_and_ends_follow_it() -> None:
    t = table(20.0)
    t.admit("a", "ev", 20.0, 10.0, now=0.0, min_kw=5.0)
    assert t.ends_at(t.active["a"]) == pytest.approx(0.5)     # 10 kWh at 20 kW
    t.admit("b", "ev", 20.0, 10.0, now=0.0, min_kw=5.0)
    t.advance(0.0)
    a = t.active["a"]
    assert a.granted_kw == 10.0 and t.ends_at(a) == pytest.approx(1.0)  # curtailed: later
    t.advance(0.25)
    assert a.delivered_kwh == pytest.approx(2.5)          # 10 kW for a quarter hour
    # the forecast keeps both floors until the (later) end
    assert t.forecast_kw(0.25, [0.5, 1.0]) == [10.0, 0.0]


def test_will_complete_by_departure_follows_the_current_allocation() -> None:
    t = table(20.0)
    t.admit("a", "ev", 20.0, 10.0, now=0.0, min_kw=5.0, departure_at=0.75)
    assert t.will_complete_by_departure(t.active["a"]) is True     # ends at 0.5
    t.admit("b", "ev", 20.0, 20.0, now=0.0, min_kw=5.0)
    t.advance(0.0)
    # least laxity first: a (departing) keeps enough to finish by 0.75
    assert t.will_complete_by_departure(t.active["a"]) is True
    t.admit("c", "ev", 20.0, 10.0, now=0.0, min_kw=10.0, departure_at=0.1)
    assert t.will_complete_by_departure(t.active["c"]) is False
    assert t.will_complete_by_departure(t.active["b"]) is None


def test_a_repeat_with_another_floor_is_a_conflict() -> None:
    t = table()
    t.admit("a", "ev", 11.0, 10.0, now=0.0, min_kw=3.7)
    assert t.admit("a", "ev", 11.0, 10.0, now=0.0, min_kw=3.7).duplicate
    with pytest.raises(SessionConflict):
        t.admit("a", "ev", 11.0, 10.0, now=0.0, min_kw=5.0)


def test_a_reserved_floor_counts_against_admission() -> None:
    t = table(10.0)
    t.reserve("a", "ev", 11.0, 10.0, now=0.0, min_kw=6.0)
    with pytest.raises(OverCapacity, match=r"\+6 kW being saved"):
        t.reserve("b", "ev", 11.0, 10.0, now=0.0, min_kw=6.0)
    t.confirm("a", now=0.0)
    assert (t.load_kw, t.granted_kw) == (6.0, 10.0)


def test_power_never_exceeds_capacity_as_sessions_come_and_go() -> None:
    t = table(50.0)
    now = 0.0
    for i in range(40):
        now += 0.001
        with contextlib.suppress(OverCapacity):   # full of floors: refused, as it must be
            t.admit(f"s{i}", "ev", 11.0 if i % 2 else 7.0, 1.0 + i % 5, now=now,
                    min_kw=3.7 if i % 3 else None)
        if i % 4 == 0:
            t.advance(now)
        if i % 7 == 0 and t.active:
            t.stop(next(iter(t.active)), now)
        granted = math.fsum(s.granted_kw for s in t.active.values())
        assert granted <= 50.0 + 1e-9
        assert granted == pytest.approx(t.granted_kw)
        assert t.load_kw <= 50.0 + 1e-9
        assert all(s.granted_kw >= s.floor_kw - 1e-9 for s in t.active.values())


def test_a_confirmed_reservation_moves_the_others_when_it_is_confirmed() -> None:
    """Durable before visible: a reserved session makes room when it is confirmed (`now`, or
    its own start without one), and the others are credited at their old power until then."""
    t = table(20.0)
    t.admit("a", "ev", 20.0, 100.0, now=0.0, min_kw=5.0)
    a = t.active["a"]
    assert a.granted_kw == 20.0
    t.reserve("b", "ev", 20.0, 100.0, now=0.5, min_kw=5.0)
    t.confirm("b", now=0.75)               # saved a quarter hour later
    assert a.delivered_kwh == pytest.approx(15.0)     # 20 kW until b was confirmed
    assert a.granted_kw == 5.0             # then straight down to its floor
    b = t.active["b"]
    assert b.granted_kw == 10.0 and b.delivered_kwh == pytest.approx(1.25)  # 5 kW till then
    t.reserve("c", "ev", 20.0, 100.0, now=1.0, min_kw=8.0)
    t.confirm("c")                         # without `now`: b makes room at c's start
    assert b.granted_kw == 5.0 and b.delivered_kwh == pytest.approx(3.75)   # 10 kW till 1.0
    assert math.fsum(s.granted_kw for s in t.active.values()) <= 20.0


def test_a_fixed_newcomer_moves_a_flexible_session_after_a_fixed_one_ended() -> None:
    t = table(30.0)
    t.admit("a", "ev", 20.0, 100.0, now=0.0, min_kw=5.0)
    t.admit("b", "ev", 10.0, 100.0, now=0.0)          # fixed: 20 + 10 = the capacity
    t.stop("b", now=0.1)                              # a is still flexible
    t.admit("c", "ev", 20.0, 100.0, now=0.1)          # fixed: a has to make room
    assert (t.active["a"].granted_kw, t.active["c"].granted_kw) == (5.0, 20.0)
    assert t.granted_kw == 25.0


def test_over_capacity_the_oldest_admission_keeps_its_floor_whatever_its_id() -> None:
    before = table(30.0)
    for sid, started in (("c", 1.0), ("b", 2.0), ("a", 3.0)):    # ids against their ages
        before.admit(sid, "ev", 11.0, 10.0, now=started, min_kw=8.0)
    after = table(20.0)
    for session in list(before.active.values()):
        after.resume(session, now=200.0)
    after.reallocate(200.0)
    granted = {sid: s.granted_kw for sid, s in after.active.items()}
    assert granted == {"c": 10.0, "b": 10.0, "a": 0.0}, granted


def test_least_laxity_counts_the_energy_still_to_deliver() -> None:
    # a has delivered 8 of its 10 kWh: 0.2 s of charging left, laxity 1.0 - 0.2 = 0.8 s;
    # b has all 10 kWh to go (1 s), laxity 0.5 s: b is the more urgent.
    t = table(10.0)
    t.admit("a", "ev", 10.0, 10.0, now=0.0, min_kw=1.4, departure_at=1.8)
    t.advance(0.8)
    t.admit("b", "ev", 10.0, 10.0, now=0.8, min_kw=1.4, departure_at=2.3)
    t.advance(0.8)
    assert t.active["a"].delivered_kwh == pytest.approx(8.0)
    assert (t.active["a"].granted_kw, t.active["b"].granted_kw) == (1.4, 8.6)


def test_least_laxity_counts_less_than_a_kwh_still_to_deliver() -> None:
    # a: 0.5 kWh left (0.05 s at 10 kW), laxity 0.1 s, a step (300 charging s = 1/12 s) later
    # than b's 0.06 s: b goes first, it does not share with a.
    t = table(10.0)
    t.admit("a", "ev", 10.0, 10.0, now=0.0, min_kw=1.4, departure_at=1.1)
    t.advance(0.95)
    t.admit("b", "ev", 10.0, 10.0, now=0.95, min_kw=1.4, departure_at=2.01)
    t.advance(0.95)
    assert t.active["a"].delivered_kwh == pytest.approx(9.5)
    assert (t.active["a"].granted_kw, t.active["b"].granted_kw) == (1.4, 8.6)


def test_forecast_follows_ends_when_many_sessions_change_power_at_once() -> None:
    """More sessions change power in one tick than are moved one by one: their ends are
    re-sorted together, and the forecast and later ends still follow the new powers."""
    t = table(400.0)
    for i in range(40):       # 10 + 0.1 i kWh: ends at 1 + 0.01 i s at the shared 10 kW
        t.admit(f"s{i}", "ev", 20.0, 10.0 + 0.1 * i, now=0.0, min_kw=5.0)
    t.advance(0.0)
    assert all(s.granted_kw == 10.0 for s in t.active.values())
    assert t.forecast_kw(0.0, [0.995, 1.205, 1.5]) == [200.0, 95.0, 0.0]
    t.stop("s0", now=0.0)
    t.stop("s39", now=0.0)
    assert t.forecast_kw(0.0, [0.995, 1.205, 1.5]) == [190.0, 90.0, 0.0]


def test_will_complete_by_departure_does_not_count_the_end_lag() -> None:
    t = SessionTable(20.0, speed_factor=3600.0, end_lag_s=0.25)
    t.admit("a", "ev", 20.0, 10.0, now=0.0, min_kw=5.0, departure_at=0.5)
    a = t.active["a"]
    assert t.ends_at(a) == 0.75                      # 10 kWh at 20 kW, then up to a tick
    assert t.will_complete_by_departure(a) is True   # delivered exactly at its departure


def test_a_paused_session_ends_only_once_its_energy_is_delivered() -> None:
    t = SessionTable(20.0, speed_factor=3600.0, end_lag_s=0.25)
    done = ChargingSession("d", "ev", 10.0, 5.0, 5.0, CHARGING, started_at=3.0, granted_kw=0.0)
    assert t.ends_at(done) == 3.25                   # at its last credit, up to a tick late
    left = ChargingSession("l", "ev", 10.0, 5.0, 4.5, CHARGING, started_at=3.0, granted_kw=0.0)
    assert t.ends_at(left) == math.inf               # half a kWh to go, at 0 kW: never


def test_a_granted_power_below_one_kw_or_paused_is_kept() -> None:
    for kw in (0.0, 0.5):
        session = ChargingSession("p", "ev", 10.0, 5.0, 0.0, CHARGING, started_at=0.0,
                                  min_kw=5.0, granted_kw=kw)
        assert session.granted_kw == kw
    assert ChargingSession("n", "ev", 10.0, 5.0, 0.0, CHARGING, started_at=0.0,
                           min_kw=5.0).granted_kw == 5.0      # not yet allocated: its floor


# --- the state file ------------------------------------------------------------------------

async def test_floors_departures_and_granted_power_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    t = table(20.0)
    t.admit("a", "ev", 20.0, 10.0, now=0.0, min_kw=5.0, departure_at=7.5)
    t.admit("b", "ev", 10.0, 10.0, now=0.0)
    t.advance(0.0)
    store = SessionStore(path)
    await store.save(t.active.values())
    await store.aclose()
    store = SessionStore(path)
    loaded = {s.session_id: s for s in store.load()}
    await store.aclose()
    assert (loaded["a"].min_kw, loaded["a"].departure_at, loaded["a"].granted_kw) == \
        (5.0, 7.5, 10.0)    # its floor and what b (fixed, 10 kW) leaves of 20
    assert (loaded["b"].min_kw, loaded["b"].departure_at, loaded["b"].granted_kw) == \
        (None, None, 10.0)


async def test_a_first_release_state_file_gains_the_columns_and_keeps_its_rows(
        tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE sessions (session_id TEXT PRIMARY KEY, vehicle_id TEXT NOT NULL,"
                  " power_kw REAL NOT NULL, energy_kwh REAL NOT NULL, delivered_kwh REAL NOT "
                  "NULL, state TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL)")
        c.execute("INSERT INTO sessions VALUES ('old', 'ev', 7.0, 20.0, 3.0, 'charging', 1.0,"
                  " NULL)")
    c.close()
    store = SessionStore(path)
    [old] = store.load()
    await store.aclose()
    assert (old.session_id, old.power_kw, old.delivered_kwh, old.min_kw, old.granted_kw) == \
        ("old", 7.0, 3.0, None, 7.0)
    with sqlite3.connect(path) as c:
        columns = [row[1] for row in c.execute("PRAGMA table_info(sessions)")]
        version = c.execute("PRAGMA user_version").fetchone()[0]
    c.close()
    assert columns[-3:] == ["min_kw", "departure_at", "granted_kw"] and version == SCHEMA_VERSION


def test_restarted_with_less_capacity_than_the_floors_pauses_whole_floors_never_draws_more(
        ) -> None:
    """Floors committed under 30 kW, resumed at 20 kW: the power drawn stays under the new
    capacity (floors granted whole in the allocation's order, the rest paused at 0 kW, not
    forecast to end), and nothing new is admitted until the floors fit again."""
    before = table(30.0)
    for sid in ("a", "b", "c"):
        before.admit(sid, "ev", 11.0, 10.0, now=float(ord(sid)), min_kw=8.0)
    after = table(20.0)
    for session in list(before.active.values()):
        after.resume(session, now=200.0)
    after.reallocate(200.0)
    granted = {sid: s.granted_kw for sid, s in after.active.items()}
    # a and b (the oldest) keep their floors and share the 4 kW left; c, the newest, waits
    assert granted == {"a": 10.0, "b": 10.0, "c": 0.0}, granted
    assert math.fsum(granted.values()) == pytest.approx(20.0)
    assert after.over_capacity and after.load_kw == 24.0
    paused = next(s for s in after.active.values() if s.granted_kw == 0.0)
    assert after.ends_at(paused) == math.inf
    with pytest.raises(OverCapacity, match="above its capacity since it was restarted"):
        after.admit("d", "ev", 11.0, 10.0, now=201.0, min_kw=1.4)


def test_least_laxity_at_the_substation_reckons_laxity_at_its_speed() -> None:
    """At speed 60 a (1 kWh, leaving in 100 s) has 94 s of slack and b (5 kWh, in 200 s) 170 s:
    a charges first. Reckoned at speed 1 both would be late, b the later: b first."""
    t = SessionTable(10.0, speed_factor=60.0)
    t.admit("a", "ev", 10.0, 1.0, now=0.0, min_kw=1.4, departure_at=100.0)
    t.admit("b", "ev", 10.0, 5.0, now=0.0, min_kw=1.4, departure_at=200.0)
    t.advance(0.0)
    assert (t.active["a"].granted_kw, t.active["b"].granted_kw) == pytest.approx((8.6, 1.4))
