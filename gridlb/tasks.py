"""Background tasks owned by an aiohttp app: started with it, cancelled and awaited at cleanup.

Every service has loops (the policy refresh, the charging simulation, store pruning); each is one
`cleanup_ctx` entry made here, so none is left running or dies unnoticed at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def background(run: Callable[[web.Application], Coroutine[Any, Any, None]], name: str
               ) -> CleanupContext:
    """A cleanup context running `run(app)` as a task for the app's lifetime."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run(app), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
