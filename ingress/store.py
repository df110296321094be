"""What the ingress must remember across restarts: where each session went, and the outcome of
each idempotency key. One SQLite connection (stdlib), WAL, synchronous=NORMAL."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    substation TEXT NOT NULL,
    routed_to TEXT NOT NULL,
    vehicle_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    body_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    response TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency (created_at);
CREATE INDEX IF NOT EXISTS sessions_age ON sessions (created_at);
"""


@dataclass(frozen=True)
class SessionRoute:
    session_id: str
    substation: str
    routed_to: str


@dataclass(frozen=True)
class StoredOutcome:
    body_hash: str
    status: int
    response: dict[str, Any]


class IngressStore:
    def __init__(self, path: str | Path, key_ttl_s: float = 24 * 3600.0,
                 session_ttl_s: float = 7 * 24 * 3600.0) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.key_ttl_s = key_ttl_s
        self.session_ttl_s = session_ttl_s
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def record_session(self, session_id: str, substation: str, routed_to: str,
                       vehicle_id: str, policy: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                         (session_id, substation, routed_to, vehicle_id, policy, time.time()))

    def route(self, session_id: str) -> SessionRoute | None:
        row = self._db.execute("SELECT session_id, substation, routed_to FROM sessions "
                               "WHERE session_id = ?", (session_id,)).fetchone()
        return SessionRoute(*row) if row else None

    def outcome(self, key: str) -> StoredOutcome | None:
        row = self._db.execute("SELECT body_hash, status, response, created_at FROM "
                               "idempotency WHERE key = ?", (key,)).fetchone()
        if row is None or time.time() - row[3] > self.key_ttl_s:
            return None
        return StoredOutcome(row[0], row[1], json.loads(row[2]))

    def record_outcome(self, key: str, body_hash: str, status: int,
                       response: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?)",
                         (key, body_hash, status, json.dumps(response), time.time()))

    def prune(self) -> None:
        now = time.time()
        with self._db:
            self._db.execute("DELETE FROM idempotency WHERE created_at < ?",
                             (now - self.key_ttl_s,))
            self._db.execute("DELETE FROM sessions WHERE created_at < ?",
                             (now - self.session_ttl_s,))

    def close(self) -> None:
        self._db.close()
