"""The nemesis's checker on hand-made histories: each invariant is caught, a clean run passes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.nemesis.checker import (
    Attempt,
    Event,
    FinalSession,
    Request,
    Violation,
    check,
    intervals,
)


@dataclass
class History:
    """Events numbered as a substation's history table numbers them."""

    events: list[Event] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def start(self, sub: str, at: float, capacity: float) -> History:
        self.events.append(Event(next(self.seq), at, sub, "start", capacity_kw=capacity))
        return self

    def add(self, event: str, sub: str, at: float, session: str, vehicle: str = "",
            kw: float = 10.0, asked: float = 5.0, delivered: float = 0.0,
            floor: float | None = None) -> History:
        self.events.append(Event(next(self.seq), at, sub, event, session,
                                 vehicle or f"ev-{session}", kw, asked, delivered, 1,
                                 min_kw=floor))
        return self


def charged(at: float, session: str, sub: str, sent: float | None = None,
            replayed: bool = False) -> Attempt:
    return Attempt(at - 0.1 if sent is None else sent, at, 200, "", replayed, session, sub,
                   "charging")


def refused(sent: float, at: float, error: str, status: int = 503) -> Attempt:
    return Attempt(sent, at, status, error)


def request(session: str, *attempts: Attempt, key: str | None = "k") -> Request:
    return Request(f"req-{session}", f"ev-{session}", 10.0, 5.0, key, list(attempts))


def kinds(violations: list[Violation]) -> list[str]:
    return [v.invariant for v in violations]


def clean_history() -> History:
    h = History().start("a", 0.0, 30.0).start("b", 0.0, 30.0)
    h.add("admit", "a", 1.0, "s1").add("admit", "b", 1.5, "s2")
    h.add("complete", "a", 4.0, "s1", delivered=5.0)
    # s1 ended at a, so s3 may take its place; s2 is stopped at b.
    h.add("admit", "a", 4.5, "s3").add("stop", "b", 5.0, "s2", delivered=2.0)
    return h


def test_a_clean_run_has_no_violation() -> None:
    h = clean_history()
    requests = [request("s1", charged(1.2, "s1", "a")),
                request("s2", refused(0.5, 1.0, "outcome_unknown"), charged(1.6, "s2", "b")),
                request("s3", charged(4.6, "s3", "a"), charged(6.0, "s3", "a", replayed=True),
                        key=None),
                request("s4", refused(2.0, 2.1, "no_capacity"))]
    final = [FinalSession("a", "s3", "charging", 1.0)]
    assert check(h.events, requests, final) == []


def test_a_session_active_at_two_substations_at_once_is_a_double_booking() -> None:
    h = clean_history().add("admit", "b", 3.0, "s1")     # s1 is still charging at a
    violations = check(h.events, [], [])
    assert "double_booking" in kinds(violations)
    v = next(v for v in violations if v.invariant == "double_booking")
    assert v.subject == "s1" and "active at a and b at once from +3.000 s" in v.detail
    assert any("admit" in line and " b " in line for line in v.excerpt)
    # Once it has ended at a, it being admitted at b is no double booking (but energy twice).
    later = clean_history().add("admit", "b", 4.2, "s1")
    assert kinds(check(later.events, [], [])) == ["energy"]


def test_a_session_admitted_twice_or_given_more_than_asked_breaks_the_energy_rule() -> None:
    again = clean_history().add("admit", "a", 6.0, "s1")     # the same id, after it completed
    v = check(again.events, [], [])
    assert kinds(v) == ["energy"] and "admitted 2 times (a, a)" in v[0].detail
    over = History().start("a", 0.0, 30.0).add("admit", "a", 1.0, "s1", asked=5.0)
    over.add("stop", "a", 2.0, "s1", asked=5.0, delivered=5.5)
    v = check(over.events, [], [])
    assert kinds(v) == ["energy"] and "delivered 5.5 kWh of 5 kWh asked" in v[0].detail
    # A session still charging at the end counts what its state file says it delivered.
    running = History().start("a", 0.0, 30.0).add("admit", "a", 1.0, "s1", asked=5.0)
    assert check(running.events, [], [FinalSession("a", "s1", "charging", 4.0)]) == []
    assert kinds(check(running.events, [], [FinalSession("a", "s1", "charging", 6.0)])) == \
        ["energy"]


