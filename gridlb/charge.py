"""The charge: what a charge request is, defined once for the ingress, balancer and substation.

A client sends `vehicle_id`, `requested_kw`, `energy_kwh`, and optionally `min_kw` (the least
power worth charging at: the substation may share its capacity down to it, substation/allocation.py;
default `requested_kw`, today's fixed power) and `departure_at` (when the vehicle leaves: an
RFC 3339 time at the public edge, Unix seconds inside the system). Inside the system a charge also
carries the `session_id` the ingress gave it and the `epoch` of the dispatch (see
docs/design.md, "Placement protocol"). Every service validates with the same rules and limits,
so a request the ingress accepts is never refused further down for its shape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Real AC charging does not go below about 1.4 kW (6 A single phase); far smaller values are
# typos or abuse, and sessions that small never finish.
DEFAULT_MIN_KW = 1.4
MAX_KW = 1000.0      # above any real charger (350 kW): a typo, not a car
MAX_KWH = 1000.0
MAX_VEHICLE_ID = 64
MAX_SESSION_ID = 128
MAX_EPOCH = 2**31
# A request fits when load + requested <= capacity + this: the sum of many float kW values must
# not refuse a request that fits exactly.
FIT_TOLERANCE_KW = 1e-9
# The horizons (seconds after the sample) of substation_load_forecast_kw{horizon="<h>s"} and of
# an answer's load_forecast_kw. A reading is aged by the largest horizon not after its age, so
# the steps are short where ages fall (seconds after an answer, up to a scrape interval after a
# scrape): with 11 horizons (1, 2, 5, ... 120) the simulated p99 spread of 1-minute sessions at
# a 60 s scrape was 0.074 above the oracle's, with these 20 0.054 (bench/quality.py, 100
# substations; one horizon per second: 0.001).
FORECAST_HORIZONS_S = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0,
                       35.0, 40.0, 45.0, 50.0, 60.0, 90.0, 120.0)

# Ids are visible ASCII, spaces allowed inside (VINs, eMA ids and UUIDs all are): one rule that
# the OpenAPI document can state exactly.
ID_PATTERN = r"[\x20-\x7E]*[\x21-\x7E][\x20-\x7E]*"
_ID_RE = re.compile(ID_PATTERN)
PUBLIC_FIELDS = ("vehicle_id", "requested_kw", "energy_kwh", "min_kw", "departure_at")
INTERNAL_FIELDS = ("session_id", "epoch", *PUBLIC_FIELDS)
# departure_at as Unix seconds: within what datetime can show (year 1 to 9999).
MAX_DEPARTURE_S = 253402300799.0
# RFC 3339's date-time (section 5.6); group 1, the offset, is required (checked apart, to say so).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?"
                      r"([Zz]|[+-]\d{2}:\d{2})?")


@dataclass(frozen=True)
class ChargeLimits:
    min_kw: float = DEFAULT_MIN_KW
    max_kw: float = MAX_KW
    max_kwh: float = MAX_KWH


@dataclass(frozen=True)
class Charge:
    """A client's request, validated."""

    vehicle_id: str
    requested_kw: float
    energy_kwh: float
    min_kw: float | None = None          # None: requested_kw (fixed power, as before)
    departure_at: float | None = None    # Unix seconds; None: not known

    @property
    def floor_kw(self) -> float:
        """The power the substation commits to it: min_kw, or requested_kw without one."""
        return self.requested_kw if self.min_kw is None else self.min_kw

    def canonical(self) -> tuple[object, ...]:
        """Equal for equal requests whatever their JSON spelling (`11` and `11.0`). A request
        without min_kw or departure_at keeps the 3-tuple (and fingerprint) it always had."""
        if self.min_kw is None and self.departure_at is None:
            return (self.vehicle_id, self.requested_kw, self.energy_kwh)
        return (self.vehicle_id, self.requested_kw, self.energy_kwh, self.min_kw,
                self.departure_at)

    def adaptive_json(self) -> dict[str, Any]:
        """min_kw and departure_at (Unix seconds) when set: absent, the wire is as before."""
        extra: dict[str, Any] = {}
        if self.min_kw is not None:
            extra["min_kw"] = self.min_kw
        if self.departure_at is not None:
            extra["departure_at"] = self.departure_at
        return extra


@dataclass(frozen=True)
class SessionCharge(Charge):
    """A charge on its way to a substation: the session it starts and the dispatch's epoch."""

    session_id: str = ""
    epoch: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "epoch": self.epoch,
                "vehicle_id": self.vehicle_id, "requested_kw": self.requested_kw,
                "energy_kwh": self.energy_kwh, **self.adaptive_json()}


def horizon_label(horizon_s: float) -> str:
    """The `horizon` label of one forecast series: 5.0 -> "5s"."""
    return f"{horizon_s:g}s"


def fits(load_kw: float, requested_kw: float, capacity_kw: float) -> bool:
    return load_kw + requested_kw <= capacity_kw + FIT_TOLERANCE_KW


