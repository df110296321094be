"""The public API against a fake balancer and a fake substation (real aiohttp servers)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ingress.app import KEY_LOCKS, IngressConfig, create_app, session_id_for
from ingress.store import IngressStore
from ingress.validation import parse_charge_request

CHARGE = {"vehicle_id": "ev-1", "requested_kw": 11, "energy_kwh": 30}
KEY = "api-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


class FakeBackends:
    """A balancer answering /dispatch as told, and a substation holding sessions."""

    def __init__(self) -> None:
        self.dispatches: list[dict[str, Any]] = []
        self.answer: tuple[int, dict[str, Any], dict[str, str]] | None = None
        self.delay_s = 0.0
        self.substation_address = ""
        self.balancer = web.Application()
        self.balancer.router.add_post("/dispatch", self._dispatch)
        self.substation = web.Application()
        self.substation.router.add_get("/sessions/{id}", self._session)
        self.substation.router.add_delete("/sessions/{id}", self._session)

    async def _dispatch(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.dispatches.append(body)
        await asyncio.sleep(self.delay_s)
        if self.answer is not None:
            status, answer, headers = self.answer
            return web.json_response(answer, status=status, headers=headers)
        return web.json_response({"status": "charging", "session_id": body["session_id"],
                                  "substation": "sub-1", "policy": "least-load",
                                  "routed_to": self.substation_address})

    async def _session(self, request: web.Request) -> web.Response:
        state = "stopped" if request.method == "DELETE" else "charging"
        return web.json_response({"session_id": request.match_info["id"], "state": state,
                                  "substation": "sub-1"})


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
        cfg = IngressConfig(balancer_url=balancer_url, api_keys=(KEY,),
                            store_path=str(tmp_path / "ingress.sqlite3"), **config)
        return await aiohttp_client(create_app(cfg))  # type: ignore[no-any-return]
    return make


async def post(client: Client, body: Any = None, **headers: str) -> tuple[int, Any, Any]:
    resp = await client.post("/charge", json=CHARGE if body is None else body,
                             headers={**AUTH, **headers})
    return resp.status, await resp.json(), resp.headers


async def test_a_charge_is_routed_and_answered(make_client: Any, backends: FakeBackends
                                               ) -> None:
    client = await make_client()
    status, body, _ = await post(client)
    assert status == 200
    assert (body["status"], body["substation"], body["policy"], body["requested_kw"]) == \
        ("charging", "sub-1", "least-load", 11.0)
    assert backends.dispatches[0]["session_id"] == body["session_id"]


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({**CHARGE, "requested_kw": -5}, "requested_kw", "must be above 0 kW"),
    ({**CHARGE, "requested_kw": 0}, "requested_kw", "must be above 0 kW"),
    ({**CHARGE, "requested_kw": 5000}, "requested_kw", "must be at most 1000 kW"),
    ({**CHARGE, "requested_kw": "11"}, "requested_kw", "must be a number of kW, got str"),
    ({**CHARGE, "requested_kw": True}, "requested_kw", "got bool"),
    ({**CHARGE, "energy_kwh": None}, "energy_kwh", "got NoneType"),
    ({"vehicle_id": "ev", "requested_kw": 11}, "energy_kwh", "is required"),
    ({**CHARGE, "vehicle_id": ""}, "vehicle_id", "must not be empty"),
    ({**CHARGE, "vehicle_id": "x" * 65}, "vehicle_id", "at most 64 characters"),
    ({**CHARGE, "vehicle_id": "ev\x00"}, "vehicle_id", "printable characters only"),
    ({**CHARGE, "vehicle_id": 7}, "vehicle_id", "must be a string, got int"),
    ({**CHARGE, "priority": "high"}, "priority", "unknown field"),
])
async def test_each_bad_field_is_named(make_client: Any, body: dict[str, Any], field: str,
                                       reason: str) -> None:
    client = await make_client()
    status, answer, _ = await post(client, body)
    assert status == 422 and answer["error"] == "invalid_request"
    assert reason in answer["fields"][field] and f"{field}: " in answer["detail"]


async def test_nan_infinity_and_broken_json_are_400(make_client: Any) -> None:
    client = await make_client()
    for raw in (b'{"vehicle_id": "a", "requested_kw": NaN, "energy_kwh": 1}',
                b'{"requested_kw": Infinity}', b"{", b""):
        resp = await client.post("/charge", data=raw,
                                 headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status == 400, raw
        assert (await resp.json())["error"] == "malformed_json"


async def test_wrong_content_type_and_oversized_body(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post("/charge", data="vehicle_id=1", headers={
        **AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415 and (await resp.json())["error"] == "unsupported_media_type"
    resp = await client.post("/charge", data=b"x" * 20_000,
                             headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 413 and (await resp.json())["error"] == "payload_too_large"


async def test_an_idempotent_retry_replays_the_original_outcome(
        make_client: Any, backends: FakeBackends) -> None:
    client = await make_client()
    _, first, _ = await post(client, **{"Idempotency-Key": "k-1"})
    status, again, headers = await post(client, **{"Idempotency-Key": "k-1"})
    assert status == 200 and again == first and headers["Idempotent-Replayed"] == "true"
    assert len(backends.dispatches) == 1
    assert first["session_id"] == session_id_for("k-1")


async def test_concurrent_copies_of_one_key_make_one_session(
        make_client: Any, backends: FakeBackends) -> None:
    backends.delay_s = 0.1
    client = await make_client()
    results = await asyncio.gather(*(post(client, **{"Idempotency-Key": "k-2"})
                                     for _ in range(5)))
    assert {body["session_id"] for _, body, _ in results} == {session_id_for("k-2")}
    assert len(backends.dispatches) == 1
    assert len(client.server.app[KEY_LOCKS]) == 0   # no lock outlives its key's requests


async def test_a_key_reused_with_another_body_is_422(make_client: Any) -> None:
    client = await make_client()
    await post(client, **{"Idempotency-Key": "k-3"})
    status, body, _ = await post(client, {**CHARGE, "requested_kw": 22},
                                 **{"Idempotency-Key": "k-3"})
    assert status == 422 and body["error"] == "idempotency_key_reused"


async def test_keys_survive_an_ingress_restart(make_client: Any, backends: FakeBackends
                                               ) -> None:
    first = await make_client()
    _, original, _ = await post(first, **{"Idempotency-Key": "k-4"})
    await first.close()
    second = await make_client()
    status, replay, _ = await post(second, **{"Idempotency-Key": "k-4"})
    assert status == 200 and replay == original and len(backends.dispatches) == 1


async def test_no_capacity_passes_through_with_retry_after_and_is_not_stored(
        make_client: Any, backends: FakeBackends) -> None:
    backends.answer = (503, {"error": "no_capacity", "detail": "full"}, {"Retry-After": "1"})
    client = await make_client()
    status, body, headers = await post(client, **{"Idempotency-Key": "k-5"})
    assert status == 503 and body["error"] == "no_capacity" and headers["Retry-After"] == "1"
    backends.answer = None
    status, _, _ = await post(client, **{"Idempotency-Key": "k-5"})
    assert status == 200 and len(backends.dispatches) == 2


async def test_balancer_down_is_a_503_json_error(make_client: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = await make_client(balancer_url=f"http://127.0.0.1:{port}")
    status, body, headers = await post(client)
    assert status == 503 and body["error"] == "balancer_unavailable"
    assert headers["Retry-After"] == "1"


async def test_balancer_garbage_is_a_502(make_client: Any, backends: FakeBackends) -> None:
    backends.answer = (500, {"oops": True}, {})
    client = await make_client()
    status, body, _ = await post(client)
    assert status == 502 and body["error"] == "bad_gateway"


async def test_sessions_are_read_and_stopped_at_their_substation(make_client: Any) -> None:
    client = await make_client()
    _, started, _ = await post(client)
    resp = await client.get(f"/sessions/{started['session_id']}", headers=AUTH)
    body = await resp.json()
    assert resp.status == 200 and body["state"] == "charging"
    assert body["routed_to"] == started["routed_to"]
    resp = await client.delete(f"/sessions/{started['session_id']}", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["state"] == "stopped"
    resp = await client.get("/sessions/unknown", headers=AUTH)
    assert resp.status == 404 and (await resp.json())["error"] == "unknown_session"


async def test_api_key_is_required_except_on_open_paths(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post("/charge", json=CHARGE)
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    resp = await client.post("/charge", json=CHARGE, headers={"Authorization": "Bearer nope"})
    assert resp.status == 401 and (await resp.json())["detail"] == "the bearer key is not valid"
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await client.get(path)).status == 200, path


async def test_openapi_describes_every_route(make_client: Any) -> None:
    client = await make_client()
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) >= {"/charge", "/sessions/{id}"}
    assert "Idempotency-Key" in str(spec["paths"]["/charge"]["post"]["parameters"])


async def test_metrics_use_route_templates_not_raw_paths(make_client: Any) -> None:
    client = await make_client()
    for sid in ("a", "b", "c"):
        await client.get(f"/sessions/{sid}", headers=AUTH)
    await client.get("/no/such/path", headers=AUTH)
    text = await (await client.get("/metrics")).text()
    assert 'ingress_requests_total{method="GET",route="/sessions/{id}",status="404"} 3.0' in text
    assert 'route="unmatched",status="404"' in text


def test_store_prunes_old_keys(tmp_path: Path) -> None:
    store = IngressStore(tmp_path / "s.sqlite3", key_ttl_s=-1.0)
    store.record_outcome("k", "h", 200, {"a": 1})
    assert store.outcome("k") is None
    store.prune()
    store.close()


def test_validation_accepts_integers_and_floats() -> None:
    parsed = parse_charge_request({"vehicle_id": "ev", "requested_kw": 7, "energy_kwh": 2.5})
    assert not isinstance(parsed, dict)
    assert (parsed.requested_kw, parsed.energy_kwh) == (7.0, 2.5)
