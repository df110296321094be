"""HTTP views of the public API: thin glue over validation (gridlb/charge.py), the idempotency
core (ingress/idempotency.py), the store and the balancer client.

What a client is told is true when it is told: `200 charging` (not a replay) means the session
was charging at the named substation in the balancer's latest answer, and every other answer
says whether the charge may have started (`outcome_unknown`) or did not.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
import uuid
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gridlb.charge import Charge, describe, parse_charge
from gridlb.errors import ErrorCode
from gridlb.http import (
    Handler,
    bearer_identity,
    healthz,
    json_error,
    json_response,
    metrics_response,
    read_json_object,
)
from gridlb.logs import request_id_headers
from ingress.answers import MAY_HAVE_STARTED, client_answer
from ingress.balancers import BalancerAnswer, dispatch, locate_substation
from ingress.config import IngressConfig
from ingress.idempotency import (
    Dispatch,
    Evidence,
    RecordState,
    Replay,
    Reused,
    after_answer,
    evidence_of,
    fingerprint,
    next_step,
)
from ingress.openapi import IDEMPOTENCY_KEY_PATTERN, MAX_IDEMPOTENCY_KEY, openapi_document
from ingress.public import public_charge_answer, public_session
from ingress.state import BALANCERS, CONFIG, HTTP, METRICS, MOVED_TO, STORE
from ingress.store import KeyBusy, SessionRoute, StoreUnavailable

log = logging.getLogger(__name__)
# The balancer gets this much less than the ingress's own timeout, so that it answers (even
# "unknown") before the ingress gives up on it.
_BALANCER_MARGIN_S = 0.5


def internal_headers(config: IngressConfig) -> dict[str, str]:
    token = config.internal_token
    return {"Authorization": f"Bearer {token}"} if token else {}


def _internal_headers(app: web.Application) -> dict[str, str]:
    """For a call to the balancer or a substation: the internal token and this request's id."""
    return request_id_headers(internal_headers(app[CONFIG]))


async def charge(request: web.Request) -> web.Response:
    app = request.app
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    parsed = parse_charge(body, app[CONFIG].limits)
    if isinstance(parsed, dict):
        return json_error(422, ErrorCode.INVALID_REQUEST, describe(parsed), fields=parsed)
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return await _without_key(app, parsed, bearer_identity(request))
    if not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        return json_error(400, ErrorCode.INVALID_IDEMPOTENCY_KEY,
                          f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII "
                          "characters (no spaces or control characters)")
    tenant = bearer_identity(request)
    try:
        # Held across every replica sharing the store (ingress/store.py, key_lock).
        async with app[STORE].key_lock(tenant, key):
            return await _with_key(app, parsed, tenant, key)
    except KeyBusy:
        return _in_progress()


def _in_progress() -> web.Response:
    return json_error(409, ErrorCode.REQUEST_IN_PROGRESS,
                      "a request with this Idempotency-Key is still being answered; retry "
                      "after it", headers={"Retry-After": "1"})


async def _without_key(app: web.Application, req: Charge, tenant: str) -> web.Response:
    session_id = uuid.uuid4().hex
    payload = {"session_id": session_id, "epoch": 1, "resolve": False}
    answer = await _ask_balancer(app, req, payload)
    response, status, headers = client_answer(answer, session_id, req.requested_kw,
                                              req.energy_kwh)
    if evidence_of(answer.failure, answer.status, answer.body, False) is Evidence.FOUND:
        try:
            await app[STORE].save(route=_route(response, req.vehicle_id, tenant))
        except StoreUnavailable as exc:
            # It is charging: saying otherwise would invite a second charge, and without a
            # key nothing could find it again. Only GET /sessions/{id} will not know it.
            log.error("session %s is charging but could not be indexed: %s", session_id, exc)
    return _public_answer(response, status, headers)


