"""The power-sharing benchmark itself (bench/power.py, power_lp.py, power_workloads.py): the
offline LP on tiny cases with optima computed by hand, each strategy's behaviour and the metrics
on a two-car case worked out by hand, the workload's published shape, and a tiny full run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import PARTS
from bench.power import (
    EDF,
    FCFS,
    LLF,
    NO_PROMISE,
    OPTIMUM,
    OPTIMUM_PROMISED,
    OPTIMUM_ROUTED,
    OURS,
    QUEUE,
    ROUND_ROBIN,
    SIMULATED,
    TODAY,
    PowerPlan,
    floors_fit_everywhere,
    pivot,
    promised_optimum,
    run_cell,
    run_power,
    simulate,
    target,
    uncontrolled_peak_kw,
)
from bench.power_lp import offline_optimum
from bench.power_workloads import (
    TRACES,
    Session,
    Trace,
    acn,
    acn_fill,
    floor_kw,
    shape,
    today,
    today_fill,
)


def car(sid: int, arrival: int, departure: int, kwh: float, max_kw: float, min_kw: float = 1.4,
        at: float | None = None) -> Session:
    return Session(sid, arrival, departure, kwh, max_kw, min_kw,
                   float(arrival * 3600 + sid) if at is None else at)


def trace(*sessions: Session) -> Trace:
    """Hour-long slots keep the arithmetic readable: kW x 1 slot = kWh."""
    return Trace("test", 3600.0, max(s.departure for s in sessions), sessions)


# -- the offline LP ----------------------------------------------------------------------------

def test_the_lp_shares_one_slot_up_to_the_capacity() -> None:
    cars = [car(1, 0, 1, 8.0, 8.0), car(2, 0, 1, 8.0, 8.0)]
    best = offline_optimum(cars, [10.0], 1.0)
    assert best.total_kwh == pytest.approx(10.0)
    assert best.load_kw == pytest.approx((10.0,))


def test_the_lp_charges_only_within_a_stay_and_up_to_the_energy_asked() -> None:
    # A must charge in slot 0; B can wait for slot 1: 10 kW each, 20 kWh in all.
    a, b = car(1, 0, 1, 10.0, 10.0), car(2, 0, 2, 10.0, 10.0)
    best = offline_optimum([a, b], [10.0], 1.0)
    assert best.delivered_kwh == pytest.approx({1: 10.0, 2: 10.0})
    assert best.kw == pytest.approx({(1, 0, 0): 10.0, (2, 0, 1): 10.0})
    # Asking for 3 kWh gets 3, however ample the capacity; a car gone gets nothing more.
    assert offline_optimum([car(1, 0, 5, 3.0, 11.0)], [100.0], 1.0).total_kwh == \
        pytest.approx(3.0)
    assert offline_optimum([car(1, 2, 3, 30.0, 11.0)], [100.0], 1.0).total_kwh == \
        pytest.approx(11.0)


def test_splitting_across_substations_is_an_upper_bound_equal_to_pooling() -> None:
    # One car of 10 kW at two 5 kW substations for one slot: split, it gets 10; routed to one,
    # 5. At 6 kW max it gets 6 split (the per-slot limit holds across substations).
    fast = [car(1, 0, 1, 10.0, 10.0)]
    assert offline_optimum(fast, [5.0, 5.0], 1.0).total_kwh == pytest.approx(10.0)
    assert offline_optimum(fast, [5.0, 5.0], 1.0, pooled=True).total_kwh == pytest.approx(10.0)
    assert offline_optimum(fast, [5.0, 5.0], 1.0, routing={1: 0}).total_kwh == \
        pytest.approx(5.0)
    slow = [car(1, 0, 1, 10.0, 6.0)]
    assert offline_optimum(slow, [5.0, 5.0], 1.0).total_kwh == pytest.approx(6.0)
    assert offline_optimum(slow, [5.0, 5.0], 1.0, pooled=True).total_kwh == pytest.approx(6.0)


def test_the_split_lp_equals_the_pooled_one_on_a_real_trace() -> None:
    day = acn(1, 5)
    cars = day.sessions[:30]
    capacities = [1.5, 2.0, 2.5]
    split = offline_optimum(cars, capacities, day.slot_h)
    pooled = offline_optimum(cars, capacities, day.slot_h, pooled=True)
    assert split.total_kwh == pytest.approx(pooled.total_kwh, rel=1e-6)
    assert split.total_kwh < 0.95 * sum(s.energy_kwh for s in cars)   # capacity binds
    # Every substation and slot within its capacity.
    for k, capacity in enumerate(capacities):
        for t in range(day.slots):
            assert sum(kw for (_, sub, slot), kw in split.kw.items()
                       if (sub, slot) == (k, t)) <= capacity + 1e-6


def test_the_lp_keeping_promises_holds_every_floor_cumulatively() -> None:
    # B (floor 5 kW, stays 2 h) and A (10 kWh in its one hour at 10 kW) share 10 kW: free, A
    # takes hour 0 and B hour 1 (20 kWh); B's floor promised, A gets only 5 in hour 0 (15).
    b, a = car(2, 0, 2, 10.0, 10.0, min_kw=5.0), car(1, 0, 1, 10.0, 10.0, min_kw=10.0)
    assert offline_optimum([b, a], [10.0], 1.0).total_kwh == pytest.approx(20.0)
    promised = offline_optimum([b, a], [10.0], 1.0, promised={2})
    assert promised.total_kwh == pytest.approx(15.0)
    assert promised.kw[(2, 0, 0)] >= 5.0 - 1e-9
    # A floor above what the car still needs is held only up to its need: C wants 3 kWh with
    # a 5 kW floor, so it must get 3 in hour 0, and A the other 7.
    c = car(3, 0, 2, 3.0, 10.0, min_kw=5.0)
    assert offline_optimum([c, a], [10.0], 1.0, promised={3}).delivered_kwh == \
        pytest.approx({3: 3.0, 1: 7.0})
    # A floor is owed only until the car is full: E, filled in hour 0 (6 kWh at 6 kW), owes
    # nothing after, leaving hours 1-2 whole to D, which arrives then and needs 20 kWh.
    e = car(4, 0, 3, 6.0, 6.0, min_kw=2.0)
    d = car(5, 1, 3, 20.0, 10.0, min_kw=10.0)
    assert offline_optimum([e, d], [10.0], 1.0, promised={4}).total_kwh == pytest.approx(26.0)


def test_the_promised_optimum_bounds_ours_and_gives_refused_cars_nothing() -> None:
    # ours refuses A (B's 5 kW floor leaves no room for A's 10): the bound over B alone is its
    # 10 kWh, what ours delivers, with the peak of the LP's load.
    ours = simulate(TWO, [10.0], OURS)
    delivered, peak = promised_optimum(TWO, [10.0], ours)
    assert delivered == pytest.approx({1: 0.0, 2: 10.0}) and peak <= 10.0 + 1e-9
    # On a real trace at a tight capacity ours keeps its promises, so it is within the bound.
    day = today(1, 2)
    site = 0.3 * uncontrolled_peak_kw(day)
    ours = simulate(day, [site], OURS)
    bound, _ = promised_optimum(day, [site], ours)
    free = offline_optimum(day.sessions, [site], day.slot_h)
    assert sum(ours.delivered.values()) <= sum(bound.values()) + 1e-6
    assert sum(bound.values()) <= free.total_kwh + 1e-6


# -- the strategies, on two cars worked out by hand ---------------------------------------------
# B arrives first (10 kWh, 10 kW, stays 2 h, floor 5 kW); A a moment later (10 kWh, 10 kW,
# stays 1 h, floor 10 kW). 10 kW of capacity. Only serving A first delivers both.

B = car(2, 0, 2, 10.0, 10.0, min_kw=5.0, at=0.0)
A = car(1, 0, 1, 10.0, 10.0, min_kw=10.0, at=1.0)
TWO = trace(B, A)


@pytest.mark.parametrize(("strategy", "delivered", "refused"), [
    (TODAY, {1: 0.0, 2: 10.0}, {1}),          # B fixed at 10 kW, A does not fit: refused
    (FCFS, {1: 0.0, 2: 10.0}, set()),         # B first, A waits at 0 kW and leaves
    (EDF, {1: 10.0, 2: 10.0}, set()),         # A leaves first: served first
    (LLF, {1: 10.0, 2: 10.0}, set()),         # A's laxity is 0, B's 1 h
    (ROUND_ROBIN, {1: 5.0, 2: 10.0}, set()),  # 5 kW each, then B alone
    (OURS, {1: 0.0, 2: 10.0}, {1}),           # B's 5 kW floor committed; A's 10 does not fit
    (QUEUE, {1: 0.0, 2: 10.0}, set()),        # A best effort: its 10 kW floor never fits
    (NO_PROMISE, {1: 10.0, 2: 10.0}, set()),  # no floor reserved: A (least laxity) first
])
def test_each_strategy_on_two_cars(strategy: str, delivered: dict[int, float],
                                   refused: set[int]) -> None:
    run = simulate(TWO, [10.0], strategy)
    assert run.delivered == pytest.approx(delivered)
    assert run.refused == refused
    assert run.peak_kw == pytest.approx(10.0)


def test_the_metrics_of_a_cell_by_hand() -> None:
    assert uncontrolled_peak_kw(TWO) == pytest.approx(20.0)   # both at 10 kW in hour 0
    tallies, floors_fit = run_cell([TWO], 1, 50, (*SIMULATED, OPTIMUM))   # 50 % of 20 kW
    assert floors_fit is False   # 5 + 10 kW of floors in hour 0, 10 kW of capacity
    rows = {s: t.row() for s, t in tallies.items()}
    assert rows[LLF]["energy_pct"] == 100.0 and rows[LLF]["served_pct"] == 100.0
    assert rows[ROUND_ROBIN]["energy_pct"] == 75.0 and rows[ROUND_ROBIN]["served_pct"] == 50.0
    assert rows[OURS]["refused"] == 1 and rows[OURS]["energy_pct"] == 50.0
    assert rows[TODAY]["peak_pct_of_capacity"] == 100.0
    assert rows[OPTIMUM]["energy_pct"] == 100.0 and rows[OPTIMUM]["changes_per_session"] == ""
    # LLF: B goes from 0 to 10 kW in hour 1 (A has left): one change over two cars. Round
    # robin keeps B at 5 kW, all it still needs.
    assert rows[LLF]["changes_per_session"] == 0.5
    assert rows[ROUND_ROBIN]["changes_per_session"] == 0.0
    assert floors_fit_everywhere(TWO, 15.0) and not floors_fit_everywhere(TWO, 14.9)


def test_ours_routes_to_the_substation_with_the_least_committed_energy() -> None:
    # Two cars at once, two substations: each can deliver everything anywhere, so the second
    # goes where less energy is already committed.
    cars = trace(car(1, 0, 4, 10.0, 10.0, at=0.0), car(2, 0, 4, 10.0, 10.0, at=1.0))
    run = simulate(cars, [10.0, 10.0], OURS)
    assert run.placed == {1: 0, 2: 1}
    tallies, _ = run_cell([cars], 2, 100, (OURS, OPTIMUM, OPTIMUM_ROUTED, OPTIMUM_PROMISED))
    assert tallies[OPTIMUM_ROUTED].row()["energy_pct"] == 100.0
    assert tallies[OPTIMUM_PROMISED].row()["energy_pct"] == 100.0
    assert tallies[OPTIMUM_PROMISED].row()["changes_per_session"] == ""


def test_ours_queue_commits_a_waiting_car_once_its_floor_fits() -> None:
    # The first car's 8 kW floor fills the 10 kW; the second (floor 5) waits best effort,
    # charging from the 2 kW spare, and is committed once the first is full.
    first = car(1, 0, 3, 8.0, 8.0, min_kw=8.0, at=0.0)
    second = car(2, 0, 3, 12.0, 10.0, min_kw=5.0, at=1.0)
    refused = simulate(trace(first, second), [10.0], OURS)
    assert refused.refused == {2}
    queued = simulate(trace(first, second), [10.0], QUEUE)
    assert queued.refused == set()
    assert queued.delivered == pytest.approx({1: 8.0, 2: 12.0})   # 2 in hour 0, then 10


def test_target_is_met_only_when_every_part_holds() -> None:
    def results(ours: float, llf: float, best: float, refused: int = 0
                ) -> dict[str, dict[str, object]]:
        return {OURS: {"energy_pct": ours, "refused": refused}, LLF: {"energy_pct": llf},
                OPTIMUM: {"energy_pct": best}}
    cell: dict[str, object] = {"workload": "acn", "substations": 1, "capacity_pct": 50}
    assert target(cell, results(95.0, 94.0, 96.0), floors_fit=True)["met"] is True
    assert target(cell, results(93.0, 94.0, 96.0), floors_fit=True)["met"] is False
    assert target(cell, results(95.0, 94.0, 97.5), floors_fit=True)["met"] is False
    assert target(cell, results(95.0, 94.0, 96.0, refused=1), floors_fit=True)["met"] is False
    # Refusals count only where the floors fit; the optimum only from 30 %.
    assert target(cell, results(95.0, 94.0, 96.0, refused=1), floors_fit=False)["met"] is True
    low = {**cell, "capacity_pct": 20}
    assert target(low, results(80.0, 79.0, 90.0), floors_fit=False)["met"] is True


# -- the workloads -----------------------------------------------------------------------------

def test_the_acn_day_has_the_published_shape() -> None:
    got = shape(acn(10, 1))
    assert got["sessions"] == 600
    assert 5.6 <= got["median_stay_h"] <= 6.6          # ACN-Sim: about 6.1 h
    assert 6.2 <= got["median_energy_kwh"] <= 7.2      # about 6.7 kWh
    assert 4.0 <= got["median_laxity_h"] <= 5.0        # about 4.5 h


@pytest.mark.parametrize("make", [acn_fill, today_fill])
def test_every_session_can_be_filled_and_its_fill_floor_follows_the_rule(make: object) -> None:
    day = make(1, 3)   # type: ignore[operator]
    for s in day.sessions:
        stay_h = (s.departure - s.arrival) * day.slot_h
        assert s.departure > s.arrival and s.energy_kwh <= s.max_kw * stay_h + 1e-9
        assert s.min_kw == pytest.approx(floor_kw(s.energy_kwh, stay_h, s.max_kw))
        assert 1.4 <= s.min_kw <= s.max_kw or s.min_kw == s.max_kw
    assert make(1, 3) == day   # type: ignore[operator]   # seeded


# -- a tiny full run ---------------------------------------------------------------------------

def test_a_tiny_run_gives_rows_targets_a_pivot_and_charts(tmp_path: Path) -> None:
    plan = PowerPlan(workloads=("today",), sizes=(1,), capacity_pcts=(30, 100), seeds=(1,))
    rows = run_power(plan, charts_dir=tmp_path, progress=lambda line: None)
    strategies = {r["strategy"] for r in rows if r["capacity_pct"] == 30}
    # no routed LP at 1 substation
    assert strategies == {*SIMULATED, OPTIMUM, OPTIMUM_PROMISED, "target"}
    targets = [r for r in rows if r["strategy"] == "target"]
    assert {(r["variant"], r["capacity_pct"]) for r in targets} == \
        {(v, p) for v in (OURS, QUEUE, NO_PROMISE) for p in (30, 100)}
    assert all(r["met"] for r in targets if r["capacity_pct"] == 100)
    table = pivot(rows)
    assert "| today | 1 | 30 % |" in table and "| today | 1 | **mean** |" in table
    assert [p.name for p in tmp_path.iterdir()] == ["power-today.png"]
    assert "power" in PARTS


@pytest.mark.parametrize(("plain", "fill"), [("acn", "acn-fill"), ("today", "today-fill")])
def test_the_default_workloads_have_minimum_floors_and_fill_the_same_cars_with_fill_floors(
        plain: str, fill: str) -> None:
    low, high = TRACES[plain](1, 4), TRACES[fill](1, 4)
    assert (low.name, high.name) == (plain, fill) and len(low.sessions) == len(high.sessions)
    for a, b in zip(low.sessions, high.sessions, strict=True):
        assert (a.arrival, a.departure, a.energy_kwh, a.max_kw) == \
            (b.arrival, b.departure, b.energy_kwh, b.max_kw)
        assert a.min_kw == min(1.4, a.max_kw) <= b.min_kw
    assert PowerPlan().workloads == ("acn", "acn-fill", "today", "today-fill")
