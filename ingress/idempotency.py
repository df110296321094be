"""Idempotency keys and the durable answer to "where may this session be?", as plain code.

Each (tenant, Idempotency-Key) has one record: the session id the key stands for (random, never
derived from the key), the fingerprint of the request, the `epoch` of its latest dispatch, and
what is known of the outcome:
- PENDING: dispatched, outcome not known; the session may exist somewhere. The next dispatch
  raises the epoch and asks the balancer to `resolve` first (fence every substation, find it).
- ABSENT: the latest dispatch answered definitely that it placed nothing. The next dispatch
  raises the epoch and places directly.
- DONE: a definite answer was given; it is replayed, never recomputed.
The record is written (durably) before each dispatch and again before the answer, so a crash of
the ingress at any moment leaves a record that makes the retry safe. Only settled records (ABSENT,
DONE) may expire or be evicted; PENDING ones are kept until resolved.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from gridlb.charge import Charge


class RecordState(str, enum.Enum):
    PENDING = "pending"
    ABSENT = "absent"
    DONE = "done"


@dataclass(frozen=True)
class KeyRecord:
    tenant: str
    key: str
    session_id: str
    fingerprint: str
    epoch: int
    state: RecordState
    status: int = 0                             # DONE: the answer's HTTP status
    response: dict[str, Any] | None = None      # DONE: the answer's body
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class Replay:
    record: KeyRecord


@dataclass(frozen=True)
class Reused:
    """The key came before with another request."""


@dataclass(frozen=True)
class Dispatch:
    record: KeyRecord       # to write before dispatching (its epoch is this dispatch's)
    resolve: bool


def fingerprint(charge: Charge) -> str:
    """Equal for requests equal by value: `11` and `11.0`, keys in any order."""
    return hashlib.sha256(orjson.dumps(list(charge.canonical()))).hexdigest()


def new_session_id() -> str:
    return secrets.token_hex(16)


def next_step(record: KeyRecord | None, tenant: str, key: str, print_: str, now: float
              ) -> Replay | Reused | Dispatch:
    """What a request under `key` does, given what the key's record says."""
    if record is None:
        fresh = KeyRecord(tenant, key, new_session_id(), print_, 1, RecordState.PENDING,
                          created_at=now, updated_at=now)
        return Dispatch(fresh, resolve=False)
    if record.fingerprint != print_:
        return Reused()
    if record.state is RecordState.DONE:
        return Replay(record)
    nxt = dataclasses.replace(record, epoch=record.epoch + 1, state=RecordState.PENDING,
                              updated_at=now)
    return Dispatch(nxt, resolve=record.state is RecordState.PENDING)


def after_answer(record: KeyRecord, status: int, response: dict[str, Any],
                 session_may_exist: bool, now: float) -> KeyRecord:
    """The record once the balancer answered this dispatch."""
    if status == 200:
        return dataclasses.replace(record, state=RecordState.DONE, status=status,
                                   response=response, updated_at=now)
    state = RecordState.PENDING if session_may_exist else RecordState.ABSENT
    return dataclasses.replace(record, state=state, updated_at=now)
