"""What a client is shown of the system's answers: the one place where an internal answer
becomes a public one.

Inside the system times travel as Unix seconds (floats): the substations store and compare
them, the balancer's ledger computes with them, and they cost nothing to read. At this edge they
become RFC 3339 strings in UTC with milliseconds (`2026-12-07T21:03:04.123Z`, OpenAPI
`date-time`), which clients read without guessing a unit or an epoch. Conversion happens here
and nowhere else, so the internal wire (balancer <-> substation, the ingress's own store) keeps
its floats.

Fields are listed, not filtered: a client is shown exactly the fields below, which are also the
schemas of the OpenAPI document (ingress/openapi.py builds them from these tables), and never an
internal address (`routed_to`), a substation's load readings or the balancer's bookkeeping
(`session_may_exist`), whatever a newer balancer or substation adds to its answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

Schema = dict[str, Any]

_STATES = ["charging", "completed", "stopped"]
_DATE_TIME: Schema = {"type": "string", "format": "date-time"}

# Adaptive power (substation/allocation.py), in a charge's answer and in a session.
_ADAPTIVE: dict[str, Schema] = {
    "min_kw": {"type": "number", "description": "The floor it asked for (absent: none, it "
                                                "charges at requested_kw)"},
    "departure_at": {**_DATE_TIME, "description": "When the vehicle leaves, as it said (UTC)"},
    "granted_kw": {"type": "number", "description": "Its power now: between min_kw and "
                                                    "requested_kw, shared by the substation"},
    "will_complete_by_departure": {"type": "boolean", "description": "With departure_at: "
                                   "whether the energy asked for is delivered by then at the "
                                   "current allocation"},
}

# The answer to POST /charge (200).
CHARGE_FIELDS: dict[str, Schema] = {
    "status": {"type": "string", "enum": _STATES},
    "session_id": {"type": "string"},
    "substation": {"type": "string", "description": "The substation's id (not its address)"},
    "policy": {"type": "string", "description": "The policy that chose it"},
    "requested_kw": {"type": "number"},
    "energy_kwh": {"type": "number"},
    **_ADAPTIVE,
}
CHARGE_REQUIRED = ["status", "session_id", "substation", "policy"]

# A session (GET /sessions/{id}, POST /sessions/{id}/stop).
SESSION_FIELDS: dict[str, Schema] = {
    "session_id": {"type": "string"},
    "vehicle_id": {"type": "string"},
    "state": {"type": "string", "enum": _STATES},
    "substation": {"type": "string", "description": "The substation's id (not its address)"},
    "power_kw": {"type": "number", "description": "The power it charges at"},
    "energy_kwh": {"type": "number", "description": "The energy asked for"},
    "delivered_kwh": {"type": "number", "description": "The energy delivered so far"},
    "started_at": {**_DATE_TIME, "description": "When it started (UTC)"},
    "ended_at": {**_DATE_TIME, "description": "Once it has ended: when (UTC)"},
    "ends_at": {**_DATE_TIME, "description": "While charging: when the energy asked for will "
                                             "have been delivered at granted_kw (UTC)"},
    **_ADAPTIVE,
}
SESSION_REQUIRED = ["session_id", "state", "substation"]

# Every error answer.
ERROR_FIELDS: dict[str, Schema] = {
    "error": {"type": "string", "description": "A code of gridlb/errors.py"},
    "detail": {"type": "string", "description": "What went wrong, for a person"},
    "fields": {"type": "object", "additionalProperties": {"type": "string"},
               "description": "invalid_request: each bad field and why"},
    "may_be_at": {"type": "array", "items": {"type": "string"},
                  "description": "outcome_unknown: the substations that may hold the session"},
}
ERROR_REQUIRED = ["error", "detail"]

_TIMES = frozenset(name for fields in (CHARGE_FIELDS, SESSION_FIELDS)
                   for name, schema in fields.items() if schema.get("format") == "date-time")


def rfc3339(unix_s: float) -> str:
    """Unix seconds as RFC 3339 in UTC, to the millisecond: 1796677384.1234 ->
    '2026-12-07T21:03:04.123Z'."""
    moment = datetime.fromtimestamp(unix_s, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _shown(name: str, value: Any) -> Any:
    if name not in _TIMES:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        return None
    try:
        return rfc3339(value)
    except (OverflowError, OSError, ValueError):    # beyond the years datetime can show
        return None


def public(body: Mapping[str, Any], fields: Mapping[str, Schema]) -> dict[str, Any]:
    """The listed `fields` of an internal answer, times as RFC 3339; absent, null and
    unreadable values are left out."""
    shown = {name: _shown(name, body.get(name)) for name in fields}
    return {name: value for name, value in shown.items() if value is not None}


def public_charge_answer(body: Mapping[str, Any], status: int) -> dict[str, Any]:
    """What a client is shown of the ingress's answer to POST /charge."""
    return public(body, CHARGE_FIELDS if status == 200 else ERROR_FIELDS)


def public_session(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a client is shown of a substation's answer about a session."""
    return public(body, SESSION_FIELDS)
