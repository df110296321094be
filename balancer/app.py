"""The balancer service: `POST /dispatch` decides from a cached snapshot and forwards."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from balancer.active import ActivePolicyFile, replica_name, starting_policy
from balancer.config import BalancerConfig
from balancer.forward import HttpSubstations
from balancer.health import OutlierDetector
from balancer.inflight import InFlight
from balancer.ledger import PendingLedger
from balancer.metrics import BalancerMetrics
from balancer.prom import GridQueries, QueryClient, make_client
from balancer.refresh import PolicyRefreshLoop
from balancer.serving import ServingState
from balancer.state import (
    CONFIG,
    HEALTH,
    HTTP,
    INFLIGHT,
    LEDGER,
    METRICS,
    REFRESH_LOOP,
    RNG,
    SERVING,
    SUBSTATIONS,
)
from balancer.views import setup_routes
from gridlb.http import bearer_token_middleware, json_errors_middleware
from gridlb.logs import AuthDisabled, access_log_middleware, log_startup, request_id_middleware
from gridlb.serviceinfo import package_version, register_service_info

log = logging.getLogger(__name__)

# Read-only views stay open: operators open /policy in a browser. Changes need the token.
_OPEN_PATHS = ("/metrics", "/healthz", "/readyz", "/policy")


def create_app(config: BalancerConfig, client: QueryClient | None = None,
               registry: CollectorRegistry | None = None) -> web.Application:
    """Build the app; raises PolicyError (naming file and field) if the policy is broken."""
    active = ActivePolicyFile(config.active_policy_file) if config.active_policy_file else None
    start = starting_policy(active, config.policy_dir, config.policy, replica_name(config.port))
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[request_id_middleware, access_log_middleware(), json_errors_middleware,
                     bearer_token_middleware([config.internal_token or ""], _OPEN_PATHS)])
    metrics = BalancerMetrics(registry or CollectorRegistry())
    register_service_info(metrics.registry, "balancer",
                          auth_disabled=not config.internal_token)
    ledger = PendingLedger(clock_skew_s=config.clock_skew_s)
    health = OutlierDetector()
    prometheus = client or make_client(config.prometheus_url, config.query_timeout_s,
                                       config.prometheus_headers, config.prometheus_access)
    app[CONFIG] = config
    app[METRICS] = metrics
    app[LEDGER] = ledger
    app[HEALTH] = health
    app[RNG] = random.Random(config.seed)
    app[INFLIGHT] = InFlight()
    serving = ServingState(start.policy, Path(start.file), ledger, health, metrics,
                           max_snapshot_age_s=config.max_snapshot_age_s)
    serving.reload_error = start.problem
    app[SERVING] = serving
    app[REFRESH_LOOP] = PolicyRefreshLoop(prometheus, serving,
                                          queries=GridQueries(config.substation_job,
                                                              grid=config.grid),
                                          extra_params=config.extra_query_params,
                                          active=active, default_policy=config.policy)
    app.on_startup.append(announce)
    app.cleanup_ctx.append(http_session)
    app.cleanup_ctx.append(refresh_loop)
    setup_routes(app)
    return app


def startup_fields(config: BalancerConfig, serving: ServingState) -> dict[str, object]:
    return {"version": package_version(), "listen": f"{config.host}:{config.port}",
            "policy": serving.policy.name, "policy_file": serving.policy_file,
            "prometheus": config.prometheus_url, "substation_job": config.substation_job,
            "internal_token": "set" if config.internal_token else "unset (auth disabled)",
            "state": "memory", "max_snapshot_age_s": config.max_snapshot_age_s}


async def announce(app: web.Application) -> None:
    config = app[CONFIG]
    log_startup("balancer", startup_fields(config, app[SERVING]), log,
                None if config.internal_token else AuthDisabled(
                    "no internal token", f"{config.host}:{config.port}",
                    "can dispatch charges and reload the policy"))


async def http_session(app: web.Application) -> AsyncIterator[None]:
    # One pooled session for every forward: a session per request would pay a TCP handshake each.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, ttl_dns_cache=300)
    app[HTTP] = aiohttp.ClientSession(connector=connector)
    app[SUBSTATIONS] = HttpSubstations(app[HTTP], app[CONFIG].internal_token)
    yield
    await app[HTTP].close()


async def refresh_loop(app: web.Application) -> AsyncIterator[None]:
    # Not gridlb.tasks.background: /readyz asks the loop itself whether its task still runs.
    task = app[REFRESH_LOOP].start()
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
