"""Reading a substation's state file after a run: its history and its sessions as they ended."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from tests.nemesis.checker import Event, FinalSession


def _connect(path: Path) -> sqlite3.Connection:
    # Read only: the checker never changes what it judges.
    return sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)


def read_history(path: Path) -> list[Event]:
    if not path.exists():
        return []
    with contextlib.closing(_connect(path)) as db:
        rows = db.execute("SELECT seq, at, substation, event, session_id, vehicle_id, power_kw, "
                          "energy_kwh, delivered_kwh, epoch, capacity_kw, min_kw FROM history "
                          "ORDER BY seq").fetchall()
    return [Event(*row) for row in rows]


def read_final(path: Path, substation: str) -> list[FinalSession]:
    if not path.exists():
        return []
    with contextlib.closing(_connect(path)) as db:
        rows = db.execute("SELECT session_id, state, delivered_kwh FROM sessions").fetchall()
    return [FinalSession(substation, str(sid), str(state), float(kwh))
            for sid, state, kwh in rows]
