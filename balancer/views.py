"""HTTP views of the balancer: thin glue over selection, forwarding, the serving state and the
refresh loop."""

from __future__ import annotations

import math
import time
import urllib.parse
from typing import Any

from aiohttp import web

from balancer.forward import Outcome, place_session
from balancer.ledger import PendingLedger
from balancer.policy import PolicyError, policy_path
from balancer.selection import effective_load_kw, select_substation
from balancer.state import (
    CONFIG,
    HEALTH,
    HTTP,
    LEDGER,
    METRICS,
    PINS,
    REFRESH_LOOP,
    RNG,
    SERVING,
)
from gridlb.http import healthz, json_error, json_response, metrics_response, read_json_object

_MAX_ID = 128
# Refusals that say the session is not there and cannot be: the next substation may take it.
_MOVE_ON = frozenset({"over_capacity", "session_cancelled"})


def parse_dispatch(body: dict[str, Any]) -> dict[str, Any] | str:
    """The charge to place, or a sentence saying what is wrong with it."""
    for key in ("session_id", "vehicle_id"):
        value = body.get(key)
        if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID or \
                not value.isprintable():
            return f"{key}: must be 1-{_MAX_ID} printable characters"
    for key in ("requested_kw", "energy_kwh"):
        value = body.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or value <= 0:
            return f"{key}: must be a positive finite number"
    return {k: body[k] for k in ("session_id", "vehicle_id", "requested_kw", "energy_kwh")}


async def dispatch(request: web.Request) -> web.StreamResponse:
    app = request.app
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    charge = parse_dispatch(body)
    if isinstance(charge, str):
        return json_error(422, "invalid_request", charge)
    started = time.perf_counter()
    try:
        return await _place(app, charge)
    finally:
        app[METRICS].dispatch_seconds.observe(time.perf_counter() - started)


async def _place(app: web.Application, charge: dict[str, Any]) -> web.Response:
    config, serving, ledger, health, metrics = (app[CONFIG], app[SERVING], app[LEDGER],
                                                app[HEALTH], app[METRICS])
    if serving.snapshot is None:
        return json_error(503, "no_snapshot", "the balancer has not read Prometheus yet",
                          headers={"Retry-After": "1"})
    if not serving.snapshot.usable:
        return json_error(503, "no_substations",
                          "Prometheus reports no substation that is up with known load and "
                          "capacity", headers={"Retry-After": "1"})
    session_id, kw = charge["session_id"], float(charge["requested_kw"])
    policy = serving.policy
    tried: list[str] = []
    pinned = app[PINS].pinned_to(session_id, time.time())
    if pinned is not None:
        settled = await _settle_pinned(app, charge, pinned)
        if settled is not None:
            return settled
        tried.append(pinned)   # it answered that it does not hold the session: go elsewhere
    for attempt in range(1, config.max_attempts + 1):
        snapshot = serving.snapshot
        decided = time.perf_counter()
        skip = health.ejected_now(time.time(), snapshot.substations).union(tried)
        choice = select_substation(snapshot, ledger, policy, kw, app[RNG], exclude=skip,
                                   degraded=serving.degraded)
        metrics.decision_seconds.observe(time.perf_counter() - decided)
        if choice is None:
            break
        ledger.reserve(choice.instance, session_id, kw)
        result = await place_session(app[HTTP], choice.instance, charge, config.internal_token,
                                     config.forward_timeout_s)
        if result.outcome is Outcome.ACCEPTED:
            return _placed(app, charge, choice.instance, choice.name, result.body, attempt)
        ledger.release(choice.instance, session_id)
        tried.append(choice.instance)
        reason = result.detail if result.outcome is Outcome.REFUSED else result.outcome.value
        metrics.forward_refusals.labels(choice.name, reason[:40]).inc()
        if result.outcome is Outcome.REFUSED:
            if result.body.get("error") not in _MOVE_ON:
                return json_response(result.body, status=result.status)
            _observe(ledger, choice.instance, result.body, time.time())
        else:
            health.record_failure(choice.instance, time.time(), len(snapshot.substations))
            if result.outcome is Outcome.AMBIGUOUS:
                app[PINS].pin(session_id, choice.instance, time.time())
                metrics.decisions.labels(policy.name, choice.name, "failed").inc()
                return _outcome_unknown(session_id, choice.name)
        metrics.forward_retries.labels(choice.name).inc()
    metrics.decisions.labels(policy.name, "none", "no_capacity").inc()
    retry_after = str(max(1, math.ceil(policy.refresh_interval_s)))
    return json_error(503, "no_capacity",
                      f"no substation can take {kw:g} kW now (tried {len(tried)})",
                      headers={"Retry-After": retry_after})


def _placed(app: web.Application, charge: dict[str, Any], instance: str, name: str,
            session: dict[str, Any], attempts: int) -> web.Response:
    """Record a confirmed placement everywhere it matters, and answer "charging"."""
    ledger, now, policy = app[LEDGER], time.time(), app[SERVING].policy
    session_id = charge["session_id"]
    ledger.reserve(instance, session_id, float(charge["requested_kw"]))   # no-op if reserved
    ledger.confirm(instance, session_id, now)
    _observe(ledger, instance, session, now)
    app[PINS].pin(session_id, instance, now)
    app[HEALTH].record_success(instance)
    app[METRICS].decisions.labels(policy.name, name, "routed").inc()
    return json_response({"status": "charging", "session_id": session_id, "substation": name,
                          "routed_to": instance, "policy": policy.name, "attempts": attempts,
                          "session": session})


