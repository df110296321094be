"""The ingress's metrics, on an explicit registry."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from gridlb.http import Handler

disable_created_metrics()  # type: ignore[no-untyped-call]


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("ingress_requests", "Requests by route, method and status",
                                ["route", "method", "status"], registry=registry)
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


def metrics_middleware(metrics: IngressMetrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        # The route template, never the raw path: label sets stay bounded whatever clients send.
        route = resource.canonical if resource is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.requests.labels(route, request.method, str(status)).inc()
            metrics.seconds.labels(route).observe(time.perf_counter() - started)

    return middleware
