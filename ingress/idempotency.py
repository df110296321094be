"""Idempotency keys and the durable answer to "where may this session be?", as plain code.

Each (tenant, Idempotency-Key) has one record: the session id the key stands for (random, never
derived from the key), the fingerprint of the request, the `epoch` of its latest dispatch, and
what is known of the outcome:
- PENDING: dispatched, outcome not known; the session may exist somewhere. The next dispatch
  raises the epoch and asks the balancer to `resolve` first (fence every substation, find it);
  the reconciler (ingress/reconciler.py) does the same in the background, placing nothing.
- ABSENT: the session is definitely nowhere, and no copy of an earlier dispatch can start it any
  more. The next dispatch raises the epoch and places directly.
- DONE: a definite answer was given; it is replayed, never recomputed.

Transitions need evidence (`Evidence`, decided from the balancer's answer in `evidence_of`, the
one place that reads it):
- FOUND (the session is charging or has ended somewhere)         -> DONE
- ABSENT (a dispatch that started nothing, from a record that was ABSENT or new; or a resolve
  in which every substation it may be at answered "absent" and was fenced) -> ABSENT
- NOTHING_SENT (no balancer took the request)                    -> the state before this dispatch
- MAY_EXIST (anything else: a timeout, a dropped connection, any 5xx, an odd body, a resolve
  that could not ask everyone)                                   -> PENDING
So no answer without evidence moves a record out of PENDING.

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


class Evidence(str, enum.Enum):
    """What one dispatch's answer proves about where the session is."""

    FOUND = "found"                # charging or ended at a substation: a definite answer
    ABSENT = "absent"              # nowhere, and no older copy can start it
    NOTHING_SENT = "nothing_sent"  # no balancer took this dispatch: it changed nothing
    MAY_EXIST = "may_exist"        # it may have started somewhere


SESSION_STATES = frozenset({"charging", "completed", "stopped"})


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


def evidence_of(failure: str, status: int, body: Any, resolve: bool) -> Evidence:
    """What a balancer's answer (or the lack of one) proves. `failure`: "" for an HTTP answer,
    "unreachable" when no balancer took the request (nothing sent), anything else when the
    request may have been received (timeout, dropped connection). `resolve`: the dispatch had
    to resolve an earlier one first, so "absent" needs the balancer's `resolved: true`."""
    if failure == "unreachable":
        return Evidence.NOTHING_SENT
    if failure or not isinstance(body, dict):
        return Evidence.MAY_EXIST
    if status == 200:
        return Evidence.FOUND if body.get("status") in SESSION_STATES else Evidence.MAY_EXIST
    if body.get("session_may_exist") is not False or (status >= 500 and status != 503):
        return Evidence.MAY_EXIST
    if resolve and body.get("resolved") is not True:
        return Evidence.MAY_EXIST
    return Evidence.ABSENT


def after_answer(before: KeyRecord | None, record: KeyRecord, evidence: Evidence, status: int,
                 response: dict[str, Any], now: float) -> KeyRecord:
    """The record once this dispatch (`record`, written before it) was answered. `before`: the
    record as it was before this dispatch (None for a new key)."""
    if evidence is Evidence.FOUND:
        return dataclasses.replace(record, state=RecordState.DONE, status=status,
                                   response=response, updated_at=now)
    if evidence is Evidence.ABSENT:
        state = RecordState.ABSENT
    elif evidence is Evidence.NOTHING_SENT:
        state = RecordState.ABSENT if before is None else before.state
    else:
        state = RecordState.PENDING
    return dataclasses.replace(record, state=state, updated_at=now)


def reconcile_step(record: KeyRecord, now: float) -> KeyRecord | None:
    """The record to write before the reconciler resolves `record` (the next epoch, still
    PENDING), or None when it is not PENDING."""
    if record.state is not RecordState.PENDING:
        return None
    return dataclasses.replace(record, epoch=record.epoch + 1, updated_at=now)
