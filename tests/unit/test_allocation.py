"""Sharing a substation's capacity (substation/allocation.py), with exact numbers."""

from __future__ import annotations

import math

import pytest

from substation.allocation import (
    AUTO,
    EARLIEST_DEADLINE,
    LEAST_LAXITY,
    WATER_FILLING,
    Demand,
    Smoother,
    allocate,
    floor_fits,
    laxity_s,
    need_kw,
    water_fill,
)

HOUR = 3600.0


def kw(capacity: float, demands: list[Demand], strategy: str = AUTO, now: float = 0.0,
       **options: float) -> dict[str, float]:
    allocation = allocate(capacity, demands, now, strategy, **options)
    assert allocation.paused == ()
    return allocation.kw


def test_a_floor_is_admitted_up_to_exactly_the_capacity_and_not_a_watt_more() -> None:
    assert floor_fits(100.0, [60.0, 38.6], 1.4)
    assert not floor_fits(100.0, [60.0, 38.6], 1.401)
    assert floor_fits(100.0, [], 100.0)
    # Many float floors that add up to the capacity exactly still admit the last one.
    assert floor_fits(1.0, [0.1] * 9, 0.1)


def test_without_min_kw_every_session_gets_exactly_its_requested_kw_as_today() -> None:
    demands = [Demand("a", 60.0, 60.0), Demand("b", 40.0, 40.0)]
    assert kw(100.0, demands) == {"a": 60.0, "b": 40.0}
    assert not floor_fits(100.0, [60.0, 40.0], 0.001)


def test_water_filling_shares_equally_and_gives_a_small_request_what_it_asks() -> None:
    three = [Demand("a", 1.4, 22.0), Demand("b", 1.4, 22.0), Demand("c", 1.4, 22.0)]
    assert kw(30.0, three) == {"a": 10.0, "b": 10.0, "c": 10.0}
    # c asks for only 4 kW: it gets 4, and the 6 kW it leaves go to the others.
    small = [*three[:2], Demand("c", 1.4, 4.0)]
    assert kw(30.0, small) == {"a": 13.0, "b": 13.0, "c": 4.0}
    # Enough for everyone: everyone gets what it asks, and capacity is left over.
    assert kw(100.0, small) == {"a": 22.0, "b": 22.0, "c": 4.0}


def test_water_filling_holds_a_high_floor() -> None:
    # b's floor (15) is above the level the others reach (7.5): max-min fair above floors.
    demands = [Demand("a", 1.4, 22.0), Demand("b", 15.0, 22.0), Demand("c", 1.4, 22.0)]
    assert kw(30.0, demands) == {"a": 7.5, "b": 15.0, "c": 7.5}


def test_water_fill_finds_the_level_between_breakpoints() -> None:
    assert water_fill([(0.0, 10.0), (0.0, 2.0), (0.0, 5.0)], 9.0) == [3.5, 2.0, 3.5]
    # floors 1.4 + 5 + 0 = 6.4; 9 kW more reach level 5.2 (5.2 + 5.2 + 5 = 15.4)
    shares = water_fill([(1.4, 10.0), (5.0, 7.0), (0.0, 5.0)], 9.0)
    assert shares == pytest.approx([5.2, 5.2, 5.0], abs=1e-12)
    assert water_fill([(1.0, 2.0), (3.0, 4.0)], 0.0) == [1.0, 3.0]
    assert water_fill([(1.0, 2.0), (3.0, 4.0)], 5.0) == [2.0, 4.0]
    assert water_fill([(2.0, 2.0), (0.0, 6.0)], 3.0) == [2.0, 3.0]


def test_least_laxity_first_serves_the_session_that_must_hurry() -> None:
    # a: 3 h to go, 10 kWh at 11 kW take 0.91 h (laxity 2.09 h); b: 1 h, 5 kWh at 7 kW take
    # 0.71 h (laxity 0.29 h); c has no departure. Floors 1.4 + 1.4 + 5 = 7.8 of 20.
    demands = [Demand("a", 1.4, 11.0, 10.0, 3 * HOUR), Demand("b", 1.4, 7.0, 5.0, HOUR),
               Demand("c", 5.0, 11.0)]
    assert laxity_s(demands[1], 0.0) == pytest.approx(HOUR - 5.0 / 7.0 * HOUR)
    assert laxity_s(demands[2], 0.0) == math.inf
    # b fills to 7, a takes the remaining 6.6 above its floor, c (no departure) keeps its floor.
    assert kw(20.0, demands) == pytest.approx({"a": 8.0, "b": 7.0, "c": 5.0}, abs=1e-12)
    # The same sessions without the departures share max-min fairly instead.
    plain = [Demand(d.session_id, d.min_kw, d.max_kw, d.remaining_kwh) for d in demands]
    assert kw(20.0, plain) == pytest.approx({"a": 20 / 3, "b": 20 / 3, "c": 20 / 3}, abs=1e-12)
    assert kw(20.0, demands, WATER_FILLING) == kw(20.0, plain)


