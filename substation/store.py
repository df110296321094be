"""Sessions and fences on disk, so a restarted substation resumes them.

A session is committed (fsync'd, see gridlb/durable.py) before its admission is answered, and a
fence before the fence is answered: a confirmed session and a promise to refuse late copies both
survive a crash of the process or of the machine. Delivered energy is saved in slices every few
seconds; a crash loses at most those seconds of progress, never a session.

With a history (`--history`, for the nemesis's checker, tests/nemesis/) every admission, stop
and completion is also appended to the `history` table in the same transaction as the session's
row, so the history is exactly as durable as the sessions: what it says happened, happened, and
what a crash took back never appears in it. It is never pruned (a test's record, not for
production).

Schema versions (PRAGMA user_version): 1 the first release's sessions and fences; 2 adds
adaptive power's `min_kw`, `departure_at` and `granted_kw` to `sessions`; 3 adds `min_kw` (an
admission's floor) to the `history`. A file of an older
version gains the columns it lacks when opened (NULL in old rows: fixed-power sessions, as they
were); nothing is ever dropped, so an older substation can still read a newer file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from gridlb.durable import Durability, GroupCommitDB
from substation.charging import ChargingSession

# History events: the substation (re)started with a capacity; a session was admitted, stopped,
# or completed (its energy delivered).
START, ADMIT, STOP, COMPLETE = "start", "admit", "stop", "complete"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    vehicle_id TEXT NOT NULL,
    power_kw REAL NOT NULL,
    energy_kwh REAL NOT NULL,
    delivered_kwh REAL NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS fences (
    session_id TEXT PRIMARY KEY,
    min_epoch INTEGER NOT NULL,
    fenced_at REAL NOT NULL
);
-- Tombstones of the first release ('cancelled' sessions) become fences that never open.
INSERT OR IGNORE INTO fences
    SELECT session_id, 2147483647, started_at FROM sessions WHERE state = 'cancelled';
DELETE FROM sessions WHERE state = 'cancelled';
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    substation TEXT NOT NULL,
    event TEXT NOT NULL,
    session_id TEXT,
    vehicle_id TEXT,
    power_kw REAL,
    energy_kwh REAL,
    delivered_kwh REAL,
    epoch INTEGER,
    capacity_kw REAL,
    min_kw REAL
);
"""
SCHEMA_VERSION = 3
# Columns added after the first release, with their types: added when missing, never dropped.
_ADDED_COLUMNS = (("min_kw", "REAL"), ("departure_at", "REAL"), ("granted_kw", "REAL"))
# The history's: an admission's floor (NULL: a fixed-power session, its floor its power_kw).
_ADDED_HISTORY_COLUMNS = (("min_kw", "REAL"),)
_COLUMNS = "session_id, vehicle_id, power_kw, energy_kwh, delivered_kwh, state, started_at, " \
    "ended_at, min_kw, departure_at, granted_kw"
_HISTORY = "INSERT INTO history (at, substation, event, session_id, vehicle_id, power_kw, " \
    "energy_kwh, delivered_kwh, epoch, capacity_kw, min_kw) " \
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT = f"""
INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(session_id) DO UPDATE SET delivered_kwh = excluded.delivered_kwh,
    state = excluded.state, ended_at = excluded.ended_at, granted_kw = excluded.granted_kw
"""
_FENCE = """
INSERT INTO fences VALUES (?, ?, ?)
ON CONFLICT(session_id) DO UPDATE SET min_epoch = max(min_epoch, excluded.min_epoch),
    fenced_at = excluded.fenced_at
"""


def _rows(sessions: Iterable[ChargingSession]) -> list[tuple[object, ...]]:
    return [(s.session_id, s.vehicle_id, s.power_kw, s.energy_kwh, s.delivered_kwh,
             s.state, s.started_at, s.ended_at, s.min_kw, s.departure_at, s.granted_kw)
            for s in sessions]


