"""The ingress's OpenAPI 3 document, served at /openapi.json and checked by the fuzz test."""

from __future__ import annotations

from typing import Any

from ingress.validation import MAX_KW, MAX_KWH, MAX_VEHICLE_ID

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_SESSION_ID = {"name": "id", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 128}}
_COMMON_ERRORS = {"401": _error("Missing or wrong API key"),
                  "503": _error("A dependency is unavailable")}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Smart Grid Load Balancer", "version": "0.1.0",
             "description": "Charge requests for electric vehicles, routed to a substation "
                            "with room for them."},
    "security": [{"bearer": []}],
    "paths": {
        "/charge": {"post": {
            "operationId": "charge",
            "summary": "Start charging at a substation chosen by the active policy",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                            "description": "Retries with the same key and body return the "
                                           "original outcome instead of a new session"}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ChargeRequest"}}}},
            "responses": {
                "200": {"description": "Charging", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ChargeAccepted"}}},
                    "links": {
                        "GetSession": {"operationId": "getSession",
                                       "parameters": {"id": "$response.body#/session_id"}},
                        "StopSession": {"operationId": "stopSession",
                                        "parameters": {"id": "$response.body#/session_id"}}}},
                "400": _error("Malformed JSON or not a JSON object"),
                "401": _error("Missing or wrong API key"),
                "409": _error("The session id exists with other values"),
                "413": _error("Body too large"),
                "415": _error("Content-Type is not application/json"),
                "422": _error("Invalid fields, or an Idempotency-Key reused with another body"),
                "502": _error("The balancer answered unexpectedly"),
                "503": _error("no_capacity (see Retry-After), outcome_unknown, or the balancer "
                              "is unavailable"),
                "504": _error("The balancer did not answer in time"),
            }}},
        "/sessions/{id}": {
            "get": {"operationId": "getSession",
                    "summary": "A session's state and energy delivered so far",
                    "parameters": [_SESSION_ID],
                    "responses": {"200": {"description": "The session", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}},
                        "404": _error("Unknown session"), **_COMMON_ERRORS}},
            "delete": {"operationId": "stopSession",
                       "summary": "Stop charging and free the capacity",
                       "parameters": [_SESSION_ID],
                       "responses": {"200": {"description": "The stopped session", "content": {
                           "application/json": {"schema": {
                               "$ref": "#/components/schemas/Session"}}}},
                           "404": _error("Unknown session"), **_COMMON_ERRORS}},
        },
        "/healthz": {"get": {"summary": "Alive", "security": [],
                             "responses": {"200": {"description": "Alive"}}}},
        "/readyz": {"get": {"summary": "Ready", "security": [],
                            "responses": {"200": {"description": "Ready"}}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "detail"],
                      "properties": {"error": {"type": "string"},
                                     "detail": {"type": "string"}}},
            "ChargeRequest": {
                "type": "object", "additionalProperties": False,
                "required": ["vehicle_id", "requested_kw", "energy_kwh"],
                "properties": {
                    "vehicle_id": {"type": "string", "minLength": 1,
                                   "maxLength": MAX_VEHICLE_ID},
                    "requested_kw": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                                     "maximum": MAX_KW},
                    "energy_kwh": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                                   "maximum": MAX_KWH},
                }},
            "ChargeAccepted": {
                "type": "object",
                "required": ["status", "session_id", "substation", "routed_to", "policy"],
                "properties": {"status": {"type": "string", "enum": ["charging"]},
                               "session_id": {"type": "string"},
                               "substation": {"type": "string"},
                               "routed_to": {"type": "string"},
                               "policy": {"type": "string"},
                               "requested_kw": {"type": "number"},
                               "energy_kwh": {"type": "number"}}},
            "Session": {
                "type": "object", "required": ["session_id", "state", "substation"],
                "properties": {"session_id": {"type": "string"},
                               "state": {"type": "string",
                                         "enum": ["charging", "completed", "stopped",
                                                  "cancelled"]},
                               "substation": {"type": "string"},
                               "routed_to": {"type": "string"},
                               "power_kw": {"type": "number"},
                               "energy_kwh": {"type": "number"},
                               "delivered_kwh": {"type": "number"}}},
        },
    },
}
