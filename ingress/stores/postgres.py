"""The shared store: PostgreSQL, for any number of ingress replicas (`--store-url
postgresql://...`).

- Durability: every connection runs with `synchronous_commit = on` (PostgreSQL's default, set
  explicitly so that a server configured otherwise does not weaken it): a commit returns once its
  WAL is flushed to disk, so a confirmed write survives a crash of PostgreSQL or of the machine.
  Concurrent commits share one WAL flush (PostgreSQL's own group commit). `--durability process`
  sets `synchronous_commit = off`: commits may then be lost if PostgreSQL itself crashes.
- The key lock is a session-level advisory lock (`pg_try_advisory_lock` on a 64-bit hash of
  tenant and key) taken on a connection of the pool and held for the request: every replica sees
  it, and PostgreSQL releases it when the connection ends, so the lock of a replica that died
  (even by SIGKILL) is gone as soon as its connection is. Everything the holder does meanwhile
  runs on that same connection, so a request needs one connection, not two, and lock holders
  never wait on a pool they exhaust themselves.
- Epochs hold across replicas without trusting the lock: `claim` is a compare-and-set on the
  stored epoch (a unique key per (tenant, key) and `UPDATE ... WHERE epoch = previous`), and
  `save` never writes over a newer epoch. A lock lost with a restart of PostgreSQL therefore
  costs at most a 409 later, never two dispatches at one epoch.
- The reconciler of every replica lists the same due records; each takes a record's key lock
  without waiting before resolving it (ingress/reconciler.py), so no two replicas resolve one
  record at once.
- Schema: versioned migrations (ingress/stores/migrations.py) applied at start under a
  transaction-level advisory lock, so replicas starting together apply each version once.
- A database that cannot be reached raises StoreUnavailable (the ingress answers 503
  `store_unavailable`); the pool reconnects in the background and replaces broken connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gridlb.durable import Durability
from ingress.idempotency import KeyRecord, RecordState
from ingress.store import KeyBusy, SessionRoute, StoreUnavailable
from ingress.stores.migrations import Migration, to_apply

log = logging.getLogger(__name__)
Connection = psycopg.AsyncConnection[tuple[Any, ...]]

MIGRATIONS = (
    Migration(1, "key records and session routes", (
        """CREATE TABLE key_records (
            tenant text NOT NULL,
            key text NOT NULL,
            session_id text NOT NULL,
            fingerprint text NOT NULL,
            epoch bigint NOT NULL,
            state text NOT NULL,
            status integer NOT NULL,
            response jsonb,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            PRIMARY KEY (tenant, key))""",
        "CREATE INDEX key_records_settled ON key_records (state, updated_at)",
        """CREATE TABLE session_routes (
            session_id text PRIMARY KEY,
            tenant text NOT NULL,
            substation text NOT NULL,
            routed_to text NOT NULL,
            vehicle_id text NOT NULL,
            policy text NOT NULL,
            created_at double precision NOT NULL)""",
        "CREATE INDEX session_routes_age ON session_routes (created_at)",
    )),
)
# Advisory lock ids of this schema's own work, apart from any key's hash by their high bits.
_MIGRATION_LOCK = 0x6772_6964_6d69_6772     # "gridmigr"
_PRUNE_LOCK = 0x6772_6964_7072_756e         # "gridprun"
_STATEMENT_TIMEOUT_MS = 5000
_COLUMNS = ("tenant, key, session_id, fingerprint, epoch, state, status, response, created_at, "
            "updated_at")
_INSERT = (f"INSERT INTO key_records ({_COLUMNS}) "
           "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")[2:])
_SAVE_RECORD = (f"{_INSERT} ON CONFLICT (tenant, key) DO UPDATE SET {_UPDATES} "
                "WHERE excluded.epoch >= key_records.epoch")
_CLAIM_NEW = f"{_INSERT} ON CONFLICT (tenant, key) DO NOTHING"
_CLAIM_NEXT = ("UPDATE key_records SET session_id = %s, fingerprint = %s, epoch = %s, "
               "state = %s, status = %s, response = %s, created_at = %s, updated_at = %s "
               "WHERE tenant = %s AND key = %s AND epoch = %s")
_SAVE_ROUTE = ("INSERT INTO session_routes VALUES (%s, %s, %s, %s, %s, %s, %s) "
               "ON CONFLICT (session_id) DO UPDATE SET tenant = excluded.tenant, "
               "substation = excluded.substation, routed_to = excluded.routed_to, "
               "vehicle_id = excluded.vehicle_id, policy = excluded.policy, "
               "created_at = excluded.created_at")
# A record and a route in one statement: one round trip, one commit, atomic.
_SAVE_BOTH = f"WITH saved AS ({_SAVE_RECORD}) {_SAVE_ROUTE}"
_SETTLED = [RecordState.DONE.value, RecordState.ABSENT.value]


def lock_id(tenant: str, key: str) -> int:
    """A signed 64-bit advisory lock id for (tenant, key), the same in every replica. A
    collision of two keys' ids only makes one of them wait its turn (a 409)."""
    digest = hashlib.blake2b(f"{tenant}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _record_row(r: KeyRecord) -> tuple[object, ...]:
    return (r.tenant, r.key, r.session_id, r.fingerprint, r.epoch, r.state.value, r.status,
            None if r.response is None else Jsonb(r.response), r.created_at, r.updated_at)


def _record(row: Sequence[Any]) -> KeyRecord:
    return KeyRecord(row[0], row[1], row[2], row[3], int(row[4]), RecordState(row[5]),
                     row[6], row[7], float(row[8]), float(row[9]))


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    host, port, db = info.get("host", ""), info.get("port", ""), info.get("dbname", "")
    return f"postgresql://{info.get('user', '')}@{host}{':' if port else ''}{port}/{db}"


class PostgresStore:
    """Open with `await PostgresStore.open(url, ...)`."""

    def __init__(self, pool: AsyncConnectionPool[Connection], where: str,
                 key_ttl_s: float, session_ttl_s: float, max_keys: int) -> None:
        self.pool = pool
        self.where = where
        self.key_ttl_s = key_ttl_s
        self.session_ttl_s = session_ttl_s
        self.max_keys = max_keys
        # The connection of the key lock this task holds: its work runs on it.
        self._held: ContextVar[Connection | None] = ContextVar(f"held-{id(self)}",
                                                               default=None)
        self._checking: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, durability: Durability = Durability.FULL, *,
                   pool_size: int = 32, wait_s: float = 3.0, key_ttl_s: float = 24 * 3600.0,
                   session_ttl_s: float = 7 * 24 * 3600.0, max_keys: int = 1_000_000
                   ) -> PostgresStore:
        """Connect, apply the migrations not applied yet, and return the store. `wait_s`: how
        long a request waits for a connection (then StoreUnavailable); `pool_size`: the most
        connections this replica opens (one per keyed request in flight)."""
        commit = "on" if durability is Durability.FULL else "off"

        async def configure(conn: Connection) -> None:
            await conn.execute(f"SET synchronous_commit = {commit}")
            # A request's statements are small: one that hangs (a stalled disk) fails as
            # StoreUnavailable instead of outliving the client's patience. Pruning and
            # migrating lift it for their transaction.
            await conn.execute(f"SET statement_timeout = {_STATEMENT_TIMEOUT_MS}")

        where = redact(url)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=wait_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(wait_s)),
                    "application_name": "gridlb-ingress"},
            configure=configure, name="ingress-store", reconnect_timeout=60.0)
        try:
            await pool.open(wait=True, timeout=max(wait_s, 5.0))
        except psycopg.OperationalError as exc:
            await pool.close()
            raise StoreUnavailable(f"cannot connect to {where}: {exc}") from exc
        store = cls(pool, where, key_ttl_s, session_ttl_s, max_keys)
        try:
            await store.migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def migrate(self) -> list[int]:
        """Apply the versions not applied yet, in one transaction; returns them."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 0")
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer "
                               "PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT "
                               "NULL DEFAULT now())")
            cur = await conn.execute("SELECT version FROM schema_migrations")
            applied = {int(v) for (v,) in await cur.fetchall()}
            done = []
            for migration in to_apply(MIGRATIONS, applied, self.where):
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_migrations (version, name) "
                                   "VALUES (%s, %s)", (migration.version, migration.name))
                done.append(migration.version)
        if done:
            log.info("%s: applied schema versions %s", self.where, done)
        return done

    @contextmanager
    def _failures(self) -> Iterator[None]:
        """Lost connections and a database that cannot be reached, as StoreUnavailable."""
        try:
            yield
        except PoolTimeout as exc:
            raise StoreUnavailable(
                f"{self.where}: no connection within {self.pool.timeout:g} s (this replica's "
                f"{self.pool.max_size} are all in use, or the server does not answer)") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # After a restart of PostgreSQL every idle connection of the pool is broken: have
            # the pool test and replace them now, not one failed request each.
            if self._checking is None or self._checking.done():
                self._checking = asyncio.create_task(self._check_pool())
            raise StoreUnavailable(f"{self.where}: {type(exc).__name__}: "
                                   f"{str(exc).strip() or 'connection lost'}") from exc

    async def _check_pool(self) -> None:
        try:
            await self.pool.check()
        except Exception:     # the pool is closing, or PostgreSQL is still away
            log.debug("checking the pool's connections failed", exc_info=True)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        held = self._held.get()
        if held is not None:
            yield held
            return
        with self._failures():
            async with self.pool.connection() as conn:
                yield conn

    def key_lock(self, tenant: str, key: str) -> AbstractAsyncContextManager[None]:
        return self._key_lock(tenant, key)

    @asynccontextmanager
    async def _key_lock(self, tenant: str, key: str) -> AsyncIterator[None]:
        ident = lock_id(tenant, key)
        with self._failures():
            conn = await self.pool.getconn()
        try:
            with self._failures():
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (ident,))
                row = await cur.fetchone()
            if row is None or row[0] is not True:
                raise KeyBusy(f"{key!r} is held by another request")
            token = self._held.set(conn)
            try:
                yield
            finally:
                self._held.reset(token)
                await self._unlock(conn, ident)
        finally:
            await self.pool.putconn(conn)

    @staticmethod
    async def _unlock(conn: Connection, ident: int) -> None:
        try:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (ident,))
        except BaseException as exc:
            # The lock cannot be known released: end the session, which releases it, rather
            # than give the pool a connection that still holds it.
            log.warning("could not release a key lock (%s); closing its connection",
                        type(exc).__name__)
            await conn.close()
            if not isinstance(exc, Exception):
                raise

    async def record(self, tenant: str, key: str) -> KeyRecord | None:
        async with self._connection() as conn:
            with self._failures():
                cur = await conn.execute(f"SELECT {_COLUMNS} FROM key_records "
                                         "WHERE tenant = %s AND key = %s", (tenant, key))
                row = await cur.fetchone()
        return None if row is None else _record(row)

    async def claim(self, record: KeyRecord, previous_epoch: int | None) -> bool:
        row = _record_row(record)
        async with self._connection() as conn:
            with self._failures():
                if previous_epoch is None:
                    cur = await conn.execute(_CLAIM_NEW, row)
                else:
                    cur = await conn.execute(_CLAIM_NEXT, (*row[2:], record.tenant, record.key,
                                                           previous_epoch))
        return cur.rowcount == 1

    async def save(self, record: KeyRecord | None = None, route: SessionRoute | None = None
                   ) -> None:
        routed = () if route is None else (
            route.session_id, route.tenant, route.substation, route.routed_to,
            route.vehicle_id, route.policy, route.created_at)
        # Each a single statement in autocommit: its own transaction, one round trip.
        if record is not None and route is not None:
            query, params = _SAVE_BOTH, (*_record_row(record), *routed)
        elif record is not None:
            query, params = _SAVE_RECORD, _record_row(record)
        elif route is not None:
            query, params = _SAVE_ROUTE, routed
        else:
            return
        async with self._connection() as conn:
            with self._failures():
                await conn.execute(query, params)

    async def route(self, session_id: str) -> SessionRoute | None:
        async with self._connection() as conn:
            with self._failures():
                cur = await conn.execute(
                    "SELECT session_id, tenant, substation, routed_to, vehicle_id, policy, "
                    "created_at FROM session_routes WHERE session_id = %s", (session_id,))
                row = await cur.fetchone()
        return None if row is None else SessionRoute(row[0], row[1], row[2], row[3], row[4],
                                                     row[5], float(row[6]))

    async def prune(self, now: float) -> int:
        async with self._connection() as conn:
            with self._failures():
                async with conn.transaction():
                    # One replica prunes at a time; the others find the lock taken and skip.
                    cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)",
                                             (_PRUNE_LOCK,))
                    got = await cur.fetchone()
                    if got is None or got[0] is not True:
                        return 0
                    await conn.execute("SET LOCAL statement_timeout = 0")
                    cur = await conn.execute(
                        "DELETE FROM key_records WHERE state = ANY(%s) AND updated_at < %s",
                        (_SETTLED, now - self.key_ttl_s))
                    gone = cur.rowcount
                    cur = await conn.execute("SELECT count(*) FROM key_records")
                    total = (await cur.fetchone() or (0,))[0]
                    if total > self.max_keys:
                        cur = await conn.execute(
                            "DELETE FROM key_records WHERE (tenant, key) IN (SELECT tenant, "
                            "key FROM key_records WHERE state = ANY(%s) ORDER BY updated_at "
                            "LIMIT %s)", (_SETTLED, total - self.max_keys))
                        gone += cur.rowcount
                    await conn.execute("DELETE FROM session_routes WHERE created_at < %s",
                                       (now - self.session_ttl_s,))
        return int(gone)

    async def pending(self, updated_before: float, limit: int) -> list[KeyRecord]:
        async with self._connection() as conn:
            with self._failures():
                cur = await conn.execute(
                    f"SELECT {_COLUMNS} FROM key_records WHERE state = %s AND updated_at < %s "
                    "ORDER BY updated_at LIMIT %s",
                    (RecordState.PENDING.value, updated_before, limit))
                rows = await cur.fetchall()
        return [_record(row) for row in rows]

    async def oldest_pending_at(self) -> float | None:
        async with self._connection() as conn:
            with self._failures():
                cur = await conn.execute("SELECT min(created_at) FROM key_records "
                                         "WHERE state = %s", (RecordState.PENDING.value,))
                row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def counts(self) -> dict[str, int]:
        async with self._connection() as conn:
            with self._failures():
                cur = await conn.execute("SELECT state, count(*) FROM key_records "
                                         "GROUP BY state")
                rows = await cur.fetchall()
        return {str(state): int(n) for state, n in rows}

    async def aclose(self) -> None:
        if self._checking is not None:
            self._checking.cancel()
        await self.pool.close()