async def _with_key(app: web.Application, req: Charge, tenant: str, key: str
                    ) -> web.Response:
    store = app[STORE]
    before = await store.record(tenant, key)
    step = next_step(before, tenant, key, fingerprint(req), time.time())
    if isinstance(step, Reused):
        return json_error(422, ErrorCode.IDEMPOTENCY_KEY_REUSED,
                          "this Idempotency-Key was used with a different request")
    if isinstance(step, Replay):
        record = step.record
        return _public_answer(record.response, record.status, {"Idempotent-Replayed": "true"})
    assert isinstance(step, Dispatch)
    record = step.record
    # On disk before any copy of this epoch can exist; and only if nobody (another replica
    # whose key lock went with a restart of PostgreSQL) took this epoch since the read.
    if not await store.claim(record, None if before is None else before.epoch):
        return _in_progress()
    payload = {"session_id": record.session_id, "epoch": record.epoch,
               "resolve": step.resolve}
    answer = await _ask_balancer(app, req, payload)
    response, status, headers = client_answer(answer, record.session_id, req.requested_kw,
                                              req.energy_kwh)
    evidence = evidence_of(answer.failure, answer.status, answer.body, step.resolve)
    settled = after_answer(before, record, evidence, status, response, time.time())
    route = _route(response, req.vehicle_id, tenant) if evidence is Evidence.FOUND else None
    if settled != record or route is not None:
        try:
            await store.save(settled, route)
        except StoreUnavailable as exc:
            if evidence is Evidence.FOUND:
                # The record stays pending: a retry (or the reconciler) finds the session and
                # records it. Until then no answer may say where it is.
                return json_error(503, ErrorCode.OUTCOME_UNKNOWN,
                                  f"the charge was sent but its answer could not be recorded "
                                  f"({exc}); {MAY_HAVE_STARTED}", headers={"Retry-After": "1"})
            # Any other answer is as true with the record left pending.
            log.warning("could not record the answer to key %r: %s", key, exc)
    return _public_answer(response, status, headers)


async def _ask_balancer(app: web.Application, req: Charge, payload: dict[str, Any]
                        ) -> BalancerAnswer:
    config = app[CONFIG]
    budget = max(0.1, config.request_timeout_s - _BALANCER_MARGIN_S)
    body = {**payload, "vehicle_id": req.vehicle_id, "requested_kw": req.requested_kw,
            "energy_kwh": req.energy_kwh, **req.adaptive_json(), "timeout_s": budget}
    return await dispatch(app[HTTP], app[BALANCERS].urls(), body, _internal_headers(app),
                          config.request_timeout_s)


def _route(response: dict[str, Any], vehicle_id: str, tenant: str) -> SessionRoute:
    return SessionRoute(response["session_id"], tenant, str(response["substation"]),
                        str(response["routed_to"]), vehicle_id, str(response["policy"]),
                        time.time())


def _public_answer(response: dict[str, Any] | None, status: int,
                   headers: dict[str, str] | None) -> web.Response:
    """The answer as the client may see it (ingress/public.py): the internal one, with the
    substation's address, stays in the store and the idempotency record."""
    return json_response(public_charge_answer(response or {}, status), status=status,
                         headers=headers)


