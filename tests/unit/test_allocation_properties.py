"""The promises of substation/allocation.py, as properties over any sessions and capacity:
capacity never exceeded, floors held (committed ones even beside best-effort sessions, which get
0 or at least their floor), nothing left unallocated while a session wants more, the
order of the sessions irrelevant, the same answer for the same question (float residue
included), max-min fairness (a session that needs less than its share gets it, the rest goes
to the others), priority respected under least-laxity, and a Smoother that never exceeds the
capacity nor passes on a change below its threshold."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from substation.allocation import (
    AUTO,
    CHANGE_THRESHOLD_KW,
    EARLIEST_DEADLINE,
    LAXITY_STEP_S,
    LEAST_LAXITY,
    STRATEGIES,
    WATER_FILLING,
    Allocation,
    Demand,
    Smoother,
    allocate,
    laxity_s,
    need_kw,
)

EPS = 1e-6   # kW: float residue of sums over up to 20 sessions of up to 350 kW


@st.composite
def demand(draw: st.DrawFn, session_id: str) -> Demand:
    max_kw = draw(st.sampled_from((1.4, 3.7, 7.4, 11.0, 22.0, 50.0, 150.0, 350.0))
                  | st.floats(1.4, 350.0))
    min_kw = draw(st.sampled_from((1.4, max_kw)) | st.floats(1.4, max_kw))
    remaining = draw(st.just(math.inf) | st.floats(0.0, 200.0))
    departure = draw(st.none() | st.floats(0.0, 48 * 3600.0))
    admitted = draw(st.floats(-3600.0, 0.0))
    committed = draw(st.booleans() | st.just(True))
    return Demand(session_id, min_kw, max_kw, remaining, departure, admitted, committed)


@st.composite
def sessions(draw: st.DrawFn, max_size: int = 20) -> list[Demand]:
    count = draw(st.integers(0, max_size))
    return [draw(demand(f"s{i}")) for i in range(count)]


capacities = st.floats(0.0, 2000.0)
slots = st.none() | st.sampled_from((1.0, 60.0, 300.0))
strategies = st.sampled_from(STRATEGIES)


def total(allocation: Allocation) -> float:
    return math.fsum(allocation.kw.values())


def floors(demands: list[Demand], slot_s: float | None) -> dict[str, float]:
    return {d.session_id: min(d.min_kw, need_kw(d, slot_s)) for d in demands}


@settings(max_examples=200, deadline=None)
@given(capacity=capacities, demands=sessions(), strategy=strategies, slot_s=slots)
def test_capacity_floors_and_needs_hold(capacity: float, demands: list[Demand], strategy: str,
                                        slot_s: float | None) -> None:
    allocation = allocate(capacity, demands, 0.0, strategy, slot_s=slot_s)
    assert set(allocation.kw) == {d.session_id for d in demands}
    assert total(allocation) <= capacity + EPS
    floor = floors(demands, slot_s)
    for d in demands:
        granted = allocation.kw[d.session_id]
        if d.session_id in allocation.paused:
            assert granted == 0.0
        else:
            assert floor[d.session_id] - EPS <= granted <= need_kw(d, slot_s) + EPS
    # No committed session is paused while the committed floors fit, whatever the best-effort
    # sessions beside them; nobody is paused while every floor fits.
    if math.fsum(floor[d.session_id] for d in demands if d.committed) <= capacity:
        assert not {d.session_id for d in demands if d.committed} & set(allocation.paused)
    if math.fsum(floor.values()) <= capacity and all(d.committed for d in demands):
        assert allocation.paused == ()
    # A session waits only when its floor does not fit whole in what is left over.
    for sid in allocation.paused:
        assert capacity - total(allocation) < floor[sid] + EPS


@settings(max_examples=200, deadline=None)
@given(capacity=capacities, demands=sessions(), strategy=strategies, slot_s=slots)
def test_nothing_is_left_over_while_a_session_wants_more(
        capacity: float, demands: list[Demand], strategy: str, slot_s: float | None) -> None:
    allocation = allocate(capacity, demands, 0.0, strategy, slot_s=slot_s)
    # (A paused session wants more too, but its floor did not fit whole: what its floor would
    # need is not left over unless every running session has all it can use.)
    wanted = math.fsum(need_kw(d, slot_s) for d in demands if d.session_id not in
                       allocation.paused)
    assert total(allocation) >= min(capacity, wanted) - EPS


@settings(max_examples=150, deadline=None)
@given(capacity=capacities, demands=sessions(), strategy=strategies, slot_s=slots,
       order=st.randoms(use_true_random=False), now=st.floats(0.0, 24 * 3600.0))
def test_the_order_of_the_sessions_changes_nothing_and_answers_repeat(
        capacity: float, demands: list[Demand], strategy: str, slot_s: float | None,
        order: object, now: float) -> None:
    shuffled = list(demands)
    order.shuffle(shuffled)   # type: ignore[attr-defined]
    first = allocate(capacity, demands, now, strategy, slot_s=slot_s)
    assert allocate(capacity, shuffled, now, strategy, slot_s=slot_s) == first
    assert allocate(capacity, demands, now, strategy, slot_s=slot_s) == first


@settings(max_examples=150, deadline=None)
@given(capacity=capacities, demands=sessions(), slot_s=slots)
def test_water_filling_is_max_min_fair(capacity: float, demands: list[Demand],
                                       slot_s: float | None) -> None:
    """A session that gets less than it needs gets at least as much as any other, unless that
    other's own floor is higher: so one that needs less than the fair share gets all it needs,
    and what it leaves goes to the others."""
    allocation = allocate(capacity, demands, 0.0, WATER_FILLING, slot_s=slot_s)
    if allocation.paused:
        return
    floor = floors(demands, slot_s)
    kw = allocation.kw
    short = [d for d in demands if kw[d.session_id] < need_kw(d, slot_s) - EPS]
    for d in short:
        for other in demands:
            assert kw[other.session_id] <= max(kw[d.session_id], floor[other.session_id]) + EPS


@settings(max_examples=150, deadline=None)
@given(capacity=capacities, demands=sessions(), slot_s=slots, now=st.floats(0.0, 24 * 3600.0),
       step=st.sampled_from((0.0, LAXITY_STEP_S)))
def test_least_laxity_serves_a_lower_class_before_a_higher_one(
        capacity: float, demands: list[Demand], slot_s: float | None, now: float,
        step: float) -> None:
    allocation = allocate(capacity, demands, now, LEAST_LAXITY, slot_s=slot_s,
                          laxity_step_s=step)
    if allocation.paused:
        return
    floor = floors(demands, slot_s)
    kw = allocation.kw

    def rank(d: Demand) -> float:
        lax = laxity_s(d, now)
        return math.floor(lax / step) if step and math.isfinite(lax) else lax
    for d in demands:
        if kw[d.session_id] < need_kw(d, slot_s) - EPS:   # not fully served: nobody behind it
            for other in demands:   # gets more than its floor
                if rank(other) > rank(d):
                    assert kw[other.session_id] <= floor[other.session_id] + EPS


@settings(max_examples=200, deadline=None)
@given(capacity=capacities, demands=sessions())
def test_auto_is_least_laxity_with_departures_and_water_filling_without(
        capacity: float, demands: list[Demand]) -> None:
    with_departures = any(d.departure_at is not None for d in demands)
    expected = LEAST_LAXITY if with_departures else WATER_FILLING
    assert allocate(capacity, demands, 0.0, AUTO) == allocate(capacity, demands, 0.0, expected)
    # Without departures EDF and LLF have one class too: water-filling.
    plain = [Demand(d.session_id, d.min_kw, d.max_kw, d.remaining_kwh) for d in demands]
    assert allocate(capacity, plain, 0.0, EARLIEST_DEADLINE) == \
        allocate(capacity, plain, 0.0, WATER_FILLING)


@settings(max_examples=150, deadline=None)
@given(capacity=st.floats(1.0, 2000.0), demands=sessions(), strategy=strategies,
       residue=st.floats(-1e-13, 1e-13), ticks=st.lists(st.floats(0.0, 1.0), max_size=5))
def test_the_smoother_holds_still_through_float_residue_and_never_exceeds_capacity(
        capacity: float, demands: list[Demand], strategy: str, residue: float,
        ticks: list[float]) -> None:
    smoother = Smoother()
    first = allocate(capacity, demands, 0.0, strategy).kw
    assert smoother.update(capacity, first) == {d.session_id: first[d.session_id]
                                                for d in demands}
    # The same question again, or one a float residue away, changes no charger's power.
    assert smoother.update(capacity, first) == {}
    nudged = capacity * (1.0 + residue)
    assert smoother.update(nudged, allocate(nudged, demands, 0.0, strategy).kw) == {}
    # Whatever the later allocations, what is granted stays within the capacity and within
    # the threshold of the allocation; a session changes only by a real move of its own or when
    # the capacity forces it.
    for shrink in ticks:
        cap = capacity * (1.0 - shrink * 0.01)
        before = dict(smoother.granted)
        target = allocate(cap, demands, 0.0, strategy).kw
        changes = smoother.update(cap, target)
        assert math.fsum(smoother.granted.values()) <= cap + EPS
        for sid, kw in smoother.granted.items():
            assert abs(kw - target[sid]) < CHANGE_THRESHOLD_KW + EPS
            if sid in changes:
                assert changes[sid] == target[sid] != before[sid]
