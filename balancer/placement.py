"""The placement protocol: where a session goes, and what its client may be told.

Invariants (docs/design.md, "Placement protocol"; tests/unit/test_placement_properties.py checks
them against every fault a substation can show):
  I1  a session id is active on at most one substation;
  I2  `PLACED` means the session was charging at that substation in the answer we acted on;
  I3  a session may exist somewhere only while its outcome is reported as `UNKNOWN` (or the
      dispatch was superseded by a newer one): every other outcome is definite.

How: every copy of a charge carries the `epoch` of its dispatch (the ingress raises it on every
retry of an unresolved session). A substation's fence at epoch n refuses every later copy with
an epoch below n (substation/charging.py). So:
- A retry of a session that may exist somewhere (`resolve`) first fences every substation at its
  own epoch. If one holds the session, that is the answer; if one cannot be reached, the outcome
  stays unknown; only when all answer "absent" is it placed, and no late copy of an older
  dispatch can start it anywhere any more.
- A forward that ends ambiguously (timeout or reset after sending, 5xx) is followed by a fence
  of that substation at epoch + 1: if the session was admitted the fence reports it (placed); if
  not, no late copy of this attempt can start it there any more ("absent": try the next
  substation); if the fence gets no clear answer either, the outcome is unknown.
- Every other answer is definite for the one copy that was sent (a refusal, a connection that
  was refused), so moving on leaves no copy behind that could start the session later.

This module is plain code over two Protocols (`SubstationClient`, `Chooser`), so every fault is a
fake in a unit test. The one rule for what a substation's answer means is `judge_charge` /
`judge_fence`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gridlb.charge import SessionCharge
from gridlb.errors import ErrorCode

# A call needs at least this much of the deadline left to be worth making.
MIN_CALL_S = 0.05


@dataclass(frozen=True)
class Reply:
    """One substation answer as the transport saw it."""

    sent: bool                 # False: nothing reached the substation (connection refused)
    status: int = 0            # 0: sent but no HTTP answer (timeout, reset)
    body: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    @property
    def error(self) -> str:
        return str(self.body.get("error", ""))


class Verdict(str, enum.Enum):
    """What one answer means for this placement."""

    ACCEPTED = "accepted"      # the session is charging there
    ENDED = "ended"            # the session was there and has ended
    ABSENT = "absent"          # not there, and fenced: no copy of this attempt can start it
    REFUSED = "refused"        # a definite no from this substation (full): try the next
    FAILED = "failed"          # it did not take the request (down, 401, 429): try the next
    REJECTED = "rejected"      # a no every substation would give (invalid, conflict): stop
    SUPERSEDED = "superseded"  # a newer dispatch owns this session: stop
    AMBIGUOUS = "ambiguous"    # it may or may not have admitted the session


_SUBSTATION_FULL = {ErrorCode.OVER_CAPACITY.value, ErrorCode.TOO_MANY_SESSIONS.value}
_ENDED_STATES = {"completed", "stopped"}


def _judge_session_state(reply: Reply) -> Verdict:
    state = reply.body.get("state")
    if state == "charging":
        return Verdict.ACCEPTED
    if state in _ENDED_STATES:
        return Verdict.ENDED
    return Verdict.AMBIGUOUS


def judge_charge(reply: Reply) -> Verdict:
    """The meaning of a substation's answer to POST /charge. The only place it is decided."""
    if not reply.sent:
        return Verdict.FAILED
    status = reply.status
    if status == 0 or status >= 500:
        return Verdict.AMBIGUOUS          # the handler may have admitted it before failing
    if status == 200:
        return _judge_session_state(reply)
    if status == 409:
        if reply.error in _SUBSTATION_FULL:
            return Verdict.REFUSED
        if reply.error == ErrorCode.SESSION_FENCED:
            return Verdict.SUPERSEDED
        return Verdict.REJECTED
    if status in (401, 403, 404, 405, 408, 429):
        return Verdict.FAILED             # refused before admission: nothing was started
    if 400 <= status < 500:
        return Verdict.REJECTED
    return Verdict.AMBIGUOUS


def judge_fence(reply: Reply) -> Verdict:
    """The meaning of an answer to POST /sessions/{id}/fence: only a clear answer counts."""
    if reply.sent and reply.status == 200:
        if reply.body.get("state") == "absent":
            return Verdict.ABSENT
        return _judge_session_state(reply)
    return Verdict.AMBIGUOUS