def test_earliest_deadline_first_orders_by_departure_alone() -> None:
    # a leaves first but has plenty of slack (laxity 1.91 h); EDF serves it anyway, LLF serves
    # b (30 kWh in 3 h at 11 kW: laxity 0.27 h).
    demands = [Demand("a", 1.4, 11.0, 1.0, 2 * HOUR), Demand("b", 1.4, 11.0, 30.0, 3 * HOUR)]
    assert kw(12.8, demands, EARLIEST_DEADLINE) == pytest.approx({"a": 11.0, "b": 1.8})
    assert kw(12.8, demands, LEAST_LAXITY) == pytest.approx({"a": 1.8, "b": 11.0})


def test_laxities_within_one_step_share_instead_of_swapping_every_tick() -> None:
    # Laxities 0.25 h and 0.26 h: one 300 s step apart is a tie (shared); strict LLF (step 0)
    # gives all the spare to a.
    demands = [Demand("a", 1.4, 11.0, 11.0 * 0.75, HOUR), Demand("b", 1.4, 11.0, 11.0 * 0.74,
                                                                    HOUR)]
    assert kw(12.0, demands) == pytest.approx({"a": 6.0, "b": 6.0})
    assert kw(12.0, demands, laxity_step_s=0.0) == pytest.approx({"a": 10.6, "b": 1.4})


def test_strict_least_laxity_oscillates_and_the_laxity_step_does_not() -> None:
    """Two equal sessions, one tick a minute: strict LLF hands the spare from one to the other
    whenever their laxities cross; with the default step they share it."""
    def changes(step: float) -> int:
        remaining = {"a": 20.0, "b": 20.0 - 1e-6}
        last: dict[str, float] = {}
        count = 0
        for tick in range(120):
            now = tick * 60.0
            demands = [Demand(s, 1.4, 11.0, r, 4 * HOUR) for s, r in remaining.items()]
            granted = kw(11.0, demands, now=now, laxity_step_s=step)
            count += sum(1 for s, p in granted.items() if s in last and abs(p - last[s]) >= 0.01)
            last = granted
            remaining = {s: max(0.0, r - granted[s] / 60.0) for s, r in remaining.items()}
        return count
    assert changes(0.0) > 50
    assert changes(300.0) == 0


def test_a_slot_caps_a_session_at_what_it_still_needs_and_others_take_the_rest() -> None:
    # A 5-minute slot: 0.5 kWh more needs only 6 kW; b gets the other 16.
    demands = [Demand("a", 1.4, 11.0, 0.5), Demand("b", 1.4, 22.0, 100.0)]
    assert need_kw(demands[0], 300.0) == pytest.approx(6.0)
    assert kw(22.0, demands, slot_s=300.0) == pytest.approx({"a": 6.0, "b": 16.0})
    # Its floor is capped the same way: 0.05 kWh needs 0.6 kW, below its 1.4 kW floor.
    done = [Demand("a", 1.4, 11.0, 0.05), Demand("b", 1.4, 22.0, 100.0)]
    assert kw(22.0, done, slot_s=300.0) == pytest.approx({"a": 0.6, "b": 21.4})
    # At speed 60 the same 300 s are 5 simulated hours.
    assert need_kw(demands[0], 300.0, speed_factor=60.0) == pytest.approx(0.1)


def test_floors_that_no_longer_fit_are_paused_newest_admission_first() -> None:
    demands = [Demand("old", 6.0, 11.0, admitted_at=1.0), Demand("mid", 6.0, 11.0,
                                                                 admitted_at=2.0),
               Demand("new", 6.0, 11.0, admitted_at=3.0), Demand("tiny", 1.4, 11.0,
                                                                  admitted_at=4.0)]
    allocation = allocate(14.0, demands, 0.0)
    # old and mid fit (12); new (6) does not, tiny (1.4) still does: whole or nothing. The
    # 0.6 kW left raise the lowest, tiny, to 2.
    assert allocation.paused == ("new",)
    assert allocation.kw == pytest.approx({"old": 6.0, "mid": 6.0, "new": 0.0, "tiny": 2.0})


