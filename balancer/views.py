"""HTTP views of the balancer: thin glue over selection, forwarding, the serving state and the
refresh loop."""

from __future__ import annotations

import asyncio
import math
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from aiohttp import web

from balancer.active import ActiveChoice, replica_name
from balancer.chooser import LedgerChooser
from balancer.placement import Deadline, Outcome, OutcomeKind, Placement
from balancer.policy import PolicyError, is_policy_name, policy_path
from balancer.selection import aged_loads, effective_load_kw
from balancer.state import (
    CONFIG,
    HEALTH,
    INFLIGHT,
    LEDGER,
    METRICS,
    REFRESH_LOOP,
    RNG,
    SERVING,
    SUBSTATIONS,
)
from gridlb.charge import SessionCharge, describe, horizon_label, parse_session_charge
from gridlb.errors import ErrorCode
from gridlb.grid import ConfigError
from gridlb.http import healthz, json_error, json_response, metrics_response, read_json_object

_EXTRA_FIELDS = ("resolve", "timeout_s")


def _dispatch_options(body: dict[str, Any], default_budget_s: float
                      ) -> tuple[bool, float] | str:
    """(resolve, budget in seconds), or a sentence saying what is wrong."""
    resolve = body.get("resolve", False)
    if not isinstance(resolve, bool):
        return "resolve: must be true or false"
    budget = body.get("timeout_s", default_budget_s)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or \
            not math.isfinite(budget) or not 0 < budget <= 300:
        return "timeout_s: must be a number of seconds above 0 and at most 300"
    return resolve, min(float(budget), default_budget_s)


async def dispatch(request: web.Request) -> web.StreamResponse:
    """POST /dispatch: place one session (balancer/placement.py) within the caller's deadline.
    Every answer says whether the session may exist (`session_may_exist`), so the ingress knows
    whether a retry must first resolve where it is."""
    app = request.app
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    charge = parse_session_charge(body, app[CONFIG].limits, _EXTRA_FIELDS)
    options = _dispatch_options(body, app[CONFIG].dispatch_budget_s)
    if isinstance(charge, dict):
        return json_error(422, ErrorCode.INVALID_REQUEST, describe(charge))
    if isinstance(options, str):
        return json_error(422, ErrorCode.INVALID_REQUEST, options)
    resolve, budget_s = options
    deadline = Deadline(budget_s, time.monotonic)
    started = time.perf_counter()
    inflight = app[INFLIGHT]
    if not await inflight.acquire(charge.session_id, max(0.0, deadline.remaining() - 0.1)):
        return json_error(409, ErrorCode.DISPATCH_IN_PROGRESS,
                          f"session {charge.session_id} is being placed by an earlier request; "
                          "retry later with the same Idempotency-Key",
                          headers={"Retry-After": "1"}, session_may_exist=True)
    app[METRICS].in_flight.set(len(inflight))
    try:
        return await _place(app, charge, resolve, deadline)
    finally:
        inflight.release(charge.session_id)
        app[METRICS].in_flight.set(len(inflight))
        app[METRICS].dispatch_seconds.observe(time.perf_counter() - started)


async def _place(app: web.Application, charge: SessionCharge, resolve: bool,
                 deadline: Deadline) -> web.Response:
    config, serving = app[CONFIG], app[SERVING]
    snapshot = serving.snapshot
    if snapshot is None:
        return json_error(503, ErrorCode.NO_SNAPSHOT, "the balancer has not read Prometheus yet",
                          headers={"Retry-After": "1"}, session_may_exist=resolve)
    if not snapshot.usable and not resolve:
        return json_error(503, ErrorCode.NO_SUBSTATIONS,
                          "Prometheus reports no substation that is up with known load and "
                          "capacity", headers={"Retry-After": "1"}, session_may_exist=False)
    chooser = LedgerChooser(charge, serving, app[LEDGER], app[HEALTH], app[METRICS], app[RNG])
    placement = Placement(charge, app[SUBSTATIONS], chooser, deadline,
                          forward_timeout_s=config.forward_timeout_s,
                          max_attempts=config.max_attempts)
    outcome = await placement.run(resolve_at=list(snapshot.substations) if resolve else ())
    return _answer(app, charge, outcome, chooser.name)


def _answer(app: web.Application, charge: SessionCharge, outcome: Outcome,
            name: Callable[[str], str]) -> web.Response:
    """The HTTP answer for a placement's outcome."""
    policy, metrics = app[SERVING].policy, app[METRICS]
    kind, may_exist = outcome.kind, outcome.session_may_exist
    if kind in (OutcomeKind.PLACED, OutcomeKind.ENDED):
        assert outcome.instance is not None and outcome.reply is not None
        session = outcome.reply.body
        state = "charging" if kind is OutcomeKind.PLACED else str(session.get("state"))
        # The substation's own word for its name: Prometheus may not know it right now.
        substation = str(session.get("substation") or name(outcome.instance))
        metrics.decisions.labels(policy.name, substation,
                                 "routed" if kind is OutcomeKind.PLACED else "ended").inc()
        return json_response({"status": state, "session_id": charge.session_id,
                              "substation": substation,
                              "routed_to": outcome.instance, "policy": policy.name,
                              "attempts": outcome.attempts, "session": session})
    if kind is OutcomeKind.REJECTED:
        assert outcome.reply is not None
        metrics.decisions.labels(policy.name, "none", "rejected").inc()
        return json_response({**outcome.reply.body, "session_may_exist": may_exist},
                             status=outcome.reply.status)
    if kind is OutcomeKind.UNKNOWN:
        where = [name(i) for i in outcome.may_be_at]
        metrics.decisions.labels(policy.name, "none", "unknown").inc()
        return json_error(503, ErrorCode.OUTCOME_UNKNOWN,
                          f"session {charge.session_id} may exist at {', '.join(where)}, which "
                          "could not confirm or rule it out; retry the same request (same "
                          "Idempotency-Key) later", headers={"Retry-After": "2"},
                          may_be_at=where, session_may_exist=may_exist)
    if kind is OutcomeKind.SUPERSEDED:
        return json_error(409, ErrorCode.SUPERSEDED,
                          f"a newer dispatch of session {charge.session_id} owns it",
                          session_may_exist=may_exist)
    if kind is OutcomeKind.DEADLINE:
        metrics.decisions.labels(policy.name, "none", "deadline").inc()
        return json_error(503, ErrorCode.DEADLINE_EXCEEDED,
                          f"the caller's deadline passed after {outcome.attempts} attempt(s); "
                          "the session was not started", headers={"Retry-After": "1"},
                          session_may_exist=may_exist)
    metrics.decisions.labels(policy.name, "none", "no_capacity").inc()
    retry_after = str(max(1, math.ceil(policy.refresh_interval_s)))
    return json_error(503, ErrorCode.NO_CAPACITY,
                      f"no substation can take {charge.requested_kw:g} kW now (tried "
                      f"{len(outcome.tried)})", headers={"Retry-After": retry_after},
                      session_may_exist=may_exist)


