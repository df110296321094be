"""One dispatch per session id at a time in this balancer.

A second dispatch of a session whose first is still running (the ingress gave up on the first
and the client retried) waits for the first to end, within its own deadline, and then resolves
where the session is; it never runs beside it. Across balancer replicas the substations' fences
keep the same promise (balancer/placement.py).
"""

from __future__ import annotations

import asyncio


class InFlight:
    def __init__(self) -> None:
        self._running: dict[str, asyncio.Event] = {}

    async def acquire(self, session_id: str, wait_s: float) -> bool:
        """True once no other dispatch of `session_id` runs here (the caller must `release`);
        False if one still runs after `wait_s` seconds."""
        loop = asyncio.get_running_loop()
        until = loop.time() + wait_s
        while (running := self._running.get(session_id)) is not None:
            left = until - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(running.wait(), left)
            except asyncio.TimeoutError:
                return False
        self._running[session_id] = asyncio.Event()
        return True

    def release(self, session_id: str) -> None:
        event = self._running.pop(session_id, None)
        if event is not None:
            event.set()

    def __len__(self) -> int:
        return len(self._running)
