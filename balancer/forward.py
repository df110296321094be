"""Forwarding a charge to a substation, and the rule for failures.

The rule: a session id is never placed on a second substation while the first may hold it.
- Connection refused (nothing was sent): safe to try the next substation.
- A refusal (409 over_capacity): the substation said no; try the next.
- Anything ambiguous (timeout or reset after sending, 5xx): the substation may have admitted it.
  Ask the same substation again with the same session id (its repeat detection makes that
  idempotent). If that is still ambiguous, cancel the id there (DELETE leaves a tombstone, so a
  late copy of the request cannot start it); only once the cancel is acknowledged is the request
  free to go elsewhere. If even the cancel fails, the outcome is unknown and is reported as such
  (the client may retry with its Idempotency-Key).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


class Outcome(str, enum.Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"          # the substation answered no (capacity, conflict, bad input)
    UNREACHABLE = "unreachable"  # nothing reached the substation
    CANCELLED = "cancelled"      # it may have been reached, but it acknowledged the cancel
    AMBIGUOUS = "ambiguous"      # it may or may not have admitted the session


@dataclass(frozen=True)
class ForwardResult:
    outcome: Outcome
    status: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    detail: str = ""


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def _call(session: aiohttp.ClientSession, method: str, url: str, token: str | None,
                timeout_s: float, payload: bytes | None = None) -> ForwardResult:
    try:
        async with session.request(method, url, data=payload, headers=_headers(token),
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            raw = await resp.read()
            status = resp.status
    except aiohttp.ClientConnectorError as exc:
        return ForwardResult(Outcome.UNREACHABLE, detail=str(exc))
    except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
        return ForwardResult(Outcome.AMBIGUOUS, detail=f"{type(exc).__name__}: {exc}")
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if status == 200:
        return ForwardResult(Outcome.ACCEPTED, status, body)
    if 400 <= status < 500 and status not in (401, 403, 408, 429):
        return ForwardResult(Outcome.REFUSED, status, body, str(body.get("error", status)))
    return ForwardResult(Outcome.AMBIGUOUS, status, body, f"HTTP {status}")


async def place_session(session: aiohttp.ClientSession, address: str, charge: dict[str, Any],
                        token: str | None, timeout_s: float) -> ForwardResult:
    """Place one session on one substation, settling ambiguity there before returning."""
    url = f"http://{address}/charge"
    payload = orjson.dumps(charge)
    result = await _call(session, "POST", url, token, timeout_s, payload)
    if result.outcome is not Outcome.AMBIGUOUS:
        return result
    retry = await _call(session, "POST", url, token, timeout_s, payload)
    if retry.outcome is not Outcome.AMBIGUOUS and retry.outcome is not Outcome.UNREACHABLE:
        return retry
    cancel = await _call(session, "DELETE", f"http://{address}/sessions/{charge['session_id']}",
                         token, timeout_s)
    if cancel.outcome is Outcome.ACCEPTED or cancel.status == 404:
        return ForwardResult(Outcome.CANCELLED, detail=f"cancelled after: {result.detail}")
    return ForwardResult(Outcome.AMBIGUOUS, detail=result.detail)
