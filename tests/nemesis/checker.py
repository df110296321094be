"""The nemesis's checker: what must hold over a whole run, from the substations' histories and the
clients' answers. Plain functions over plain data (no service code), so that each invariant is
tested on hand-made histories (tests/unit/test_nemesis_checker.py).

The history is each substation's `history` table (substation/store.py): `start` (with the
capacity it runs with from then on), `admit`, `stop`, `complete`, each written in the same
transaction as the session's row, so it is exactly as durable as the sessions. A session's
*interval* at a substation runs from its admission to its stop or completion there (or to the
end of the run: a substation restarted resumes its sessions, so a crash ends nothing).

Each logical request of a client has a unique `vehicle_id`, which every substation records with
the session: so the history tells which sessions a request started, even those whose answer was
lost, and whatever key (or none) it was sent with.

The invariants:
- `double_booking`: a session id is never active on two substations at once.
- `energy`: the energy delivered per session, over every admission of it, is at most what was
  asked; and a session is admitted once (admitted again, its energy would be counted twice).
- `untrue_answer`: every `200` that is not a replay names a substation that had admitted the
  session before the answer; when it says `charging`, the session had not ended there before the
  request was sent.
- `two_sessions`: one session per request: all the `200`s of one key name one session id, and
  the history holds at most one session for each request (its vehicle id).
- `lost_session`: every session a client was told about (`200`) is in the history of the
  substation named, and one still charging by the history is in that substation's final state.
- `over_capacity`: no admission takes a substation's committed load above its capacity at that
  moment (a substation restarted with less capacity than its sessions take may stay above it,
  but admits nothing until it is under). The committed load is the sum of the floors: a
  session's `min_kw` (adaptive power: it may draw more when there is room, and its power
  changing is not a new admission), or its power without one.
- `false_refusal`: an answer saying nothing was started is true: for a key
  (`DEFINITE_NO_START`), no session of it had been admitted before the answer, and none is
  admitted after it unless the client sent the request again; without a key, a request that
  only ever heard such answers or `NOT_SENT` ones started nothing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

EPSILON = 1e-6
START, ADMIT, STOP, COMPLETE = "start", "admit", "stop", "complete"
ENDS = (STOP, COMPLETE)
# Definite answers: nothing was started for this request, by this attempt or any before it
# under the same key (a retry of a key resolves where its session is first).
DEFINITE_NO_START = frozenset({"no_capacity", "no_substations", "deadline_exceeded",
                               "exceeds_capacity"})
# Nothing was sent by this attempt (`connect_failed`: the client could not connect;
# `store_unavailable`: the ingress could not reach its store before sending), which says nothing
# of an earlier attempt under the same key.
NOT_SENT = frozenset({"balancer_unavailable", "connect_failed", "store_unavailable"})


@dataclass(frozen=True)
class Event:
    """One row of a substation's history."""

    seq: int
    at: float
    substation: str
    event: str
    session_id: str | None = None
    vehicle_id: str | None = None
    power_kw: float | None = None
    energy_kwh: float | None = None
    delivered_kwh: float | None = None
    epoch: int | None = None
    capacity_kw: float | None = None
    min_kw: float | None = None         # an admission's floor; None: its power_kw

    @property
    def floor_kw(self) -> float:
        """What the admission committed: its floor, or its power without one."""
        return (self.power_kw or 0.0) if self.min_kw is None else self.min_kw


@dataclass(frozen=True)
class Attempt:
    """One HTTP exchange of a client: what it sent when, and what it heard when.
    `status` 0: no HTTP answer (`error` says why: `connect_failed` means nothing was sent)."""

    sent_at: float
    answered_at: float
    status: int
    error: str = ""
    replayed: bool = False
    session_id: str | None = None
    substation: str | None = None
    state: str | None = None


@dataclass
class Request:
    """One logical charge request: every attempt of it (re-sent with its key, if it has one)."""

    id: str
    vehicle_id: str
    requested_kw: float
    energy_kwh: float
    key: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # Adaptive power: its floor, and when the driver leaves (RFC 3339, set at the first send
    # `departure_in_s` after it; every retry sends the same).
    min_kw: float | None = None
    departure_in_s: float | None = None
    departure_at: str | None = None


