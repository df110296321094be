"""The placement state machine step by step, against scripted fake substations.

`test_placement_properties.py` checks the invariants over random fault sequences; these name
each rule of balancer/placement.py once, so that breaking one fails a test that says which.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import pytest

from balancer.placement import (
    MIN_CALL_S,
    Deadline,
    Outcome,
    OutcomeKind,
    Placement,
    Reply,
    Verdict,
    judge_charge,
    judge_fence,
)
from gridlb.charge import SessionCharge
from gridlb.errors import ErrorCode

CHARGE = SessionCharge("ev-1", 11.0, 30.0, session_id="sess-1", epoch=4)


def ok(state: str = "charging", **body: Any) -> Reply:
    return Reply(sent=True, status=200, body={"session_id": "sess-1", "state": state, **body})


def error(status: int, code: str = "") -> Reply:
    return Reply(sent=True, status=status, body={"error": code} if code else {})


NOT_SENT = Reply(sent=False, detail="connection refused")
NO_ANSWER = Reply(sent=True, detail="timeout")
ABSENT = ok("absent")


def case_id(value: object) -> str:
    if isinstance(value, Reply):
        said = value.body.get("error") or value.body.get("state") or "empty"
        return f"{value.status}-{said}" if value.sent else "not-sent"
    return str(getattr(value, "value", value))


@pytest.mark.parametrize(("reply", "verdict"), [
    (NOT_SENT, Verdict.FAILED),
    (NO_ANSWER, Verdict.AMBIGUOUS),
    (error(500, ErrorCode.INTERNAL_ERROR), Verdict.AMBIGUOUS),
    (error(502), Verdict.AMBIGUOUS),
    (error(503), Verdict.AMBIGUOUS),
    (ok("charging"), Verdict.ACCEPTED),
    (ok("completed"), Verdict.ENDED),
    (ok("stopped"), Verdict.ENDED),
    (ok("absent"), Verdict.AMBIGUOUS),      # not an answer to a charge: do not guess
    (Reply(sent=True, status=200), Verdict.AMBIGUOUS),
    (error(409, ErrorCode.OVER_CAPACITY), Verdict.REFUSED),
    (error(409, ErrorCode.TOO_MANY_SESSIONS), Verdict.REFUSED),
    (error(409, ErrorCode.SESSION_FENCED), Verdict.SUPERSEDED),
    (error(409, ErrorCode.SESSION_CONFLICT), Verdict.REJECTED),
    (error(401, ErrorCode.UNAUTHORIZED), Verdict.FAILED),
    (error(403), Verdict.FAILED),
    (error(404), Verdict.FAILED),
    (error(405), Verdict.FAILED),
    (error(408), Verdict.FAILED),
    (error(429), Verdict.FAILED),
    (error(400, ErrorCode.MALFORMED_JSON), Verdict.REJECTED),
    (error(413), Verdict.REJECTED),
    (error(422, ErrorCode.INVALID_REQUEST), Verdict.REJECTED),
    (error(499), Verdict.REJECTED),
    (error(302), Verdict.AMBIGUOUS),
], ids=case_id)
def test_what_each_answer_to_a_charge_means(reply: Reply, verdict: Verdict) -> None:
    assert judge_charge(reply) is verdict


@pytest.mark.parametrize(("reply", "verdict"), [
    (ABSENT, Verdict.ABSENT),
    (ok("charging"), Verdict.ACCEPTED),
    (ok("completed"), Verdict.ENDED),
    (ok("stopped"), Verdict.ENDED),
    (Reply(sent=True, status=200), Verdict.AMBIGUOUS),
    (NOT_SENT, Verdict.AMBIGUOUS),           # no fence happened: the copy may still land
    (NO_ANSWER, Verdict.AMBIGUOUS),
    (Reply(sent=True, status=500, body={"state": "absent"}), Verdict.AMBIGUOUS),
    (Reply(sent=True, status=404, body={"state": "absent"}), Verdict.AMBIGUOUS),
    (Reply(sent=False, status=200, body={"state": "absent"}), Verdict.AMBIGUOUS),
], ids=case_id)
def test_only_a_clear_answer_to_a_fence_counts(reply: Reply, verdict: Verdict) -> None:
    assert judge_fence(reply) is verdict


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Substations:
    """Scripted answers per instance: a list of replies, one per call, for charge and fence."""

    def __init__(self, charges: dict[str, list[Reply]] | None = None,
                 fences: dict[str, list[Reply]] | None = None, clock: Clock | None = None,
                 call_s: float = 0.0) -> None:
        self.charges = charges or {}
        self.fences = fences or {}
        self.clock = clock
        self.call_s = call_s           # how long each call takes on the clock
        self.calls: list[tuple[str, str, int, float]] = []   # (op, instance, epoch, timeout)

    def _took(self) -> None:
        if self.clock is not None:
            self.clock.now += self.call_s

    async def charge(self, instance: str, charge: SessionCharge, timeout_s: float) -> Reply:
        self.calls.append(("charge", instance, charge.epoch, timeout_s))
        self._took()
        return self.charges[instance].pop(0)

    async def fence(self, instance: str, session_id: str, epoch: int, timeout_s: float
                    ) -> Reply:
        assert session_id == CHARGE.session_id
        self.calls.append(("fence", instance, epoch, timeout_s))
        self._took()
        return self.fences[instance].pop(0)


class Chooser:
    """Prefers instances in the given order; records what the placement told it."""

    def __init__(self, order: Sequence[str]) -> None:
        self.order = list(order)
        self.excluded: list[list[str]] = []
        self.log: list[tuple[str, str, Any]] = []
        self.released_replies: list[Reply | None] = []

    def choose(self, exclude: Collection[str]) -> str | None:
        self.excluded.append(sorted(exclude))
        return next((i for i in self.order if i not in exclude), None)

    def reserve(self, instance: str) -> None:
        self.log.append(("reserve", instance, None))

    def accepted(self, instance: str, reply: Reply) -> None:
        self.log.append(("accepted", instance, reply.body.get("state")))

    def released(self, instance: str, reply: Reply | None, failed: bool) -> None:
        self.log.append(("released", instance, failed))
        self.released_replies.append(reply)


async def place(substations: Substations, order: Sequence[str] = ("a", "b", "c"), *,
                resolve_at: Sequence[str] | None = None, budget_s: float = 10.0,
                max_attempts: int = 3,
                clock: Clock | None = None, chooser: Chooser | None = None) -> Outcome:
    placement = Placement(CHARGE, substations, chooser or Chooser(order),
                          Deadline(budget_s, clock or Clock()), forward_timeout_s=3.0,
                          max_attempts=max_attempts)
    return await placement.run(resolve_at)


async def test_the_first_choice_that_accepts_places_the_session() -> None:
    subs = Substations({"a": [ok()]})
    chooser = Chooser(["a", "b"])
    outcome = await place(subs, chooser=chooser)
    assert (outcome.kind, outcome.instance, outcome.attempts, outcome.tried) == \
        (OutcomeKind.PLACED, "a", 1, ("a",))
    assert outcome.reply == ok()
    assert chooser.log == [("reserve", "a", None), ("accepted", "a", "charging")]
    assert subs.calls == [("charge", "a", 4, 3.0)]


async def test_a_refusal_moves_on_and_is_not_counted_as_a_failure() -> None:
    subs = Substations({"a": [error(409, ErrorCode.OVER_CAPACITY)], "b": [ok()]})
    chooser = Chooser(["a", "b"])
    outcome = await place(subs, chooser=chooser)
    assert (outcome.kind, outcome.instance, outcome.attempts, outcome.tried) == \
        (OutcomeKind.PLACED, "b", 2, ("a", "b"))
    assert ("released", "a", False) in chooser.log
    # The refusal (with the load it reports) reaches the bookkeeping.
    assert chooser.released_replies == [error(409, ErrorCode.OVER_CAPACITY)]
    assert chooser.excluded == [[], ["a"]]      # what was tried is not chosen again


async def test_a_substation_that_did_not_take_the_request_counts_as_failed() -> None:
    subs = Substations({"a": [NOT_SENT], "b": [ok()]})
    chooser = Chooser(["a", "b"])
    outcome = await place(subs, chooser=chooser)
    assert outcome.kind is OutcomeKind.PLACED and outcome.instance == "b"
    assert ("released", "a", True) in chooser.log
    assert [c[0] for c in subs.calls] == ["charge", "charge"]   # no fence: nothing was sent


@pytest.mark.parametrize("ambiguous", [NO_ANSWER, error(500), error(503)],
                         ids=["no-answer", "500", "503"])
async def test_an_ambiguous_forward_is_fenced_above_its_epoch_then_moves_on(
        ambiguous: Reply) -> None:
    subs = Substations({"a": [ambiguous], "b": [ok()]}, {"a": [ABSENT]})
    chooser = Chooser(["a", "b"])
    outcome = await place(subs, chooser=chooser)
    assert [c[:3] for c in subs.calls] == [("charge", "a", 4), ("fence", "a", 5),
                                           ("charge", "b", 4)]
    assert outcome.kind is OutcomeKind.PLACED and outcome.instance == "b"
    assert ("released", "a", True) in chooser.log


async def test_a_fence_that_finds_the_session_places_it_there() -> None:
    subs = Substations({"a": [NO_ANSWER]}, {"a": [ok(load_kw=11.0)]})
    chooser = Chooser(["a", "b"])
    outcome = await place(subs, chooser=chooser)
    assert (outcome.kind, outcome.instance, outcome.attempts) == (OutcomeKind.PLACED, "a", 1)
    assert outcome.reply is not None and outcome.reply.body["load_kw"] == 11.0
    assert chooser.log == [("reserve", "a", None), ("accepted", "a", "charging")]


async def test_a_fence_without_a_clear_answer_leaves_the_outcome_unknown() -> None:
    subs = Substations({"a": [NO_ANSWER]}, {"a": [NO_ANSWER]})
    outcome = await place(subs)
    assert (outcome.kind, outcome.may_be_at, outcome.tried) == \
        (OutcomeKind.UNKNOWN, ("a",), ("a",))
    assert outcome.session_may_exist


async def test_a_fence_that_finds_the_session_ended_reports_it_ended() -> None:
    subs = Substations({"a": [NO_ANSWER]}, {"a": [ok("completed")]})
    outcome = await place(subs)
    assert (outcome.kind, outcome.instance) == (OutcomeKind.ENDED, "a")


@pytest.mark.parametrize(("reply", "kind"), [
    (error(422, ErrorCode.INVALID_REQUEST), OutcomeKind.REJECTED),
    (error(409, ErrorCode.SESSION_CONFLICT), OutcomeKind.REJECTED),
    (error(409, ErrorCode.SESSION_FENCED), OutcomeKind.SUPERSEDED),
    (ok("stopped"), OutcomeKind.ENDED),
])
async def test_an_answer_every_substation_would_give_stops_the_placement(
        reply: Reply, kind: OutcomeKind) -> None:
    subs = Substations({"a": [reply], "b": [ok()]})
    outcome = await place(subs)
    assert (outcome.kind, outcome.instance, outcome.attempts) == (kind, "a", 1)
    assert outcome.reply == reply
    assert [c[1] for c in subs.calls] == ["a"]


async def test_at_most_max_attempts_substations_are_tried() -> None:
    full = error(409, ErrorCode.OVER_CAPACITY)
    subs = Substations({i: [full] for i in "abcd"})
    outcome = await place(subs, "abcd", max_attempts=3)
    assert (outcome.kind, outcome.attempts, outcome.tried) == \
        (OutcomeKind.NO_CAPACITY, 3, ("a", "b", "c"))
    assert not outcome.session_may_exist


async def test_nothing_to_choose_is_no_capacity_without_an_attempt() -> None:
    outcome = await place(Substations(), order=())
    assert (outcome.kind, outcome.attempts, outcome.tried) == (OutcomeKind.NO_CAPACITY, 0, ())


async def test_no_call_is_made_without_time_left_for_it() -> None:
    subs = Substations({"a": [ok()]})
    outcome = await place(subs, budget_s=MIN_CALL_S / 2)
    assert (outcome.kind, outcome.attempts) == (OutcomeKind.DEADLINE, 0)
    assert subs.calls == [] and not outcome.session_may_exist


async def test_each_call_gets_only_the_time_that_is_left() -> None:
    clock = Clock()
    subs = Substations({"a": [NO_ANSWER], "b": [ok()]}, {"a": [ABSENT]}, clock=clock,
                       call_s=1.5)
    outcome = await place(subs, budget_s=4.0, clock=clock)
    assert outcome.kind is OutcomeKind.PLACED
    assert [c[3] for c in subs.calls] == [3.0, 2.5, 1.0]


async def test_an_ambiguous_forward_with_no_time_left_to_fence_is_unknown() -> None:
    clock = Clock()
    subs = Substations({"a": [NO_ANSWER]}, clock=clock, call_s=1.0)
    outcome = await place(subs, budget_s=1.0 + MIN_CALL_S / 2, clock=clock)
    assert (outcome.kind, outcome.may_be_at) == (OutcomeKind.UNKNOWN, ("a",))
    assert [c[0] for c in subs.calls] == ["charge"]


async def test_the_deadline_stops_moving_on_to_the_next_substation() -> None:
    clock = Clock()
    subs = Substations({"a": [error(409, ErrorCode.OVER_CAPACITY)], "b": [ok()]}, clock=clock,
                       call_s=1.0)
    outcome = await place(subs, budget_s=1.0 + MIN_CALL_S / 2, clock=clock)
    assert (outcome.kind, outcome.attempts, outcome.tried) == (OutcomeKind.DEADLINE, 1, ("a",))


async def test_a_retry_fences_every_substation_at_its_own_epoch_first() -> None:
    subs = Substations({"a": [ok()]}, {i: [ABSENT] for i in "abc"})
    chooser = Chooser("abc")
    outcome = await place(subs, resolve_at="abc", chooser=chooser)
    assert sorted(subs.calls[:3]) == [("fence", i, 4, 3.0) for i in "abc"]
    assert subs.calls[3][:2] == ("charge", "a")
    assert outcome.kind is OutcomeKind.PLACED and outcome.attempts == 1


async def test_a_retry_that_finds_the_session_reports_where_without_charging() -> None:
    subs = Substations(fences={"a": [ABSENT], "b": [ok()], "c": [NO_ANSWER]})
    chooser = Chooser("abc")
    outcome = await place(subs, resolve_at="abc", chooser=chooser)
    assert (outcome.kind, outcome.instance, outcome.attempts) == (OutcomeKind.PLACED, "b", 0)
    assert outcome.reply == ok()
    assert chooser.log == [("accepted", "b", "charging")]
    assert all(c[0] == "fence" for c in subs.calls)


async def test_a_retry_that_finds_the_session_ended_reports_it_ended() -> None:
    subs = Substations(fences={"a": [ok("stopped")], "b": [ABSENT]})
    outcome = await place(subs, resolve_at="ab")
    assert (outcome.kind, outcome.instance, outcome.reply) == \
        (OutcomeKind.ENDED, "a", ok("stopped"))


async def test_a_retry_with_a_substation_that_cannot_answer_stays_unknown() -> None:
    subs = Substations(fences={"a": [ABSENT], "b": [NOT_SENT], "c": [error(500)]})
    outcome = await place(subs, resolve_at="abc")
    assert (outcome.kind, outcome.may_be_at, outcome.attempts) == \
        (OutcomeKind.UNKNOWN, ("b", "c"), 0)
    assert all(c[0] == "fence" for c in subs.calls)


async def test_a_retry_without_time_to_fence_stays_unknown_everywhere() -> None:
    subs = Substations()
    outcome = await place(subs, resolve_at="ab", budget_s=MIN_CALL_S / 2)
    assert (outcome.kind, outcome.may_be_at) == (OutcomeKind.UNKNOWN, ("a", "b"))
    assert subs.calls == []


@pytest.mark.parametrize(("kind", "may_exist"), [
    (OutcomeKind.PLACED, True), (OutcomeKind.ENDED, True), (OutcomeKind.UNKNOWN, True),
    (OutcomeKind.SUPERSEDED, True), (OutcomeKind.NO_CAPACITY, False),
    (OutcomeKind.REJECTED, False), (OutcomeKind.DEADLINE, False),
])
def test_only_definite_outcomes_say_the_session_is_nowhere(kind: OutcomeKind,
                                                          may_exist: bool) -> None:
    assert Outcome(kind).session_may_exist is may_exist


def test_a_deadline_gives_each_call_the_lesser_of_its_cap_and_what_is_left() -> None:
    clock = Clock()
    deadline = Deadline(2.0, clock)
    assert deadline.timeout(3.0) == 2.0 and deadline.timeout(1.0) == 1.0
    clock.now = 2.0 - MIN_CALL_S
    assert deadline.timeout(3.0) == pytest.approx(MIN_CALL_S)
    clock.now = 2.0 - MIN_CALL_S / 2
    assert deadline.timeout(3.0) is None
    assert deadline.remaining() == pytest.approx(MIN_CALL_S / 2)
    clock.now = 0.0
    assert Deadline(MIN_CALL_S, clock).timeout(3.0) == MIN_CALL_S   # just enough is enough