async def _proxy_session(request: web.Request, method: str, action: str = "") -> web.Response:
    app, session_id = request.app, request.match_info["id"]
    route = await app[STORE].route(session_id)
    # Another tenant's session is as unknown as one that never existed.
    if route is None or route.tenant != bearer_identity(request):
        return json_error(404, ErrorCode.UNKNOWN_SESSION,
                          f"no session {session_id!r} was started with this API key")
    moved = app[MOVED_TO].get(route.substation)
    asked = moved[0] if moved is not None and moved[1] > route.created_at else route.routed_to
    answer = await _ask_substation(app, asked, method, session_id)
    if not _is_holder(answer, route.substation):
        # It may have moved (a recreated container, a replaced machine): where is it now? An
        # old address may not answer at all (each ask waits out its timeout), so where it was
        # found is remembered for the substation's other sessions.
        moved_to = await locate_substation(app[HTTP], app[BALANCERS].urls(), route.substation)
        if moved_to is not None and moved_to != asked:
            answer = await _ask_substation(app, moved_to, method, session_id)
            if _is_holder(answer, route.substation):
                app[MOVED_TO][route.substation] = (moved_to, time.time())
    if isinstance(answer, BaseException):
        return json_error(503, ErrorCode.SUBSTATION_UNAVAILABLE,
                          f"{route.substation} cannot be reached now{action}: "
                          f"{type(answer).__name__}", headers={"Retry-After": "2"})
    status, raw, _ = answer
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if status != 200 or not isinstance(body, dict):
        if status == 404:
            return json_error(404, ErrorCode.UNKNOWN_SESSION,
                              f"{route.substation} no longer knows session {session_id!r}")
        return json_error(503, ErrorCode.SUBSTATION_ERROR,
                          f"{route.substation} answered HTTP {status}")
    return json_response(public_session({**body, "substation": route.substation}))


SubstationAnswer = tuple[int, bytes, str]   # status, body, the address that answered
# A substation's address that nothing holds any more (a container gone with its network
# address) may not even refuse the connection: waiting 5 s to connect would only delay the
# search for where it moved.
_SUBSTATION_TIMEOUT = aiohttp.ClientTimeout(total=5, sock_connect=1)


async def _ask_substation(app: web.Application, address: str, method: str, session_id: str
                          ) -> SubstationAnswer | BaseException:
    url = f"http://{address}/sessions/{urllib.parse.quote(session_id, safe='')}"
    try:
        async with app[HTTP].request(method, url, headers=_internal_headers(app),
                                     timeout=_SUBSTATION_TIMEOUT) as resp:
            return resp.status, await resp.read(), address
    except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
        return exc


def _is_holder(answer: SubstationAnswer | BaseException, substation: str) -> bool:
    """Whether the answer came from the substation the session was placed at: another one may
    listen at its old address now, and would rightly not know the session."""
    if isinstance(answer, BaseException):
        return False
    status, raw, _ = answer
    if status == 404:
        return False
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True     # not a session answer: judged below as the substation's error
    return not isinstance(body, dict) or body.get("substation") in (None, substation)


async def get_session(request: web.Request) -> web.Response:
    return await _proxy_session(request, "GET")


async def stop_session(request: web.Request) -> web.Response:
    """POST /sessions/{id}/stop: stop charging and free the capacity at once. The session stays
    readable (state `stopped`), which is why this is not a DELETE."""
    return await _proxy_session(request, "DELETE", action=" to stop the session")


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app[CONFIG].limits))


async def metrics_view(request: web.Request) -> web.Response:
    metrics, store = request.app[METRICS], request.app[STORE]
    try:
        counts = await store.counts()
        oldest = await store.oldest_pending_at()
    except StoreUnavailable as exc:
        # The other metrics still say how the ingress is doing; these keep their last values.
        log.warning("/metrics: the record counts are not current: %s", exc)
    else:
        for state in RecordState:
            metrics.records.labels(state.value).set(counts.get(state.value, 0))
        metrics.oldest_pending.set(0.0 if oldest is None else max(0.0, time.time() - oldest))
    return metrics_response(metrics.registry)


@web.middleware
async def store_errors_middleware(request: web.Request, handler: Handler
                                  ) -> web.StreamResponse:
    """The store cannot be reached: a 503 that says so (never a 500). Whatever raised it had
    sent nothing yet (an answer after a dispatch is handled where it is recorded)."""
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        return json_error(503, ErrorCode.STORE_UNAVAILABLE,
                          f"the ingress's store cannot be reached now ({exc}); nothing was "
                          "sent: retry", headers={"Retry-After": "1"})


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/charge", charge)
    app.router.add_get("/sessions/{id}", get_session)
    app.router.add_post("/sessions/{id}/stop", stop_session)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
