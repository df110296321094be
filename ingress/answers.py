"""What the client is told for a balancer's answer (or its absence): the one place that maps it.

The codes say what is known (README, error table):
- `balancer_unavailable` (503): no balancer took the request; nothing was sent, so re-sending is
  safe even without an Idempotency-Key;
- `outcome_unknown` (503), `balancer_timeout` (504), `bad_gateway` (502): the charge may have
  started; only a retry with the same Idempotency-Key finds out (the ingress's record stays
  pending until the evidence says otherwise: ingress/idempotency.py);
- anything the balancer answered itself passes through (its internal fields removed).
"""

from __future__ import annotations

from typing import Any

from gridlb.errors import ErrorCode
from ingress.balancers import BalancerAnswer

# The balancer's answers carry these for the ingress only.
INTERNAL_FIELDS = frozenset({"session_may_exist", "resolved"})
MAY_HAVE_STARTED = ("it may have started: retry with the same Idempotency-Key (a request "
                     "without one cannot be resolved: do not re-send it)")


def client_answer(answer: BalancerAnswer, session_id: str, requested_kw: float | None = None,
                  energy_kwh: float | None = None
                  ) -> tuple[dict[str, Any], int, dict[str, str] | None]:
    """(body, status, headers) for the client. `requested_kw`/`energy_kwh`: the request's, or
    None to take them from the session in the answer (the reconciler has no request)."""
    if answer.failure == "unreachable":
        return (_error(ErrorCode.BALANCER_UNAVAILABLE, "cannot reach the balancer: "
                       f"{answer.detail}; nothing was sent, so the request can be sent again"),
                503, {"Retry-After": "1"})
    if answer.failure == "timeout":
        return (_error(ErrorCode.BALANCER_TIMEOUT,
                       f"the balancer did not answer in time ({answer.detail}); "
                       f"{MAY_HAVE_STARTED}"), 504, {"Retry-After": "1"})
    if answer.failure:
        return (_error(ErrorCode.OUTCOME_UNKNOWN,
                       f"the balancer stopped answering after the charge was sent "
                       f"({answer.detail}); {MAY_HAVE_STARTED}"), 503, {"Retry-After": "1"})
    body, status = answer.body, answer.status
    if not isinstance(body, dict) or status in (401, 403) or (status >= 500 and status != 503):
        return (_error(ErrorCode.BAD_GATEWAY, f"the balancer answered HTTP {status}; "
                       f"{MAY_HAVE_STARTED}"), 502, None)
    if status == 200:
        found = body.get("session")
        session: dict[str, Any] = found if isinstance(found, dict) else {}
        # Adaptive power (substation/allocation.py): its power now, and its floor and departure
        # when it gave them; absent from a substation that does not share power.
        adaptive = {k: session[k] for k in ("granted_kw", "min_kw", "departure_at",
                                            "will_complete_by_departure")
                    if session.get(k) is not None}
        return ({"status": body.get("status"), "session_id": session_id,
                 "substation": body.get("substation"), "routed_to": body.get("routed_to"),
                 "policy": body.get("policy"),
                 "requested_kw": session.get("power_kw") if requested_kw is None
                 else requested_kw,
                 "energy_kwh": session.get("energy_kwh") if energy_kwh is None
                 else energy_kwh, **adaptive}, 200, None)
    public = {k: v for k, v in body.items() if k not in INTERNAL_FIELDS}
    return public, status, dict(answer.headers) or None


def _error(code: ErrorCode, detail: str) -> dict[str, Any]:
    return {"error": code.value, "detail": detail}