@dataclass(frozen=True)
class FinalSession:
    """A session in a substation's state file after the run."""

    substation: str
    session_id: str
    state: str
    delivered_kwh: float


@dataclass(frozen=True)
class Interval:
    session_id: str
    substation: str
    admit: Event
    end: Event | None = None

    @property
    def start_at(self) -> float:
        return self.admit.at

    @property
    def end_at(self) -> float:
        return math.inf if self.end is None else self.end.at

    def overlaps(self, other: Interval) -> bool:
        return self.start_at < other.end_at and other.start_at < self.end_at


@dataclass(frozen=True)
class Violation:
    invariant: str
    subject: str
    detail: str
    excerpt: tuple[str, ...] = ()


def intervals(events: Iterable[Event]) -> list[Interval]:
    """Each admission with the stop or completion that ended it (in each substation's order)."""
    by_sub: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_sub[event.substation].append(event)
    found: list[Interval] = []
    for sub_events in by_sub.values():
        open_: dict[str, int] = {}
        for event in sorted(sub_events, key=lambda e: e.seq):
            if event.session_id is None:
                continue
            if event.event == ADMIT:
                open_[event.session_id] = len(found)
                found.append(Interval(event.session_id, event.substation, event))
            elif event.event in ENDS and event.session_id in open_:
                i = open_.pop(event.session_id)
                found[i] = Interval(event.session_id, event.substation, found[i].admit, event)
    return sorted(found, key=lambda i: (i.start_at, i.substation))


def describe_event(e: Event, t0: float = 0.0) -> str:
    if e.event == START:
        return f"  history {e.at - t0:+9.3f} s  {e.substation:<8} start    capacity " \
               f"{e.capacity_kw:g} kW"
    return (f"  history {e.at - t0:+9.3f} s  {e.substation:<8} {e.event:<8} {e.session_id} "
            f"({e.vehicle_id}, {e.power_kw:g} kW"
            f"{'' if e.min_kw is None else f' (floor {e.min_kw:g} kW)'}, asked "
            f"{e.energy_kwh:g} kWh, delivered "
            f"{e.delivered_kwh:g} kWh, epoch {e.epoch})")


def describe_attempt(request: Request, a: Attempt, t0: float = 0.0) -> str:
    key = f"key {request.key}" if request.key else "no key"
    heard = f"{a.status} {a.error}".strip() if a.status != 200 else \
        f"200 {a.state} {a.session_id} at {a.substation}" + (" (replay)" if a.replayed else "")
    return f"  client  {a.sent_at - t0:+9.3f} s -> {a.answered_at - t0:+9.3f} s  " \
           f"{request.id} ({key}, {request.vehicle_id}): {heard}"


def _excerpt(spans: Iterable[Interval], t0: float, extra: Iterable[str] = ()) -> tuple[str, ...]:
    lines = []
    for span in spans:
        lines.append(describe_event(span.admit, t0))
        if span.end is not None:
            lines.append(describe_event(span.end, t0))
        else:
            lines.append(f"  (still active at {span.substation} at the end of the run)")
    return (*lines, *extra)


def _answers_for(session_id: str, spans: Sequence[Interval], requests: Sequence[Request],
                 t0: float) -> list[str]:
    """What the clients heard about a session: the attempts of the request that asked for it."""
    vehicles = {s.admit.vehicle_id for s in spans if s.session_id == session_id}
    return [describe_attempt(r, a, t0) for r in requests if r.vehicle_id in vehicles
            for a in r.attempts]