class SubstationClient(Protocol):
    async def charge(self, instance: str, charge: SessionCharge, timeout_s: float) -> Reply: ...

    async def fence(self, instance: str, session_id: str, epoch: int, timeout_s: float
                    ) -> Reply: ...


class Chooser(Protocol):
    """The routing decision and the bookkeeping around it, as the protocol sees them."""

    def choose(self, exclude: Collection[str]) -> str | None:
        """The next substation (instance) to try, or None when none can take the charge."""

    def reserve(self, instance: str) -> None:
        """About to forward there: count the kW as pending."""

    def accepted(self, instance: str, reply: Reply) -> None:
        """It admitted the session (or holds it): confirm the pending kW."""

    def released(self, instance: str, reply: Reply | None, failed: bool) -> None:
        """It did not take the session: drop the pending kW; `failed` counts for ejection."""


class ResolveOnly:
    """The Chooser of a resolve that places nothing (the ingress's reconciler): it never
    chooses, and a session found where it was placed is already in that substation's load."""

    def choose(self, exclude: Collection[str]) -> str | None:
        return None

    def reserve(self, instance: str) -> None:
        raise AssertionError("a resolve-only placement forwards nothing")

    def accepted(self, instance: str, reply: Reply) -> None:
        pass

    def released(self, instance: str, reply: Reply | None, failed: bool) -> None:
        pass


class OutcomeKind(str, enum.Enum):
    PLACED = "placed"
    ENDED = "ended"
    NO_CAPACITY = "no_capacity"
    UNKNOWN = "unknown"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    DEADLINE = "deadline"
    ABSENT = "absent"          # resolve only: the session is nowhere, fenced everywhere asked


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    instance: str | None = None          # PLACED/ENDED: where; REJECTED: who said no
    reply: Reply | None = None
    may_be_at: tuple[str, ...] = ()      # UNKNOWN: where the session may exist
    attempts: int = 0
    tried: tuple[str, ...] = ()
    # A resolve ran and every substation asked answered "absent" (fenced): the evidence the
    # ingress needs before it may stop treating an earlier dispatch as possibly placed.
    resolved: bool = False

    @property
    def session_may_exist(self) -> bool:
        """False only when the session is definitely nowhere (I3)."""
        return self.kind in (OutcomeKind.PLACED, OutcomeKind.ENDED, OutcomeKind.UNKNOWN,
                             OutcomeKind.SUPERSEDED)


