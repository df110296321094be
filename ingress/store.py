"""What the ingress must remember across restarts and share between its replicas: each
idempotency key's record (ingress/idempotency.py), where each session went, per tenant, and who
is answering a key right now.

This module is the contract; two implementations keep it (ingress/stores/): SQLite, embedded, for
one ingress process (the default), and PostgreSQL, shared by any number of ingress replicas
(`--store-url postgresql://...`). tests/integration/test_store_contract.py runs one suite against
both.

The rules every store keeps:
- a write is durable when its call returns (the record is on disk before its dispatch starts and
  before its answer is sent);
- `claim` is the only way a new epoch is written, and it is a compare-and-set on the stored epoch:
  two writers that read the same record cannot both claim its next epoch (so two dispatches never
  share an epoch, even if a key lock was lost with a database restart);
- `save` never writes a record over one of a newer epoch (a late settle of a superseded dispatch
  changes nothing);
- `prune` never drops a PENDING record;
- `key_lock` is held by one request or reconciler task at a time across every process that shares
  the store, and is released if its holder dies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from ingress.idempotency import KeyRecord


@dataclass(frozen=True)
class SessionRoute:
    session_id: str
    tenant: str
    substation: str
    routed_to: str
    vehicle_id: str
    policy: str
    created_at: float


class KeyBusy(Exception):
    """Another request (on this replica or another) holds the key's lock."""


class StoreUnavailable(Exception):
    """The store cannot be reached or failed to commit: nothing asked of it is known to have
    happened (the answer is 503 `store_unavailable`)."""


class IngressStore(Protocol):
    async def record(self, tenant: str, key: str) -> KeyRecord | None: ...

    async def claim(self, record: KeyRecord, previous_epoch: int | None) -> bool:
        """Write `record` (a new epoch) only if the stored record's epoch is still
        `previous_epoch` (None: there is no record yet). False: someone else moved it."""
        ...

    async def save(self, record: KeyRecord | None = None, route: SessionRoute | None = None
                   ) -> None:
        """Record and/or route, in one transaction, durable when this returns. A record is not
        written over a stored one of a newer epoch."""
        ...

    async def route(self, session_id: str) -> SessionRoute | None: ...

    async def pending(self, updated_before: float, limit: int) -> list[KeyRecord]:
        """PENDING records last written before `updated_before`, least recently first."""
        ...

    async def oldest_pending_at(self) -> float | None:
        """When the oldest PENDING record was created, or None when there is none."""
        ...

    async def counts(self) -> dict[str, int]:
        """Records by state."""
        ...

    async def prune(self, now: float) -> int:
        """Drop settled records past their time or beyond the cap, and old routes; never a
        PENDING record. Returns how many records went."""
        ...

    def key_lock(self, tenant: str, key: str) -> AbstractAsyncContextManager[None]:
        """Held while a request (or the reconciler) works on a key; raises KeyBusy on entry
        when it is held elsewhere, without waiting."""
        ...

    async def aclose(self) -> None: ...


class LocalKeyLocks:
    """Key locks in this process's memory: enough for a store only one process may use."""

    def __init__(self) -> None:
        self.held: set[tuple[str, str]] = set()

    @asynccontextmanager
    async def __call__(self, tenant: str, key: str) -> AsyncIterator[None]:
        ident = (tenant, key)
        if ident in self.held:
            raise KeyBusy(f"{key!r} is held")
        self.held.add(ident)
        try:
            yield
        finally:
            self.held.discard(ident)