def graph_url(base: str, promql: str) -> str:
    query = urllib.parse.urlencode({"g0.expr": promql, "g0.tab": "0", "g0.range_input": "15m"})
    return f"{base.rstrip('/')}/graph?{query}"


async def show_policy(request: web.Request) -> web.Response:
    app = request.app
    serving, ledger, config = app[SERVING], app[LEDGER], app[CONFIG]
    policy, snapshot = serving.policy, serving.snapshot
    aged = aged_loads(snapshot, ledger, policy, time.time(), serving.degraded) \
        if snapshot else None
    substations = []
    for view in (snapshot.substations.values() if snapshot else ()):
        substations.append({
            "substation": view.name, "instance": view.instance, "up": view.up,
            "score": view.score, "load_kw": view.load_kw, "capacity_kw": view.capacity_kw,
            "observed_load_kw": ledger.observed_load_kw(view.instance),
            "pending_kw": ledger.pending_kw(view.instance),
            "effective_load_kw": effective_load_kw(view, ledger, aged),
            "forecast_kw": {horizon_label(h): kw for h, kw in view.forecast},
            "scraped_at": view.scrape_ts,
        })
    error = serving.last_error
    return json_response({
        "policy": policy.name, "file": policy.source, "description": policy.description,
        "query": policy.query,
        "result": {"substation_label": policy.substation_label, "better": policy.better.value,
                   "select": policy.select.value,
                   "pending_adjustment": policy.pending_adjustment.value,
                   "load_aging": policy.load_aging.value},
        "refresh_interval_s": policy.refresh_interval_s,
        "mode": serving.mode,
        "evaluated_at": snapshot.evaluated_at if snapshot else None,
        # The age of the data: now minus the newest scrape held (`data_at`), not minus the
        # evaluation (a backend can answer a fresh query with old samples).
        "data_at": snapshot.data_at if snapshot else None,
        "age_s": serving.snapshot_age_s(),
        "max_age_s": serving.max_snapshot_age_s,
        "policy_no_data": snapshot.policy_no_data if snapshot else False,
        "active_policy": _active_view(app),
        "balancer_replicas": snapshot.balancers if snapshot else None,
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


def _active_view(app: web.Application) -> dict[str, Any] | None:
    """The fleet's choice as the active-policy file holds it now (None: not configured)."""
    active = app[REFRESH_LOOP].active
    if active is None:
        return None
    try:
        choice = active.read()
    except ConfigError as exc:
        return {"file": str(active.path), "error": str(exc)}
    return {"file": str(active.path), **(choice.as_dict() if choice else {"policy": None})}


async def reload_policy(request: web.Request) -> web.Response:
    """POST /-/reload: read the serving policy's file again, on this replica. With
    {"policy": "<name>"}: switch to that policy, on every replica when there is an
    active-policy file (its name is written there once it passed every check)."""
    app = request.app
    loop, serving, config = app[REFRESH_LOOP], app[SERVING], app[CONFIG]
    name = None
    if request.can_read_body:
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("policy")
        if name is not None and not is_policy_name(name):
            return json_error(422, ErrorCode.INVALID_REQUEST,
                              "policy: must be a policy name (lowercase letters, digits, '-' "
                              "or '_'), the file name in the policy directory without .yaml")
    target = policy_path(config.policy_dir, name) if name else serving.policy_file
    try:
        candidate = await loop.prepare(target)
    except PolicyError as exc:
        return json_error(422, ErrorCode.INVALID_POLICY, str(exc), problems=exc.problems,
                          serving=serving.policy.name)
    fleet_wide = name is not None and loop.active is not None
    if fleet_wide:
        assert loop.active is not None
        choice = ActiveChoice(candidate.policy.name, config.policy, time.time(),
                              replica_name(config.port))
        try:
            await asyncio.to_thread(loop.active.write, choice)   # fsync: off the event loop
        except OSError as exc:
            return json_error(503, ErrorCode.POLICY_NOT_SAVED,
                              f"cannot write {loop.active.path} ({exc.strerror}); no replica "
                              "switched: make that file writable by every balancer replica",
                              serving=serving.policy.name)
    loop.install(candidate)
    evaluated = await loop.refresh_once()   # never raises: a failure is in `evaluations`
    return json_response({"status": "reloaded", "policy": candidate.policy.name,
                          "file": candidate.policy.source, "evaluated": evaluated,
                          "fleet_wide": fleet_wide,
                          "active_policy_file": None if loop.active is None
                          else str(loop.active.path)})


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
