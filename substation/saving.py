"""Durable before visible: the admissions being saved, so that whoever asks about one waits.

A new session is reserved in the table (substation/charging.py), saved, and confirmed only once
its row is on disk. Each save runs as its own task, so a handler cancelled mid-save (a client
gone, a shutdown) never leaves a session reserved for good or confirmed without its answer: the
task confirms or withdraws it whatever happens to the request that started it. A repeat of the
session, a fence, a read or a stop of it waits here first; views of the whole substation (the
load, `/sessions`, `/status`, `/metrics`) show only confirmed sessions and need not wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Saves:
    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    async def run(self, session_id: str, save: Coroutine[Any, Any, None]) -> None:
        """Run `save` (which confirms or withdraws the session) as a task others can wait for;
        return when it is done, raising what it raised."""
        task = asyncio.create_task(save, name=f"save-{session_id}")
        self.tasks[session_id] = task
        task.add_done_callback(lambda t: self._done(session_id, t))
        await asyncio.shield(task)

    def _done(self, session_id: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(session_id) is task:
            del self.tasks[session_id]
        if not task.cancelled():
            task.exception()   # retrieved: a failed save is answered, not logged as lost

    async def settled(self, session_id: str) -> None:
        """Until no save of this session is running (confirmed or withdrawn). Loops: another
        admission of the same id may have begun by the time this one wakes up."""
        while (task := self.tasks.get(session_id)) is not None:
            await asyncio.wait([task])

    async def all_settled(self) -> None:
        """Until every save started so far is done (at shutdown, before the store closes)."""
        while self.tasks:
            await asyncio.wait(list(self.tasks.values()))
