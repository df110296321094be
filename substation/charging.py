"""Simulated EV charging at one substation: the authority on its own capacity.

Plain logic with an injected clock (`now`), so it is tested without waiting. A session draws its
power until its energy is delivered; the speed factor compresses time (60 = one simulated hour
per real minute). Ended sessions are kept for a while so clients can read how they ended, then
pruned so memory stays bounded however many sessions come and go.

Fences make placement safe across retries (docs/design.md, "Placement protocol"): each copy of a
charge carries the `epoch` of the dispatch that sent it; `fence(id, epoch)` answers whether the
session is here and, if it is not, refuses every later copy with a lower epoch. A dispatch that
fenced every substation knows that no late copy of an older dispatch can start the session
anywhere, and may place it itself.

Durable before visible: a new session is first reserved (its power taken, so nothing admitted
meanwhile can exceed the capacity), saved, and only then confirmed; until then no answer, view,
fence or repeat shows it, so nothing is ever confirmed that a crash could still lose.

Adaptive power (issue 19): a session may carry `min_kw`, its floor (without one, its floor is its
`power_kw`, the requested power: today's fixed-power session). Admission commits floors: a
session is admitted when its floor fits beside the floors committed (`load_kw` is their sum, the
load the balancer's fit check reads, never above capacity unless restarted with less). What the
floors leave is shared by substation/allocation.py: each session draws `granted_kw` (between its
floor and `power_kw`), re-allocated whenever a session starts, ends or stops and on every tick,
passed through a Smoother so that a power moves only when the allocation really changes. Energy
is delivered, and ends are forecast, at `granted_kw`. While every session is fixed-power the
allocation is skipped: each one draws its `power_kw`, exactly as before.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gridlb.charge import FIT_TOLERANCE_KW
from substation.allocation import Demand, Smoother, allocate, floor_fits

CHARGING, COMPLETED, STOPPED = "charging", "completed", "stopped"
# Above this many sessions changing power at once, their ends are re-sorted together.
_MOVE_ENDS_ONE_BY_ONE = 32


class Refusal(Exception):
    """The substation will not start this session; `code` says why (gridlb.errors)."""

    code = "refused"


class OverCapacity(Refusal):
    code = "over_capacity"

    def __init__(self, load_kw: float, capacity_kw: float, requested_kw: float,
                 saving_kw: float = 0.0) -> None:
        self.load_kw, self.capacity_kw = load_kw, capacity_kw
        saving = f" (+{saving_kw:g} kW being saved)" if saving_kw > 0 else ""
        over = ("; above its capacity since it was restarted with less, it takes no new "
                "session until its load is under it") if load_kw > capacity_kw else ""
        super().__init__(f"{requested_kw:g} kW does not fit: load {load_kw:g} kW{saving} of "
                         f"{capacity_kw:g} kW capacity{over}")


class TooManySessions(Refusal):
    """The session cap bounds memory and per-tick work whatever the requested powers."""

    code = "too_many_sessions"


class SessionConflict(Refusal):
    """The session id exists with different values: not a retry of the same request."""

    code = "session_conflict"


class SessionFenced(Refusal):
    """A newer dispatch of this session fenced it: this copy is late and must not start it."""

    code = "session_fenced"


@dataclass
class ChargingSession:
    session_id: str
    vehicle_id: str
    power_kw: float
    energy_kwh: float
    delivered_kwh: float
    state: str
    started_at: float
    ended_at: float | None = None
    min_kw: float | None = None          # its floor; None: power_kw (fixed power)
    departure_at: float | None = None    # when the vehicle leaves (Unix seconds), if known
    # Its power now (substation/allocation.py); -1: not yet allocated, power_kw until then.
    granted_kw: float = field(default=-1.0, compare=False)
    # The epoch of the dispatch that admitted it, for the history (0: not known, resumed
    # from disk, where it is not kept). Not in its JSON.
    epoch: int = field(default=0, compare=False)
    # Until when energy has been credited: not persisted, because a restarted substation
    # must not credit the time it was down.
    credited_at: float = field(default=-1.0, compare=False)

    def __post_init__(self) -> None:
        if self.credited_at < 0:
            self.credited_at = self.started_at
        if self.granted_kw < 0:
            self.granted_kw = self.floor_kw

    @property
    def floor_kw(self) -> float:
        """The power committed to it at admission: min_kw, or power_kw without one."""
        return self.power_kw if self.min_kw is None else self.min_kw

    @property
    def flexible(self) -> bool:
        return self.floor_kw < self.power_kw

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        del body["credited_at"], body["epoch"]
        for optional in ("min_kw", "departure_at"):
            if body[optional] is None:
                del body[optional]
        return body

    def same_request(self, vehicle_id: str, power_kw: float, energy_kwh: float,
                     min_kw: float | None = None, departure_at: float | None = None) -> bool:
        return (self.vehicle_id, self.power_kw, self.energy_kwh, self.min_kw,
                self.departure_at) == (vehicle_id, power_kw, energy_kwh, min_kw, departure_at)


@dataclass(frozen=True)
class Admission:
    session: ChargingSession
    duplicate: bool


class SessionTable:
    def __init__(self, capacity_kw: float, speed_factor: float = 60.0,
                 retention_s: float = 600.0, max_ended: int = 100_000,
                 max_sessions: int = 10_000, fence_retention_s: float = 24 * 3600.0,
                 max_fences: int = 100_000, load_seq: int = 0, end_lag_s: float = 0.0) -> None:
        self.capacity_kw = capacity_kw
        self.speed_factor = speed_factor
        self.retention_s = retention_s
        self.max_ended = max_ended
        self.max_sessions = max_sessions
        self.fence_retention_s = fence_retention_s
        self.max_fences = max_fences
        self.active: dict[str, ChargingSession] = {}
        # Admitted, not yet on disk (reserve -> confirm or withdraw): their power is taken,
        # but nothing the substation reports shows them (durable before visible).
        self.saving: dict[str, ChargingSession] = {}
        self.saving_kw = 0.0
        self.ended: OrderedDict[str, ChargingSession] = OrderedDict()
        # Ended sessions past their retention: no longer shown (GET answers 404), but still the
        # answer to a fence or a late copy for as long as fences last. A key whose outcome stayed
        # unknown while this substation could not be reached (longer than the retention) is then
        # resolved to how its session ended, never charged a second time (docs/design.md).
        self.forgotten: OrderedDict[str, ChargingSession] = OrderedDict()
        # session id -> (lowest epoch still allowed to start it, when fenced), oldest first
        self.fences: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # Running totals over the charging sessions, not re-summed per call: their floors (the
        # committed load), the power asked for, and the power granted.
        self.load_kw = 0.0
        self.requested_kw = 0.0
        self.granted_kw = 0.0
        self._flexible = 0        # charging sessions whose floor is below their power
        self.smoother = Smoother()
        self.delivered_total_kwh = 0.0
        # Orders this substation's answers: a reading with sequence s includes every change
        # up to s. The service seeds it from the clock in ns, so it keeps growing across
        # restarts (fewer than one change per nanosecond).
        self.load_seq = load_seq
        # A session leaves the load at the first tick after its energy is delivered, up to one
        # tick late: its forecast end includes that lag, so a forecast never runs early.
        self.end_lag_s = end_lag_s
        # The charging sessions by end, kept sorted as they come and go (an end does not move
        # while a session charges: what it is credited, it has delivered), so that a forecast,
        # asked for on every answer, costs a few bisections, not a sort of every session.
        self._end_times: list[float] = []
        self._end_powers: list[float] = []
        self._end_ids: list[str] = []
        self._end_by_id: dict[str, float] = {}

    def _changed(self) -> None:
        self.load_seq += 1

    def get(self, session_id: str) -> ChargingSession | None:
        return self.active.get(session_id) or self.ended.get(session_id)

    def admit(self, session_id: str, vehicle_id: str, power_kw: float, energy_kwh: float,
              now: float, epoch: int = 1, min_kw: float | None = None,
              departure_at: float | None = None) -> Admission:
        """Start a session at once (`reserve` then `confirm`: for a table kept in memory only),
        or recognise a repeat of one (in whatever state it is now)."""
        admission = self.reserve(session_id, vehicle_id, power_kw, energy_kwh, now, epoch,
                                 min_kw, departure_at)
        if not admission.duplicate:
            self.confirm(session_id, now)
        return admission

    def reserve(self, session_id: str, vehicle_id: str, power_kw: float, energy_kwh: float,
                now: float, epoch: int = 1, min_kw: float | None = None,
                departure_at: float | None = None) -> Admission:
        """Take the capacity for a new session, invisibly until `confirm` (once it is on disk)
        or `withdraw` (its save failed); or recognise a repeat of one (in whatever state it is
        now). Never exceed capacity (counting the sessions being saved) or the session cap;
        never start a fenced copy."""
        if session_id in self.saving:
            raise RuntimeError(f"session {session_id} is being saved: wait for its save first")
        existing = self.get(session_id) or self.forgotten.get(session_id)
        if existing is not None:
            if not existing.same_request(vehicle_id, power_kw, energy_kwh, min_kw,
                                         departure_at):
                raise SessionConflict(f"session {session_id} exists with other values")
            return Admission(existing, duplicate=True)
        fence = self.fences.get(session_id)
        if fence is not None and epoch < fence[0]:
            raise SessionFenced(f"session {session_id}: epoch {epoch} is older than the fence "
                                f"at epoch {fence[0]}; a newer dispatch owns it")
        if len(self.active) + len(self.saving) >= self.max_sessions:
            saving = f" (with {len(self.saving)} being saved)" if self.saving else ""
            raise TooManySessions(f"{len(self.active) + len(self.saving)} sessions are "
                                  f"charging{saving}, the most this substation takes")
        floor = power_kw if min_kw is None else min_kw
        if not floor_fits(self.capacity_kw, (self.load_kw, self.saving_kw), floor):
            raise OverCapacity(self.load_kw, self.capacity_kw, floor, self.saving_kw)
        # No advance() here: that walks every session, on every request. A new session
        # accrues from its own start (see _deliver).
        session = ChargingSession(session_id, vehicle_id, power_kw, energy_kwh, 0.0, CHARGING,
                                  started_at=now, min_kw=min_kw, departure_at=departure_at,
                                  epoch=epoch)
        self.saving[session_id] = session
        self.saving_kw += floor
        return Admission(session, duplicate=False)

    def confirm(self, session_id: str, now: float | None = None) -> ChargingSession:
        """The reserved session is on disk: from now on it charges, counts in the load and is
        seen by every view, fence and repeat. `now` (default: its start): when the others'
        power is re-allocated to make room for it."""
        session = self._unreserve(session_id)
        # It charges from its admission (`started_at`, on disk): its forecast end and the
        # energy credited at the next tick count from there, as they would without a disk.
        self._add(session)
        self.fences.pop(session_id, None)
        self._changed()
        self.reallocate(session.started_at if now is None else now, tick=False)
        return session

    def _add(self, session: ChargingSession) -> None:
        self.active[session.session_id] = session
        self.load_kw += session.floor_kw
        self.requested_kw += session.power_kw
        self.granted_kw += session.granted_kw
        self._flexible += session.flexible
        self._track_end(session)

    def reallocate(self, now: float, tick: bool = True) -> None:
        """Share the capacity among the charging sessions again (substation/allocation.py);
        a session whose power changes is first credited up to `now` at its old power. Skipped
        while every session is fixed-power and draws its power_kw, unless the substation is
        over its capacity (restarted with less): then fixed sessions too are granted whole in
        the order of admission, and those that no longer fit wait at 0 kW. Between two ticks
        (`tick=False`: an admission or a stop) only a newcomer's floor may move the others,
        each at most once until the next tick (Smoother.between_ticks)."""
        if not self._flexible and not self.over_capacity \
                and self.granted_kw >= self.requested_kw - FIT_TOLERANCE_KW:
            return
        demands = [Demand(s.session_id, s.floor_kw, s.power_kw,
                          max(0.0, s.energy_kwh - s.delivered_kwh), s.departure_at,
                          s.started_at) for s in self.active.values()]
        allocation = allocate(self.capacity_kw, demands, now, speed_factor=self.speed_factor)
        changes = self.smoother.update(self.capacity_kw, allocation.kw) if tick else \
            self.smoother.between_ticks(self.capacity_kw, allocation.kw,
                                        {s.session_id: s.floor_kw for s in self.active.values()})
        # A new level moves every shared session's end: re-sorting them all at once beats
        # moving each one in the sorted lists (quadratic in the number of sessions).
        one_by_one = len(changes) <= _MOVE_ENDS_ONE_BY_ONE
        for session_id, kw in changes.items():
            session = self.active[session_id]
            self._deliver(session, now)
            if one_by_one:
                self._untrack_end(session_id)
            self.granted_kw += kw - session.granted_kw
            session.granted_kw = kw
            if one_by_one:
                self._track_end(session)
        if not one_by_one:
            self._rebuild_ends()

    def _rebuild_ends(self) -> None:
        ends = sorted((self.ends_at(s), s.floor_kw, s.session_id) for s in self.active.values())
        self._end_times = [end for end, _, _ in ends]
        self._end_powers = [kw for _, kw, _ in ends]
        self._end_ids = [sid for _, _, sid in ends]
        self._end_by_id = {sid: end for end, _, sid in ends}

    @property
    def curtailed_kw(self) -> float:
        """Power asked for and not granted, summed over the charging sessions."""
        return max(0.0, self.requested_kw - self.granted_kw)

    def will_complete_by_departure(self, session: ChargingSession) -> bool | None:
        """Whether the energy asked for is delivered by its departure at its power now (None:
        no departure given, or not charging)."""
        if session.departure_at is None or session.state != CHARGING:
            return None
        return self.ends_at(session) - self.end_lag_s <= session.departure_at

    def withdraw(self, session_id: str) -> None:
        """The reserved session could not be saved: it never started, its capacity is free."""
        self._unreserve(session_id)

    def _unreserve(self, session_id: str) -> ChargingSession:
        session = self.saving.pop(session_id)
        self.saving_kw -= session.floor_kw
        if not self.saving:
            self.saving_kw = 0.0    # no float drift survives an empty reservation list
        return session

    @property
    def over_capacity(self) -> bool:
        """Above its capacity: only when restarted with a lower one than its sessions took.
        It keeps them (drawing no more than its capacity: reallocate) and admits nothing until
        the load is under the capacity again."""
        return self.load_kw > self.capacity_kw + FIT_TOLERANCE_KW

    def ends_at(self, session: ChargingSession) -> float:
        """When the session leaves the load (real time) if it runs to its declared energy:
        from what it has been credited, at its granted power, at this substation's speed
        (never, while it is paused at 0 kW)."""
        remaining_kwh = max(0.0, session.energy_kwh - session.delivered_kwh)
        if session.granted_kw <= 0.0:
            return float("inf") if remaining_kwh > 0 else session.credited_at + self.end_lag_s
        return session.credited_at + remaining_kwh / session.granted_kw * 3600.0 \
            / self.speed_factor + self.end_lag_s

    def forecast_kw(self, now: float, horizons_s: Sequence[float]) -> list[float]:
        """The load expected `h` seconds after `now` for each h in `horizons_s` (ascending) if
        every session charging now runs to its declared energy and nothing new arrives: the
        substation's future as a handful of numbers, whatever the number of sessions.
        Non-increasing in h; a session that stops early makes it pessimistic; one already past
        its end is kept at every horizon (pessimistic too); only a forecast that is read late
        can be optimistic, which the capacity check still catches."""
        # A session already past its end (its tick is late) is not forecast to end: when it
        # will is not known, and late is the safe side.
        times, powers = self._end_times, self._end_powers
        first = next_end = bisect_right(times, now)
        forecast: list[float] = []
        ended_kw = 0.0
        for horizon in horizons_s:
            by = bisect_right(times, now + horizon, next_end)
            ended_kw += sum(powers[next_end:by])
            next_end = by
            forecast.append(0.0 if by == len(times) and not first
                            else max(0.0, self.load_kw - ended_kw))
        return forecast

    def _track_end(self, session: ChargingSession) -> None:
        if session.session_id in self._end_by_id:   # resumed twice: one end, the newest
            self._untrack_end(session.session_id)
        end = self._end_by_id[session.session_id] = self.ends_at(session)
        at = bisect_right(self._end_times, end)
        self._end_times.insert(at, end)
        self._end_powers.insert(at, session.floor_kw)   # the load counts floors
        self._end_ids.insert(at, session.session_id)

    def _untrack_end(self, session_id: str) -> None:
        # Every charging session is tracked, from admit or resume until it ends.
        end = self._end_by_id.pop(session_id)
        # The first of the sessions ending at that instant, then this one among them.
        at = self._end_ids.index(session_id, bisect_left(self._end_times, end))
        del self._end_times[at], self._end_powers[at], self._end_ids[at]

    def fence(self, session_id: str, epoch: int, now: float) -> ChargingSession | None:
        """The session if it is here (in any state); otherwise None, and from now on copies
        with an epoch below `epoch` are refused (fences only rise). A session being saved
        must be waited for first: it is neither here yet nor absent."""
        if session_id in self.saving:
            raise RuntimeError(f"session {session_id} is being saved: wait for its save first")
        existing = self.get(session_id) or self.forgotten.get(session_id)
        if existing is not None:
            return existing
        current = self.fences.pop(session_id, (0, now))
        self.fences[session_id] = (max(current[0], epoch), now)
        self._prune_fences(now)
        return None

    def resume(self, session: ChargingSession, now: float) -> None:
        """Take back a session persisted before a restart. Capacity is not re-checked: it was
        admitted, and is kept even if the substation now has less (`over_capacity` then says
        so, and nothing new is admitted until the load is under it). It charges again from
        `now`, not while it was down."""
        session.credited_at = now
        if session.state == CHARGING:
            self._add(session)
            self._changed()
        else:
            self._remember_ended(session)

    def resume_fence(self, session_id: str, epoch: int, at: float) -> None:
        self.fences[session_id] = (epoch, at)

    def stop(self, session_id: str, now: float) -> ChargingSession | None:
        """Stop charging (idempotent): the session as it is now, or None if it is unknown."""
        session = self.active.get(session_id)
        if session is not None:
            self._deliver(session, now)   # this session alone, up to the moment it stops
            self._end(session, STOPPED, now)
            self.reallocate(now, tick=False)   # what it drew goes to the others at the tick
            return session
        return self.ended.get(session_id)

    def advance(self, now: float) -> list[ChargingSession]:
        """Deliver energy up to `now`; return the sessions that completed."""
        completed = [s for s in self.active.values() if self._deliver(s, now)]
        for session in completed:
            self._end(session, COMPLETED, now)
        self.reallocate(now)
        self.prune(now)
        return completed

    def _deliver(self, session: ChargingSession, now: float) -> bool:
        """Credit `session` with energy up to `now`; True when its energy is complete."""
        since, session.credited_at = session.credited_at, max(now, session.credited_at)
        if now > since:
            hours = (now - since) * self.speed_factor / 3600.0
            delivered = min(session.energy_kwh,
                            session.delivered_kwh + session.granted_kw * hours)
            self.delivered_total_kwh += delivered - session.delivered_kwh
            session.delivered_kwh = delivered
        return session.delivered_kwh >= session.energy_kwh

    def prune(self, now: float) -> None:
        self._prune_fences(now)
        while self.ended:
            oldest = next(iter(self.ended.values()))
            if len(self.ended) <= self.max_ended and \
                    now - (oldest.ended_at or now) <= self.retention_s:
                break
            self._forget(self.ended.popitem(last=False)[1])
        while self.forgotten:
            oldest = next(iter(self.forgotten.values()))
            if len(self.forgotten) <= self.max_fences and \
                    now - (oldest.ended_at or now) <= self.fence_retention_s:
                break
            self.forgotten.popitem(last=False)

    def _forget(self, session: ChargingSession) -> None:
        self.forgotten[session.session_id] = session
        self.forgotten.move_to_end(session.session_id)

    def _end(self, session: ChargingSession, state: str, now: float) -> None:
        del self.active[session.session_id]
        self._untrack_end(session.session_id)
        self.load_kw -= session.floor_kw
        self.requested_kw -= session.power_kw
        self.granted_kw -= session.granted_kw
        self._flexible -= session.flexible
        if not self.active:   # no float drift survives an empty substation
            self.load_kw = self.requested_kw = self.granted_kw = 0.0
        self._changed()
        session.state, session.ended_at = state, now
        self._remember_ended(session)

    def _remember_ended(self, session: ChargingSession) -> None:
        self.forgotten.pop(session.session_id, None)
        self.ended[session.session_id] = session
        self.ended.move_to_end(session.session_id)
        if len(self.ended) > self.max_ended:
            self._forget(self.ended.popitem(last=False)[1])

    def _prune_fences(self, now: float) -> None:
        # A fence only has to outlive the retries of its request (the ingress keeps a key a day).
        while self.fences:
            oldest_at = next(iter(self.fences.values()))[1]
            if len(self.fences) <= self.max_fences and now - oldest_at <= self.fence_retention_s:
                break
            self.fences.popitem(last=False)
