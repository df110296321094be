"""Validating the public charge request: every problem named, in one answer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_VEHICLE_ID = 64
MAX_KW = 1000.0      # above any real charger (350 kW): a typo, not a car
MAX_KWH = 1000.0
FIELDS = ("vehicle_id", "requested_kw", "energy_kwh")


@dataclass(frozen=True)
class ChargeRequest:
    vehicle_id: str
    requested_kw: float
    energy_kwh: float


def _number(body: dict[str, Any], key: str, limit: float, unit: str) -> str | None:
    if key not in body:
        return "is required"
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of {unit}, got {type(value).__name__}"
    if not math.isfinite(value):
        return "must be finite"
    if value <= 0:
        return f"must be above 0 {unit}, got {value:g}"
    if value > limit:
        return f"must be at most {limit:g} {unit}, got {value:g}"
    return None


def _vehicle_id(body: dict[str, Any]) -> str | None:
    if "vehicle_id" not in body:
        return "is required"
    value = body["vehicle_id"]
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty"
    if len(value) > MAX_VEHICLE_ID:
        return f"must be at most {MAX_VEHICLE_ID} characters, got {len(value)}"
    if not value.isprintable():
        return "must contain printable characters only"
    return None


def parse_charge_request(body: dict[str, Any]) -> ChargeRequest | dict[str, str]:
    """A valid request, or {field: reason} for every bad field."""
    problems: dict[str, str] = {}
    for key in sorted(set(body) - set(FIELDS)):
        problems[key] = "unknown field"
    checks = {"vehicle_id": _vehicle_id(body),
              "requested_kw": _number(body, "requested_kw", MAX_KW, "kW"),
              "energy_kwh": _number(body, "energy_kwh", MAX_KWH, "kWh")}
    problems.update({k: v for k, v in checks.items() if v is not None})
    if problems:
        return problems
    return ChargeRequest(body["vehicle_id"], float(body["requested_kw"]),
                         float(body["energy_kwh"]))


def describe(problems: dict[str, str]) -> str:
    return "; ".join(f"{key}: {reason}" for key, reason in problems.items())
