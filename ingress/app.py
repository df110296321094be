"""The ingress: the public REST API in front of the balancer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from gridlb.http import bearer_token_middleware, json_errors_middleware
from gridlb.logs import AuthDisabled, access_log_middleware, log_startup, request_id_middleware
from gridlb.serviceinfo import package_version, register_service_info
from gridlb.tasks import background
from ingress.balancers import (
    BalancerAnswer,
    BalancerReplicas,
    Resolve,
    dispatch,
    resolve_a_records,
)
from ingress.config import IngressConfig
from ingress.idempotency import KeyRecord
from ingress.metrics import IngressMetrics, metrics_middleware
from ingress.reconciler import Reconciler
from ingress.state import BALANCERS, CONFIG, HTTP, METRICS, MOVED_TO, STORE
from ingress.store import StoreUnavailable
from ingress.stores import describe_store, open_store
from ingress.views import internal_headers, setup_routes, store_errors_middleware

log = logging.getLogger(__name__)
_OPEN_PATHS = ("/metrics", "/healthz", "/readyz", "/openapi.json")


async def http_session(app: web.Application) -> AsyncIterator[None]:
    app[HTTP] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=256),
        json_serialize=lambda v: orjson.dumps(v).decode())
    yield
    await app[HTTP].close()


async def store(app: web.Application) -> AsyncIterator[None]:
    app[STORE] = await open_store(app[CONFIG])
    yield
    await app[STORE].aclose()


def balancer_replicas(resolve: Resolve) -> Callable[[web.Application], AsyncIterator[None]]:
    """The balancer replicas, host names resolved before the first request."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        app[BALANCERS] = BalancerReplicas(app[CONFIG].balancer_urls, resolve)
        await app[BALANCERS].refresh()
        yield

    return context


async def resolve_balancers(app: web.Application) -> None:
    """Resolve the balancers' host names again and again: replicas come and go (Compose's
    `--scale balancer=N`). Nothing to do when every balancer URL is an address."""
    if not app[BALANCERS].has_names:
        return
    while True:
        await asyncio.sleep(app[CONFIG].balancer_dns_refresh_s)
        await app[BALANCERS].refresh()


async def prune_store(app: web.Application) -> None:
    while True:
        try:
            gone = await app[STORE].prune(time.time())
        except StoreUnavailable as exc:
            log.warning("pruning idempotency records: %s", exc)
            gone = 0
        if gone:
            log.info("pruned %d settled idempotency records", gone)
        await asyncio.sleep(app[CONFIG].prune_interval_s)


async def reconcile(app: web.Application) -> None:
    """Resolve PENDING records every reconcile_interval_s (ingress/reconciler.py)."""
    config, metrics = app[CONFIG], app[METRICS]

    async def resolve(record: KeyRecord) -> BalancerAnswer:
        budget = max(0.1, config.request_timeout_s - 0.5)
        return await dispatch(app[HTTP], app[BALANCERS].urls(),
                              {"session_id": record.session_id, "epoch": record.epoch,
                               "timeout_s": budget}, internal_headers(config),
                              config.request_timeout_s, path="/resolve")

    reconciler = Reconciler(app[STORE], resolve, time.time,
                            min_age_s=config.reconcile_min_age_s)
    while True:
        await asyncio.sleep(config.reconcile_interval_s)
        try:
            results = await reconciler.round()
        except StoreUnavailable as exc:    # PostgreSQL away: try again when it is back
            log.warning("reconciling pending idempotency records: %s", exc)
            metrics.reconciled.labels("error").inc()
            continue
        except Exception:                  # a bug or a broken disk: say so, try again later
            log.exception("reconciling pending idempotency records failed")
            metrics.reconciled.labels("error").inc()
            continue
        for result, count in results.items():
            metrics.reconciled.labels(result).inc(count)


def startup_fields(config: IngressConfig) -> dict[str, object]:
    return {"version": package_version(), "listen": f"{config.host}:{config.port}",
            "balancers": ",".join(config.balancer_urls),
            "api_keys": len(config.api_keys) or "none (auth disabled)",
            "internal_token": "set" if config.internal_token else "unset",
            "store": describe_store(config),
            "durability": config.durability.value,
            "request_timeout_s": config.request_timeout_s}


async def announce(app: web.Application) -> None:
    config = app[CONFIG]
    log_startup("ingress", startup_fields(config), log, None if config.api_keys else AuthDisabled(
        "no API keys", f"{config.host}:{config.port}", "can start and stop charging sessions"))


def create_app(config: IngressConfig, registry: CollectorRegistry | None = None,
               resolve: Resolve = resolve_a_records) -> web.Application:
    metrics = IngressMetrics(registry or CollectorRegistry())
    register_service_info(metrics.registry, "ingress", auth_disabled=not config.api_keys)
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[request_id_middleware, access_log_middleware(),
                     json_errors_middleware, metrics_middleware(metrics),
                     bearer_token_middleware(config.api_keys, _OPEN_PATHS),
                     store_errors_middleware])
    app[CONFIG] = config
    app[METRICS] = metrics
    app[MOVED_TO] = {}
    app.on_startup.append(announce)
    app.cleanup_ctx.append(store)
    app.cleanup_ctx.append(http_session)
    app.cleanup_ctx.append(balancer_replicas(resolve))
    app.cleanup_ctx.append(background(resolve_balancers, "resolve-balancers"))
    app.cleanup_ctx.append(background(prune_store, "prune-store"))
    app.cleanup_ctx.append(background(reconcile, "reconcile"))
    setup_routes(app)
    return app
