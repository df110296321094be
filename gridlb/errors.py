"""Every error code a service of this system answers with, in one place.

Each answer is `{"error": code, "detail": text}`; docs/api.md's error tables list them,
and a test checks that table against this module.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    # Shape of the request (any service)
    MALFORMED_JSON = "malformed_json"
    INVALID_BODY = "invalid_body"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INTERNAL_ERROR = "internal_error"
    # Ingress: idempotency and sessions
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    REQUEST_IN_PROGRESS = "request_in_progress"
    UNKNOWN_SESSION = "unknown_session"
    SUBSTATION_UNAVAILABLE = "substation_unavailable"
    SUBSTATION_ERROR = "substation_error"
    BAD_GATEWAY = "bad_gateway"
    BALANCER_UNAVAILABLE = "balancer_unavailable"
    BALANCER_TIMEOUT = "balancer_timeout"
    STORE_UNAVAILABLE = "store_unavailable"
    # Balancer: placement outcomes
    NO_CAPACITY = "no_capacity"
    EXCEEDS_CAPACITY = "exceeds_capacity"
    NO_SUBSTATIONS = "no_substations"
    NO_SNAPSHOT = "no_snapshot"
    OUTCOME_UNKNOWN = "outcome_unknown"
    DISPATCH_IN_PROGRESS = "dispatch_in_progress"
    SUPERSEDED = "superseded"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INVALID_POLICY = "invalid_policy"
    POLICY_NOT_SAVED = "policy_not_saved"
    # Substation: admission
    OVER_CAPACITY = "over_capacity"
    TOO_MANY_SESSIONS = "too_many_sessions"
    SESSION_CONFLICT = "session_conflict"
    SESSION_FENCED = "session_fenced"
    SESSION_NOT_SAVED = "session_not_saved"

    def __str__(self) -> str:
        return self.value