def test_a_charging_answer_the_history_contradicts_is_untrue() -> None:
    h = clean_history()
    # Answered before the substation admitted it; at a substation that never had it; after
    # it had ended there (the request sent after the end).
    early = request("s1", charged(0.9, "s1", "a", sent=0.5))
    elsewhere = request("s2", charged(2.0, "s2", "a"))
    ended = request("s3", charged(5.2, "s1", "a", sent=4.1))
    violations = check(h.events, [early, elsewhere, ended], [])
    untrue = [v for v in violations if v.invariant == "untrue_answer"]
    assert [v.subject for v in untrue] == ["req-s1", "req-s2", "req-s3"]
    assert "answered 200 charging at a for s1 at +0.900 s" in untrue[0].detail
    # A replay repeats an answer that was true when first given: not judged again.
    replay = request("s1", charged(1.2, "s1", "a"), charged(9.0, "s1", "a", replayed=True))
    assert check(h.events, [replay], []) == []


def test_one_request_with_two_sessions_is_caught_from_answers_and_from_the_history() -> None:
    h = clean_history()
    told_two = request("s1", charged(1.2, "s1", "a"), charged(1.7, "s2", "b"))
    assert "two_sessions" in kinds(check(h.events, [told_two], []))
    # A request without a key re-sent after an answer that hid a started session: the
    # history holds two sessions for its vehicle, though the client heard of one.
    h.add("admit", "b", 2.0, "s9", vehicle="ev-s1")
    resent = request("s1", refused(0.9, 1.1, "balancer_unavailable"),
                     charged(2.1, "s9", "b"), key=None)
    v = [v for v in check(h.events, [resent], []) if v.invariant == "two_sessions"]
    assert len(v) == 1 and "told 1 session id(s), 2 started (s1, s9)" in v[0].detail


def test_an_answered_session_missing_from_the_history_or_the_final_state_is_lost() -> None:
    h = clean_history()
    ghost = request("s7", charged(2.0, "s7", "a"))
    v = [v for v in check(h.events, [ghost], []) if v.invariant == "lost_session"]
    assert len(v) == 1 and "s7 was answered at a but is not in its history" in v[0].detail
    # s3 is charging by the history: the final state must hold it.
    held = request("s3", charged(4.6, "s3", "a"))
    assert kinds(check(h.events, [held], [])) == ["lost_session"]
    assert check(h.events, [held], [FinalSession("a", "s3", "charging", 1.0)]) == []


def test_adaptive_admissions_count_their_floors_not_the_power_they_asked_for() -> None:
    """Two 11 kW sessions with floors of 3.7 kW fit 20 kW (they share it); a third floor of
    15 kW does not: 22.4 kW of floors."""
    h = History().start("a", 0.0, 20.0)
    h.add("admit", "a", 1.0, "s1", kw=11.0, floor=3.7)
    h.add("admit", "a", 2.0, "s2", kw=11.0, floor=3.7)
    assert check(h.events, [], []) == []
    h.add("admit", "a", 3.0, "s3", kw=22.0, floor=15.0)
    v = check(h.events, [], [])
    assert kinds(v) == ["over_capacity"] and "took its floors to 22.4 kW of 20 kW" in v[0].detail
    assert any("(floor 15 kW)" in line for line in v[0].excerpt)


def test_an_admission_above_the_capacity_is_caught_but_a_lowered_capacity_is_allowed() -> None:
    h = History().start("a", 0.0, 20.0)
    h.add("admit", "a", 1.0, "s1", kw=11.0).add("admit", "a", 2.0, "s2", kw=11.0)
    v = check(h.events, [], [])
    assert kinds(v) == ["over_capacity"] and "took its floors to 22 kW of 20 kW" in v[0].detail
    # Restarted with less capacity than its sessions take: allowed until it admits again.
    lowered = History().start("a", 0.0, 30.0)
    lowered.add("admit", "a", 1.0, "s1", kw=11.0).add("admit", "a", 2.0, "s2", kw=11.0)
    lowered.start("a", 3.0, 15.0)
    assert check(lowered.events, [], []) == []
    lowered.add("admit", "a", 4.0, "s3", kw=3.7)
    assert kinds(check(lowered.events, [], [])) == ["over_capacity"]
    lowered = History().start("a", 0.0, 30.0)
    lowered.add("admit", "a", 1.0, "s1", kw=11.0).add("admit", "a", 2.0, "s2", kw=11.0)
    lowered.start("a", 3.0, 15.0).add("stop", "a", 4.0, "s1").add("admit", "a", 5.0, "s3",
                                                                    kw=3.7)
    assert check(lowered.events, [], []) == []


