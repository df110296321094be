"""The ingress: the public REST API in front of the balancer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

from gridlb.http import (
    Handler,
    bearer_token_middleware,
    healthz,
    json_error,
    json_errors_middleware,
    json_response,
    metrics_response,
    read_json_object,
)
from ingress.openapi import OPENAPI
from ingress.store import IngressStore
from ingress.validation import ChargeRequest, describe, parse_charge_request

disable_created_metrics()  # type: ignore[no-untyped-call]

_OPEN_PATHS = ("/metrics", "/healthz", "/readyz", "/openapi.json")
_MAX_KEY = 128


@dataclass(frozen=True)
class IngressConfig:
    balancer_url: str = "http://127.0.0.1:8081"
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()
    internal_token: str | None = None
    store_path: str = ".run/ingress.sqlite3"
    request_timeout_s: float = 30.0
    max_body_bytes: int = 16 * 1024


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("ingress_requests", "Requests by route, method and status",
                                ["route", "method", "status"], registry=registry)
        self.seconds = Histogram("ingress_request_duration_seconds", "Request latency",
                                 ["route"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5, 1.0, 2.5, 10.0))


class KeyedLocks:
    """One lock per idempotency key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


CONFIG = web.AppKey("config", IngressConfig)
STORE = web.AppKey("store", IngressStore)
HTTP = web.AppKey("http", aiohttp.ClientSession)
METRICS = web.AppKey("metrics", IngressMetrics)
KEY_LOCKS = web.AppKey("key_locks", KeyedLocks)


def _internal_headers(config: IngressConfig) -> dict[str, str]:
    return {"Authorization": f"Bearer {config.internal_token}"} if config.internal_token else {}


def session_id_for(idempotency_key: str | None) -> str:
    # From the key, so even a lost idempotency row cannot make a second session: the balancer
    # and the substations recognise a repeated session id.
    if idempotency_key is None:
        return uuid.uuid4().hex
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


async def charge(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    parsed = parse_charge_request(body)
    if isinstance(parsed, dict):
        return json_error(422, "invalid_request", describe(parsed), fields=parsed)
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return await _dispatch(request.app, parsed, None, "")
    if not 0 < len(key) <= _MAX_KEY or not key.isprintable():
        return json_error(400, "invalid_idempotency_key",
                          f"Idempotency-Key must be 1-{_MAX_KEY} printable characters")
    body_hash = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    # Concurrent copies of one key wait for the first one's outcome.
    async with request.app[KEY_LOCKS].hold(key):
        stored = request.app[STORE].outcome(key)
        if stored is not None:
            if stored.body_hash != body_hash:
                return json_error(422, "idempotency_key_reused",
                                  "this Idempotency-Key was used with a different body")
            return json_response(stored.response, status=stored.status,
                                 headers={"Idempotent-Replayed": "true"})
        return await _dispatch(request.app, parsed, key, body_hash)


async def _dispatch(app: web.Application, req: ChargeRequest, key: str | None,
                    body_hash: str) -> web.Response:
    config = app[CONFIG]
    session_id = session_id_for(key)
    payload = {"session_id": session_id, "vehicle_id": req.vehicle_id,
               "requested_kw": req.requested_kw, "energy_kwh": req.energy_kwh}
    try:
        async with app[HTTP].post(f"{config.balancer_url}/dispatch", json=payload,
                                  headers=_internal_headers(config),
                                  timeout=aiohttp.ClientTimeout(
                                      total=config.request_timeout_s)) as resp:
            status, raw = resp.status, await resp.read()
            retry_after = resp.headers.get("Retry-After")
    except asyncio.TimeoutError:
        return json_error(504, "balancer_timeout", "the balancer did not answer in time; "
                          "retry with the same Idempotency-Key")
    except aiohttp.ClientError as exc:
        return json_error(503, "balancer_unavailable", f"cannot reach the balancer: {exc}",
                          headers={"Retry-After": "1"})
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict) or status in (401, 403) or (status >= 500 and \
            status != 503):
        return json_error(502, "bad_gateway", f"the balancer answered HTTP {status}")
    if status != 200:
        headers = {"Retry-After": retry_after} if retry_after else None
        return json_response(answer, status=status, headers=headers)
    result = {"status": "charging", "session_id": session_id,
              "substation": answer["substation"], "routed_to": answer["routed_to"],
              "policy": answer["policy"], "requested_kw": req.requested_kw,
              "energy_kwh": req.energy_kwh}
    app[STORE].record_session(session_id, answer["substation"], answer["routed_to"],
                              req.vehicle_id, answer["policy"])
    if key is not None:
        app[STORE].record_outcome(key, body_hash, 200, result)
    return json_response(result)


async def _proxy_session(request: web.Request, method: str) -> web.Response:
    app, session_id = request.app, request.match_info["id"]
    route = app[STORE].route(session_id)
    if route is None:
        return json_error(404, "unknown_session", f"no session {session_id!r} was started here")
    try:
        async with app[HTTP].request(method, f"http://{route.routed_to}/sessions/{session_id}",
                                     headers=_internal_headers(app[CONFIG]),
                                     timeout=aiohttp.ClientTimeout(total=5)) as resp:
            status, raw = resp.status, await resp.read()
    except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
        return json_error(503, "substation_unavailable",
                          f"{route.substation} cannot be reached now: {type(exc).__name__}",
                          headers={"Retry-After": "2"})
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if status != 200 or not isinstance(body, dict):
        return json_error(503 if status >= 500 else 404, "unknown_session" if status == 404
                          else "substation_error", f"{route.substation} answered HTTP {status}")
    return json_response({**body, "substation": route.substation,
                          "routed_to": route.routed_to})


async def get_session(request: web.Request) -> web.Response:
    return await _proxy_session(request, "GET")


async def stop_session(request: web.Request) -> web.Response:
    return await _proxy_session(request, "DELETE")


async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


async def metrics_view(request: web.Request) -> web.Response:
    return metrics_response(request.app[METRICS].registry)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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
        metrics = request.app[METRICS]
        metrics.requests.labels(route, request.method, str(status)).inc()
        metrics.seconds.labels(route).observe(time.perf_counter() - started)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/charge", charge)
    app.router.add_get("/sessions/{id}", get_session)
    app.router.add_delete("/sessions/{id}", stop_session)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)


async def http_session(app: web.Application) -> AsyncIterator[None]:
    app[HTTP] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=256),
        json_serialize=lambda v: orjson.dumps(v).decode())
    yield
    await app[HTTP].close()


async def store(app: web.Application) -> AsyncIterator[None]:
    app[STORE] = IngressStore(app[CONFIG].store_path)

    async def prune_hourly() -> None:
        while True:
            app[STORE].prune()
            await asyncio.sleep(3600)
    task = asyncio.create_task(prune_hourly(), name="prune-store")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    app[STORE].close()


def create_app(config: IngressConfig, registry: CollectorRegistry | None = None
               ) -> web.Application:
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[json_errors_middleware, metrics_middleware,
                     bearer_token_middleware(config.api_keys, _OPEN_PATHS)])
    app[CONFIG] = config
    app[METRICS] = IngressMetrics(registry or CollectorRegistry())
    app[KEY_LOCKS] = KeyedLocks()
    app.cleanup_ctx.append(store)
    app.cleanup_ctx.append(http_session)
    setup_routes(app)
    return app