class Deadline:
    """The time a dispatch may take, from the caller's budget; the clock is injected."""

    def __init__(self, budget_s: float, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.at = clock() + budget_s

    def remaining(self) -> float:
        return self.at - self.clock()

    def timeout(self, cap_s: float) -> float | None:
        """The timeout for one call, or None when too little time is left to make it."""
        left = self.remaining()
        return None if left < MIN_CALL_S else min(cap_s, left)


class Placement:
    """One dispatch of one session: RESOLVING (only for a retry) -> CHOOSING -> FORWARDING
    [-> FENCING] -> CHOOSING ... until an outcome."""

    def __init__(self, charge: SessionCharge, substations: SubstationClient, chooser: Chooser,
                 deadline: Deadline, *, forward_timeout_s: float, max_attempts: int) -> None:
        self.charge = charge
        self.substations = substations
        self.chooser = chooser
        self.deadline = deadline
        self.forward_timeout_s = forward_timeout_s
        self.max_attempts = max_attempts
        self.tried: list[str] = []
        self.attempts = 0

        self.resolved = False

    def _outcome(self, kind: OutcomeKind, instance: str | None = None,
                 reply: Reply | None = None, may_be_at: Sequence[str] = ()) -> Outcome:
        return Outcome(kind, instance, reply, tuple(may_be_at), self.attempts, tuple(self.tried),
                       self.resolved)

    async def run(self, resolve_at: Sequence[str] | None = None, *, place: bool = True
                  ) -> Outcome:
        """Place the charge. `resolve_at`: None for a session never dispatched before (or known
        to exist nowhere); otherwise every substation an earlier dispatch may have reached. An
        empty `resolve_at` checks nothing, so the outcome stays UNKNOWN: a resolve that asked no
        one has no evidence that the session is absent. `place=False` only resolves: ABSENT
        when the session is nowhere (and fenced everywhere asked)."""
        if resolve_at is not None:
            found = await self._resolve(resolve_at)
            if found is not None:
                return found
            self.resolved = True
            if not place:
                return self._outcome(OutcomeKind.ABSENT)
        elif not place:
            raise ValueError("place=False needs the substations to resolve at")
        while self.attempts < self.max_attempts:
            instance = self.chooser.choose(self.tried)
            if instance is None:
                break
            if self.deadline.timeout(self.forward_timeout_s) is None:
                return self._outcome(OutcomeKind.DEADLINE)
            self.attempts += 1
            self.tried.append(instance)
            self.chooser.reserve(instance)
            verdict, reply = await self._forward(instance)
            outcome = self._settle(instance, verdict, reply)
            if outcome is not None:
                return outcome
        return self._outcome(OutcomeKind.NO_CAPACITY)

    async def _resolve(self, instances: Sequence[str]) -> Outcome | None:
        """RESOLVING: fence every substation at this dispatch's epoch; None when the session is
        absent everywhere (and can no longer be started by any older dispatch)."""
        timeout = self.deadline.timeout(self.forward_timeout_s)
        if timeout is None or not instances:
            return self._outcome(OutcomeKind.UNKNOWN, may_be_at=instances)
        replies = await asyncio.gather(*(
            self.substations.fence(i, self.charge.session_id, self.charge.epoch, timeout)
            for i in instances))
        unknown: list[str] = []
        for instance, reply in zip(instances, replies, strict=True):
            verdict = judge_fence(reply)
            if verdict is Verdict.ACCEPTED:
                self.chooser.accepted(instance, reply)
                return self._outcome(OutcomeKind.PLACED, instance, reply)
            if verdict is Verdict.ENDED:
                return self._outcome(OutcomeKind.ENDED, instance, reply)
            if verdict is not Verdict.ABSENT:
                unknown.append(instance)
        if unknown:
            return self._outcome(OutcomeKind.UNKNOWN, may_be_at=unknown)
        return None

    async def _forward(self, instance: str) -> tuple[Verdict, Reply | None]:
        """FORWARDING, and on ambiguity FENCING: a verdict that is AMBIGUOUS only when the
        session may really be there."""
        timeout = self.deadline.timeout(self.forward_timeout_s)
        if timeout is None:
            return Verdict.FAILED, None          # nothing was sent
        reply = await self.substations.charge(instance, self.charge, timeout)
        verdict = judge_charge(reply)
        if verdict is not Verdict.AMBIGUOUS:
            return verdict, reply
        # The copy may still be on its way, or admitted with its answer lost. Fencing above
        # this epoch settles both: a late copy is refused, an admitted session is reported.
        timeout = self.deadline.timeout(self.forward_timeout_s)
        if timeout is None:
            return Verdict.AMBIGUOUS, reply
        fence = await self.substations.fence(instance, self.charge.session_id,
                                             self.charge.epoch + 1, timeout)
        return judge_fence(fence), fence

    def _settle(self, instance: str, verdict: Verdict, reply: Reply | None) -> Outcome | None:
        """What a verdict means for the dispatch: an outcome, or None to try the next."""
        if verdict is Verdict.ACCEPTED:
            assert reply is not None
            self.chooser.accepted(instance, reply)
            return self._outcome(OutcomeKind.PLACED, instance, reply)
        failed = verdict in (Verdict.FAILED, Verdict.ABSENT, Verdict.AMBIGUOUS)
        self.chooser.released(instance, reply, failed=failed)
        if verdict in (Verdict.REFUSED, Verdict.FAILED, Verdict.ABSENT):
            return None
        if verdict is Verdict.ENDED:
            return self._outcome(OutcomeKind.ENDED, instance, reply)
        if verdict is Verdict.REJECTED:
            return self._outcome(OutcomeKind.REJECTED, instance, reply)
        if verdict is Verdict.SUPERSEDED:
            return self._outcome(OutcomeKind.SUPERSEDED, instance, reply)
        return self._outcome(OutcomeKind.UNKNOWN, may_be_at=[instance])
