"""The reconciler: resolves idempotency records whose outcome is unknown, in the background.

A PENDING record (ingress/idempotency.py) means a charge may have started somewhere. Left alone it
waits for its client's retry, which may never come or come late: after the session ended and its
substation forgot it (10 minutes after the end), a retry would find it nowhere and charge the
vehicle again. So every few seconds the reconciler takes the PENDING records nobody is answering
right now, oldest first and a bounded batch, and asks the balancer to resolve each one (`POST
/resolve`: fence every substation it may be at, at the next epoch, placing nothing). The answer
moves the record by the same evidence rules as a client's dispatch: found -> DONE (a retry replays
what was found), absent everywhere -> ABSENT (a retry places it, and no older copy can start it any
more), anything else -> still PENDING, tried again next round.

Each record is resolved under its key lock, taken without waiting (ingress/store.py): a record
whose client is being answered now, or that another ingress replica is resolving, is skipped, so
no two replicas resolve one record at once; and a record written since the listing (another
replica settled or retried it) is left for the next round.

Plain code over small Protocols; the loop that calls `round` lives in ingress/app.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from ingress.answers import client_answer
from ingress.balancers import BalancerAnswer
from ingress.idempotency import (
    Evidence,
    KeyRecord,
    after_answer,
    evidence_of,
    reconcile_step,
)
from ingress.store import KeyBusy, SessionRoute

log = logging.getLogger(__name__)


class PendingStore(Protocol):
    async def pending(self, updated_before: float, limit: int) -> list[KeyRecord]: ...

    async def record(self, tenant: str, key: str) -> KeyRecord | None: ...

    async def claim(self, record: KeyRecord, previous_epoch: int | None) -> bool: ...

    def key_lock(self, tenant: str, key: str) -> AbstractAsyncContextManager[None]: ...

    async def save(self, record: KeyRecord | None = None, route: SessionRoute | None = None
                   ) -> None: ...


# record (already written at its new epoch) -> the balancer's answer to POST /resolve
Resolve = Callable[[KeyRecord], Awaitable[BalancerAnswer]]


class Reconciler:
    def __init__(self, store: PendingStore, resolve: Resolve, clock: Callable[[], float], *,
                 min_age_s: float = 2.0, batch: int = 200, concurrency: int = 8) -> None:
        self.store = store
        self.resolve = resolve
        self.clock = clock
        # A record written less than this ago may belong to a client that is retrying now.
        self.min_age_s = min_age_s
        self.batch = batch
        self._limit = asyncio.Semaphore(concurrency)

    async def round(self) -> Counter[str]:
        """Try every due PENDING record once; how many ended found/absent/pending/skipped."""
        due = await self.store.pending(self.clock() - self.min_age_s, self.batch)
        results = await asyncio.gather(*(self._one(record) for record in due))
        return Counter(results)

    async def _one(self, due: KeyRecord) -> str:
        async with self._limit:
            try:
                async with self.store.key_lock(due.tenant, due.key):
                    return await self._resolve(due)
            except KeyBusy:
                # Its client is being answered (that settles it), or another replica is
                # resolving it.
                return "skipped"

    async def _resolve(self, due: KeyRecord) -> str:
        # Again, under the lock: it may have settled, or been retried, since the listing.
        before = await self.store.record(due.tenant, due.key)
        if before is None or before.epoch != due.epoch:
            return "skipped"
        record = reconcile_step(before, self.clock())
        if record is None:
            return "skipped"
        # The new epoch, before any fence carries it; not if someone took it meanwhile.
        if not await self.store.claim(record, before.epoch):
            return "skipped"
        answer = await self.resolve(record)
        response, status, _ = client_answer(answer, record.session_id)
        evidence = evidence_of(answer.failure, answer.status, answer.body, resolve=True)
        settled = after_answer(before, record, evidence, status, response, self.clock())
        route = _route(record.tenant, response, answer.body, self.clock()) \
            if evidence is Evidence.FOUND else None
        await self.store.save(settled, route)
        if evidence is not Evidence.MAY_EXIST and evidence is not Evidence.NOTHING_SENT:
            log.info("reconciled key %r of %s: %s (%s)", record.key, record.tenant,
                     settled.state.value, response.get("status") or response.get("error"))
        return {Evidence.FOUND: "found", Evidence.ABSENT: "absent"}.get(evidence, "pending")


def _route(tenant: str, response: dict[str, Any], body: dict[str, Any], now: float
           ) -> SessionRoute:
    """Where a session the resolve found is (FOUND answers are JSON objects: evidence_of)."""
    session = body.get("session")
    vehicle = session.get("vehicle_id") if isinstance(session, dict) else None
    return SessionRoute(str(response["session_id"]), tenant, str(response["substation"]),
                        str(response["routed_to"]), str(vehicle or ""),
                        str(response.get("policy")), now)
