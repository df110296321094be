"""One contract (ingress/store.py), two stores: every test here runs against SQLite and against
a real PostgreSQL (the session's server, a fresh database per test). Tests about what only a
shared store can do (a lock across two replicas, two replicas migrating at once) run against
PostgreSQL alone."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psycopg
import pytest

from gridlb.durable import Durability
from gridlb.stack import free_port
from ingress.idempotency import KeyRecord, RecordState
from ingress.store import IngressStore, KeyBusy, SessionRoute, StoreUnavailable
from ingress.stores.migrations import SchemaTooNew
from ingress.stores.postgres import MIGRATIONS as PG_MIGRATIONS
from ingress.stores.postgres import PostgresStore
from ingress.stores.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from ingress.stores.sqlite import SQLiteStore, StoreInUse
from tests.integration.conftest import Postgres

pytestmark = pytest.mark.integration
OpenStore = Callable[..., Awaitable[IngressStore]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path
                     ) -> AsyncIterator[OpenStore]:
    """Opens a store (another replica's, for PostgreSQL) on this test's database; closes every
    one it opened at the end."""
    opened: list[IngressStore] = []
    if request.param == "postgresql":
        server: Postgres = request.getfixturevalue("postgres")
        url = server.create_database()

        async def open_(**options: float) -> IngressStore:
            store = await PostgresStore.open(url, pool_size=4, **options)  # type: ignore[arg-type]
            opened.append(store)
            return store
    else:
        async def open_(**options: float) -> IngressStore:
            store = SQLiteStore(tmp_path / "ingress.sqlite3", Durability.PROCESS,
                                **options)   # type: ignore[arg-type]
            opened.append(store)
            return store
    yield open_
    for store in opened:
        await store.aclose()


def record(key: str, state: RecordState = RecordState.PENDING, at: float = 0.0,
           epoch: int = 1, tenant: str = "t", updated_at: float | None = None) -> KeyRecord:
    return KeyRecord(tenant, key, f"s-{key}", "print", epoch, state,
                     created_at=at, updated_at=at if updated_at is None else updated_at)


async def test_a_record_and_a_route_come_back_as_saved(open_store: OpenStore) -> None:
    store = await open_store()
    done = KeyRecord("tenant-a", "k/1 ü", "sess-1", "f" * 64, 3, RecordState.DONE, 200,
                     {"status": "charging", "requested_kw": 11.5, "nested": {"a": [1, None]}},
                     1_700_000_000.25, 1_700_000_001.5)
    route = SessionRoute("sess-1", "tenant-a", "sub-1", "127.0.0.1:9101", "ev-1", "p",
                         1_700_000_001.75)
    await store.save(done, route)
    assert await store.record("tenant-a", "k/1 ü") == done
    assert await store.route("sess-1") == route
    # Keys belong to their tenant; unknown ones are None.
    assert await store.record("tenant-b", "k/1 ü") is None
    assert await store.route("sess-2") is None
    # A record alone and a route alone.
    await store.save(record("only-record"))
    await store.save(route=SessionRoute("sess-3", "t", "s", "a:1", "v", "p", 5.0))
    assert (await store.record("t", "only-record")) == record("only-record")
    assert (await store.route("sess-3")) is not None


async def test_claim_is_a_compare_and_set_on_the_epoch(open_store: OpenStore) -> None:
    store = await open_store()
    first = record("k", epoch=1)
    assert await store.claim(first, None) is True
    assert await store.claim(first, None) is False          # someone created it first
    second = record("k", epoch=2, at=5.0)
    assert await store.claim(second, 1) is True
    assert await store.claim(record("k", epoch=2, at=6.0), 1) is False   # epoch 2 is taken
    assert await store.record("t", "k") == second
    assert await store.claim(record("other", epoch=2), 1) is False      # no record to move


async def test_a_save_never_writes_over_a_newer_epoch(open_store: OpenStore) -> None:
    store = await open_store()
    await store.save(record("k", epoch=5))
    await store.save(record("k", RecordState.DONE, epoch=4, at=9.0))    # a superseded answer
    assert await store.record("t", "k") == record("k", epoch=5)
    settled = record("k", RecordState.ABSENT, epoch=5, at=10.0)
    await store.save(settled)                                           # its own epoch: yes
    assert await store.record("t", "k") == settled


async def test_pending_lists_due_unresolved_records_oldest_first_within_the_limit(
        open_store: OpenStore) -> None:
    store = await open_store()
    for key, state, at in (("p3", RecordState.PENDING, 30.0), ("p1", RecordState.PENDING, 10.0),
                           ("d", RecordState.DONE, 5.0), ("a", RecordState.ABSENT, 6.0),
                           ("p2", RecordState.PENDING, 20.0), ("young", RecordState.PENDING,
                                                                100.0)):
        await store.save(record(key, state, at=at))
    assert [r.key for r in await store.pending(50.0, 10)] == ["p1", "p2", "p3"]
    assert [r.key for r in await store.pending(50.0, 2)] == ["p1", "p2"]
    assert [r.key for r in await store.pending(20.0, 10)] == ["p1"]      # strictly before
    assert await store.pending(1.0, 10) == []
    assert (await store.pending(50.0, 1))[0] == record("p1", at=10.0)


async def test_counts_and_the_oldest_pending_record(open_store: OpenStore) -> None:
    store = await open_store()
    assert await store.counts() == {} and await store.oldest_pending_at() is None
    await store.save(record("p1", at=40.0, updated_at=90.0))
    await store.save(record("p2", at=30.0, updated_at=95.0))
    await store.save(record("d", RecordState.DONE, at=1.0))
    assert await store.counts() == {"pending": 2, "done": 1}
    assert await store.oldest_pending_at() == 30.0    # created, not last written


async def test_prune_drops_expired_and_excess_settled_records_never_a_pending_one(
        open_store: OpenStore) -> None:
    store = await open_store(key_ttl_s=100.0, max_keys=3)
    await store.save(record("old-pending", at=0.0))
    for key, state in (("old-done", RecordState.DONE), ("old-absent", RecordState.ABSENT)):
        await store.save(record(key, state, at=0.0))
    for i in range(4):
        await store.save(record(f"done-{i}", RecordState.DONE, at=1000.0 + i))
    await store.save(route=SessionRoute("old", "t", "s", "a:1", "v", "p", 0.0))
    await store.save(route=SessionRoute("new", "t", "s", "a:1", "v", "p", 1000.0))
    # 2 expired; then 5 left over a cap of 3: the 2 oldest settled ones go, not the pending one.
    assert await store.prune(now=1050.0) == 4
    kept = {r.key for r in await store.pending(10_000.0, 10)} | {
        k for k in ("done-0", "done-1", "done-2", "done-3", "old-done", "old-absent")
        if await store.record("t", k) is not None}
    assert kept == {"old-pending", "done-2", "done-3"}
    assert await store.route("new") is not None
    assert await store.route("old") is not None       # a week's TTL for routes
    assert await store.prune(now=8 * 24 * 3600.0) == 2
    assert await store.route("old") is None and await store.route("new") is None
    assert await store.record("t", "old-pending") is not None


async def test_the_key_lock_is_exclusive_and_released_after_its_holder(
        open_store: OpenStore) -> None:
    store = await open_store()
    async with store.key_lock("t", "k"):
        with pytest.raises(KeyBusy, match="'k'"):
            async with store.key_lock("t", "k"):
                pytest.fail("two holders of one key")
        async with store.key_lock("t", "other"), store.key_lock("t2", "k"):
            pass      # other keys, and the same key of another tenant, are free
    async with store.key_lock("t", "k"):
        pass          # released
    with pytest.raises(RuntimeError, match="boom"):
        async with store.key_lock("t", "k"):
            raise RuntimeError("boom")
    async with store.key_lock("t", "k"):
        pass          # released after a failure too


async def test_the_work_done_under_a_key_lock_is_seen_by_everyone(open_store: OpenStore
                                                                  ) -> None:
    store = await open_store()
    async with store.key_lock("t", "k"):
        assert await store.claim(record("k"), None)
        await store.save(record("k", RecordState.DONE))
    assert (await store.record("t", "k")) == record("k", RecordState.DONE)


# PostgreSQL alone: what a shared store adds.


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    return postgres.create_database()


async def test_the_key_lock_holds_across_replicas(pg_url: str) -> None:
    one = await PostgresStore.open(pg_url, pool_size=2)
    two = await PostgresStore.open(pg_url, pool_size=2)
    try:
        async with one.key_lock("t", "k"):
            with pytest.raises(KeyBusy):
                async with two.key_lock("t", "k"):
                    pytest.fail("two replicas hold one key")
            async with two.key_lock("t", "free"):
                pass
        async with two.key_lock("t", "k"):
            with pytest.raises(KeyBusy):
                async with one.key_lock("t", "k"):
                    pass
        # Many at once on two replicas: exactly one holder at any time.
        holders: list[int] = []
        overlaps: list[int] = []

        async def hold(store: PostgresStore) -> bool:
            try:
                async with store.key_lock("t", "race"):
                    holders.append(1)
                    overlaps.append(len(holders))
                    await asyncio.sleep(0.05)
                    holders.pop()
                return True
            except KeyBusy:
                return False
        won = await asyncio.gather(*(hold(s) for s in (one, two) * 2))
        assert max(overlaps) == 1 and any(won)
    finally:
        await one.aclose()
        await two.aclose()


async def test_the_lock_of_a_replica_that_died_is_released_with_its_connection(
        pg_url: str) -> None:
    one = await PostgresStore.open(pg_url, pool_size=1)
    two = await PostgresStore.open(pg_url, pool_size=2)
    try:
        async with one.key_lock("t", "k"):
            with pytest.raises(KeyBusy):
                async with two.key_lock("t", "k"):
                    pass
            # The holder's connection ends as a SIGKILLed replica's would.
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_locks "
                              "WHERE locktype = 'advisory' AND pid <> pg_backend_pid()")
            async with two.key_lock("t", "k"):
                pass                       # free at once, not after some lease
            with pytest.raises(StoreUnavailable):
                await one.record("t", "k")   # the holder finds out on its next use
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_lock_holder_works_on_its_own_connection_and_a_full_pool_says_so(
        pg_url: str) -> None:
    store = await PostgresStore.open(pg_url, pool_size=1, wait_s=0.5)
    try:
        async with store.key_lock("t", "k"):
            # The only connection holds the lock: the holder's own work still runs (on it) ...
            assert await store.claim(record("k"), None)
            assert await store.record("t", "k") == record("k")
            # ... and anyone else is told, within the wait, why nothing happened.
            with pytest.raises(StoreUnavailable, match=r"no connection within 0\.5 s \(this "
                                                       r"replica's 1 are all in use"):
                async with store.key_lock("t", "other"):
                    pass
        async with store.key_lock("t", "other"):
            pass
    finally:
        await store.aclose()


async def test_migrations_are_versioned_and_applied_once(pg_url: str) -> None:
    first = await PostgresStore.open(pg_url)
    await first.save(record("kept"))
    assert await first.migrate() == []            # nothing left to apply
    await first.aclose()
    again = await PostgresStore.open(pg_url)      # a restart keeps the data
    try:
        assert await again.record("t", "kept") == record("kept")
    finally:
        await again.aclose()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version"
                            ).fetchall()
    assert rows == [(m.version, m.name) for m in PG_MIGRATIONS]


async def test_replicas_starting_together_apply_each_version_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(pg_url, pool_size=1) for _ in range(3)))
    for store in stores:
        await store.aclose()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations").fetchall()
    assert sorted(v for (v,) in rows) == [m.version for m in PG_MIGRATIONS]


async def test_a_database_migrated_by_a_newer_release_is_refused(pg_url: str) -> None:
    await (await PostgresStore.open(pg_url)).aclose()
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'future')")
    with pytest.raises(SchemaTooNew, match=r"schema version 99 was applied by a newer release"):
        await PostgresStore.open(pg_url)


async def test_a_database_that_cannot_be_reached_is_store_unavailable_without_password(
        ) -> None:
    url = f"postgresql://grid:s3cret@127.0.0.1:{free_port()}/grid"
    with pytest.raises(StoreUnavailable, match=r"cannot connect to postgresql://grid@127\.0\."
                                               r"0\.1:\d+/grid") as err:
        await PostgresStore.open(url, wait_s=1.0)
    assert "s3cret" not in str(err.value)


async def test_broken_connections_are_replaced_after_one_failure(pg_url: str) -> None:
    store = await PostgresStore.open(pg_url, pool_size=3)
    try:
        await asyncio.gather(*(store.record("t", str(i)) for i in range(6)))   # open several
        with psycopg.connect(pg_url, autocommit=True) as admin:    # as a restart would
            admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE "
                          "application_name = 'gridlb-ingress'")
        failed = 0
        for _ in range(10):
            try:
                await store.record("t", "k")
            except StoreUnavailable:
                failed += 1
                await asyncio.sleep(0.2)       # the pool checks and replaces the rest
        assert 1 <= failed <= 2
        assert await store.record("t", "k") is None
    finally:
        await store.aclose()


# SQLite alone: the databases of the release before versioning.


async def test_a_sqlite_database_from_before_versioning_is_adopted_not_dropped(
        tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        for statement in SQLITE_MIGRATIONS[0].statements:
            db.execute(statement)
        db.execute("INSERT INTO key_records VALUES ('t', 'k', 's', 'f', 2, 'done', 200, "
                   "'{\"a\": 1}', 1.0, 2.0)")
        db.execute("CREATE TABLE idempotency (key TEXT)")     # the first release's table
    db.close()
    store = SQLiteStore(path)
    try:
        assert await store.record("t", "k") == KeyRecord("t", "k", "s", "f", 2,
                                                        RecordState.DONE, 200, {"a": 1},
                                                        1.0, 2.0)
    finally:
        await store.aclose()
    SQLiteStore(path).close()             # opened again: nothing more to apply
    with sqlite3.connect(path) as db:
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = db.execute("SELECT version, name FROM schema_migrations").fetchall()
    db.close()
    assert "idempotency" in tables
    assert versions == [(m.version, m.name) for m in SQLITE_MIGRATIONS]


def test_a_sqlite_database_migrated_by_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (7, 'future', 0)")
    db.close()
    with pytest.raises(SchemaTooNew, match=rf"{path}: schema version 7 was applied by a newer "
                                           r"release of the ingress \(this one knows up to 1\)"):
        SQLiteStore(path)


def test_one_sqlite_file_serves_one_process_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "ingress.sqlite3"
    first = SQLiteStore(path)
    try:
        # Another process (here: another opening) is refused, naming the file and the way out.
        with pytest.raises(StoreInUse, match=rf"{path} is in use by another ingress process: .*"
                                             r"--store-url postgresql://"):
            SQLiteStore(path)
    finally:
        first.close()
    second = SQLiteStore(path)              # free again once the first is closed
    second.close()
    # A process that dies holds nothing: the kernel drops its lock.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from ingress.stores.sqlite import SQLiteStore; "
        f"SQLiteStore({str(path)!r}); print('open', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreInUse):
            SQLiteStore(path)
    finally:
        holder.kill()
        holder.communicate(timeout=10)     # reaps it and closes its pipe
    SQLiteStore(path).close()
