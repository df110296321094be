"""The embedded store: one SQLite file, for one ingress process (the default of `make up`).

Writes go through group commit (gridlb/durable.py: WAL, `synchronous=FULL` by default, one fsync
per group of writes), so a record is on disk before its dispatch starts and before its answer is
sent. Reads run on the event loop's thread (WAL lets them run beside the writer). The key lock is
in this process's memory: SQLite is one process's file, and grid.yaml refuses more than one
ingress replica on it (gridlb/grid.py). So that two processes never share one file anyway (two
containers on one volume, a second ingress started by hand), the store holds an exclusive lock
on `<file>.lock` while it is open: a second one is refused at start, naming the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from gridlb.durable import Durability, GroupCommitDB
from ingress.idempotency import KeyRecord, RecordState
from ingress.store import LocalKeyLocks, SessionRoute
from ingress.stores.migrations import Migration, to_apply

MIGRATIONS = (
    # IF NOT EXISTS: databases written before versioning already hold these tables.
    Migration(1, "key records and session routes", (
        """CREATE TABLE IF NOT EXISTS key_records (
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
            PRIMARY KEY (tenant, key))""",
        "CREATE INDEX IF NOT EXISTS key_records_settled ON key_records (state, updated_at)",
        """CREATE TABLE IF NOT EXISTS session_routes (
            session_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            substation TEXT NOT NULL,
            routed_to TEXT NOT NULL,
            vehicle_id TEXT NOT NULL,
            policy TEXT NOT NULL,
            created_at REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS session_routes_age ON session_routes (created_at)",
    )),
)
_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"""
_COLUMNS = ("tenant, key, session_id, fingerprint, epoch, state, status, response, created_at, "
            "updated_at")
_INSERT = f"INSERT INTO key_records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")[2:])
# Never over a newer epoch: a superseded dispatch's late answer changes nothing.
_SAVE_RECORD = (f"{_INSERT} ON CONFLICT (tenant, key) DO UPDATE SET {_UPDATES} "
                "WHERE excluded.epoch >= key_records.epoch")
_CLAIM_NEW = f"{_INSERT} ON CONFLICT (tenant, key) DO NOTHING"
_CLAIM_NEXT = ("UPDATE key_records SET session_id = ?, fingerprint = ?, epoch = ?, state = ?, "
               "status = ?, response = ?, created_at = ?, updated_at = ? "
               "WHERE tenant = ? AND key = ? AND epoch = ?")
_SAVE_ROUTE = "INSERT OR REPLACE INTO session_routes VALUES (?, ?, ?, ?, ?, ?, ?)"
_SETTLED = (RecordState.DONE.value, RecordState.ABSENT.value)


def _record_row(r: KeyRecord) -> tuple[object, ...]:
    return (r.tenant, r.key, r.session_id, r.fingerprint, r.epoch, r.state.value, r.status,
            None if r.response is None else json.dumps(r.response), r.created_at, r.updated_at)


def _record(row: Sequence[Any]) -> KeyRecord:
    return KeyRecord(row[0], row[1], row[2], row[3], row[4], RecordState(row[5]), row[6],
                     None if row[7] is None else json.loads(row[7]), row[8], row[9])


class StoreInUse(RuntimeError):
    """Another process has this SQLite store open."""


def exclusive(path: str | Path) -> int | None:
    """An exclusive lock on `<path>.lock` (its file descriptor: closing it releases the lock;
    so does the process's death), or StoreInUse."""
    if str(path) == ":memory:":
        return None
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreInUse(
            f"{path} is in use by another ingress process: an SQLite store serves one process "
            "(two would each start a session for one key); run one ingress per file, or share "
            "a PostgreSQL store between replicas (--store-url postgresql://...)") from None
    return fd


def migrate(c: sqlite3.Connection, where: str) -> list[int]:
    """Apply the versions not applied yet (in the caller's transaction); returns them."""
    c.execute(_MIGRATIONS_TABLE)
    applied = {v for (v,) in c.execute("SELECT version FROM schema_migrations")}
    done = []
    for migration in to_apply(MIGRATIONS, applied, where):
        for statement in migration.statements:
            c.execute(statement)
        c.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                  (migration.version, migration.name, time.time()))
        done.append(migration.version)
    return done


class SQLiteStore:
    def __init__(self, path: str | Path, durability: Durability = Durability.FULL,
                 key_ttl_s: float = 24 * 3600.0, session_ttl_s: float = 7 * 24 * 3600.0,
                 max_keys: int = 1_000_000) -> None:
        self._lock_fd = exclusive(path)
        try:
            self.db = GroupCommitDB(path, "", durability)
        except BaseException:
            self._release()
            raise
        try:
            self.db.write_now(lambda c: migrate(c, str(path)))
        except BaseException:
            self.close()
            raise
        self.key_ttl_s = key_ttl_s
        self.session_ttl_s = session_ttl_s
        self.max_keys = max_keys
        self._locks = LocalKeyLocks()

    def key_lock(self, tenant: str, key: str) -> AbstractAsyncContextManager[None]:
        return self._locks(tenant, key)

    async def record(self, tenant: str, key: str) -> KeyRecord | None:
        row = self.db.reader.execute(f"SELECT {_COLUMNS} FROM key_records "
                                     "WHERE tenant = ? AND key = ?", (tenant, key)).fetchone()
        return None if row is None else _record(row)

    async def claim(self, record: KeyRecord, previous_epoch: int | None) -> bool:
        def claim(c: sqlite3.Connection) -> bool:
            row = _record_row(record)
            if previous_epoch is None:
                return c.execute(_CLAIM_NEW, row).rowcount == 1
            return c.execute(_CLAIM_NEXT, (*row[2:], record.tenant, record.key,
                                           previous_epoch)).rowcount == 1
        return await self.db.write(claim)

    async def save(self, record: KeyRecord | None = None, route: SessionRoute | None = None
                   ) -> None:
        def write(c: sqlite3.Connection) -> None:
            if record is not None:
                c.execute(_SAVE_RECORD, _record_row(record))
            if route is not None:
                c.execute(_SAVE_ROUTE, (route.session_id, route.tenant, route.substation,
                                        route.routed_to, route.vehicle_id, route.policy,
                                        route.created_at))
        await self.db.write(write)

    async def route(self, session_id: str) -> SessionRoute | None:
        row = self.db.reader.execute(
            "SELECT session_id, tenant, substation, routed_to, vehicle_id, policy, created_at "
            "FROM session_routes WHERE session_id = ?", (session_id,)).fetchone()
        return SessionRoute(*row) if row else None

    async def prune(self, now: float) -> int:
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

    async def pending(self, updated_before: float, limit: int) -> list[KeyRecord]:
        rows = self.db.reader.execute(
            f"SELECT {_COLUMNS} FROM key_records WHERE state = ? AND updated_at < ? "
            "ORDER BY updated_at LIMIT ?",
            (RecordState.PENDING.value, updated_before, limit)).fetchall()
        return [_record(row) for row in rows]

    async def oldest_pending_at(self) -> float | None:
        row = self.db.reader.execute("SELECT min(created_at) FROM key_records WHERE state = ?",
                                     (RecordState.PENDING.value,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def counts(self) -> dict[str, int]:
        return {state: n for state, n in self.db.reader.execute(
            "SELECT state, count(*) FROM key_records GROUP BY state")}

    async def aclose(self) -> None:
        try:
            await self.db.aclose()
        finally:
            self._release()

    def close(self) -> None:
        """Without an event loop (start-up, tests)."""
        try:
            self.db.close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
