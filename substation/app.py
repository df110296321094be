"""The substation service: `POST /charge` admits a session only if it fits the capacity."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry

from gridlb.durable import FileDelay
from gridlb.http import bearer_token_middleware, json_errors_middleware
from gridlb.logs import AuthDisabled, access_log_middleware, log_startup, request_id_middleware
from gridlb.serviceinfo import package_version, register_service_info
from gridlb.tasks import background
from substation.charging import ChargingSession, SessionTable
from substation.config import SubstationConfig
from substation.metrics import SubstationMetrics
from substation.saving import Saves
from substation.state import CONFIG, METRICS, SAVES, STORE, TABLE
from substation.store import COMPLETE, SessionStore
from substation.views import refresh_gauges, setup_routes

log = logging.getLogger(__name__)

# Each charging session's delivered energy reaches disk about this often. Saved in slices, one
# per tick: saving thousands of sessions at once stalls requests for tens of milliseconds.
_SAVE_EVERY_S = 5.0


def tick(app: web.Application, now: float) -> list[ChargingSession]:
    """Advance the simulation to `now` and bring the metrics along."""
    table, metrics = app[TABLE], app[METRICS]
    delivered_before = table.delivered_total_kwh
    completed = table.advance(now)
    metrics.energy.inc(table.delivered_total_kwh - delivered_before)
    metrics.ended["completed"].inc(len(completed))
    refresh_gauges(app)
    return completed


async def save_progress(app: web.Application, completed: list[ChargingSession],
                        charging: Iterable[ChargingSession]) -> None:
    """Completed sessions (with their history events) and the energy of those charging."""
    now = time.time()
    await app[STORE].save([*completed, *charging],
                          [(COMPLETE, s, s.ended_at or now) for s in completed])


async def run_simulation(app: web.Application) -> None:
    config = app[CONFIG]
    slices = max(1, round(_SAVE_EVERY_S / config.tick_interval_s))
    turn = 0
    try:
        while True:
            await asyncio.sleep(config.tick_interval_s)
            completed = tick(app, time.time())
            if STORE not in app:
                continue
            store, turn = app[STORE], (turn + 1) % slices
            await save_progress(app, completed, (s for s in app[TABLE].active.values()
                                                 if hash(s.session_id) % slices == turn))
            if turn == 0:
                now = time.time()
                # Ended sessions stay on disk as long as fences do: a restarted substation
                # still answers a fence with how they ended (SessionTable.forgotten).
                await store.delete_before(now - app[TABLE].fence_retention_s,
                                          now - app[TABLE].fence_retention_s)
    finally:
        # The last tick's completions are saved too: left out, they would come back charging
        # from an older save after a restart and deliver their energy a second time.
        completed = tick(app, time.time())
        if STORE in app:
            await save_progress(app, completed, list(app[TABLE].active.values()))


async def session_store(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if config.state_path is None:
        yield
        await app[SAVES].all_settled()
        return
    store = SessionStore(config.state_path, config.durability,
                         history_of=config.substation_id if config.history else None,
                         before_commit=FileDelay(config.fault_file) if config.fault_file
                         else None)
    now = time.time()
    for session in store.load():
        app[TABLE].resume(session, now)
    app[TABLE].reallocate(now)    # shared again among what was resumed
    for session_id, epoch, at in store.load_fences():
        app[TABLE].resume_fence(session_id, epoch, at)
    store.record_start(config.capacity_kw, now)
    refresh_gauges(app)
    app[STORE] = store
    yield
    await app[SAVES].all_settled()    # every admission confirmed or withdrawn
    await store.save(app[TABLE].active.values())   # the energy delivered up to the shutdown
    await store.aclose()


def first_load_seq(now: float) -> int:
    """Readings are numbered from the start time in microseconds: a restarted substation's
    numbers stay above its previous run's (unless it admitted a million sessions a second), and
    stay below 2**53, so they survive as a Prometheus float exactly (`substation_load_seq`)."""
    return int(now * 1_000_000)


def startup_fields(config: SubstationConfig) -> dict[str, object]:
    return {"version": package_version(), "id": config.substation_id,
            "listen": f"{config.host}:{config.port}", "capacity_kw": config.capacity_kw,
            "internal_token": "set" if config.internal_token else "unset (auth disabled)",
            "store": f"sqlite:{config.state_path}" if config.state_path else "memory",
            "durability": config.durability.value, "speed_factor": config.speed_factor,
            "max_sessions": config.max_sessions}


async def announce(app: web.Application) -> None:
    config = app[CONFIG]
    log_startup("substation", startup_fields(config), log,
                None if config.internal_token else AuthDisabled(
                    "no internal token", f"{config.host}:{config.port}",
                    "can start and stop sessions here"))


def create_app(config: SubstationConfig, registry: CollectorRegistry | None = None
               ) -> web.Application:
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[request_id_middleware, access_log_middleware(), json_errors_middleware,
                     bearer_token_middleware([config.internal_token or ""],
                                             ("/metrics", "/healthz", "/readyz"))])
    app[CONFIG] = config
    app[SAVES] = Saves()
    app[TABLE] = SessionTable(config.capacity_kw, config.speed_factor, config.retention_s,
                              max_sessions=config.max_sessions,
                              load_seq=first_load_seq(time.time()),
                              end_lag_s=config.tick_interval_s)
    app[METRICS] = SubstationMetrics(registry or CollectorRegistry(), config.substation_id,
                                     config.capacity_kw, config.forecast_horizons_s)
    register_service_info(app[METRICS].registry, "substation",
                          auth_disabled=not config.internal_token)
    app.on_startup.append(announce)
    # The store loads before the simulation starts and closes after it stops.
    app.cleanup_ctx.append(session_store)
    app.cleanup_ctx.append(background(run_simulation, "charging-simulation"))
    setup_routes(app)
    return app