def migrate(c: sqlite3.Connection) -> None:
    """Bring a sessions table of any earlier version to SCHEMA_VERSION: add what is missing."""
    for table, added in (("sessions", _ADDED_COLUMNS), ("history", _ADDED_HISTORY_COLUMNS)):
        have = {row[1] for row in c.execute(f"PRAGMA table_info({table})")}
        for name, kind in added:
            if name not in have:
                c.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    version = c.execute("PRAGMA user_version").fetchone()[0]
    if version < SCHEMA_VERSION:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class SessionStore:
    def __init__(self, path: str | Path, durability: Durability = Durability.FULL,
                 history_of: str | None = None,
                 before_commit: Callable[[], None] | None = None) -> None:
        """`history_of`: the substation id under which events are appended to the history
        (None: no history is kept). `before_commit`: see GroupCommitDB (a slow disk)."""
        self.db = GroupCommitDB(path, _SCHEMA, durability, before_commit)
        self.db.write_now(migrate)
        self.history_of = history_of

    async def save(self, sessions: Iterable[ChargingSession],
                   events: Sequence[tuple[str, ChargingSession, float]] = ()) -> None:
        """Upsert `sessions` and append `events` ((event, session, at), kept only with a
        history), all in one transaction."""
        await self.submit(sessions, events)

    def submit(self, sessions: Iterable[ChargingSession],
               events: Sequence[tuple[str, ChargingSession, float]] = ()
               ) -> asyncio.Future[None]:
        """As `save`, queued at once (so the history keeps the order things happened in);
        await the future for it to be on disk."""
        rows = _rows(sessions)
        history = self._history_rows(events)
        if not rows and not history:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        def write(c: sqlite3.Connection) -> None:
            c.executemany(_UPSERT, rows)
            c.executemany(_HISTORY, history)
        return self.db.submit(write)

    def _history_rows(self, events: Sequence[tuple[str, ChargingSession, float]]
                      ) -> list[tuple[object, ...]]:
        if self.history_of is None:
            return []
        return [(at, self.history_of, event, s.session_id, s.vehicle_id, s.power_kw,
                 s.energy_kwh, s.delivered_kwh, s.epoch, None, s.min_kw)
                for event, s, at in events]

    def record_start(self, capacity_kw: float, at: float) -> None:
        """At start-up, before anything is served: the capacity it runs with from now on."""
        if self.history_of is not None:
            row = (at, self.history_of, START, None, None, None, None, None, None, capacity_kw,
                   None)
            self.db.write_now(lambda c: c.execute(_HISTORY, row))

    async def save_fence(self, session_id: str, min_epoch: int, at: float) -> None:
        await self.db.write(lambda c: c.execute(_FENCE, (session_id, min_epoch, at)))

    def load(self) -> list[ChargingSession]:
        rows = self.db.reader.execute(
            f"SELECT {_COLUMNS} FROM sessions ORDER BY started_at").fetchall()
        # granted_kw NULL (a row of schema version 1): its floor until re-allocated.
        return [ChargingSession(sid, vehicle, power, energy, delivered, state, started, ended,
                                min_kw, departure, -1.0 if granted is None else granted)
                for sid, vehicle, power, energy, delivered, state, started, ended, min_kw,
                departure, granted in rows]

    def load_fences(self) -> list[tuple[str, int, float]]:
        return [(str(sid), int(epoch), float(at)) for sid, epoch, at in self.db.reader.execute(
            "SELECT session_id, min_epoch, fenced_at FROM fences ORDER BY fenced_at")]

    async def delete_before(self, ended_cutoff: float, fence_cutoff: float) -> None:
        def delete(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?",
                      (ended_cutoff,))
            c.execute("DELETE FROM fences WHERE fenced_at < ?", (fence_cutoff,))
        await self.db.write(delete)

    async def aclose(self) -> None:
        await self.db.aclose()
