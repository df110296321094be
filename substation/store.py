"""Sessions and fences on disk, so a restarted substation resumes them.

A session is committed (fsync'd, see gridlb/durable.py) before its admission is answered, and a
fence before the fence is answered: a confirmed session and a promise to refuse late copies both
survive a crash of the process or of the machine. Delivered energy is saved in slices every few
seconds; a crash loses at most those seconds of progress, never a session.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from gridlb.durable import Durability, GroupCommitDB
from substation.charging import ChargingSession

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
"""
_UPSERT = """
INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(session_id) DO UPDATE SET delivered_kwh = excluded.delivered_kwh,
    state = excluded.state, ended_at = excluded.ended_at
"""
_FENCE = """
INSERT INTO fences VALUES (?, ?, ?)
ON CONFLICT(session_id) DO UPDATE SET min_epoch = max(min_epoch, excluded.min_epoch),
    fenced_at = excluded.fenced_at
"""


def _rows(sessions: Iterable[ChargingSession]) -> list[tuple[object, ...]]:
    return [(s.session_id, s.vehicle_id, s.power_kw, s.energy_kwh, s.delivered_kwh,
             s.state, s.started_at, s.ended_at) for s in sessions]


class SessionStore:
    def __init__(self, path: str | Path, durability: Durability = Durability.FULL) -> None:
        self.db = GroupCommitDB(path, _SCHEMA, durability)

    async def save(self, sessions: Iterable[ChargingSession]) -> None:
        rows = _rows(sessions)
        if rows:
            await self.db.write(lambda c: c.executemany(_UPSERT, rows))

    async def save_fence(self, session_id: str, min_epoch: int, at: float) -> None:
        await self.db.write(lambda c: c.execute(_FENCE, (session_id, min_epoch, at)))

    def load(self) -> list[ChargingSession]:
        rows = self.db.reader.execute("SELECT * FROM sessions ORDER BY started_at").fetchall()
        return [ChargingSession(*row) for row in rows]

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
