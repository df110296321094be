"""The substation service: `POST /charge` admits a session only if it fits the capacity."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from gridlb.http import (
    bearer_token_middleware,
    healthz,
    json_error,
    json_errors_middleware,
    json_response,
    metrics_response,
    read_json_object,
)
from substation.charging import (
    ChargingSession,
    OverCapacity,
    SessionCancelled,
    SessionConflict,
    SessionTable,
)
from substation.metrics import SubstationMetrics
from substation.store import SessionStore

_MAX_ID = 128
_MAX_KW = 10_000.0
_FIELDS = {"session_id", "vehicle_id", "requested_kw", "energy_kwh"}
# Each charging session's delivered energy reaches disk about this often. Saved in slices, one
# per tick: saving thousands of sessions at once stalls requests for tens of milliseconds.
_SAVE_EVERY_S = 5.0


@dataclass(frozen=True)
class SubstationConfig:
    substation_id: str
    capacity_kw: float
    host: str = "127.0.0.1"
    port: int = 9101
    speed_factor: float = 60.0
    tick_interval_s: float = 0.2
    internal_token: str | None = None
    state_path: str | None = None
    max_body_bytes: int = 16 * 1024
    retention_s: float = 600.0


CONFIG = web.AppKey("config", SubstationConfig)
TABLE = web.AppKey("table", SessionTable)
METRICS = web.AppKey("metrics", SubstationMetrics)
STORE = web.AppKey("store", SessionStore)


def parse_charge(body: dict[str, Any]) -> dict[str, Any] | str:
    """The session to admit, or a sentence naming every bad field."""
    problems = [f"{key}: unknown field" for key in sorted(set(body) - _FIELDS)]
    for key in ("session_id", "vehicle_id"):
        value = body.get(key)
        if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID or \
                not value.isprintable():
            problems.append(f"{key}: must be 1-{_MAX_ID} printable characters")
    for key in ("requested_kw", "energy_kwh"):
        value = body.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or not 0 < value <= _MAX_KW:
            problems.append(f"{key}: must be a number above 0 and at most {_MAX_KW:g}")
    return "; ".join(problems) if problems else body


def _session_body(app: web.Application, session: ChargingSession) -> dict[str, Any]:
    table = app[TABLE]
    return {**session.to_json(), "substation": app[CONFIG].substation_id,
            "load_kw": table.load_kw, "capacity_kw": table.capacity_kw}


def _refresh_gauges(app: web.Application) -> None:
    table, metrics = app[TABLE], app[METRICS]
    metrics.load.set(table.load_kw)
    metrics.active.set(len(table.active))


async def charge(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        metrics.requests["invalid"].inc()
        return body
    parsed = parse_charge(body)
    if isinstance(parsed, str):
        metrics.requests["invalid"].inc()
        return json_error(422, "invalid_request", parsed)
    table = app[TABLE]
    try:
        admission = table.admit(parsed["session_id"], parsed["vehicle_id"],
                                float(parsed["requested_kw"]), float(parsed["energy_kwh"]),
                                time.time())
    except OverCapacity as exc:
        metrics.requests["over_capacity"].inc()
        return json_error(409, "over_capacity", str(exc), load_kw=exc.load_kw,
                          capacity_kw=exc.capacity_kw)
    except SessionConflict as exc:
        metrics.requests["conflict"].inc()
        return json_error(409, "session_conflict", str(exc))
    except SessionCancelled as exc:
        metrics.requests["cancelled"].inc()
        return json_error(409, "session_cancelled", str(exc))
    if admission.duplicate:
        metrics.requests["duplicate"].inc()
        return json_response(_session_body(app, admission.session),
                             headers={"X-Duplicate": "true"})
    # Saved before answering: a confirmed session survives a crash right after.
    if STORE in app:
        app[STORE].save([admission.session])
    metrics.requests["accepted"].inc()
    _refresh_gauges(app)
    return json_response(_session_body(app, admission.session))


async def get_session(request: web.Request) -> web.Response:
    session = request.app[TABLE].get(request.match_info["id"])
    if session is None:
        return json_error(404, "unknown_session", "no session with this id here")
    return json_response(_session_body(request.app, session))


async def stop_session(request: web.Request) -> web.Response:
    app = request.app
    before = len(app[TABLE].active)
    session = app[TABLE].stop(request.match_info["id"], time.time())
    if len(app[TABLE].active) < before:
        app[METRICS].ended["stopped"].inc()
    if STORE in app:
        app[STORE].save([session])
    _refresh_gauges(app)
    return json_response(_session_body(app, session))


async def status(request: web.Request) -> web.Response:
    table = request.app[TABLE]
    return json_response({"substation": request.app[CONFIG].substation_id,
                          "load_kw": table.load_kw, "capacity_kw": table.capacity_kw,
                          "active_sessions": len(table.active)})


async def metrics_view(request: web.Request) -> web.Response:
    return metrics_response(request.app[METRICS].registry)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/charge", charge)
    app.router.add_get("/sessions/{id}", get_session)
    app.router.add_delete("/sessions/{id}", stop_session)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)


def tick(app: web.Application, now: float) -> list[ChargingSession]:
    """Advance the simulation to `now` and bring the metrics along."""
    table, metrics = app[TABLE], app[METRICS]
    delivered_before = table.delivered_total_kwh
    completed = table.advance(now)
    metrics.energy.inc(table.delivered_total_kwh - delivered_before)
    metrics.ended["completed"].inc(len(completed))
    _refresh_gauges(app)
    return completed


async def simulation(app: web.Application) -> AsyncIterator[None]:
    async def run() -> None:
        config = app[CONFIG]
        slices = max(1, round(_SAVE_EVERY_S / config.tick_interval_s))
        turn = 0
        while True:
            await asyncio.sleep(config.tick_interval_s)
            completed = tick(app, time.time())
            if STORE not in app:
                continue
            store, turn = app[STORE], (turn + 1) % slices
            store.save([*completed, *(s for s in app[TABLE].active.values()
                                      if hash(s.session_id) % slices == turn)])
            if turn == 0:
                store.delete_ended_before(time.time() - config.retention_s)
    task = asyncio.create_task(run(), name="charging-simulation")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    tick(app, time.time())


async def session_store(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if config.state_path is None:
        yield
        return
    store = SessionStore(config.state_path)
    now = time.time()
    for session in store.load():
        app[TABLE].resume(session, now)
    _refresh_gauges(app)
    app[STORE] = store
    yield
    store.save(app[TABLE].active.values())   # the energy delivered up to the shutdown
    store.close()


def create_app(config: SubstationConfig, registry: CollectorRegistry | None = None
               ) -> web.Application:
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[json_errors_middleware,
                     bearer_token_middleware([config.internal_token or ""],
                                             ("/metrics", "/healthz", "/readyz"))])
    app[CONFIG] = config
    app[TABLE] = SessionTable(config.capacity_kw, config.speed_factor, config.retention_s)
    app[METRICS] = SubstationMetrics(registry or CollectorRegistry(), config.substation_id,
                                     config.capacity_kw)
    # The store loads before the simulation starts and closes after it stops.
    app.cleanup_ctx.append(session_store)
    app.cleanup_ctx.append(simulation)
    setup_routes(app)
    return app
