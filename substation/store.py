"""Sessions on disk, so a restarted substation resumes them with the energy already delivered.

One SQLite connection (WAL, synchronous=NORMAL: a crash may lose the last moments of delivered
energy, never a session that was confirmed to the caller, because admission commits before the
answer is sent).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

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
)
"""
_UPSERT = """
INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(session_id) DO UPDATE SET delivered_kwh = excluded.delivered_kwh,
    state = excluded.state, ended_at = excluded.ended_at
"""


class SessionStore:
    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def save(self, sessions: Iterable[ChargingSession]) -> None:
        rows = [(s.session_id, s.vehicle_id, s.power_kw, s.energy_kwh, s.delivered_kwh,
                 s.state, s.started_at, s.ended_at) for s in sessions]
        if rows:
            with self._db:
                self._db.executemany(_UPSERT, rows)

    def load(self) -> list[ChargingSession]:
        rows = self._db.execute("SELECT * FROM sessions ORDER BY started_at").fetchall()
        return [ChargingSession(*row) for row in rows]

    def delete_ended_before(self, cutoff: float) -> None:
        with self._db:
            self._db.execute("DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?",
                             (cutoff,))

    def close(self) -> None:
        self._db.close()