def _observe(ledger: PendingLedger, instance: str, body: dict[str, Any], now: float) -> None:
    """A substation's answer carries its load right then: the freshest reading there is."""
    load = body.get("load_kw")
    if isinstance(load, (int, float)) and not isinstance(load, bool) and math.isfinite(load):
        ledger.observe(instance, float(load), now)


def _outcome_unknown(session_id: str, substation: str) -> web.Response:
    return json_error(503, "outcome_unknown",
                      f"{substation} did not confirm or cancel session {session_id}; retry the "
                      "same request (same Idempotency-Key) later: it will only be placed there",
                      headers={"Retry-After": "2"}, substation=substation)


async def _settle_pinned(app: web.Application, charge: dict[str, Any], instance: str
                         ) -> web.Response | None:
    """Send a repeated session id to the one substation that holds or may hold it.
    None when that substation says it does not hold it (the request may go elsewhere)."""
    config, pins = app[CONFIG], app[PINS]
    session_id = charge["session_id"]
    result = await place_session(app[HTTP], instance, charge, config.internal_token,
                                 config.forward_timeout_s)
    snapshot = app[SERVING].snapshot
    view = snapshot.substations.get(instance) if snapshot else None
    name = view.name if view else instance
    if result.outcome is Outcome.ACCEPTED:
        return _placed(app, charge, instance, name, result.body, attempts=1)
    if result.outcome in (Outcome.AMBIGUOUS, Outcome.UNREACHABLE):
        return _outcome_unknown(session_id, name)   # still down: the session may be there
    pins.settle(session_id)
    if result.outcome is Outcome.REFUSED and result.body.get("error") not in _MOVE_ON:
        return json_response(result.body, status=result.status)
    return None


def graph_url(base: str, promql: str) -> str:
    query = urllib.parse.urlencode({"g0.expr": promql, "g0.tab": "0", "g0.range_input": "15m"})
    return f"{base.rstrip('/')}/graph?{query}"


async def show_policy(request: web.Request) -> web.Response:
    app = request.app
    serving, ledger, config = app[SERVING], app[LEDGER], app[CONFIG]
    policy, snapshot = serving.policy, serving.snapshot
    substations = []
    for view in (snapshot.substations.values() if snapshot else ()):
        substations.append({
            "substation": view.name, "instance": view.instance, "up": view.up,
            "score": view.score, "load_kw": view.load_kw, "capacity_kw": view.capacity_kw,
            "observed_load_kw": ledger.observed_load_kw(view.instance),
            "pending_kw": ledger.pending_kw(view.instance),
            "effective_load_kw": effective_load_kw(view, ledger),
            "scraped_at": view.scrape_ts,
        })
    error = serving.last_error
    return json_response({
        "policy": policy.name, "file": policy.source, "description": policy.description,
        "query": policy.query,
        "result": {"substation_label": policy.substation_label, "better": policy.better.value,
                   "select": policy.select.value,
                   "pending_adjustment": policy.pending_adjustment.value},
        "refresh_interval_s": policy.refresh_interval_s,
        "mode": serving.mode,
        "evaluated_at": snapshot.evaluated_at if snapshot else None,
        "age_s": serving.snapshot_age_s(),
        "substations": substations,
        "ejected": app[HEALTH].ejected(),
        "problems": list(snapshot.problems) if snapshot else [],
        "last_error": None if error is None else {"reason": error.reason,
                                                  "detail": error.detail, "at": error.at},
        "evaluations": serving.evaluations.as_dict(),
        "reload_error": serving.reload_error,
        "prometheus_graph_url": graph_url(config.prometheus_public_url or config.prometheus_url,
                                          policy.query),
    })


async def reload_policy(request: web.Request) -> web.Response:
    """POST /-/reload, optionally {"policy": "<name>"} to switch to another policy file."""
    app = request.app
    loop, serving = app[REFRESH_LOOP], app[SERVING]
    target = None
    if request.can_read_body:
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("policy")
        if name is not None:
            if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
                return json_error(422, "invalid_request", "policy: must be a policy name")
            target = policy_path(app[CONFIG].policy_dir, name)
    try:
        policy = await loop.reload(target)
    except PolicyError as exc:
        return json_error(422, "invalid_policy", str(exc), problems=exc.problems,
                          serving=serving.policy.name)
    evaluated = await loop.refresh_once()   # never raises: a failure is in `evaluations`
    return json_response({"status": "reloaded", "policy": policy.name, "file": policy.source,
                          "evaluated": evaluated})


async def readyz(request: web.Request) -> web.Response:
    serving, loop = request.app[SERVING], request.app[REFRESH_LOOP]
    snapshot = serving.snapshot
    usable = len(snapshot.usable) if snapshot else 0
    body = {"mode": serving.mode, "snapshot_age_s": serving.snapshot_age_s(),
            "policy": serving.policy.name, "usable_substations": usable,
            "refresh_loop": "running" if loop.running else "stopped",
            "evaluations": serving.evaluations.as_dict()}
    # Ready means able to place a charge: a snapshot with at least one usable substation, kept
    # fresh by a running loop. Failing evaluations alone do not make it unready: degraded mode
    # still places charges safely, and taking every replica out of service because Prometheus
    # is down would turn a monitoring outage into a charging outage. They show in `evaluations`
    # and `balancer_policy_evaluation_consecutive_failures`.
    ready = usable > 0 and loop.running
    return json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    request.app[SERVING].update_gauges()   # the snapshot age moves even between refreshes
    return metrics_response(request.app[METRICS].registry)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/dispatch", dispatch)
    app.router.add_get("/policy", show_policy)
    app.router.add_post("/-/reload", reload_policy)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