def check_double_booking(spans: Sequence[Interval], t0: float = 0.0,
                         requests: Sequence[Request] = ()) -> list[Violation]:
    by_session: dict[str, list[Interval]] = defaultdict(list)
    for span in spans:
        by_session[span.session_id].append(span)
    found = []
    for session_id, mine in by_session.items():
        pairs = [(a, b) for i, a in enumerate(mine) for b in mine[i + 1:]
                 if a.substation != b.substation and a.overlaps(b)]
        if pairs:
            a, b = pairs[0]
            found.append(Violation(
                "double_booking", session_id,
                f"active at {a.substation} and {b.substation} at once from "
                f"{max(a.start_at, b.start_at) - t0:+.3f} s",
                _excerpt(mine, t0, _answers_for(session_id, mine, requests, t0))))
    return found


def check_energy(spans: Sequence[Interval], final: Sequence[FinalSession], t0: float = 0.0,
                 requests: Sequence[Request] = ()) -> list[Violation]:
    last = {(f.substation, f.session_id): f.delivered_kwh for f in final}
    by_session: dict[str, list[Interval]] = defaultdict(list)
    for span in spans:
        by_session[span.session_id].append(span)
    found = []
    for session_id, mine in by_session.items():
        asked = mine[0].admit.energy_kwh or 0.0
        delivered = sum(
            (span.end.delivered_kwh or 0.0) if span.end is not None
            else last.get((span.substation, session_id), 0.0) for span in mine)
        if len(mine) > 1:
            found.append(Violation(
                "energy", session_id,
                f"admitted {len(mine)} times ({', '.join(s.substation for s in mine)}): its "
                f"energy is counted once per admission, {delivered:g} of {asked:g} kWh asked",
                _excerpt(mine, t0, _answers_for(session_id, mine, requests, t0))))
        elif delivered > asked + EPSILON:
            found.append(Violation("energy", session_id,
                                   f"delivered {delivered:g} kWh of {asked:g} kWh asked",
                                   _excerpt(mine, t0)))
    return found


def check_capacity(events: Sequence[Event], t0: float = 0.0) -> list[Violation]:
    by_sub: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_sub[event.substation].append(event)
    found = []
    for sub, sub_events in sorted(by_sub.items()):
        capacity = math.inf
        active: dict[str, Event] = {}
        for event in sorted(sub_events, key=lambda e: e.seq):
            if event.event == START and event.capacity_kw is not None:
                capacity = event.capacity_kw
            elif event.event == ADMIT and event.session_id is not None:
                active[event.session_id] = event
                load = sum(e.floor_kw for e in active.values())
                if load > capacity + EPSILON:
                    found.append(Violation(
                        "over_capacity", sub,
                        f"admitting {event.session_id} took its floors to {load:g} kW of "
                        f"{capacity:g} kW at {event.at - t0:+.3f} s",
                        tuple(describe_event(e, t0) for e in active.values())))
            elif event.event in ENDS and event.session_id is not None:
                active.pop(event.session_id, None)
    return found


def check_answers_true(requests: Sequence[Request], spans: Sequence[Interval],
                       t0: float = 0.0) -> list[Violation]:
    where: dict[tuple[str, str], list[Interval]] = defaultdict(list)
    for span in spans:
        where[(span.session_id, span.substation)].append(span)
    found = []
    for request in requests:
        for a in request.attempts:
            if a.status != 200 or a.replayed or a.session_id is None:
                continue
            there = where.get((a.session_id, str(a.substation)), [])
            admitted = [s for s in there if s.start_at <= a.answered_at]
            if a.state == "charging":
                true = any(s.end_at >= a.sent_at for s in admitted)
                claim = "charging"
            else:
                true = bool(admitted)
                claim = f"{a.state} (so admitted)"
            if not true:
                found.append(Violation(
                    "untrue_answer", request.id,
                    f"answered 200 {claim} at {a.substation} for {a.session_id} at "
                    f"{a.answered_at - t0:+.3f} s, which the history contradicts",
                    _excerpt([s for s in spans if s.session_id == a.session_id], t0,
                             [describe_attempt(request, a, t0)])))
    return found


def sessions_of(request: Request, spans: Sequence[Interval]) -> list[Interval]:
    return [s for s in spans if s.admit.vehicle_id == request.vehicle_id]


