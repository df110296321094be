"""Calling the balancer replicas: one per session id while it answers, the next when it cannot.

Rendezvous hashing keeps every dispatch of a session id on the same replica, so a retry meets the
dispatch it follows (which it waits for, balancer/inflight.py) instead of running beside it; if
that replica cannot be reached (nothing was sent), the next one in the session's order takes it,
and the substations' fences keep the placement safe (balancer/placement.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


def replica_order(urls: Sequence[str], session_id: str) -> list[str]:
    """The replicas in the order this session id tries them (highest random weight first)."""
    def weight(url: str) -> bytes:
        return hashlib.sha256(f"{url}\n{session_id}".encode()).digest()
    return sorted(urls, key=weight, reverse=True)


@dataclass(frozen=True)
class BalancerAnswer:
    """What came back: an HTTP answer (`status` > 0), or why none did."""

    status: int = 0
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    failure: str = ""            # "unreachable" (nothing sent anywhere) or "timeout"/"error"
    detail: str = ""


async def dispatch(session: aiohttp.ClientSession, urls: Sequence[str],
                   payload: dict[str, Any], headers: Mapping[str, str], timeout_s: float
                   ) -> BalancerAnswer:
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout_s
    errors: list[str] = []
    for url in replica_order(urls, str(payload.get("session_id", ""))):
        left = until - loop.time()
        if left <= 0:
            return BalancerAnswer(failure="timeout", detail="no time left")
        try:
            async with session.post(f"{url}/dispatch", data=orjson.dumps(payload),
                                    headers={"Content-Type": "application/json", **headers},
                                    timeout=aiohttp.ClientTimeout(total=left)) as resp:
                raw = await resp.read()
                answer_headers = {k: v for k, v in resp.headers.items()
                                  if k.lower() == "retry-after"}
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            errors.append(f"{url}: {exc}")    # nothing was sent: the next replica may take it
            continue
        except asyncio.TimeoutError:
            return BalancerAnswer(failure="timeout", detail=f"{url} did not answer in time")
        except aiohttp.ClientError as exc:
            return BalancerAnswer(failure="error", detail=f"{url}: {type(exc).__name__}")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        return BalancerAnswer(status, body, answer_headers)
    return BalancerAnswer(failure="unreachable", detail="; ".join(errors) or "no balancer")
