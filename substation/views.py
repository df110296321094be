"""HTTP views of the substation: thin glue over the session table (substation/charging.py).

Every answer that speaks for a session carries its real state now (a repeat of a session that has
ended says so) and the substation's load with its sequence number (`load_kw`, `load_seq`) and
its forecast (`load_forecast_kw`), which the balancer keeps as a reading fresher than the last
scrape.

Durable before visible (substation/saving.py): a new session is answered only once it is on
disk, and whatever asks about a session being saved (a repeat, a fence, a read, a stop) waits
for that save; the load and every list count only sessions already on disk.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from gridlb.charge import describe, parse_session_charge
from gridlb.errors import ErrorCode
from gridlb.http import healthz, json_error, json_response, metrics_response, read_json_object
from substation.charging import CHARGING, ChargingSession, OverCapacity, Refusal
from substation.state import CONFIG, METRICS, SAVES, STORE, TABLE
from substation.store import ADMIT, STOP

_OUTCOME_BY_CODE = {"over_capacity": "over_capacity", "too_many_sessions": "too_many_sessions",
                    "session_conflict": "conflict", "session_fenced": "fenced"}


def load_fields(app: web.Application) -> dict[str, Any]:
    """The load now, its reading's number, and its forecast ([horizon_s, kW] pairs, as the
    substation_load_forecast_kw gauges): the balancer ages this reading by its own forecast."""
    table, horizons_s = app[TABLE], app[METRICS].forecast_horizons_s
    forecast = table.forecast_kw(time.time(), horizons_s)
    return {"substation": app[CONFIG].substation_id, "load_kw": table.load_kw,
            "load_seq": table.load_seq, "capacity_kw": table.capacity_kw,
            "load_forecast_kw": [[h, kw] for h, kw in zip(horizons_s, forecast, strict=True)]}


def session_body(app: web.Application, session: ChargingSession) -> dict[str, Any]:
    """The session, the load, and while it charges `ends_at`: when it will leave the load if it
    runs to its declared energy (the balancer stops counting it then)."""
    body = {**session.to_json(), **load_fields(app)}
    if session.state == CHARGING:
        ends_at = app[TABLE].ends_at(session)
        # Paused at 0 kW: no end is known (JSON has no infinity).
        if ends_at != float("inf"):
            body["ends_at"] = ends_at
        will_complete = app[TABLE].will_complete_by_departure(session)
        if will_complete is not None:
            body["will_complete_by_departure"] = will_complete
    return body


def refresh_gauges(app: web.Application) -> None:
    table, metrics = app[TABLE], app[METRICS]
    metrics.load.set(table.load_kw)
    metrics.load_seq.set(table.load_seq)
    metrics.active.set(len(table.active))
    metrics.saving.set(len(table.saving))
    metrics.over_capacity.set(1 if table.over_capacity else 0)
    metrics.committed_min.set(table.load_kw)
    metrics.granted.set(table.granted_kw)
    metrics.curtailed.set(table.curtailed_kw)


async def save_admission(app: web.Application, session: ChargingSession,
                         saved: Awaitable[None] | None) -> None:
    """Once its save is on disk (with its history event), confirmed; withdrawn if it fails."""
    table = app[TABLE]
    try:
        if saved is not None:
            await saved
    except BaseException:
        table.withdraw(session.session_id)
        refresh_gauges(app)
        raise
    table.confirm(session.session_id, time.time())
    refresh_gauges(app)


async def charge(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        metrics.requests["invalid"].inc()
        return body
    parsed = parse_session_charge(body, app[CONFIG].limits)
    if isinstance(parsed, dict):
        metrics.requests["invalid"].inc()
        return json_error(422, ErrorCode.INVALID_REQUEST, describe(parsed), fields=parsed)
    await app[SAVES].settled(parsed.session_id)
    try:
        admission = app[TABLE].reserve(parsed.session_id, parsed.vehicle_id,
                                       parsed.requested_kw, parsed.energy_kwh, time.time(),
                                       parsed.epoch, parsed.min_kw, parsed.departure_at)
    except Refusal as exc:
        metrics.requests[_OUTCOME_BY_CODE[exc.code]].inc()
        extra = {"load_kw": exc.load_kw} if isinstance(exc, OverCapacity) else {}
        return json_error(409, exc.code, str(exc), **{**load_fields(app), **extra})
    if admission.duplicate:
        metrics.requests["duplicate"].inc()
        return json_response(session_body(app, admission.session),
                             headers={"X-Duplicate": "true"})
    refresh_gauges(app)
    try:
        # On disk before the answer (and before anything else shows it): a confirmed session
        # survives a crash right after.
        session = admission.session
        # Queued now, in the order of admission: the history's order is the capacity's.
        saved = app[STORE].submit([session], [(ADMIT, session, session.started_at)]) \
            if STORE in app else None
        await app[SAVES].run(parsed.session_id, save_admission(app, session, saved))
    except Exception as exc:
        metrics.requests["not_saved"].inc()
        # A 5xx: the balancer fences the session here (now absent) and tries the next.
        return json_error(503, ErrorCode.SESSION_NOT_SAVED,
                          f"the session could not be saved ({type(exc).__name__}: {exc}); it "
                          "was not started", **load_fields(app))
    metrics.requests["accepted"].inc()
    return json_response(session_body(app, admission.session))


async def fence(request: web.Request) -> web.Response:
    """POST /sessions/{id}/fence {"epoch": n}: is the session here? If not, refuse every copy
    of it with an epoch below n from now on (and after a restart)."""
    app = request.app
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    epoch = body.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= 2**31 \
            or set(body) - {"epoch"}:
        return json_error(422, ErrorCode.INVALID_REQUEST,
                          "the body must be {\"epoch\": <integer from 1 to 2^31>}")
    session_id = request.match_info["id"]
    await app[SAVES].settled(session_id)    # neither here nor absent until its save is done
    now = time.time()
    session = app[TABLE].fence(session_id, epoch, now)
    if session is not None:
        return json_response(session_body(app, session))
    if STORE in app:
        await app[STORE].save_fence(session_id, app[TABLE].fences[session_id][0], now)
    return json_response({"session_id": session_id, "state": "absent", "fenced_below": epoch,
                          **load_fields(app)})


async def get_session(request: web.Request) -> web.Response:
    await request.app[SAVES].settled(request.match_info["id"])
    session = request.app[TABLE].get(request.match_info["id"])
    if session is None:
        return json_error(404, ErrorCode.UNKNOWN_SESSION, "no session with this id here")
    return json_response(session_body(request.app, session))


async def list_sessions(request: web.Request) -> web.Response:
    """Every session this substation holds (internal: the fault tests read it)."""
    table, state = request.app[TABLE], request.query.get("state")
    sessions = [*table.active.values(), *table.ended.values()]
    return json_response({**load_fields(request.app), "sessions": [
        s.to_json() for s in sessions if state is None or s.state == state]})


async def stop_session(request: web.Request) -> web.Response:
    app = request.app
    await app[SAVES].settled(request.match_info["id"])
    before = len(app[TABLE].active)
    now = time.time()
    session = app[TABLE].stop(request.match_info["id"], now)
    if session is None:
        return json_error(404, ErrorCode.UNKNOWN_SESSION, "no session with this id here")
    if len(app[TABLE].active) < before:
        app[METRICS].ended["stopped"].inc()
        if STORE in app:
            await app[STORE].save([session], [(STOP, session, now)])
    refresh_gauges(app)
    return json_response(session_body(app, session))


async def status(request: web.Request) -> web.Response:
    """The load and its sessions; `over_capacity`: above its capacity (restarted with less than
    its sessions take), so it admits nothing until under it again."""
    table = request.app[TABLE]
    return json_response({**load_fields(request.app), "active_sessions": len(table.active),
                          "over_capacity": table.over_capacity,
                          # Adaptive power: load_kw is the committed floors; these, the power
                          # drawn and what was asked for beyond it.
                          "granted_kw": table.granted_kw, "requested_kw": table.requested_kw,
                          "curtailed_kw": table.curtailed_kw})


def refresh_forecast(app: web.Application, now: float) -> None:
    """Set the forecast gauges for a sample taken now: computed per scrape, not per change."""
    metrics = app[METRICS]
    forecast = app[TABLE].forecast_kw(now, metrics.forecast_horizons_s)
    for gauge, load_kw in zip(metrics.forecast, forecast, strict=True):
        gauge.set(load_kw)


async def metrics_view(request: web.Request) -> web.Response:
    refresh_forecast(request.app, time.time())
    return metrics_response(request.app[METRICS].registry)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/charge", charge)
    app.router.add_get("/sessions", list_sessions)
    app.router.add_get("/sessions/{id}", get_session)
    app.router.add_delete("/sessions/{id}", stop_session)
    app.router.add_post("/sessions/{id}/fence", fence)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