def check_one_session_per_request(requests: Sequence[Request], spans: Sequence[Interval],
                                  t0: float = 0.0) -> list[Violation]:
    by_vehicle: dict[str, list[Interval]] = defaultdict(list)
    for span in spans:
        by_vehicle[str(span.admit.vehicle_id)].append(span)
    found = []
    for request in requests:
        told = {a.session_id for a in request.attempts if a.status == 200 and a.session_id}
        started = {s.session_id for s in by_vehicle.get(request.vehicle_id, [])}
        if len(told) > 1 or len(started) > 1:
            answers = [describe_attempt(request, a, t0) for a in request.attempts]
            found.append(Violation(
                "two_sessions", request.id,
                f"{'key ' + request.key if request.key else 'a request without a key'}: told "
                f"{len(told)} session id(s), {len(started)} started ({', '.join(sorted(started))})",
                _excerpt(by_vehicle.get(request.vehicle_id, []), t0, answers)))
    return found


def check_no_lost_sessions(requests: Sequence[Request], spans: Sequence[Interval],
                           final: Sequence[FinalSession], t0: float = 0.0) -> list[Violation]:
    held = {(f.substation, f.session_id) for f in final}
    found = []
    for request in requests:
        for a in request.attempts:
            if a.status != 200 or a.session_id is None:
                continue
            there = [s for s in spans
                     if s.session_id == a.session_id and s.substation == a.substation]
            if not there:
                detail = f"{a.session_id} was answered at {a.substation} but is not in its history"
            elif there[-1].end is None and (str(a.substation), a.session_id) not in held:
                detail = f"{a.session_id} is charging at {a.substation} by its history but not " \
                         "in its state file"
            else:
                continue
            found.append(Violation("lost_session", request.id, detail,
                                   _excerpt(there, t0, [describe_attempt(request, a, t0)])))
            break
    return found


def check_refusals_true(requests: Sequence[Request], spans: Sequence[Interval],
                        t0: float = 0.0) -> list[Violation]:
    found = []
    for request in requests:
        mine = sessions_of(request, spans)
        if not mine:
            continue
        answers = [describe_attempt(request, b, t0) for b in request.attempts]
        if request.key is not None:
            for a in request.attempts:
                if a.error not in DEFINITE_NO_START:
                    continue
                sent_again = any(b.sent_at > a.answered_at for b in request.attempts)
                before = [s for s in mine if s.start_at <= a.answered_at]
                after = [s for s in mine if s.start_at > a.answered_at and not sent_again]
                if before or after:
                    what = "had been started before it" if before else \
                        "was started after it, with the request not sent again"
                    found.append(Violation(
                        "false_refusal", request.id,
                        f"key {request.key}: answered {a.status} {a.error} (nothing started) at "
                        f"{a.answered_at - t0:+.3f} s, but its session {what}",
                        _excerpt(mine, t0, answers)))
                    break
        elif request.attempts and all(a.error in DEFINITE_NO_START | NOT_SENT
                                      for a in request.attempts):
            found.append(Violation(
                "false_refusal", request.id,
                "a request without a key heard only that nothing was started or sent ("
                f"{', '.join(sorted({a.error for a in request.attempts}))}) but started "
                f"{', '.join(sorted({s.session_id for s in mine}))}",
                _excerpt(mine, t0, answers)))
    return found


def check(events: Sequence[Event], requests: Sequence[Request],
          final: Sequence[FinalSession], t0: float = 0.0) -> list[Violation]:
    """Every violation of every invariant, in the order of the module's docstring."""
    spans = intervals(events)
    return [*check_double_booking(spans, t0, requests),
            *check_energy(spans, final, t0, requests),
            *check_answers_true(requests, spans, t0),
            *check_one_session_per_request(requests, spans, t0),
            *check_no_lost_sessions(requests, spans, final, t0),
            *check_capacity(events, t0), *check_refusals_true(requests, spans, t0)]


INVARIANTS = ("double_booking", "energy", "untrue_answer", "two_sessions", "lost_session",
              "over_capacity", "false_refusal")
