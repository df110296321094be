"""What the ingress must remember across restarts: each idempotency key's record (ingress/
idempotency.py) and where each session went, per tenant.

Writes go through group commit (gridlb/durable.py): a record is on disk before its dispatch
starts and before its answer is sent.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridlb.durable import Durability, GroupCommitDB
from ingress.idempotency import KeyRecord, RecordState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS key_records (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    session_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    state TEXT NOT NULL,
    status INTEGER NOT NULL,
    response TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX IF NOT EXISTS key_records_settled ON key_records (state, updated_at);
CREATE TABLE IF NOT EXISTS session_routes (
    session_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    substation TEXT NOT NULL,
    routed_to TEXT NOT NULL,
    vehicle_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS session_routes_age ON session_routes (created_at);
-- The first release kept keys and routes without a tenant: they cannot be attributed.
DROP TABLE IF EXISTS idempotency;
DROP TABLE IF EXISTS sessions;
"""
_SAVE_RECORD = "INSERT OR REPLACE INTO key_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SAVE_ROUTE = "INSERT OR REPLACE INTO session_routes VALUES (?, ?, ?, ?, ?, ?, ?)"
_SETTLED = (RecordState.DONE.value, RecordState.ABSENT.value)


@dataclass(frozen=True)
class SessionRoute:
    session_id: str
    tenant: str
    substation: str
    routed_to: str
    vehicle_id: str
    policy: str
    created_at: float


def _record_row(r: KeyRecord) -> tuple[object, ...]:
    return (r.tenant, r.key, r.session_id, r.fingerprint, r.epoch, r.state.value, r.status,
            None if r.response is None else json.dumps(r.response), r.created_at, r.updated_at)


def _record(row: Sequence[Any]) -> KeyRecord:
    return KeyRecord(row[0], row[1], row[2], row[3], row[4], RecordState(row[5]), row[6],
                     None if row[7] is None else json.loads(row[7]), row[8], row[9])


class IngressStore:
    def __init__(self, path: str | Path, durability: Durability = Durability.FULL,
                 key_ttl_s: float = 24 * 3600.0, session_ttl_s: float = 7 * 24 * 3600.0,
                 max_keys: int = 1_000_000) -> None:
        self.db = GroupCommitDB(path, _SCHEMA, durability)
        self.key_ttl_s = key_ttl_s
        self.session_ttl_s = session_ttl_s
        self.max_keys = max_keys

    def record(self, tenant: str, key: str) -> KeyRecord | None:
        row = self.db.reader.execute("SELECT * FROM key_records WHERE tenant = ? AND key = ?",
                                     (tenant, key)).fetchone()
        return None if row is None else _record(row)

    async def save(self, record: KeyRecord | None = None, route: SessionRoute | None = None
                   ) -> None:
        """Record and/or route, in one transaction, on disk when this returns."""
        def write(c: sqlite3.Connection) -> None:
            if record is not None:
                c.execute(_SAVE_RECORD, _record_row(record))
            if route is not None:
                c.execute(_SAVE_ROUTE, (route.session_id, route.tenant, route.substation,
                                        route.routed_to, route.vehicle_id, route.policy,
                                        route.created_at))
        await self.db.write(write)

    def route(self, session_id: str) -> SessionRoute | None:
        row = self.db.reader.execute("SELECT * FROM session_routes WHERE session_id = ?",
                                     (session_id,)).fetchone()
        return SessionRoute(*row) if row else None

    async def prune(self, now: float) -> int:
        """Drop settled records past their time or beyond the cap, and old routes; never a
        PENDING record. Returns how many records went."""
        def prune(c: sqlite3.Connection) -> int:
            gone = c.execute("DELETE FROM key_records WHERE state IN (?, ?) AND updated_at < ?",
                             (*_SETTLED, now - self.key_ttl_s)).rowcount
            total = c.execute("SELECT count(*) FROM key_records").fetchone()[0]
            if total > self.max_keys:
                gone += c.execute(
                    "DELETE FROM key_records WHERE rowid IN (SELECT rowid FROM key_records "
                    "WHERE state IN (?, ?) ORDER BY updated_at LIMIT ?)",
                    (*_SETTLED, total - self.max_keys)).rowcount
            c.execute("DELETE FROM session_routes WHERE created_at < ?",
                      (now - self.session_ttl_s,))
            return int(gone)
        return await self.db.write(prune)

    def pending(self, updated_before: float, limit: int) -> list[KeyRecord]:
        """PENDING records last written before `updated_before`, least recently first."""
        rows = self.db.reader.execute(
            "SELECT * FROM key_records WHERE state = ? AND updated_at < ? ORDER BY updated_at "
            "LIMIT ?", (RecordState.PENDING.value, updated_before, limit)).fetchall()
        return [_record(row) for row in rows]

    def oldest_pending_at(self) -> float | None:
        """When the oldest PENDING record was created, or None when there is none."""
        row = self.db.reader.execute("SELECT min(created_at) FROM key_records WHERE state = ?",
                                     (RecordState.PENDING.value,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def counts(self) -> dict[str, int]:
        return {state: n for state, n in self.db.reader.execute(
            "SELECT state, count(*) FROM key_records GROUP BY state")}

    async def aclose(self) -> None:
        await self.db.aclose()
