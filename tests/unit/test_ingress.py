"""The public API against a fake balancer and a fake substation (real aiohttp servers)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gridlb.durable import Durability
from ingress.app import create_app
from ingress.config import IngressConfig
from ingress.idempotency import KeyRecord, RecordState
from ingress.state import MOVED_TO, STORE
from ingress.store import StoreUnavailable
from ingress.stores.sqlite import SQLiteStore

CHARGE = {"vehicle_id": "ev-1", "requested_kw": 11, "energy_kwh": 30}
KEY = "api-key-1"
OTHER_KEY = "api-key-2"
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER_AUTH = {"Authorization": f"Bearer {OTHER_KEY}"}
STARTED_AT = 1796677384.1234          # 2026-12-07T21:03:04.123Z


class FakeBackends:
    """A balancer answering /dispatch as told, and a substation holding sessions."""

    def __init__(self) -> None:
        self.dispatches: list[dict[str, Any]] = []
        self.answer: tuple[int, dict[str, Any], dict[str, str]] | None = None
        self.delay_s = 0.0
        self.on_dispatch: Callable[[dict[str, Any]], None] | None = None
        self.substation_address = ""
        self.asked: list[str] = []          # the sessions the substation was asked about
        self.balancer = web.Application()
        self.balancer.router.add_post("/dispatch", self._dispatch)
        self.balancer.router.add_get("/policy", self._policy)
        self.policy_rows: list[dict[str, Any]] = []
        # (path asked, its X-Request-Id) for every call the ingress made here
        self.request_ids: list[tuple[str, str | None]] = []
        self.substation = web.Application()
        self.substation.router.add_get("/sessions/{id}", self._session)
        self.substation.router.add_delete("/sessions/{id}", self._session)

    def _seen(self, request: web.Request) -> None:
        self.request_ids.append((request.method + " " + request.path.split("/")[1],
                                 request.headers.get("X-Request-Id")))

    async def _dispatch(self, request: web.Request) -> web.Response:
        self._seen(request)
        body = await request.json()
        self.dispatches.append(body)
        if self.on_dispatch is not None:
            self.on_dispatch(body)
        await asyncio.sleep(self.delay_s)
        if self.answer is not None:
            status, answer, headers = self.answer
            return web.json_response(answer, status=status, headers=headers)
        return web.json_response({"status": "charging", "session_id": body["session_id"],
                                  "substation": "sub-1", "policy": "least-load",
                                  "routed_to": self.substation_address})

    async def _policy(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.json_response({"policy": "least-load", "substations": self.policy_rows})

    def answer_with(self, status: int, error: str, may_exist: bool,
                    headers: dict[str, str] | None = None) -> None:
        self.answer = (status, {"error": error, "detail": error,
                                "session_may_exist": may_exist}, headers or {})

    async def _session(self, request: web.Request) -> web.Response:
        """A session as a substation answers it: times in Unix seconds, and its load."""
        self._seen(request)
        self.asked.append(request.match_info["id"])
        stopped = request.method == "DELETE"
        return web.json_response({
            "session_id": request.match_info["id"], "vehicle_id": "ev-1", "power_kw": 11.0,
            "energy_kwh": 30.0, "delivered_kwh": 1.5, "state": "stopped" if stopped else "charging",
            "started_at": STARTED_AT, "ended_at": STARTED_AT + 60.0 if stopped else None,
            **({} if stopped else {"ends_at": STARTED_AT + 163.637}),
            "substation": "sub-1", "load_kw": 11.0, "load_seq": 7, "capacity_kw": 500.0,
            "load_forecast_kw": [[1.0, 11.0], [2.0, 11.0]]})


Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def backends(aiohttp_server: Any) -> FakeBackends:
    fake = FakeBackends()
    sub: TestServer = await aiohttp_server(fake.substation, host="127.0.0.1")
    fake.substation_address = f"127.0.0.1:{sub.port}"
    return fake


@pytest.fixture
def make_client(aiohttp_client: Any, aiohttp_server: Any, backends: FakeBackends,
                tmp_path: Path) -> Callable[..., Awaitable[Client]]:
    async def make(balancer_url: str | None = None, **config: Any) -> Client:
        if balancer_url is None:
            server: TestServer = await aiohttp_server(backends.balancer, host="127.0.0.1")
            balancer_url = f"http://127.0.0.1:{server.port}"
        cfg = IngressConfig(balancer_urls=tuple(balancer_url.split(",")),
                            api_keys=(KEY, OTHER_KEY),
                            store_path=str(tmp_path / "ingress.sqlite3"), **config)
        return await aiohttp_client(create_app(cfg))  # type: ignore[no-any-return]
    return make


async def post(client: Client, body: Any = None, auth: dict[str, str] | None = None,
               key: str | None = None) -> tuple[int, Any, Any]:
    headers = {**(auth or AUTH), **({"Idempotency-Key": key} if key is not None else {})}
    resp = await client.post("/charge", json=CHARGE if body is None else body, headers=headers)
    return resp.status, await resp.json(), resp.headers


def free_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_charge_is_routed_and_answered(make_client: Any, backends: FakeBackends
                                               ) -> None:
    client = await make_client()
    status, body, _ = await post(client)
    assert status == 200
    assert (body["status"], body["substation"], body["policy"], body["requested_kw"]) == \
        ("charging", "sub-1", "least-load", 11.0)
    sent = backends.dispatches[0]
    assert sent["session_id"] == body["session_id"]
    assert (sent["epoch"], sent["resolve"]) == (1, False)
    # The balancer is told the deadline: a little less than the ingress waits itself.
    assert 0 < sent["timeout_s"] < IngressConfig().request_timeout_s


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({**CHARGE, "requested_kw": -5}, "requested_kw", "must be above 0 kW"),
    ({**CHARGE, "requested_kw": 0}, "requested_kw", "must be above 0 kW"),
    ({**CHARGE, "requested_kw": 5e-324}, "requested_kw", "must be at least 1.4 kW"),
    ({**CHARGE, "requested_kw": 1.0}, "requested_kw", "must be at least 1.4 kW"),
    ({**CHARGE, "requested_kw": 5000}, "requested_kw", "must be at most 1000 kW"),
    ({**CHARGE, "requested_kw": "11"}, "requested_kw", "must be a number of kW, got str"),
    ({**CHARGE, "requested_kw": True}, "requested_kw", "got bool"),
    ({**CHARGE, "energy_kwh": None}, "energy_kwh", "got NoneType"),
    ({"vehicle_id": "ev", "requested_kw": 11}, "energy_kwh", "is required"),
    ({**CHARGE, "vehicle_id": ""}, "vehicle_id", "must not be empty"),
    ({**CHARGE, "vehicle_id": "x" * 65}, "vehicle_id", "at most 64 characters"),
    ({**CHARGE, "vehicle_id": "ev\x00"}, "vehicle_id", "visible ASCII characters"),
    ({**CHARGE, "vehicle_id": "évé"}, "vehicle_id", "visible ASCII characters"),
    ({**CHARGE, "vehicle_id": 7}, "vehicle_id", "must be a string, got int"),
    ({**CHARGE, "priority": "high"}, "priority", "unknown field"),
])
async def test_each_bad_field_is_named(make_client: Any, body: dict[str, Any], field: str,
                                       reason: str) -> None:
    client = await make_client()
    status, answer, _ = await post(client, body)
    assert status == 422 and answer["error"] == "invalid_request"
    assert reason in answer["fields"][field] and f"{field}: " in answer["detail"]


async def test_the_minimum_power_is_configurable(make_client: Any) -> None:
    from gridlb.charge import ChargeLimits
    client = await make_client(limits=ChargeLimits(min_kw=3.7))
    status, answer, _ = await post(client, {**CHARGE, "requested_kw": 3.6})
    assert status == 422 and "must be at least 3.7 kW" in answer["fields"]["requested_kw"]
    spec = await (await client.get("/openapi.json")).json()
    assert spec["components"]["schemas"]["ChargeRequest"]["properties"]["requested_kw"][
        "minimum"] == 3.7


async def test_nan_infinity_and_broken_json_are_400(make_client: Any) -> None:
    client = await make_client()
    for raw in (b'{"vehicle_id": "a", "requested_kw": NaN, "energy_kwh": 1}',
                b'{"requested_kw": Infinity}', b"{", b""):
        resp = await client.post("/charge", data=raw,
                                 headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status == 400, raw
        assert (await resp.json())["error"] == "malformed_json"
    resp = await client.post("/charge", json=[1, 2], headers=AUTH)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_body"


@pytest.mark.parametrize(("raw", "key"), [
    (b'{"vehicle_id": "ev-1", "requested_kw": 11, "energy_kwh": 30, "requested_kw": 500}',
     "requested_kw"),
    # The same key spelt with an escape is the same key.
    (b'{"vehicle_id": "ev-1", "requested_kw": 11, "energy_kwh": 30, "energy_\\u006bwh": 9}',
     "energy_kwh"),
])
async def test_a_repeated_key_is_refused_not_read_as_its_last_value(
        make_client: Any, backends: FakeBackends, raw: bytes, key: str) -> None:
    client = await make_client()
    resp = await client.post("/charge", data=raw,
                             headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 400
    assert await resp.json() == {
        "error": "invalid_body", "detail": f"the body repeats the key '{key}'; send each key once"}
    assert backends.dispatches == []


async def test_wrong_content_type_and_oversized_body(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post("/charge", data="vehicle_id=1", headers={
        **AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415 and (await resp.json())["error"] == "unsupported_media_type"
    resp = await client.post("/charge", data=b"x" * 20_000,
                             headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 413 and (await resp.json())["error"] == "payload_too_large"


@pytest.mark.parametrize("key", ["a b", "k\tv", "é", "x" * 129])
async def test_a_bad_idempotency_key_is_400(make_client: Any, backends: FakeBackends,
                                            key: str) -> None:
    client = await make_client()
    resp = await client.post("/charge", json=CHARGE,
                             headers={**AUTH, "Idempotency-Key": key.encode("utf-8").decode(
                                 "latin-1")})
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "invalid_idempotency_key", body
    assert "1-128 visible ASCII" in body["detail"]
    assert backends.dispatches == []


async def test_an_idempotent_retry_replays_the_original_outcome(
        make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()
    _, first, _ = await post(client, key="k-1")
    status, again, headers = await post(client, key="k-1")
    assert status == 200 and again == first and headers["Idempotent-Replayed"] == "true"
    assert len(backends.dispatches) == 1
    # Random, not computable from the key.
    assert len(first["session_id"]) == 32 and "k-1" not in first["session_id"]


async def test_bodies_are_compared_by_value(make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()
    await post(client, {"vehicle_id": "ev-1", "requested_kw": 11, "energy_kwh": 30},
               key="k-v")
    status, _, headers = await post(
        client, {"energy_kwh": 30.0, "requested_kw": 11.0, "vehicle_id": "ev-1"},
        key="k-v")
    assert status == 200 and headers["Idempotent-Replayed"] == "true"
    assert len(backends.dispatches) == 1


async def test_a_concurrent_copy_of_a_key_is_refused_not_run_twice(
        make_client: Any, backends: FakeBackends) -> None:
    backends.delay_s = 0.2
    client = await make_client()
    results = await asyncio.gather(*(post(client, key="k-2") for _ in range(5)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 409, 409, 409, 409]
    refused = [body for status, body, _ in results if status == 409]
    assert all(b["error"] == "request_in_progress" for b in refused)
    assert len(backends.dispatches) == 1


async def test_a_key_reused_with_another_body_is_422(make_client: Any) -> None:
    client = await make_client()
    await post(client, key="k-3")
    status, body, _ = await post(client, {**CHARGE, "requested_kw": 22}, key="k-3")
    assert status == 422 and body["error"] == "idempotency_key_reused"


async def test_a_key_reused_with_another_body_after_an_unknown_outcome_is_422(
        make_client: Any, backends: FakeBackends) -> None:
    backends.answer_with(503, "outcome_unknown", may_exist=True)
    client = await make_client()
    assert (await post(client, key="k-u"))[0] == 503
    status, body, _ = await post(client, {**CHARGE, "requested_kw": 22}, key="k-u")
    assert status == 422 and body["error"] == "idempotency_key_reused"


async def test_keys_survive_an_ingress_restart(make_client: Any, backends: FakeBackends
                                               ) -> None:
    first = await make_client()
    _, original, _ = await post(first, key="k-4")
    await first.close()
    second = await make_client()
    status, replay, _ = await post(second, key="k-4")
    assert status == 200 and replay == original and len(backends.dispatches) == 1


async def test_a_definite_refusal_lets_the_retry_place_directly(
        make_client: Any, backends: FakeBackends) -> None:
    backends.answer_with(503, "no_capacity", may_exist=False, headers={"Retry-After": "1"})
    client = await make_client()
    status, body, headers = await post(client, key="k-5")
    assert status == 503 and body["error"] == "no_capacity" and headers["Retry-After"] == "1"
    assert "session_may_exist" not in body      # internal: not shown to clients
    backends.answer = None
    status, _, _ = await post(client, key="k-5")
    assert status == 200
    first, retry = backends.dispatches
    assert retry["session_id"] == first["session_id"]
    assert (retry["epoch"], retry["resolve"]) == (2, False)


@pytest.mark.parametrize(("status", "error"), [(503, "outcome_unknown"),
                                               (409, "dispatch_in_progress"),
                                               (409, "superseded")])
async def test_after_an_unknown_outcome_the_retry_resolves_first(
        make_client: Any, backends: FakeBackends, status: int, error: str) -> None:
    backends.answer_with(status, error, may_exist=True)
    client = await make_client()
    got, body, _ = await post(client, key="k-6")
    assert (got, body["error"]) == (status, error)
    backends.answer = None
    assert (await post(client, key="k-6"))[0] == 200
    first, retry = backends.dispatches
    assert retry["session_id"] == first["session_id"]
    assert (retry["epoch"], retry["resolve"]) == (2, True)


async def test_a_balancer_that_does_not_answer_in_time_is_504_and_the_retry_resolves(
        make_client: Any, backends: FakeBackends) -> None:
    backends.delay_s = 2.0
    client = await make_client(request_timeout_s=1.1)
    status, body, headers = await post(client, key="k-7")
    assert status == 504 and body["error"] == "balancer_timeout"
    assert headers["Retry-After"] == "1"
    backends.delay_s = 0.0
    assert (await post(client, key="k-7"))[0] == 200
    assert backends.dispatches[-1]["resolve"] is True


async def test_balancer_down_is_a_503_json_error(make_client: Any) -> None:
    client = await make_client(balancer_url=free_url())
    status, body, headers = await post(client)
    assert status == 503 and body["error"] == "balancer_unavailable"
    assert headers["Retry-After"] == "1"
    text = await (await client.get("/metrics")).text()
    assert ('ingress_requests_total{error="balancer_unavailable",method="POST",'
            'route="/charge",status="503"} 1.0') in text


async def test_a_second_balancer_replica_takes_over_when_the_first_is_down(
        make_client: Any, aiohttp_server: Any, backends: FakeBackends) -> None:
    server: TestServer = await aiohttp_server(backends.balancer, host="127.0.0.1")
    live = f"http://127.0.0.1:{server.port}"
    client = await make_client(balancer_url=f"{free_url()},{live},{free_url()}")
    for i in range(5):                    # whatever order each session id hashes to
        status, _, _ = await post(client, {**CHARGE, "vehicle_id": f"ev-{i}"})
        assert status == 200
    assert len(backends.dispatches) == 5


async def test_a_replica_that_has_not_read_prometheus_yet_passes_the_charge_on(
        make_client: Any, aiohttp_server: Any, backends: FakeBackends) -> None:
    """A replica just restarted answers no_snapshot until its first evaluation: it did nothing
    with the charge, so the next replica places it; only when every one is that new does the
    client see no_snapshot."""
    asked: list[str] = []

    async def starting(request: web.Request) -> web.Response:
        asked.append((await request.json())["session_id"])
        return web.json_response({"error": "no_snapshot", "detail": "starting",
                                  "session_may_exist": False}, status=503,
                                 headers={"Retry-After": "1"})
    fresh = web.Application()
    fresh.router.add_post("/dispatch", starting)
    new: TestServer = await aiohttp_server(fresh, host="127.0.0.1")
    live: TestServer = await aiohttp_server(backends.balancer, host="127.0.0.1")
    client = await make_client(balancer_url=f"http://127.0.0.1:{new.port},"
                                            f"http://127.0.0.1:{live.port}")
    for i in range(20):                   # whatever order each session id hashes to
        status, body, _ = await post(client, {**CHARGE, "vehicle_id": f"ev-{i}"})
        assert status == 200, body
    assert asked and len(backends.dispatches) == 20
    await client.close()                  # its SQLite store serves one ingress at a time
    alone = await make_client(balancer_url=f"http://127.0.0.1:{new.port}")
    status, body, headers = await post(alone)
    assert (status, body["error"], headers["Retry-After"]) == (503, "no_snapshot", "1")


def test_every_session_keeps_one_replica_order() -> None:
    from ingress.balancers import replica_order
    urls = [f"http://b{i}" for i in range(4)]
    orders = {tuple(replica_order(urls, f"s{i}")) for i in range(200)}
    assert replica_order(urls, "s1") == replica_order(list(reversed(urls)), "s1")
    assert len({o[0] for o in orders}) == 4      # sessions spread over every replica


async def test_balancer_garbage_is_a_502(make_client: Any, backends: FakeBackends) -> None:
    backends.answer = (500, {"oops": True}, {})
    client = await make_client()
    status, body, _ = await post(client)
    assert status == 502 and body["error"] == "bad_gateway"


async def test_sessions_are_read_and_stopped_at_their_substation(make_client: Any,
                                                                 backends: FakeBackends) -> None:
    client = await make_client()
    _, started, _ = await post(client)
    resp = await client.get(f"/sessions/{started['session_id']}", headers=AUTH)
    body = await resp.json()
    assert resp.status == 200 and body["state"] == "charging"
    assert backends.asked == [started["session_id"]]     # where it was placed
    resp = await client.post(f"/sessions/{started['session_id']}/stop", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["state"] == "stopped"
    resp = await client.get("/sessions/unknown", headers=AUTH)
    assert resp.status == 404 and (await resp.json())["error"] == "unknown_session"
    resp = await client.delete(f"/sessions/{started['session_id']}", headers=AUTH)
    assert resp.status == 405     # stopping is POST .../stop: the session stays readable
    body = await resp.json()
    assert body["error"] == "method_not_allowed" and resp.headers["Allow"]


async def test_a_session_is_shown_with_rfc3339_times_and_without_internal_fields(
        make_client: Any) -> None:
    """Clients get the session's fields, times as RFC 3339 in UTC; not the substation's address
    or load, which the substation's answer carries for the balancer."""
    client = await make_client()
    _, started, _ = await post(client)
    sid = started["session_id"]
    resp = await client.get(f"/sessions/{sid}", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {
        "session_id": sid, "vehicle_id": "ev-1", "state": "charging", "substation": "sub-1",
        "power_kw": 11.0, "energy_kwh": 30.0, "delivered_kwh": 1.5,
        "started_at": "2026-12-07T21:03:04.123Z", "ends_at": "2026-12-07T21:05:47.760Z"}
    resp = await client.post(f"/sessions/{sid}/stop", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {
        "session_id": sid, "vehicle_id": "ev-1", "state": "stopped", "substation": "sub-1",
        "power_kw": 11.0, "energy_kwh": 30.0, "delivered_kwh": 1.5,
        "started_at": "2026-12-07T21:03:04.123Z", "ended_at": "2026-12-07T21:04:04.123Z"}


async def test_the_substations_address_is_kept_in_the_store_not_shown(
        make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()
    shown = [(await post(client))[1], (await post(client, key="k-1"))[1]]
    status, replayed, headers = await post(client, key="k-1")
    assert status == 200 and headers["Idempotent-Replayed"] == "true"
    for body in (*shown, replayed):
        assert body == {"status": "charging", "session_id": body["session_id"],
                        "substation": "sub-1", "policy": "least-load", "requested_kw": 11.0,
                        "energy_kwh": 30.0}
        # The ingress itself needs it, to read and stop the session there.
        route = await client.app[STORE].route(body["session_id"])
        assert route is not None and route.routed_to == backends.substation_address


def named_substation(name: str, holds: set[str], asked: list[str] | None = None
                     ) -> web.Application:
    """A substation called `name` that knows the sessions in `holds`, and no other; the
    sessions it is asked about go to `asked`."""
    async def session(request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        if asked is not None:
            asked.append(sid)
        if sid not in holds:
            return web.json_response({"error": "unknown_session", "detail": "no",
                                      "substation": name}, status=404)
        state = "stopped" if request.method == "DELETE" else "charging"
        return web.json_response({"session_id": sid, "state": state, "substation": name})
    app = web.Application()
    app.router.add_get("/sessions/{id}", session)
    app.router.add_delete("/sessions/{id}", session)
    return app


@pytest.mark.parametrize("old_address", ["another substation", "nobody"])
async def test_a_session_is_found_where_its_substation_moved(
        make_client: Any, backends: FakeBackends, aiohttp_server: Any, old_address: str
        ) -> None:
    """After Compose recreates containers (or an operator replaces a machine), a substation
    keeps its name and sessions at a new address; the ingress asks a balancer where it is."""
    client = await make_client()
    _, started, _ = await post(client)
    sid = started["session_id"]
    moved_asked: list[str] = []
    moved: TestServer = await aiohttp_server(named_substation("sub-1", {sid}, moved_asked),
                                             host="127.0.0.1")
    backends.policy_rows = [{"substation": "sub-1", "instance": f"127.0.0.1:{moved.port}",
                             "up": True}]
    if old_address == "another substation":   # its old address now belongs to sub-2
        other: TestServer = await aiohttp_server(named_substation("sub-2", set()),
                                                 host="127.0.0.1")
        backends.substation_address = f"127.0.0.1:{other.port}"
        await client.app[STORE].save(route=dataclasses.replace(
            await client.app[STORE].route(sid), routed_to=backends.substation_address))
    else:
        await client.app[STORE].save(route=dataclasses.replace(
            await client.app[STORE].route(sid), routed_to=free_url().removeprefix("http://")))
    resp = await client.get(f"/sessions/{sid}", headers=AUTH)
    body = await resp.json()
    assert resp.status == 200, body
    assert (body["state"], body["substation"]) == ("charging", "sub-1")
    assert moved_asked == [sid] and "routed_to" not in body
    assert client.app[MOVED_TO]["sub-1"][0] == f"127.0.0.1:{moved.port}"
    resp = await client.post(f"/sessions/{sid}/stop", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["state"] == "stopped"


async def test_where_a_moved_substation_was_found_is_asked_first_for_its_older_sessions(
        make_client: Any, backends: FakeBackends, aiohttp_server: Any) -> None:
    # An old address may not answer at all (each ask then waits out its timeout): after one
    # session was found at the new address, the others placed before are asked there first.
    client = await make_client()
    sessions = [(await post(client, {**CHARGE, "vehicle_id": f"ev-{i}"}))[1]["session_id"]
                for i in range(3)]
    old_asked: list[str] = []
    new_asked: list[str] = []
    old: TestServer = await aiohttp_server(named_substation("sub-2", set(), old_asked),
                                           host="127.0.0.1")
    moved: TestServer = await aiohttp_server(
        named_substation("sub-1", set(sessions), new_asked), host="127.0.0.1")
    backends.policy_rows = [{"substation": "sub-1", "instance": f"127.0.0.1:{moved.port}",
                             "up": True}]
    for sid in sessions:
        await client.app[STORE].save(route=dataclasses.replace(
            await client.app[STORE].route(sid), routed_to=f"127.0.0.1:{old.port}"))
    for sid in sessions:
        resp = await client.get(f"/sessions/{sid}", headers=AUTH)
        assert resp.status == 200 and (await resp.json())["substation"] == "sub-1"
    assert old_asked == sessions[:1] and new_asked == sessions
    # A session placed after the move (at an address newer than what was learned) is asked
    # where it was placed.
    newer = (await post(client, {**CHARGE, "vehicle_id": "ev-new"}))[1]["session_id"]
    resp = await client.get(f"/sessions/{newer}", headers=AUTH)
    assert resp.status == 200 and backends.asked == [newer]


async def test_a_session_whose_substation_no_balancer_knows_is_unavailable(
        make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()
    _, started, _ = await post(client)
    sid = started["session_id"]
    await client.app[STORE].save(route=dataclasses.replace(
        await client.app[STORE].route(sid), routed_to=free_url().removeprefix("http://")))
    resp = await client.get(f"/sessions/{sid}", headers=AUTH)
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "substation_unavailable", body
    assert resp.headers["Retry-After"] == "2"


async def test_tenants_do_not_see_each_others_keys_or_sessions(
        make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()
    _, mine, _ = await post(client, key="shared-key")
    status, theirs, headers = await post(client, auth=OTHER_AUTH, key="shared-key")
    assert status == 200 and "Idempotent-Replayed" not in headers
    assert theirs["session_id"] != mine["session_id"]
    for method, path in (("GET", ""), ("POST", "/stop")):
        resp = await client.request(method, f"/sessions/{mine['session_id']}{path}",
                                    headers=OTHER_AUTH)
        assert resp.status == 404 and (await resp.json())["error"] == "unknown_session"
    resp = await client.get(f"/sessions/{mine['session_id']}", headers=AUTH)
    assert resp.status == 200


async def test_api_key_is_required_except_on_open_paths(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post("/charge", json=CHARGE)
    body = await resp.json()
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert body["error"] == "unauthorized"
    resp = await client.post("/charge", json=CHARGE, headers={"Authorization": "Bearer nope"})
    body = await resp.json()
    assert resp.status == 401 and body == {"error": "unauthorized",
                                           "detail": "the bearer key is not valid"}
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await client.get(path)).status == 200, path


async def test_openapi_describes_every_route_and_rule(make_client: Any) -> None:
    client = await make_client()
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/charge", "/sessions/{id}", "/sessions/{id}/stop",
                                  "/healthz", "/readyz"}
    header = spec["paths"]["/charge"]["post"]["parameters"][0]
    assert header["name"] == "Idempotency-Key"
    assert header["schema"]["pattern"] == "^[\\x21-\\x7E]{1,128}$"
    assert "idempotency_key_reused" in str(spec["paths"]["/charge"]["post"]["responses"]["422"])


async def test_metrics_use_route_templates_not_raw_paths(make_client: Any) -> None:
    client = await make_client()
    for sid in ("a", "b", "c"):
        await client.get(f"/sessions/{sid}", headers=AUTH)
    await client.get("/no/such/path", headers=AUTH)
    text = await (await client.get("/metrics")).text()
    assert ('ingress_requests_total{error="unknown_session",method="GET",route="/sessions/{id}",'
            'status="404"} 3.0') in text
    assert 'error="other",method="GET",route="unmatched",status="404"' in text


async def test_metrics_tell_a_full_grid_from_a_failure_by_error_code(
        make_client: Any, backends: FakeBackends) -> None:
    """503 no_capacity is the right answer when the grid is full; 503 balancer_unavailable is
    a failure: the availability SLO (IngressErrorBudgetBurn) must be able to tell them apart."""
    backends.answer_with(503, "no_capacity", may_exist=False, headers={"Retry-After": "1"})
    client = await make_client()
    assert (await post(client))[0] == 503
    backends.answer_with(503, "not-a-known-code", may_exist=False)
    assert (await post(client))[0] == 503
    backends.answer = None
    assert (await post(client))[0] == 200
    text = await (await client.get("/metrics")).text()
    charge = 'method="POST",route="/charge"'
    for error, status in (("no_capacity", 503), ("other", 503), ("", 200)):
        line = f'ingress_requests_total{{error="{error}",{charge},status="{status}"}} 1.0'
        assert line in text, (line, text)


def _record(key: str, state: RecordState, at: float) -> KeyRecord:
    return KeyRecord("t", key, f"s-{key}", "f", 1, state, created_at=at, updated_at=at)


async def test_store_prunes_settled_records_but_never_an_unresolved_one(tmp_path: Path
                                                                       ) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3", Durability.PROCESS, key_ttl_s=100.0)
    for key, state in (("done", RecordState.DONE), ("absent", RecordState.ABSENT),
                       ("pending", RecordState.PENDING)):
        await store.save(_record(key, state, at=0.0))
    await store.save(_record("fresh", RecordState.DONE, at=1000.0))
    assert await store.prune(now=1050.0) == 2
    assert {k: await store.record("t", k) is not None for k in ("done", "absent", "pending",
                                                           "fresh")} == \
        {"done": False, "absent": False, "pending": True, "fresh": True}
    await store.aclose()


async def test_the_key_cap_evicts_the_oldest_settled_records_only(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3", Durability.PROCESS, max_keys=2)
    await store.save(_record("old-pending", RecordState.PENDING, at=1.0))
    for i in range(4):
        await store.save(_record(f"done-{i}", RecordState.DONE, at=10.0 + i))
    assert await store.prune(now=20.0) == 3
    kept = {k for k in ("old-pending", "done-0", "done-1", "done-2", "done-3")
            if await store.record("t", k) is not None}
    assert kept == {"old-pending", "done-3"}
    await store.aclose()


async def test_the_session_index_survives_an_ingress_restart(make_client: Any) -> None:
    first = await make_client()
    _, started, _ = await post(first)              # no Idempotency-Key: only the index
    await first.close()
    second = await make_client()
    url = f"/sessions/{started['session_id']}"
    resp = await second.get(url, headers=AUTH)
    body = await resp.json()
    assert resp.status == 200, body
    assert (body["state"], body["substation"]) == ("charging", "sub-1")
    resp = await second.post(f"{url}/stop", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["state"] == "stopped"
    resp = await second.get(url, headers=OTHER_AUTH)   # still the creator's alone
    assert resp.status == 404 and (await resp.json())["error"] == "unknown_session"


async def test_the_key_record_is_on_disk_before_the_balancer_is_asked(
        make_client: Any, backends: FakeBackends, tmp_path: Path) -> None:
    seen: list[tuple[str, int, str]] = []

    def read_disk(body: dict[str, Any]) -> None:
        # Another connection, as a restarted ingress would open the file.
        with contextlib.closing(sqlite3.connect(tmp_path / "ingress.sqlite3")) as db:
            seen.extend(db.execute("SELECT session_id, epoch, state FROM key_records"))
    backends.on_dispatch = read_disk
    client = await make_client()
    status, body, _ = await post(client, key="k-disk")
    assert status == 200
    assert seen == [(body["session_id"], 1, "pending")]


async def test_a_session_whose_substation_cannot_answer_is_a_503_that_says_so(
        make_client: Any, backends: FakeBackends, aiohttp_server: Any) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="oops")
    client = await make_client()
    _, started, _ = await post(client)
    url = f"/sessions/{started['session_id']}"
    # Its substation answers oddly...
    odd = web.Application()
    odd.router.add_get("/sessions/{id}", broken)
    odd_server: TestServer = await aiohttp_server(odd, host="127.0.0.1")
    await move_route(client, started["session_id"], f"127.0.0.1:{odd_server.port}")
    resp = await client.get(url, headers=AUTH)
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "substation_error"
    assert "HTTP 500" in body["detail"]
    # ... or cannot be reached at all.
    await move_route(client, started["session_id"], free_url().removeprefix("http://"))
    resp = await client.post(f"{url}/stop", headers=AUTH)
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "substation_unavailable"
    assert resp.headers["Retry-After"] == "2" and "to stop the session" in body["detail"]


async def move_route(client: Client, session_id: str, routed_to: str) -> None:
    """Point the session index at another address, as if the session had been placed there."""
    assert client.app is not None
    store = client.app[STORE]
    route = await store.route(session_id)
    assert route is not None
    await store.save(route=dataclasses.replace(route, routed_to=routed_to))


async def test_the_request_id_goes_with_every_call_and_comes_back_in_every_answer(
        make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()
    resp = await client.post("/charge", json=CHARGE, headers={**AUTH, "X-Request-Id": "t-1"})
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "t-1"
    sid = (await resp.json())["session_id"]
    resp = await client.get(f"/sessions/{sid}", headers={**AUTH, "X-Request-Id": "t-2"})
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "t-2"
    # Its substation gone from its address: a balancer is asked where it is now, in vain.
    route = await client.app[STORE].route(sid)
    assert route is not None
    await client.app[STORE].save(route=dataclasses.replace(
        route, routed_to=free_url().removeprefix("http://")))
    resp = await client.get(f"/sessions/{sid}", headers={**AUTH, "X-Request-Id": "t-3"})
    assert resp.status == 503 and resp.headers["X-Request-Id"] == "t-3"
    assert backends.request_ids == [("POST dispatch", "t-1"), ("GET sessions", "t-2"),
                                    ("GET policy", "t-3")]


async def test_without_a_usable_request_id_one_is_made_and_sent_on(
        make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()
    for headers in ({}, {"X-Request-Id": "two words"}):
        resp = await client.post("/charge", json=CHARGE, headers={**AUTH, **headers})
        made = resp.headers["X-Request-Id"]
        assert resp.status == 200 and len(made) == 32 and made.isalnum()
        assert backends.request_ids[-1] == ("POST dispatch", made)
    assert backends.request_ids[0][1] != backends.request_ids[1][1]


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({}, CHARGE, 401),
    (AUTH, {**CHARGE, "requested_kw": -1}, 422),
    ({**AUTH, "Idempotency-Key": "has space"}, CHARGE, 400),
])
async def test_errors_echo_the_request_id_too(make_client: Any, headers: dict[str, str],
                                              body: dict[str, Any], status: int) -> None:
    client = await make_client()
    resp = await client.post("/charge", json=body, headers={**headers, "X-Request-Id": "e-1"})
    assert resp.status == status and resp.headers["X-Request-Id"] == "e-1"
    resp = await client.get("/sessions/none", headers={**AUTH, "X-Request-Id": "e-2"})
    assert resp.status == 404 and resp.headers["X-Request-Id"] == "e-2"


async def test_an_idempotent_replay_carries_the_retrys_own_request_id(
        make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()
    await client.post("/charge", json=CHARGE,
                      headers={**AUTH, "Idempotency-Key": "k", "X-Request-Id": "first"})
    resp = await client.post("/charge", json=CHARGE,
                             headers={**AUTH, "Idempotency-Key": "k", "X-Request-Id": "retry"})
    assert resp.headers["Idempotent-Replayed"] == "true"
    assert resp.headers["X-Request-Id"] == "retry"


# --- The store (ingress/store.py) failing or shared: what the client is told. -------------

def store_of(client: Client) -> Any:
    assert client.app is not None
    return client.app[STORE]


async def test_an_epoch_taken_by_another_replica_first_is_a_409_and_nothing_is_sent(
        make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()

    async def lost(record: KeyRecord, previous_epoch: int | None) -> bool:
        return False                   # another replica claimed it between our read and write
    store_of(client).claim = lost
    status, body, headers = await post(client, key="k-race")
    assert (status, body["error"], headers["Retry-After"]) == (409, "request_in_progress", "1")
    assert backends.dispatches == []


async def test_a_store_that_cannot_be_reached_is_a_503_store_unavailable_never_a_500(
        make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()
    _, started, _ = await post(client)
    store = store_of(client)

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("postgresql://grid@127.0.0.1:5432/grid: connection refused")
    store.record = store.route = store.counts = unreachable
    status, body, headers = await post(client, key="k-down")
    assert (status, body["error"], headers["Retry-After"]) == (503, "store_unavailable", "1")
    assert "nothing was sent" in body["detail"] and "connection refused" in body["detail"]
    assert len(backends.dispatches) == 1           # only the first charge's
    resp = await client.get(f"/sessions/{started['session_id']}", headers=AUTH)
    assert resp.status == 503 and (await resp.json())["error"] == "store_unavailable"
    resp = await client.get("/metrics")           # still scraped: the other metrics count
    assert resp.status == 200 and "ingress_requests_total" in await resp.text()


async def test_an_answer_that_cannot_be_recorded_says_it_may_have_started(
        make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()
    store = store_of(client)
    real_save = store.save

    async def save_fails(record: Any = None, route: Any = None) -> None:
        raise StoreUnavailable("connection lost")
    store.save = save_fails
    status, body, _ = await post(client, key="k-lost")
    assert (status, body["error"]) == (503, "outcome_unknown")
    assert "could not be recorded" in body["detail"] and "same Idempotency-Key" in body["detail"]
    tenant = hashlib.sha256(KEY.encode()).hexdigest()[:24]      # gridlb/http.py's identity
    record = await store.record(tenant, "k-lost")
    assert record is not None and record.state is RecordState.PENDING   # the claim stands
    store.save = real_save
    status, again, _ = await post(client, key="k-lost")        # the retry finds it
    assert status == 200 and again["session_id"] == record.session_id
    assert backends.dispatches[-1]["resolve"] is True


def test_the_store_is_sqlite_unless_a_postgresql_url_is_given(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from ingress.__main__ import parse_args
    monkeypatch.delenv("GRID_STORE_URL", raising=False)
    monkeypatch.setenv("GRID_API_KEYS", "k3y")     # it refuses to start without keys
    assert parse_args([]).store_url is None
    url = "postgresql://grid:pw@db:5432/grid"
    assert parse_args(["--store-url", url]).store_url == url
    monkeypatch.setenv("GRID_STORE_URL", url)     # the password out of the process list
    config = parse_args(["--store-pool-size", "8"])
    assert (config.store_url, config.store_pool_size) == (url, 8)
    for argv, message in ((["--store-url", "mysql://db/grid"], "must be a postgresql:// URL"),
                          (["--store-pool-size", "0"], "--store-pool-size: must be at least 1")):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err


def test_an_ingress_on_sqlite_never_loads_the_postgresql_driver() -> None:
    """The start-up line names the store (a PostgreSQL URL without its password), and an
    ingress on SQLite does not import psycopg (nor its pool) to do so."""
    code = ("import sys; from ingress.__main__ import main; from ingress.app import "
            "startup_fields; from ingress.config import IngressConfig; "
            "print(startup_fields(IngressConfig())['store']); print('psycopg' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[2])
    store, loaded = done.stdout.split()
    assert store.startswith("sqlite:") and loaded == "False", done.stdout
    from ingress.app import startup_fields
    described = startup_fields(IngressConfig(store_url="postgresql://grid:s3cret@db:5432/grid"))
    assert described["store"] == "postgresql:postgresql://grid@db:5432/grid"


async def test_min_kw_and_departure_go_to_the_balancer_and_granted_kw_comes_back(
        make_client: Any, backends: FakeBackends) -> None:
    """Adaptive power: the floor and the departure (RFC 3339 here, Unix seconds inside) reach
    the balancer; the answer shows the power granted now and the departure as RFC 3339."""
    backends.answer = (200, {"status": "charging", "session_id": "s", "substation": "sub-1",
                             "policy": "least-load", "routed_to": "127.0.0.1:1",
                             "session": {"power_kw": 11.0, "granted_kw": 5.5, "min_kw": 3.7,
                                         "departure_at": STARTED_AT,
                                         "will_complete_by_departure": False}}, {})
    client = await make_client()
    status, body, _ = await post(client, {**CHARGE, "min_kw": 3.7,
                                          "departure_at": "2026-12-07T21:03:04.123Z"})
    assert status == 200
    sent = backends.dispatches[0]
    assert sent["min_kw"] == 3.7 and sent["departure_at"] == pytest.approx(1796677384.123)
    assert (body["granted_kw"], body["min_kw"], body["departure_at"],
            body["will_complete_by_departure"]) == (5.5, 3.7, "2026-12-07T21:03:04.123Z", False)


async def test_without_min_kw_the_dispatch_is_todays(make_client: Any, backends: FakeBackends
                                                     ) -> None:
    client = await make_client()
    status, _, _ = await post(client)
    assert status == 200
    assert "min_kw" not in backends.dispatches[0]
    assert "departure_at" not in backends.dispatches[0]


async def test_a_floor_above_the_request_is_named(make_client: Any) -> None:
    client = await make_client()
    status, body, _ = await post(client, {**CHARGE, "min_kw": 22})
    assert status == 422
    assert body["fields"] == {"min_kw": "must be at most requested_kw (11 kW), got 22"}