def _number(body: dict[str, Any], key: str, low: float, high: float, unit: str) -> str | None:
    if key not in body:
        return "is required"
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of {unit}, got {type(value).__name__}"
    if not math.isfinite(value):
        return "must be finite"
    if value <= 0:
        return f"must be above 0 {unit}, got {value:g}"
    if value < low:
        return f"must be at least {low:g} {unit}, got {value:g}"
    if value > high:
        return f"must be at most {high:g} {unit}, got {value:g}"
    return None


def _text(body: dict[str, Any], key: str, limit: int) -> str | None:
    if key not in body:
        return "is required"
    value = body[key]
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty"
    if len(value) > limit:
        return f"must be at most {limit} characters, got {len(value)}"
    if not _ID_RE.fullmatch(value):
        return "must be visible ASCII characters (spaces allowed between them)"
    return None


def _min_kw(body: dict[str, Any], limits: ChargeLimits) -> str | None:
    if "min_kw" not in body:
        return None
    problem = _number(body, "min_kw", limits.min_kw, limits.max_kw, "kW")
    if problem is not None:
        return problem
    requested = body.get("requested_kw")
    if isinstance(requested, (int, float)) and not isinstance(requested, bool) \
            and body["min_kw"] > requested:
        return f"must be at most requested_kw ({requested:g} kW), got {body['min_kw']:g}"
    return None


def parse_departure(value: Any) -> float | str:
    """An RFC 3339 time with a UTC offset (`2026-12-07T21:03:04Z`) as Unix seconds, or why it
    is not one. The public edge's time format (ingress/public.py writes it)."""
    if not isinstance(value, str):
        return f"must be an RFC 3339 time string, got {type(value).__name__}"
    text = value.strip()
    shape = _RFC3339.fullmatch(text)
    if shape is not None and shape.group(1) is None:
        return "must give its UTC offset (Z or +hh:mm)"
    try:
        if shape is None:     # fromisoformat alone also takes ISO week dates and commas
            raise ValueError(text)
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
        unix_s = moment.timestamp()
    except (ValueError, OverflowError):
        return f"must be an RFC 3339 time such as 2026-12-07T21:03:04Z, got {value[:40]!r}"
    if not 0.0 <= unix_s <= MAX_DEPARTURE_S:
        return "must be from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
    return unix_s


def _departure(body: dict[str, Any], internal: bool) -> str | None:
    if "departure_at" not in body:
        return None
    value = body["departure_at"]
    if not internal:
        parsed = parse_departure(value)
        return parsed if isinstance(parsed, str) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or not 0 <= value <= MAX_DEPARTURE_S:
        return "must be Unix seconds (a finite number from 0)"
    return None


def _epoch(body: dict[str, Any]) -> str | None:
    value = body.get("epoch", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EPOCH:
        return f"must be an integer from 1 to {MAX_EPOCH}"
    return None


def _problems(body: dict[str, Any], limits: ChargeLimits, fields: tuple[str, ...]
              ) -> dict[str, str]:
    problems = {key: "unknown field" for key in sorted(set(body) - set(fields))}
    checks = {"vehicle_id": _text(body, "vehicle_id", MAX_VEHICLE_ID),
              "requested_kw": _number(body, "requested_kw", limits.min_kw, limits.max_kw, "kW"),
              "energy_kwh": _number(body, "energy_kwh", 0.0, limits.max_kwh, "kWh"),
              "min_kw": _min_kw(body, limits),
              "departure_at": _departure(body, "session_id" in fields)}
    if "session_id" in fields:
        checks["session_id"] = _text(body, "session_id", MAX_SESSION_ID)
        checks["epoch"] = _epoch(body)
    problems.update({k: v for k, v in checks.items() if v is not None})
    return problems


def parse_charge(body: dict[str, Any], limits: ChargeLimits = ChargeLimits()
                 ) -> Charge | dict[str, str]:
    """A client's charge, or {field: reason} for every bad field."""
    problems = _problems(body, limits, PUBLIC_FIELDS)
    if problems:
        return problems
    departure = body.get("departure_at")
    return Charge(body["vehicle_id"], float(body["requested_kw"]), float(body["energy_kwh"]),
                  _optional(body.get("min_kw")),
                  None if departure is None else float(parse_departure(departure)))


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def parse_session_charge(body: dict[str, Any], limits: ChargeLimits = ChargeLimits(),
                         extra_fields: tuple[str, ...] = ()) -> SessionCharge | dict[str, str]:
    """A charge between services (with session_id and epoch), or {field: reason}.
    `extra_fields` are allowed beside it (the caller reads them)."""
    problems = _problems(body, limits, INTERNAL_FIELDS + extra_fields)
    if problems:
        return problems
    return SessionCharge(body["vehicle_id"], float(body["requested_kw"]),
                         float(body["energy_kwh"]), _optional(body.get("min_kw")),
                         _optional(body.get("departure_at")), session_id=body["session_id"],
                         epoch=int(body.get("epoch", 1)))


def describe(problems: dict[str, str]) -> str:
    return "; ".join(f"{key}: {reason}" for key, reason in problems.items())
