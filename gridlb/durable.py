"""SQLite writes that are on disk before anyone is told they happened, without an fsync each.

Group commit, as databases do it: writes submitted from the event loop queue up while the
previous group is being committed; the writer thread commits each group in one transaction
(`synchronous=FULL` in WAL mode: one fsync per group), then every caller in the group is answered.
Under load a group holds many writes, so durability costs a few hundred microseconds of latency
rather than one fsync per request. Reads use a second connection on the event loop's thread (WAL
lets it read while the writer writes) and see every write whose `write()` has returned.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Write = Callable[[sqlite3.Connection], Any]
_memory_ids = itertools.count()


class Durability(str, Enum):
    """What a confirmed write survives."""

    FULL = "full"        # a power loss or OS crash (fsync per commit group)
    PROCESS = "process"  # a crash of the process, not of the machine (synchronous=NORMAL)


@dataclass
class _Pending(Generic[T]):
    write: Callable[[sqlite3.Connection], T]
    done: asyncio.Future[T]


class FileDelay:
    """A slow disk for tests and the nemesis (tests/nemesis/), injectable into a running process:
    each commit first sleeps the milliseconds written in `path` (absent, empty or not a number:
    none). The file is read again only when it changes, so a commit costs one stat."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self.delay_s = 0.0

    def __call__(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError:
            self._stamp, self.delay_s = None, 0.0
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                ms = float(self.path.read_text().strip() or 0)
                # At most a minute (and no inf or NaN): slow, never hung for good.
                self.delay_s = min(60.0, ms / 1000.0) if ms > 0 else 0.0
            except (OSError, ValueError):
                self.delay_s = 0.0
        if self.delay_s > 0:
            time.sleep(self.delay_s)   # the writer thread's, as a slow fsync would


class GroupCommitDB:
    def __init__(self, path: str | Path, schema: str,
                 durability: Durability = Durability.FULL,
                 before_commit: Callable[[], None] | None = None) -> None:
        if str(path) == ":memory:":
            # Two connections must see one database: a named in-memory database, shared.
            uri = f"file:gridlb-memory-{next(_memory_ids)}?mode=memory&cache=shared"
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            uri = f"file:{Path(path).resolve()}"
        self.durability = durability
        self._writer = sqlite3.connect(uri, uri=True, isolation_level=None,
                                       check_same_thread=False)
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.execute("PRAGMA synchronous=" +
                             ("FULL" if durability is Durability.FULL else "NORMAL"))
        self._writer.executescript(schema)
        self.reader = sqlite3.connect(uri, uri=True, isolation_level=None,
                                      check_same_thread=False)
        self._queue: asyncio.Queue[_Pending[Any] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.groups_committed = 0
        self.writes_committed = 0
        # Runs in the writer thread after a group's writes, before its COMMIT: a slow or failing
        # disk for tests (FileDelay); what it raises fails the whole group.
        self.before_commit = before_commit

    def write_now(self, write: Write) -> Any:
        """A synchronous write, for start-up and shutdown (no event loop running the writer)."""
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            result = write(self._writer)
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise
        self._writer.execute("COMMIT")
        return result

    def submit(self, write: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue `write` for the next commit group now (writes commit in the order they are
        submitted); the future is done once its group is on disk."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._commit_groups(), name="sqlite-group-commit")
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(write, done))
        return done

    async def write(self, write: Callable[[sqlite3.Connection], T]) -> T:
        """Run `write` in the next commit group; return once that group is on disk."""
        return await self.submit(write)

    async def _commit_groups(self) -> None:
        assert self._queue is not None
        stopping = False
        while not stopping:
            group: list[_Pending[Any]] = []
            item = await self._queue.get()
            while True:
                if item is None:
                    stopping = True   # commit what came before the stop, then end
                else:
                    group.append(item)
                if self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if not group:
                continue
            try:
                outcomes = await asyncio.to_thread(self._commit, group)
            except Exception as exc:   # the commit itself failed: nobody's write is durable
                outcomes = [exc] * len(group)
            for pending, outcome in zip(group, outcomes, strict=True):
                if pending.done.done():
                    continue
                if isinstance(outcome, BaseException):
                    pending.done.set_exception(outcome)
                else:
                    pending.done.set_result(outcome)

    def _commit(self, group: list[_Pending[Any]]) -> list[Any]:
        outcomes: list[Any] = []
        # isolation_level=None is autocommit: without BEGIN every statement is its own commit.
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            for pending in group:
                # A savepoint each: one failing write does not undo the others in its group.
                self._writer.execute("SAVEPOINT one_write")
                try:
                    outcomes.append(pending.write(self._writer))
                except Exception as exc:
                    self._writer.execute("ROLLBACK TO one_write")
                    outcomes.append(exc)
                self._writer.execute("RELEASE one_write")
            if self.before_commit is not None:
                self.before_commit()
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise
        self._writer.execute("COMMIT")
        self.groups_committed += 1
        self.writes_committed += len(group)
        return outcomes

    async def aclose(self) -> None:
        """Commit what is queued, stop the writer, close both connections."""
        if self._task is not None and self._queue is not None:
            self._queue.put_nowait(None)
            await self._task
        self.close()

    def close(self) -> None:
        self.reader.close()
        self._writer.close()