def test_nothing_started_must_be_true() -> None:
    h = clean_history()
    # A key told no_capacity while its session charged at a.
    while_charging = request("s1", refused(2.0, 2.2, "outcome_unknown"),
                             refused(2.5, 2.6, "no_capacity"))
    v = check(h.events, [while_charging], [])
    assert kinds(v) == ["false_refusal"]
    assert "answered 503 no_capacity (nothing started) at +2.600 s, but its session had been " \
           "started before it" in v[0].detail
    # A key told no_capacity, never sent again, and its session started after.
    late = request("s3", refused(4.0, 4.2, "no_capacity"))
    v = check(h.events, [late], [])
    assert kinds(v) == ["false_refusal"] and "was started after it" in v[0].detail
    # ... unless the client sent it again after that answer (that attempt may start it).
    again = request("s3", refused(4.0, 4.2, "no_capacity"), charged(4.6, "s3", "a", sent=4.4))
    assert check(h.events, [again], [FinalSession("a", "s3", "charging", 1.0)]) == []
    # Without a key: only "nothing sent" / "nothing started" heard, yet a session started.
    keyless = request("s2", refused(1.0, 1.1, "balancer_unavailable"),
                      refused(1.3, 1.4, "connect_failed"), key=None)
    v = check(h.events, [keyless], [])
    assert kinds(v) == ["false_refusal"] and "heard only that nothing was started or sent " \
        "(balancer_unavailable, connect_failed) but started s2" in v[0].detail
    # An ambiguous answer leaves it open: no claim was made.
    ambiguous = request("s2", refused(1.0, 1.1, "outcome_unknown"), key=None)
    assert check(h.events, [ambiguous], []) == []


def test_intervals_pair_each_admission_with_its_end_in_history_order() -> None:
    h = History().start("a", 0.0, 30.0)
    h.add("admit", "a", 1.0, "s1").add("stop", "a", 2.0, "s1").add("admit", "a", 3.0, "s1")
    spans = intervals(h.events)
    assert [(s.start_at, s.end_at) for s in spans] == [(1.0, 2.0), (3.0, float("inf"))]


# A model of correct substations: each admits only what fits, sessions never move, each ends
# once. Whatever it does, the checker must find nothing; one planted double booking is found.
@st.composite
def correct_runs(draw: st.DrawFn) -> tuple[list[Event], list[Request]]:
    subs = ["a", "b", "c"]
    h = History()
    for sub in subs:
        h.start(sub, 0.0, 30.0)
    active: dict[str, dict[str, float]] = {s: {} for s in subs}
    requests = []
    t = 0.0
    for i in range(draw(st.integers(0, 25))):
        t += draw(st.floats(0.01, 2.0))
        sub = draw(st.sampled_from(subs))
        ends_one: bool = draw(st.booleans())
        if active[sub] and ends_one:
            session = draw(st.sampled_from(sorted(active[sub])))
            kw = active[sub].pop(session)
            h.add(draw(st.sampled_from(["stop", "complete"])), sub, t, session, kw=kw,
                  delivered=draw(st.floats(0.0, 5.0)))
            continue
        kw = draw(st.sampled_from([3.7, 7.4, 11.0, 22.0]))
        session = f"s{i}"
        if sum(active[sub].values()) + kw <= 30.0:
            active[sub][session] = kw
            h.add("admit", sub, t, session, kw=kw)
            requests.append(request(session, charged(t + 0.05, session, sub, sent=t - 0.05)))
        else:
            requests.append(request(session, refused(t - 0.05, t, "no_capacity")))
    return h.events, requests


@settings(max_examples=60, deadline=None)
@given(correct_runs())
def test_a_correct_run_never_violates_and_a_planted_double_booking_is_found(
        run: tuple[list[Event], list[Request]]) -> None:
    events, requests = run
    final = [FinalSession(e.substation, str(e.session_id), "charging", 0.0)
             for e in events if e.event == "admit"]
    assert check(events, requests, final) == []
    charging = [s for s in intervals(events) if s.end is None]
    if charging:
        victim = charging[0]
        other = "b" if victim.substation == "a" else "a"
        planted = Event(10_000, victim.start_at + 0.01, other, "admit", victim.session_id,
                        victim.admit.vehicle_id, 1.4, 5.0, 0.0, 2)
        assert "double_booking" in kinds(check([*events, planted], requests, final))
