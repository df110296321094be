"""The idempotency core (ingress/idempotency.py) as plain functions, time passed in."""

from __future__ import annotations

import dataclasses

import pytest

from gridlb.charge import Charge, parse_charge
from ingress.idempotency import (
    Dispatch,
    KeyRecord,
    RecordState,
    Replay,
    Reused,
    after_answer,
    fingerprint,
    new_session_id,
    next_step,
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
    done = after_answer(pending, 200, {"status": "charging"}, session_may_exist=True, now=50.0)
    assert done == dataclasses.replace(pending, state=RecordState.DONE, status=200,
                                       response={"status": "charging"}, updated_at=50.0)


@pytest.mark.parametrize(("may_exist", "state"), [(True, RecordState.PENDING),
                                                  (False, RecordState.ABSENT)])
def test_after_an_error_the_record_says_whether_the_session_may_exist(
        may_exist: bool, state: RecordState) -> None:
    pending = record(RecordState.PENDING)
    after = after_answer(pending, 503, {"error": "x"}, session_may_exist=may_exist, now=50.0)
    assert after == dataclasses.replace(pending, state=state, updated_at=50.0)
    assert after.response is None and after.status == 0     # an error is never replayed
