"""Calling the balancer replicas: one per session id while it answers, the next when it cannot.

Rendezvous hashing keeps every dispatch of a session id on the same replica, so a retry meets the
dispatch it follows (which it waits for, balancer/inflight.py) instead of running beside it; if
that replica cannot be reached (nothing was sent), the next one in the session's order takes it,
and the substations' fences keep the placement safe (balancer/placement.py).

A balancer URL whose host is a name stands for every IPv4 address the name has (its A records):
Compose's `--scale balancer=N` gives the service name one A record per replica. `BalancerReplicas`
keeps that expansion, re-resolved in the background; between two resolutions a replica that went
away is skipped because it refuses (or does not accept) the connection, before anything is sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp
import orjson

from gridlb.errors import ErrorCode
from gridlb.logs import request_id_headers

log = logging.getLogger(__name__)

# How long a replica may take to accept a connection when another one is left to try: a
# connection is accepted in well under a millisecond here, so a replica that takes a second is
# gone (an address left over from the last resolution) or has a full accept queue.
CONNECT_TIMEOUT_S = 1.0

# (host name, port) -> the name's addresses; raises OSError when it cannot be resolved.
Resolve = Callable[[str, int], Awaitable[Sequence[str]]]


async def resolve_a_records(host: str, port: int) -> list[str]:
    """The IPv4 addresses of `host`, as this machine's resolver gives them (/etc/hosts, DNS)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _named_host(url: str) -> SplitResult | None:
    """The URL's parts when its host is a name to expand; None for an address or https (whose
    certificate names the host, not its addresses)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        return parts
    return None


class BalancerReplicas:
    """The balancer URLs to spread sessions over: the configured ones, each one with a host name
    replaced by one URL per address of the name at its last successful resolution. Until a name
    has resolved once its URL is used as configured; a failed resolution keeps the last good one."""

    def __init__(self, configured: Sequence[str], resolve: Resolve = resolve_a_records) -> None:
        self.configured = tuple(configured)
        self._resolve = resolve
        self._named = {url: parts for url in self.configured
                       if (parts := _named_host(url)) is not None}
        self._expanded: dict[str, tuple[str, ...]] = {}
        self.problems: dict[str, str] = {}        # configured URL -> why its last resolution failed

    @property
    def has_names(self) -> bool:
        return bool(self._named)

    def urls(self) -> tuple[str, ...]:
        expanded = (u for url in self.configured for u in self._expanded.get(url, (url,)))
        return tuple(dict.fromkeys(expanded))     # one address named twice is one replica

    async def refresh(self, timeout_s: float = 5.0) -> None:
        for url, parts in self._named.items():
            try:
                addresses = sorted(set(await asyncio.wait_for(
                    self._resolve(parts.hostname or "", parts.port or 80), timeout_s)))
                if not addresses:
                    raise OSError("no IPv4 address")
            except (OSError, asyncio.TimeoutError) as exc:
                reason = str(exc) or f"no answer within {timeout_s:g} s"
                if self.problems.get(url) != reason:
                    log.warning("cannot resolve the balancer %s (%s); using %s", url, reason,
                                ", ".join(self._expanded.get(url, (url,))))
                self.problems[url] = reason
                continue
            self.problems.pop(url, None)
            expanded = tuple(parts._replace(netloc=f"{a}:{parts.port or 80}").geturl()
                             for a in addresses)
            if expanded != self._expanded.get(url):
                log.info("balancer %s: %d replica(s): %s", url, len(expanded), ", ".join(expanded))
            self._expanded[url] = expanded


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
                   payload: dict[str, Any], headers: Mapping[str, str], timeout_s: float,
                   path: str = "/dispatch") -> BalancerAnswer:
    """POST `payload` to `path` of the session's replica (the next ones only when nothing could
    be sent): /dispatch places a charge, /resolve only finds where a session is."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout_s
    errors: list[str] = []
    not_ready: BalancerAnswer | None = None
    order = replica_order(urls, str(payload.get("session_id", "")))
    for i, url in enumerate(order):
        left = until - loop.time()
        if left <= 0:
            return BalancerAnswer(failure="timeout", detail="no time left")
        # The last replica gets all the time left, connecting included.
        connect_s = min(left, CONNECT_TIMEOUT_S) if i < len(order) - 1 else None
        try:
            async with session.post(f"{url}{path}", data=orjson.dumps(payload),
                                    headers={"Content-Type": "application/json", **headers},
                                    timeout=aiohttp.ClientTimeout(total=left,
                                                                  sock_connect=connect_s)
                                    ) as resp:
                raw = await resp.read()
                answer_headers = {k: v for k, v in resp.headers.items()
                                  if k.lower() == "retry-after"}
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            errors.append(f"{url}: {exc}")    # nothing was sent: the next replica may take it
            continue
        except aiohttp.ConnectionTimeoutError:
            errors.append(f"{url}: no connection within {connect_s or left:.1f} s")  # nor here
            continue
        except asyncio.TimeoutError:
            return BalancerAnswer(failure="timeout", detail=f"{url} did not answer in time")
        except aiohttp.ClientError as exc:
            return BalancerAnswer(failure="error", detail=f"{url}: {type(exc).__name__}")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        answer = BalancerAnswer(status, body, answer_headers)
        if not_ready_yet(answer):
            # A replica that has not read Prometheus yet (just restarted) did nothing with the
            # charge: another one may place it now.
            not_ready = answer
            continue
        return answer
    if not_ready is not None:
        return not_ready
    return BalancerAnswer(failure="unreachable", detail="; ".join(errors) or "no balancer")


def not_ready_yet(answer: BalancerAnswer) -> bool:
    return answer.status == 503 and isinstance(answer.body, dict) and \
        answer.body.get("error") == ErrorCode.NO_SNAPSHOT


async def locate_substation(session: aiohttp.ClientSession, urls: Sequence[str], name: str,
                            timeout_s: float = 2.0) -> str | None:
    """The address substation `name` has now, as the first balancer that answers knows it from
    Prometheus (its `/policy` view); None when none knows it. Substations can move: Compose gives
    recreated containers new addresses, an operator replaces a machine."""
    for url in urls:
        try:
            async with session.get(f"{url}/policy", headers=request_id_headers(),
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if resp.status != 200:
                    continue
                view = orjson.loads(await resp.read())
        except (asyncio.TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
            continue
        rows = view.get("substations") if isinstance(view, dict) else None
        for row in rows if isinstance(rows, list) else ():
            if isinstance(row, dict) and row.get("substation") == name and row.get("up"):
                instance = row.get("instance")
                return instance if isinstance(instance, str) else None
        return None
    return None
