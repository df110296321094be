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
from balancer.placement import Deadline, Outcome, OutcomeKind, Placement, ResolveOnly
from balancer.policy import PolicyError, is_policy_name, policy_path
from balancer.selection import aged_loads, effective_load_kw
from balancer.snapshot import Snapshot
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
from gridlb.charge import (
    MAX_SESSION_ID,
    SessionCharge,
    describe,
    horizon_label,
    parse_session_charge,
)
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
    outcome = await placement.run(resolve_at=snapshot.resolve_targets() if resolve else None)
    return _answer(app, charge, outcome, _namer(snapshot))


def _namer(snapshot: Snapshot) -> Callable[[str], str]:
    """instance -> the substation's name, for listed and recently seen substations alike."""
    def name(instance: str) -> str:
        view = snapshot.substations.get(instance)
        return view.name if view is not None else snapshot.recent.get(instance, instance)
    return name


def _largest_capacity_kw(snapshot: Snapshot | None) -> float | None:
    capacities = [v.capacity_kw for v in (snapshot.substations.values() if snapshot else ())
                  if v.capacity_kw is not None and math.isfinite(v.capacity_kw)]
    return max(capacities) if capacities else None


def _answer(app: web.Application, charge: SessionCharge, outcome: Outcome,
            name: Callable[[str], str]) -> web.Response:
    """The HTTP answer for a placement's outcome."""
    policy, metrics = app[SERVING].policy, app[METRICS]
    kind, may_exist = outcome.kind, outcome.session_may_exist
    # Internal fields for the ingress: whether the session may exist after this dispatch, and
    # whether a resolve found it absent everywhere it asked (the evidence ingress records need).
    internal: dict[str, Any] = {"session_may_exist": may_exist, "resolved": outcome.resolved}
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
        return json_response({**outcome.reply.body, **internal}, status=outcome.reply.status)
    if kind is OutcomeKind.UNKNOWN:
        where = [name(i) for i in outcome.may_be_at]
        metrics.decisions.labels(policy.name, "none", "unknown").inc()
        at = f"at {', '.join(where)}, which could not confirm or rule it out" if where else \
            "somewhere: no substation is listed to ask (Prometheus lists none now)"
        return json_error(503, ErrorCode.OUTCOME_UNKNOWN,
                          f"session {charge.session_id} may exist {at}; retry the same request "
                          "(same Idempotency-Key) later", headers={"Retry-After": "2"},
                          may_be_at=where, **internal)
    if kind is OutcomeKind.SUPERSEDED:
        return json_error(409, ErrorCode.SUPERSEDED,
                          f"a newer dispatch of session {charge.session_id} owns it",
                          **internal)
    if kind is OutcomeKind.DEADLINE:
        metrics.decisions.labels(policy.name, "none", "deadline").inc()
        return json_error(503, ErrorCode.DEADLINE_EXCEEDED,
                          f"the caller's deadline passed after {outcome.attempts} attempt(s); "
                          "the session was not started", headers={"Retry-After": "1"},
                          **internal)
    largest = _largest_capacity_kw(app[SERVING].snapshot)
    if largest is not None and charge.floor_kw > largest:
        # No retry can help while the grid stays as it is: a definite answer, no Retry-After.
        metrics.decisions.labels(policy.name, "none", "exceeds_capacity").inc()
        return json_error(422, ErrorCode.EXCEEDS_CAPACITY,
                          f"{charge.floor_kw:g} kW is more than any substation can take: "
                          f"the largest capacity listed is {largest:g} kW",
                          largest_capacity_kw=largest, **internal)
    metrics.decisions.labels(policy.name, "none", "no_capacity").inc()
    retry_after = str(max(1, math.ceil(policy.refresh_interval_s)))
    return json_error(503, ErrorCode.NO_CAPACITY,
                      f"no substation can take {charge.floor_kw:g} kW now (tried "
                      f"{len(outcome.tried)})", headers={"Retry-After": retry_after},
                      **internal)


async def resolve(request: web.Request) -> web.StreamResponse:
    """POST /resolve {"session_id", "epoch", "timeout_s"?}: where is this session? Fences it at
    `epoch` on every substation it may be at (listed or recently seen) and places nothing. The
    ingress's reconciler asks this for records whose outcome is unknown: 200 with the session
    (charging or ended) where found; 404 `unknown_session` with `resolved: true` when it is
    absent everywhere asked (and no older copy can start it any more); 503 otherwise."""
    app = request.app
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    session_id, epoch = body.get("session_id"), body.get("epoch")
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID or \
            isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= 2**31 \
            or set(body) - {"session_id", "epoch", "timeout_s"}:
        return json_error(422, ErrorCode.INVALID_REQUEST,
                          'the body must be {"session_id": <text>, "epoch": <integer from 1 to '
                          '2^31>, "timeout_s": <seconds, optional>}')
    options = _dispatch_options({"timeout_s": body.get("timeout_s",
                                                       app[CONFIG].dispatch_budget_s)},
                                app[CONFIG].dispatch_budget_s)
    if isinstance(options, str):
        return json_error(422, ErrorCode.INVALID_REQUEST, options)
    deadline = Deadline(options[1], time.monotonic)
    inflight = app[INFLIGHT]
    if not await inflight.acquire(session_id, max(0.0, deadline.remaining() - 0.1)):
        return json_error(409, ErrorCode.DISPATCH_IN_PROGRESS,
                          f"session {session_id} is being placed by an earlier request",
                          headers={"Retry-After": "1"}, session_may_exist=True)
    try:
        snapshot = app[SERVING].snapshot
        if snapshot is None:
            return json_error(503, ErrorCode.NO_SNAPSHOT,
                              "the balancer has not read Prometheus yet",
                              headers={"Retry-After": "1"}, session_may_exist=True)
        charge = SessionCharge(vehicle_id="", requested_kw=0.0, energy_kwh=0.0,
                               session_id=session_id, epoch=epoch)
        placement = Placement(charge, app[SUBSTATIONS], ResolveOnly(), deadline,
                              forward_timeout_s=app[CONFIG].forward_timeout_s, max_attempts=0)
        outcome = await placement.run(resolve_at=snapshot.resolve_targets(), place=False)
    finally:
        inflight.release(session_id)
    if outcome.kind is OutcomeKind.ABSENT:
        return json_error(404, ErrorCode.UNKNOWN_SESSION,
                          f"session {session_id} is at none of the substations asked "
                          f"({len(snapshot.resolve_targets())}), and fenced at each",
                          session_may_exist=False, resolved=True)
    return _answer(app, charge, outcome, _namer(snapshot))


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
    # The query as evaluated: its variables filled in for this balancer's grid.
    query = app[REFRESH_LOOP].queries.render(policy.query)
    return json_response({
        "policy": policy.name, "file": policy.source, "description": policy.description,
        "query": query, "grid": app[REFRESH_LOOP].queries.grid,
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
                                          query),
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
    app.router.add_post("/resolve", resolve)
    app.router.add_get("/policy", show_policy)
    app.router.add_post("/-/reload", reload_policy)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
