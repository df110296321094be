"""Group commit (gridlb/durable.py): what a confirmed write survives."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gridlb.durable import Durability, FileDelay, GroupCommitDB

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"


@pytest.mark.parametrize(("durability", "synchronous"), [(Durability.FULL, 2),
                                                         (Durability.PROCESS, 1)])
async def test_full_durability_fsyncs_each_commit_group(tmp_path: Path, durability: Durability,
                                                        synchronous: int) -> None:
    db = GroupCommitDB(tmp_path / "db.sqlite3", SCHEMA, durability)
    # synchronous=FULL (2) in WAL mode syncs the log at every commit: a power loss keeps what
    # was confirmed. NORMAL (1) survives a crash of the process only. A per-connection
    # setting, so it is read from the writer itself.
    assert db._writer.execute("PRAGMA synchronous").fetchone()[0] == synchronous
    assert db._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await db.aclose()


async def test_a_write_is_committed_when_it_returns_and_groups_share_a_commit(
        tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    db = GroupCommitDB(path, SCHEMA)

    def put(k: str) -> Callable[[sqlite3.Connection], int]:
        return lambda c: c.execute("INSERT INTO t VALUES (?, 1)", (k,)).rowcount
    await db.write(put("first"))
    # A fresh connection, as after a crash: the confirmed write is there.
    with contextlib.closing(sqlite3.connect(path)) as other:
        assert other.execute("SELECT k FROM t").fetchall() == [("first",)]
    results = await asyncio.gather(*(db.write(put(f"k{i}")) for i in range(20)))
    assert results == [1] * 20
    assert db.writes_committed == 21 and db.groups_committed < 21
    await db.aclose()


async def test_a_file_delay_slows_each_commit_by_the_milliseconds_it_holds(tmp_path: Path
                                                                          ) -> None:
    fault = tmp_path / "fault"
    delay = FileDelay(fault)
    db = GroupCommitDB(tmp_path / "db.sqlite3", SCHEMA, before_commit=delay)

    async def timed_write(k: str) -> float:
        started = time.monotonic()
        await db.write(lambda c: c.execute("INSERT INTO t VALUES (?, 1)", (k,)))
        return time.monotonic() - started
    await timed_write("no file")
    assert delay.delay_s == 0.0
    fault.write_text("150")
    assert await timed_write("slow") >= 0.15
    # Changed while running: read again at the next commit.
    fault.write_text("0\n")
    assert await timed_write("fast again") < 0.15 and delay.delay_s == 0.0
    for text in ("soon", "nan", "-20", ""):
        fault.write_text(text)
        await timed_write(f"odd {text!r}")
        assert delay.delay_s == 0.0, text
    fault.unlink()
    await timed_write("file gone")
    assert delay.delay_s == 0.0
    await db.aclose()
    with contextlib.closing(sqlite3.connect(tmp_path / "db.sqlite3")) as other:
        assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 8


async def test_a_failing_disk_fails_the_whole_group_and_keeps_nothing(tmp_path: Path) -> None:
    failures = [sqlite3.OperationalError("disk I/O error")]

    def failing() -> None:
        if failures:
            raise failures.pop()
    db = GroupCommitDB(tmp_path / "db.sqlite3", SCHEMA, before_commit=failing)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        await db.write(lambda c: c.execute("INSERT INTO t VALUES ('lost', 1)"))
    await db.write(lambda c: c.execute("INSERT INTO t VALUES ('kept', 1)"))
    await db.aclose()
    with contextlib.closing(sqlite3.connect(tmp_path / "db.sqlite3")) as other:
        assert other.execute("SELECT k FROM t").fetchall() == [("kept",)]