def test_bad_input_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match="session a is listed twice"):
        allocate(10.0, [Demand("a", 1.4, 2.0), Demand("a", 1.4, 2.0)], 0.0)
    with pytest.raises(ValueError, match="session a: min_kw must be above 0 and at most max_kw, "
                       "got 3 and 2"):
        allocate(10.0, [Demand("a", 3.0, 2.0)], 0.0)
    with pytest.raises(ValueError, match="capacity_kw must be at least 0, got -1"):
        allocate(-1.0, [], 0.0)
    with pytest.raises(ValueError, match="unknown strategy 'fifo'; choose from auto, "):
        allocate(1.0, [], 0.0, "fifo")
    with pytest.raises(ValueError, match="session a: remaining_kwh must be at least 0, got -1"):
        allocate(10.0, [Demand("a", 1.4, 2.0, -1.0)], 0.0)
    with pytest.raises(ValueError, match="session a: min_kw must be above 0 and at most max_kw, "
                       "got 0 and 2"):
        allocate(10.0, [Demand("a", 0.0, 2.0)], 0.0)
    # Any floor above 0 is the allocation's to honour (the grid's minimum is the API's rule).
    assert kw(10.0, [Demand("a", 0.5, 2.0)]) == {"a": 2.0}


def test_the_smoother_passes_on_only_real_changes() -> None:
    smoother = Smoother()
    assert smoother.update(30.0, {"a": 10.0, "b": 20.0}) == {"a": 10.0, "b": 20.0}
    assert smoother.update(30.0, {"a": 10.0, "b": 20.0}) == {}
    # 0.005 kW is not a change; 0.5 kW is.
    assert smoother.update(30.0, {"a": 9.995, "b": 20.005}) == {}
    assert smoother.update(30.0, {"a": 9.5, "b": 20.5}) == {"a": 9.5, "b": 20.5}
    # A session gone is forgotten; a new one is a change.
    assert smoother.update(30.0, {"b": 20.5, "c": 9.5}) == {"c": 9.5}
    assert smoother.granted == {"b": 20.5, "c": 9.5}


def test_the_smoother_never_keeps_an_old_value_above_the_capacity() -> None:
    smoother = Smoother()
    smoother.update(30.0, {"a": 10.0, "b": 20.0})
    # The capacity fell by 0.004: keeping both (30) would exceed it; b, the larger kept excess
    # (0.006 against 0.002), gives way first and that is enough.
    changes = smoother.update(29.996, {"a": 9.998, "b": 19.994})
    assert changes == {"b": 19.994}
    assert smoother.granted == {"a": 10.0, "b": 19.994}
    # Fallen by 0.008: b giving way is not enough, a gives way too.
    smoother = Smoother()
    smoother.update(30.0, {"a": 10.0, "b": 20.0})
    assert smoother.update(29.992, {"a": 9.998, "b": 19.994}) == {"a": 9.998, "b": 19.994}


def test_a_tick_moves_the_largest_shortfalls_just_enough_not_to_leave_a_threshold_unused(
        ) -> None:
    smoother = Smoother()
    smoother.update(11.1, {"a": 3.7, "b": 3.7, "c": 3.7})
    # Each a little more, each under the threshold: kept, but together 0.022 kW would be left
    # unused. b (0.009 short), then c (0.008) move; a (0.005) keeps its value.
    assert smoother.update(11.1, {"a": 3.705, "b": 3.709, "c": 3.708}) == {"b": 3.709,
                                                                          "c": 3.708}
    assert smoother.granted == {"a": 3.7, "b": 3.709, "c": 3.708}


