"""The ingress's OpenAPI 3 document, served at /openapi.json and checked by the fuzz test.

Every rule the ingress enforces is stated here exactly, so a schema-valid request is never
refused for its shape, and every error it answers is listed with its codes.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

from gridlb.charge import ID_PATTERN, MAX_VEHICLE_ID, ChargeLimits
from ingress.public import (
    CHARGE_FIELDS,
    CHARGE_REQUIRED,
    ERROR_FIELDS,
    ERROR_REQUIRED,
    SESSION_FIELDS,
    SESSION_REQUIRED,
    Schema,
)

MAX_IDEMPOTENCY_KEY = 128
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[\x21-\x7E]{1,128}")
DISTRIBUTION = "smart-grid-load-balancer"


def api_version() -> str:
    """The installed package's version: the document changes with the code it describes."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:    # run from a source tree never installed
        return "0+unknown"


def _object(fields: dict[str, Schema], required: list[str]) -> Schema:
    """A closed object: an answer with a field not listed here breaks the document's promise
    (schemathesis and tests/unit/test_openapi_answers.py check answers against it)."""
    return {"type": "object", "additionalProperties": False, "required": required,
            "properties": fields}


def _error(description: str, *codes: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
    if codes:
        schema = {"allOf": [schema, {"type": "object", "properties": {
            "error": {"type": "string", "enum": list(codes)}}}]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_SESSION_ID = {"name": "id", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 128}}
_UNAUTHORIZED = _error("Missing or wrong API key", "unauthorized")
_SESSION_ERRORS = {
    "401": _UNAUTHORIZED,
    "404": _error("No such session for this API key", "unknown_session"),
    "503": _error("The substation holding the session, or the ingress's store, cannot be "
                  "reached now", "substation_unavailable", "substation_error",
                  "store_unavailable"),
}
_SESSION = {"description": "The session", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Session"}}}}

def openapi_document(limits: ChargeLimits) -> dict[str, Any]:
    """The document for an ingress enforcing `limits`."""
    return {**OPENAPI, "components": {**OPENAPI["components"], "schemas": {
        **OPENAPI["components"]["schemas"], "ChargeRequest": _charge_request(limits)}}}


def _charge_request(limits: ChargeLimits) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False,
        "required": ["vehicle_id", "requested_kw", "energy_kwh"],
        "example": {"vehicle_id": "ev-42", "requested_kw": 11, "energy_kwh": 30},
        "properties": {
            "vehicle_id": {"type": "string", "minLength": 1, "maxLength": MAX_VEHICLE_ID,
                           "pattern": f"^{ID_PATTERN}$"},
            "requested_kw": {"type": "number", "minimum": limits.min_kw,
                             "maximum": limits.max_kw},
            "energy_kwh": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                           "maximum": limits.max_kwh},
            "min_kw": {"type": "number", "minimum": limits.min_kw, "maximum": limits.max_kw,
                       "description": "The least power worth charging at (at most "
                                      "requested_kw; default requested_kw): the substation "
                                      "may share its capacity down to it"},
            "departure_at": {"type": "string", "format": "date-time",
                             "description": "When the vehicle leaves (RFC 3339, with Z or an "
                                            "offset)"},
        }}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Smart Grid Load Balancer", "version": api_version(),
             "description": "Charge requests for electric vehicles, routed to a substation "
                            "with room for them."},
    "security": [{"bearer": []}],
    "paths": {
        "/charge": {"post": {
            "operationId": "charge",
            "summary": "Start charging at a substation chosen by the active policy",
            "parameters": [{
                "name": "Idempotency-Key", "in": "header", "required": False,
                "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY_PATTERN.pattern}$"},
                "description": "1-128 visible ASCII characters. Retries with the same key and "
                               "request (compared by value) return the original answer "
                               "(`Idempotent-Replayed: true`) instead of a new session. Keys "
                               "belong to the API key that sent them."}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ChargeRequest"}}}},
            "responses": {
                "200": {"description": "Charging (or, for a retry of a session that has since "
                                       "ended, its final state)",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ChargeAccepted"}}},
                        "links": {
                            "GetSession": {"operationId": "getSession",
                                           "parameters": {"id": "$response.body#/session_id"}},
                            "StopSession": {"operationId": "stopSession",
                                            "parameters": {
                                                "id": "$response.body#/session_id"}}}},
                "400": _error("Malformed JSON, not a JSON object, or a bad Idempotency-Key",
                              "malformed_json", "invalid_body", "invalid_idempotency_key"),
                "401": _UNAUTHORIZED,
                "409": _error("A request with this Idempotency-Key is being answered, or the "
                              "balancer still places an earlier copy of it",
                              "request_in_progress", "dispatch_in_progress", "superseded",
                              "session_conflict"),
                "413": _error("Body too large", "payload_too_large"),
                "415": _error("Content-Type is not application/json",
                              "unsupported_media_type"),
                "422": _error("Invalid fields, or an Idempotency-Key reused with another "
                              "request", "invalid_request", "idempotency_key_reused"),
                "502": _error("The balancer answered unexpectedly", "bad_gateway"),
                "503": _error("No substation can take it now (see Retry-After), the outcome "
                              "is not known yet, or the balancer or the ingress's store is "
                              "unavailable (nothing was sent)",
                              "no_capacity", "no_substations", "no_snapshot", "outcome_unknown",
                              "deadline_exceeded", "balancer_unavailable", "store_unavailable"),
                "504": _error("The balancer did not answer in time", "balancer_timeout"),
            }}},
        "/sessions/{id}": {
            "get": {"operationId": "getSession",
                    "summary": "A session's state and energy delivered so far",
                    "parameters": [_SESSION_ID],
                    "responses": {"200": _SESSION, **_SESSION_ERRORS}},
        },
        "/sessions/{id}/stop": {
            "post": {"operationId": "stopSession",
                     "summary": "Stop charging and free the capacity at once (idempotent; the "
                                "session stays readable with state `stopped`)",
                     "parameters": [_SESSION_ID],
                     "responses": {"200": _SESSION, **_SESSION_ERRORS}},
        },
        "/healthz": {"get": {"summary": "Alive", "security": [],
                             "responses": {"200": {"description": "Alive"}}}},
        "/readyz": {"get": {"summary": "Ready", "security": [],
                            "responses": {"200": {"description": "Ready"}}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": _object(ERROR_FIELDS, ERROR_REQUIRED),
            "ChargeRequest": _charge_request(ChargeLimits()),
            "ChargeAccepted": _object(CHARGE_FIELDS, CHARGE_REQUIRED),
            "Session": _object(SESSION_FIELDS, SESSION_REQUIRED),
        },
    },
}
