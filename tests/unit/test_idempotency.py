"""The idempotency core (ingress/idempotency.py) as plain functions, time passed in."""

from __future__ import annotations

import dataclasses

import pytest

from gridlb.charge import Charge, parse_charge
from ingress.idempotency import (
    Dispatch,
    Evidence,
    KeyRecord,
    RecordState,
    Replay,
    Reused,
    after_answer,
    evidence_of,
    fingerprint,
    new_session_id,
    next_step,
    reconcile_step,
)

PRINT = fingerprint(Charge("ev-1", 11.0, 30.0))


def record(state: RecordState, epoch: int = 3) -> KeyRecord:
    return KeyRecord("tenant", "key", "sess", PRINT, epoch, state, created_at=10.0,
                     updated_at=20.0)


def test_a_new_key_dispatches_a_fresh_pending_record_without_resolving() -> None:
    step = next_step(None, "tenant", "key", PRINT, now=100.0)
    assert isinstance(step, Dispatch) and step.resolve is False
    fresh = step.record
    assert (fresh.tenant, fresh.key, fresh.fingerprint, fresh.epoch, fresh.state,
            fresh.created_at, fresh.updated_at) == \
        ("tenant", "key", PRINT, 1, RecordState.PENDING, 100.0, 100.0)
    assert len(fresh.session_id) == 32 and fresh.session_id != new_session_id()


@pytest.mark.parametrize(("state", "resolve"), [(RecordState.PENDING, True),
                                                (RecordState.ABSENT, False)])
def test_a_retry_raises_the_epoch_and_resolves_only_what_may_exist(state: RecordState,
                                                                   resolve: bool) -> None:
    step = next_step(record(state), "tenant", "key", PRINT, now=100.0)
    assert isinstance(step, Dispatch) and step.resolve is resolve
    assert step.record == dataclasses.replace(record(state), epoch=4,
                                              state=RecordState.PENDING, updated_at=100.0)


def test_a_settled_answer_is_replayed_and_another_request_is_refused() -> None:
    done = dataclasses.replace(record(RecordState.DONE), status=200, response={"ok": 1})
    assert next_step(done, "tenant", "key", PRINT, now=100.0) == Replay(done)
    other = fingerprint(Charge("ev-1", 22.0, 30.0))
    for state in RecordState:
        assert isinstance(next_step(record(state), "tenant", "key", other, 100.0), Reused)


def test_equal_requests_have_equal_fingerprints() -> None:
    # As the ingress reads them: 11 and 11.0 are one request, whatever the key order.
    for body in ({"vehicle_id": "ev-1", "requested_kw": 11, "energy_kwh": 30},
                 {"energy_kwh": 30.0, "requested_kw": 11.0, "vehicle_id": "ev-1"}):
        charge = parse_charge(body)
        assert isinstance(charge, Charge) and fingerprint(charge) == PRINT
    assert len({PRINT, fingerprint(Charge("ev-2", 11.0, 30.0)),
                fingerprint(Charge("ev-1", 11.0, 31.0))}) == 3


def test_after_a_200_the_answer_is_kept_to_replay() -> None:
    pending = record(RecordState.PENDING)
    done = after_answer(None, pending, Evidence.FOUND, 200, {"status": "charging"}, now=50.0)
    assert done == dataclasses.replace(pending, state=RecordState.DONE, status=200,
                                       response={"status": "charging"}, updated_at=50.0)


@pytest.mark.parametrize(("before", "evidence", "state"), [
    (None, Evidence.MAY_EXIST, RecordState.PENDING),
    (None, Evidence.ABSENT, RecordState.ABSENT),
    (None, Evidence.NOTHING_SENT, RecordState.ABSENT),         # a new key: nothing anywhere
    (RecordState.ABSENT, Evidence.NOTHING_SENT, RecordState.ABSENT),
    (RecordState.PENDING, Evidence.NOTHING_SENT, RecordState.PENDING),  # case 1 of issue 16
    (RecordState.PENDING, Evidence.MAY_EXIST, RecordState.PENDING),
    (RecordState.PENDING, Evidence.ABSENT, RecordState.ABSENT),
    (RecordState.ABSENT, Evidence.MAY_EXIST, RecordState.PENDING),
])
def test_after_an_error_the_record_moves_only_on_evidence(
        before: RecordState | None, evidence: Evidence, state: RecordState) -> None:
    was = None if before is None else record(before)
    dispatched = record(RecordState.PENDING, epoch=4)
    after = after_answer(was, dispatched, evidence, 503, {"error": "x"}, now=50.0)
    assert after == dataclasses.replace(dispatched, state=state, updated_at=50.0)
    assert after.response is None and after.status == 0     # an error is never replayed


@pytest.mark.parametrize(("failure", "status", "body", "resolve", "evidence"), [
    ("unreachable", 0, None, True, Evidence.NOTHING_SENT),
    ("unreachable", 0, None, False, Evidence.NOTHING_SENT),
    ("timeout", 0, None, False, Evidence.MAY_EXIST),
    ("error", 0, None, False, Evidence.MAY_EXIST),       # dropped after sending: case 5
    ("", 200, {"status": "charging"}, True, Evidence.FOUND),
    ("", 200, {"status": "completed"}, True, Evidence.FOUND),
    ("", 200, {"status": "odd"}, False, Evidence.MAY_EXIST),
    ("", 200, "not a dict", False, Evidence.MAY_EXIST),
    ("", 503, {"error": "no_capacity", "session_may_exist": False}, False, Evidence.ABSENT),
    # A resolve that did not say it asked everyone proves nothing (case 2 of issue 16).
    ("", 503, {"error": "no_capacity", "session_may_exist": False}, True, Evidence.MAY_EXIST),
    ("", 503, {"error": "no_capacity", "session_may_exist": False, "resolved": False}, True,
     Evidence.MAY_EXIST),
    ("", 503, {"error": "no_capacity", "session_may_exist": False, "resolved": True}, True,
     Evidence.ABSENT),
    ("", 503, {"error": "outcome_unknown", "session_may_exist": True, "resolved": True}, True,
     Evidence.MAY_EXIST),
    ("", 503, {"error": "no_capacity"}, False, Evidence.MAY_EXIST),     # no word: may exist
    ("", 500, {"error": "x", "session_may_exist": False}, False, Evidence.MAY_EXIST),
    ("", 502, {"error": "x", "session_may_exist": False}, False, Evidence.MAY_EXIST),
    ("", 422, {"error": "exceeds_capacity", "session_may_exist": False}, False,
     Evidence.ABSENT),
])
def test_the_evidence_of_each_answer(failure: str, status: int, body: object, resolve: bool,
                                     evidence: Evidence) -> None:
    assert evidence_of(failure, status, body, resolve) is evidence


def test_the_reconciler_raises_the_epoch_of_pending_records_only() -> None:
    pending = record(RecordState.PENDING)
    assert reconcile_step(pending, 70.0) == dataclasses.replace(pending, epoch=4,
                                                                updated_at=70.0)
    assert reconcile_step(record(RecordState.ABSENT), 70.0) is None
    assert reconcile_step(record(RecordState.DONE), 70.0) is None