def test_between_ticks_a_newcomer_takes_what_is_free_and_nobody_else_moves() -> None:
    smoother = Smoother()
    smoother.update(30.0, {"a": 10.0, "b": 10.0})
    floors = {"a": 5.0, "b": 5.0, "c": 5.0}
    # The allocation would re-share (a and b down to 8): they keep 10 until the tick.
    assert smoother.between_ticks(30.0, {"a": 8.0, "b": 8.0, "c": 14.0}, floors) == {"c": 10.0}
    # A stop frees 10 kW: nobody rises before the tick.
    assert smoother.between_ticks(30.0, {"a": 15.0, "c": 15.0}, floors) == {}
    assert smoother.granted == {"a": 10.0, "c": 10.0}
    assert smoother.update(30.0, {"a": 15.0, "c": 15.0}) == {"a": 15.0, "c": 15.0}


def test_between_ticks_room_comes_from_those_cut_most_straight_to_their_floors_once() -> None:
    smoother = Smoother()
    smoother.update(35.0, {"a": 15.0, "b": 15.0, "d": 5.0})
    floors = {"a": 5.0, "b": 5.0, "c": 5.0, "d": 5.0, "e": 5.0}
    # c's floor needs 5 kW: b, which the allocation cuts most (15 -> 10, a only to 12), goes to
    # its floor at once (not to 10); a keeps 15; d, at its floor, has nothing to give. c takes
    # its 8 from what that frees.
    changes = smoother.between_ticks(35.0, {"a": 12.0, "b": 10.0, "c": 8.0, "d": 5.0}, floors)
    assert changes == {"b": 5.0, "c": 8.0}
    # e before the tick: b (at its floor) is not moved again; of a (15 -> 13) and c (8 -> 5),
    # c is cut more and gives way, just enough: a keeps 15, e gets its floor.
    changes = smoother.between_ticks(
        35.0, {"a": 13.0, "b": 8.0, "c": 5.0, "d": 5.0, "e": 7.0}, floors)
    assert changes == {"c": 5.0, "e": 5.0}
    assert math.fsum(smoother.granted.values()) <= 35.0
    assert smoother.granted == {"a": 15.0, "b": 5.0, "c": 5.0, "d": 5.0, "e": 5.0}


def test_between_ticks_two_newcomers_share_what_is_free_in_turn() -> None:
    smoother = Smoother()
    floors = {"x": 5.0, "y": 5.0}
    assert smoother.between_ticks(20.0, {"x": 12.0, "y": 12.0}, floors) == {"x": 12.0,
                                                                             "y": 8.0}


def test_between_ticks_floors_that_do_not_fit_fall_back_to_the_allocation() -> None:
    """Not reachable through admission (a floor is admitted only when it fits): should it
    happen, capacity wins over smoothness."""
    smoother = Smoother()
    smoother.update(10.0, {"a": 8.0})
    assert smoother.between_ticks(10.0, {"a": 8.0, "b": 0.0}, {"a": 8.0, "b": 5.0}) == \
        {"b": 0.0}
    assert smoother.granted == {"a": 8.0, "b": 0.0}


def test_floors_that_no_longer_fit_are_paused_most_relaxed_first_under_least_laxity() -> None:
    # The capacity fell to 12: two 6 kW floors fit. The most relaxed (r, 10 h) is paused,
    # whatever the order of admission.
    demands = [Demand("r", 6.0, 11.0, 10.0, 10 * HOUR, admitted_at=1.0),
               Demand("u", 6.0, 11.0, 10.0, 2 * HOUR, admitted_at=2.0),
               Demand("m", 6.0, 11.0, 10.0, 5 * HOUR, admitted_at=3.0)]
    allocation = allocate(12.0, demands, 0.0)
    assert allocation.paused == ("r",)
    assert allocation.kw == {"r": 0.0, "u": 6.0, "m": 6.0}


def test_a_best_effort_session_never_takes_from_committed_floors() -> None:
    # c1 and c2 have committed floors of 5 kW (10 of 12); b, best effort, is more urgent but its
    # 5 kW floor does not fit in the 2 kW left: it waits at 0, and the 2 kW go to the committed.
    c1 = Demand("c1", 5.0, 11.0, 30.0, 8 * HOUR)
    c2 = Demand("c2", 5.0, 11.0, 30.0, 9 * HOUR)
    b = Demand("b", 5.0, 11.0, 10.0, HOUR, committed=False)
    allocation = allocate(12.0, [c1, c2, b], 0.0)
    assert allocation.paused == ("b",)
    assert allocation.kw == {"c1": 7.0, "c2": 5.0, "b": 0.0}
    # With 18 kW its floor fits in what is left (8): being the most urgent, it takes all 8.
    allocation = allocate(18.0, [c1, c2, b], 0.0)
    assert allocation.paused == ()
    assert allocation.kw == {"c1": 5.0, "c2": 5.0, "b": 8.0}


