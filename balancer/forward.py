"""The balancer's HTTP client for substations: the transport under the placement protocol.

It only reports what happened on the wire (`Reply`); what an answer means is decided in one place,
`balancer/placement.py`.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import aiohttp
import orjson

from balancer.placement import Reply
from gridlb.charge import SessionCharge
from gridlb.logs import request_id_headers


class HttpSubstations:
    """`SubstationClient` over one pooled aiohttp session; instances are `host:port`."""

    def __init__(self, session: aiohttp.ClientSession, token: str | None) -> None:
        self.session = session
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    async def charge(self, instance: str, charge: SessionCharge, timeout_s: float) -> Reply:
        return await self._call(f"http://{instance}/charge", charge.to_json(), timeout_s)

    async def fence(self, instance: str, session_id: str, epoch: int, timeout_s: float
                    ) -> Reply:
        # The id is the client's text: quoted, so no id can reach another path.
        path = urllib.parse.quote(session_id, safe="")
        return await self._call(f"http://{instance}/sessions/{path}/fence", {"epoch": epoch},
                                timeout_s)

    async def _call(self, url: str, payload: dict[str, Any], timeout_s: float) -> Reply:
        try:
            async with self.session.post(url, data=orjson.dumps(payload),
                                         headers=request_id_headers(self.headers),
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            return Reply(sent=False, detail=str(exc))
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            return Reply(sent=True, detail=f"{type(exc).__name__}: {exc}")
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        return Reply(sent=True, status=status, body=body if isinstance(body, dict) else {},
                     detail=f"HTTP {status}")
