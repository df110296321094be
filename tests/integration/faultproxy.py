"""A TCP proxy on loopback in front of one service, for faults no signal can time exactly.

`on_response`: when the service has answered a request whose first line starts with the given
prefix, call a hook (e.g. SIGKILL the service) and drop the answer, so the caller sees its
request sent and no answer: a service that admitted a session and died before answering.
Everything else passes through untouched (Prometheus scrapes the service through it).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from gridlb.stack import free_port


class FaultProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.upstream_port = upstream_port
        self.drop_after: tuple[bytes, Callable[[], None]] | None = None
        self.dropped = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, self.host, self.port), self._loop).result(5)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def on_response(self, request_prefix: bytes, hook: Callable[[], None]) -> None:
        """The next answer to a request starting with `request_prefix` is dropped and `hook`
        runs first; only once."""
        self.drop_after = (request_prefix, hook)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._pipe(reader, writer)
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            return
        last_request = bytearray()

        async def client_to_upstream() -> None:
            while data := await reader.read(65536):
                last_request[:] = data[:64]
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def upstream_to_client() -> None:
            while data := await up_reader.read(65536):
                rule = self.drop_after
                if rule is not None and bytes(last_request).startswith(rule[0]):
                    self.drop_after = None
                    self.dropped += 1
                    rule[1]()
                    writer.transport.abort()        # reset: the caller gets no answer
                    return
                writer.write(data)
                await writer.drain()
            writer.close()

        try:
            with contextlib.suppress(OSError):
                await asyncio.gather(client_to_upstream(), upstream_to_client())
        finally:
            up_writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await up_writer.wait_closed()
