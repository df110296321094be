"""The ingress's metrics, on an explicit registry."""

from __future__ import annotations

import time

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from gridlb.errors import ErrorCode
from gridlb.http import Handler

disable_created_metrics()  # type: ignore[no-untyped-call]

_ERROR_CODES = frozenset(code.value for code in ErrorCode)


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # `error` tells a refusal that is the right answer (503 no_capacity: the grid is full)
        # from a failure of the system (503 balancer_unavailable): the availability SLO
        # (prometheus/rules/) counts only the second kind.
        self.requests = Counter("ingress_requests",
                                "Requests by route, method, status and error code",
                                ["route", "method", "status", "error"], registry=registry)
        self.seconds = Histogram("ingress_request_duration_seconds", "Request latency",
                                 ["route"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5, 1.0, 2.5, 10.0))
        self.records = Gauge("ingress_idempotency_records",
                             "Idempotency records by state (pending: outcome unknown)",
                             ["state"], registry=registry)
        self.oldest_pending = Gauge(
            "ingress_idempotency_pending_oldest_age_seconds",
            "Age of the oldest record whose outcome is unknown (0 when there is none): the "
            "reconciler resolves them within seconds unless a substation stays unreachable",
            registry=registry)
        self.reconciled = Counter("ingress_reconciled_records",
                                  "Pending records the reconciler tried, by result (found, "
                                  "absent, pending, skipped, error)", ["result"],
                                  registry=registry)


def error_code(response: web.StreamResponse) -> str:
    """The `error` of a JSON error answer; "" for a success. Only ErrorCode's values (else
    "other"): label sets stay bounded whatever a balancer's answer relayed here says."""
    if response.status < 400:
        return ""
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return "other"
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "other"
    code = parsed.get("error") if isinstance(parsed, dict) else None
    return code if isinstance(code, str) and code in _ERROR_CODES else "other"


def metrics_middleware(metrics: IngressMetrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        # The route template, never the raw path: label sets stay bounded whatever clients send.
        route = resource.canonical if resource is not None else "unmatched"
        # An exception other than an HTTP one becomes json_errors_middleware's internal_error.
        status, error = 500, ErrorCode.INTERNAL_ERROR.value
        try:
            response = await handler(request)
            status, error = response.status, error_code(response)
            return response
        except web.HTTPException as exc:
            # aiohttp's own (404 unmatched, 405, 413): json_errors_middleware, outside this
            # one, writes its body; its code is not known here.
            status, error = exc.status, ("" if exc.status < 400 else "other")
            raise
        finally:
            metrics.requests.labels(route, request.method, str(status), error).inc()
            metrics.seconds.labels(route).observe(time.perf_counter() - started)

    return middleware
