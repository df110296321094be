"""Simulated EV charging at one substation: the authority on its own capacity.

Plain logic with an injected clock (`now`), so it is tested without waiting. A session draws its
power until its energy is delivered; the speed factor compresses time (60 = one simulated hour
per real minute). Ended sessions are kept for a while so clients can read how they ended, then
pruned so memory stays bounded however many sessions come and go.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

_FIT_EPSILON_KW = 1e-9
CHARGING, COMPLETED, STOPPED, CANCELLED = "charging", "completed", "stopped", "cancelled"


class OverCapacity(Exception):
    def __init__(self, load_kw: float, capacity_kw: float, requested_kw: float) -> None:
        self.load_kw, self.capacity_kw = load_kw, capacity_kw
        super().__init__(f"{requested_kw:g} kW does not fit: load {load_kw:g} kW of "
                         f"{capacity_kw:g} kW capacity")


class SessionConflict(Exception):
    """The session id exists with different values: not a retry of the same request."""


class SessionCancelled(Exception):
    """The session id was cancelled before it started: a late copy must not start it."""


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
    # Until when energy has been credited: not persisted, because a restarted substation
    # must not credit the time it was down.
    credited_at: float = field(default=-1.0, compare=False)

    def __post_init__(self) -> None:
        if self.credited_at < 0:
            self.credited_at = self.started_at

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        del body["credited_at"]
        return body

    def same_request(self, vehicle_id: str, power_kw: float, energy_kwh: float) -> bool:
        return (self.vehicle_id, self.power_kw, self.energy_kwh) == \
            (vehicle_id, power_kw, energy_kwh)


@dataclass(frozen=True)
class Admission:
    session: ChargingSession
    duplicate: bool


class SessionTable:
    def __init__(self, capacity_kw: float, speed_factor: float = 60.0,
                 retention_s: float = 600.0, max_ended: int = 100_000) -> None:
        self.capacity_kw = capacity_kw
        self.speed_factor = speed_factor
        self.retention_s = retention_s
        self.max_ended = max_ended
        self.active: dict[str, ChargingSession] = {}
        self.ended: OrderedDict[str, ChargingSession] = OrderedDict()
        self.load_kw = 0.0        # running total of active power, not re-summed per call
        self.delivered_total_kwh = 0.0

    def get(self, session_id: str) -> ChargingSession | None:
        return self.active.get(session_id) or self.ended.get(session_id)

    def admit(self, session_id: str, vehicle_id: str, power_kw: float, energy_kwh: float,
              now: float) -> Admission:
        """Start a session, or recognise a repeat of one; never exceed capacity."""
        existing = self.get(session_id)
        if existing is not None:
            if existing.state == CANCELLED:
                raise SessionCancelled(f"session {session_id} was cancelled")
            if not existing.same_request(vehicle_id, power_kw, energy_kwh):
                raise SessionConflict(f"session {session_id} exists with other values")
            return Admission(existing, duplicate=True)
        if self.load_kw + power_kw > self.capacity_kw + _FIT_EPSILON_KW:
            raise OverCapacity(self.load_kw, self.capacity_kw, power_kw)
        # No advance() here: that walks every session, on every request. A new session
        # accrues from its own start (see _deliver).
        session = ChargingSession(session_id, vehicle_id, power_kw, energy_kwh, 0.0, CHARGING,
                                  started_at=now)
        self.active[session_id] = session
        self.load_kw += power_kw
        return Admission(session, duplicate=False)

    def resume(self, session: ChargingSession, now: float) -> None:
        """Take back a session persisted before a restart (capacity is not re-checked: it was
        admitted under the same capacity). It charges again from `now`, not while it was down."""
        session.credited_at = now
        if session.state == CHARGING:
            self.active[session.session_id] = session
            self.load_kw += session.power_kw
        else:
            self._remember_ended(session)

    def stop(self, session_id: str, now: float) -> ChargingSession:
        """Stop charging (idempotent). An unknown id leaves a tombstone, so a late copy of a
        cancelled request cannot start a session under that id."""
        session = self.active.get(session_id)
        if session is not None:
            self._deliver(session, now)   # this session alone, up to the moment it stops
            self._end(session, STOPPED, now)
            return session
        ended = self.ended.get(session_id)
        if ended is not None:
            return ended
        tombstone = ChargingSession(session_id, "", 0.0, 0.0, 0.0, CANCELLED, now, now)
        self._remember_ended(tombstone)
        return tombstone

    def advance(self, now: float) -> list[ChargingSession]:
        """Deliver energy up to `now`; return the sessions that completed."""
        completed = [s for s in self.active.values() if self._deliver(s, now)]
        for session in completed:
            self._end(session, COMPLETED, now)
        self.prune(now)
        return completed

    def _deliver(self, session: ChargingSession, now: float) -> bool:
        """Credit `session` with energy up to `now`; True when its energy is complete."""
        since, session.credited_at = session.credited_at, max(now, session.credited_at)
        if now > since:
            hours = (now - since) * self.speed_factor / 3600.0
            delivered = min(session.energy_kwh,
                            session.delivered_kwh + session.power_kw * hours)
            self.delivered_total_kwh += delivered - session.delivered_kwh
            session.delivered_kwh = delivered
        return session.delivered_kwh >= session.energy_kwh

    def prune(self, now: float) -> None:
        while self.ended:
            oldest = next(iter(self.ended.values()))
            if len(self.ended) <= self.max_ended and \
                    now - (oldest.ended_at or now) <= self.retention_s:
                break
            self.ended.popitem(last=False)

    def _end(self, session: ChargingSession, state: str, now: float) -> None:
        del self.active[session.session_id]
        self.load_kw -= session.power_kw
        if not self.active:
            self.load_kw = 0.0    # no float drift survives an empty substation
        session.state, session.ended_at = state, now
        self._remember_ended(session)

    def _remember_ended(self, session: ChargingSession) -> None:
        self.ended[session.session_id] = session
        self.ended.move_to_end(session.session_id)
        if len(self.ended) > self.max_ended:
            self.ended.popitem(last=False)