def test_best_effort_sessions_take_their_floors_by_least_laxity_whole_or_not_at_all() -> None:
    # No committed floor: LLF with a minimum power. 13 kW: u (most urgent) takes 11, m's 6 kW
    # floor does not fit in the 2 left, r's 1.4 does.
    demands = [Demand("u", 6.0, 11.0, 10.0, HOUR, committed=False),
               Demand("m", 6.0, 11.0, 10.0, 3 * HOUR, committed=False),
               Demand("r", 1.4, 11.0, 10.0, 9 * HOUR, committed=False)]
    allocation = allocate(13.0, demands, 0.0)
    assert allocation.paused == ("m",)
    assert allocation.kw == pytest.approx({"u": 11.0, "m": 0.0, "r": 2.0})


def test_the_laxity_step_is_charging_time_whatever_the_speed_factor() -> None:
    # At speed 60 a real second is a minute of charging: 11 kWh at 11 kW take 60 real s.
    # Laxities of 600 s and 602 s (real) are 36,000 and 36,120 s of charging time: the same
    # 5-minute step (the 120th); 606 s is 36,360 s, the next step.
    a = Demand("a", 1.4, 11.0, 11.0, 660.0)
    b = Demand("b", 1.4, 11.0, 11.0, 662.0)
    c = Demand("c", 1.4, 11.0, 11.0, 666.0)
    assert laxity_s(a, 0.0, speed_factor=60.0) == pytest.approx(600.0)
    assert kw(12.0, [a, b], speed_factor=60.0) == pytest.approx({"a": 6.0, "b": 6.0})
    assert kw(12.0, [a, c], speed_factor=60.0) == pytest.approx({"a": 10.6, "c": 1.4})


def test_laxity_counts_from_now_in_charging_time() -> None:
    # 10 kWh at 10 kW: an hour of charging (a minute of real time at speed 60).
    d = Demand("d", 1.4, 10.0, 10.0, 5000.0)
    assert laxity_s(d, 400.0) == pytest.approx(5000.0 - 400.0 - 3600.0)
    assert laxity_s(d, 400.0, speed_factor=60.0) == pytest.approx(5000.0 - 400.0 - 60.0)


def test_least_laxity_orders_by_laxity_at_the_tables_speed() -> None:
    """At speed 60, a (1 kWh, leaving in 100 s) has 94 s of slack, b (5 kWh, in 200 s) 170 s:
    a first. Reckoned at speed 1, both would be late and b the later: b first."""
    a = Demand("a", 1.4, 10.0, 1.0, 100.0)
    b = Demand("b", 1.4, 10.0, 5.0, 200.0)
    assert kw(10.0, [a, b], LEAST_LAXITY, speed_factor=60.0) == pytest.approx({"a": 8.6,
                                                                               "b": 1.4})
    # A step under a second still groups: laxities 0.2 s apart in one 0.5 s step share.
    c = Demand("c", 1.4, 10.0, 0.0, 100.0)
    d = Demand("d", 1.4, 10.0, 0.0, 100.2)
    assert kw(10.0, [c, d], LEAST_LAXITY, laxity_step_s=0.5) == pytest.approx({"c": 5.0,
                                                                               "d": 5.0})


def test_a_slot_caps_need_in_charging_time_at_the_tables_speed() -> None:
    # A 60 s slot at speed 60 is an hour of charging: 2 kWh left need only 2 kW.
    a = Demand("a", 1.4, 10.0, 2.0)
    b = Demand("b", 1.4, 20.0)
    assert kw(20.0, [a, b], slot_s=60.0, speed_factor=60.0) == pytest.approx({"a": 2.0,
                                                                              "b": 18.0})


def test_between_ticks_the_deepest_cut_gives_way_first_not_the_smallest_session() -> None:
    smoother = Smoother()
    smoother.update(26.0, {"x": 20.0, "y": 6.0})
    # The allocation cuts x by 10 and y by 1: x gives way (to its floor) and that is enough.
    changes = smoother.between_ticks(26.0, {"x": 10.0, "y": 5.0, "z": 11.0},
                                     {"x": 5.0, "y": 5.0, "z": 5.0})
    assert changes == {"x": 5.0, "z": 11.0}
