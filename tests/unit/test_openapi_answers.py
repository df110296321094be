"""The ingress's answers against its own OpenAPI document.

Every answer a client can get (each error code of each operation, and the 200s) is produced
against a fake balancer and substations and validated against the document's schema for that
operation and status (formats included: times are `date-time`). The codes produced and the codes
the document lists must be the same set, so neither can drift from the other. The schemathesis
run (tests/integration/test_fuzz.py) checks the same document against the real stack with
generated requests; this walks the answers that generated requests rarely reach.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestServer

from gridlb.charge import ChargeLimits
from ingress.app import create_app
from ingress.config import IngressConfig
from ingress.openapi import DISTRIBUTION, openapi_document
from ingress.public import SESSION_FIELDS
from ingress.state import STORE
from ingress.store import StoreUnavailable
from substation.app import create_app as create_substation
from substation.config import SubstationConfig
from tests.unit.test_ingress import (
    AUTH,
    CHARGE,
    KEY,
    OTHER_KEY,
    Client,
    FakeBackends,
    free_url,
    move_route,
)

DOC = openapi_document(ChargeLimits())
Answer = tuple[str, str, int, Any]       # path template, method, status, body
MakeClient = Callable[..., Awaitable[Client]]


def resolve(node: Any) -> Any:
    """`node` with every local `$ref` replaced by what it names."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = DOC
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target)
        return {k: resolve(v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v) for v in node]
    return node


def response_schema(path: str, method: str, status: int) -> Any:
    responses = DOC["paths"][path][method]["responses"]
    if str(status) not in responses:
        return None
    return resolve(responses[str(status)]["content"]["application/json"]["schema"])


def documented_codes() -> set[tuple[str, str, int, str]]:
    """(path, method, status, code) for every error code the document lists."""
    out = set()
    for path, operations in DOC["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                for part in schema.get("allOf", []):
                    for code in part.get("properties", {}).get("error", {}).get("enum", []):
                        out.add((path, method, int(status), code))
    return out


def problems_of(answers: list[Answer]) -> list[str]:
    problems = []
    for path, method, status, body in answers:
        schema = response_schema(path, method, status)
        where = f"{method.upper()} {path} {status} {body.get('error', '')}"
        if schema is None:
            problems.append(f"{where}: the document lists no {status} answer")
            continue
        validator = jsonschema_rs.Draft4Validator(schema, validate_formats=True)
        problems += [f"{where}: {e.message}" for e in validator.iter_errors(body)]
    return problems


def real_substation() -> web.Application:
    return create_substation(SubstationConfig("sub-1", capacity_kw=500.0))


async def place_at(substation: Client, session_id: str) -> dict[str, Any]:
    """Start `session_id` at a substation, as the balancer does; its answer."""
    resp = await substation.post("/charge", json={**CHARGE, "session_id": session_id,
                                                  "epoch": 1})
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def answer(path: str, method: str, resp: ClientResponse) -> Answer:
    return path, method, resp.status, await resp.json()


async def charge(client: Client, body: Any = None, key: str | None = None,
                 headers: dict[str, str] | None = None, data: bytes | None = None) -> Answer:
    sent = {**AUTH, **({"Idempotency-Key": key} if key else {}), **(headers or {})}
    if data is not None:
        resp = await client.post("/charge", data=data,
                                 headers={"Content-Type": "application/json", **sent})
    else:
        resp = await client.post("/charge", json=CHARGE if body is None else body, headers=sent)
    return await answer("/charge", "post", resp)


def balancer_says(backends: FakeBackends, status: int, body: dict[str, Any]) -> None:
    """The balancer's own answer (canned as balancer/views.py writes it, internal fields and
    all: the ingress decides what the client sees)."""
    backends.answer = (status, {**body, "session_may_exist": False}, {"Retry-After": "1"})


# What the balancer answers for each of its refusals (balancer/views.py).
BALANCER_REFUSALS: list[tuple[int, dict[str, Any]]] = [
    (409, {"error": "dispatch_in_progress", "detail": "an earlier copy is being placed"}),
    (409, {"error": "superseded", "detail": "a newer dispatch of session s owns it"}),
    # A substation's refusal every substation would give, passed through with its load.
    (409, {"error": "session_conflict", "detail": "session s exists with other values",
           "substation": "sub-1", "load_kw": 11.0, "load_seq": 3, "capacity_kw": 500.0,
           "load_forecast_kw": [[1.0, 11.0]]}),
    (503, {"error": "no_capacity", "detail": "no substation can take 11 kW now (tried 2)"}),
    (503, {"error": "no_substations", "detail": "Prometheus reports no usable substation"}),
    (503, {"error": "no_snapshot", "detail": "the balancer has not read Prometheus yet"}),
    (503, {"error": "deadline_exceeded", "detail": "the caller's deadline passed"}),
    (503, {"error": "outcome_unknown", "detail": "session s may exist at sub-1",
           "may_be_at": ["sub-1"]}),
]


async def charge_answers(make_client: MakeClient, backends: FakeBackends) -> list[Answer]:
    client = await make_client()
    out = [await charge(client), await charge(client, key="k-1"),
           await charge(client, key="k-1"),                                     # a replay
           await charge(client, data=b"{"),
           await charge(client, body=[1]),
           await charge(client, data=b'{"vehicle_id": "a", "vehicle_id": "b"}'),
           await charge(client, key="not a key"),
           await answer("/charge", "post", await client.post("/charge", json=CHARGE)),
           await charge(client, data=b"x" * 20_000),
           await charge(client, headers={"Content-Type": "text/plain"}, data=b"x"),
           await charge(client, body={**CHARGE, "requested_kw": -1, "colour": "red"}),
           await charge(client, body={**CHARGE, "energy_kwh": 31}, key="k-1")]
    backends.delay_s = 0.2
    out += await asyncio.gather(charge(client, key="k-busy"), charge(client, key="k-busy"))
    backends.delay_s = 0.0
    for status, body in BALANCER_REFUSALS:
        balancer_says(backends, status, body)
        out.append(await charge(client))
    backends.answer = (500, {"oops": True}, {})
    out.append(await charge(client))                                           # bad_gateway
    backends.answer = None
    backends.delay_s = 0.6
    out.append(await charge(await make_client(request_timeout_s=0.3)))         # timeout
    backends.delay_s = 0.0
    out.append(await charge(await make_client(balancer_url=free_url())))      # unreachable
    return out


async def broken(request: web.Request) -> web.Response:
    return web.Response(status=500, text="oops")


async def session_answers(make_client: MakeClient, aiohttp_server: Any,
                          aiohttp_client: Any) -> list[Answer]:
    client = await make_client()
    _, _, _, started = await charge(client)
    sid = started["session_id"]
    # The session's 200s come from a real substation: the fields and times it really sends.
    substation = await aiohttp_client(real_substation())
    await place_at(substation, sid)
    await move_route(client, sid, f"{substation.host}:{substation.port}")
    out = []
    for method, suffix, path in (("get", "", "/sessions/{id}"),
                                 ("post", "/stop", "/sessions/{id}/stop")):
        url = f"/sessions/{sid}{suffix}"
        out.append(await answer(path, method, await client.request(method, url, headers=AUTH)))
        out.append(await answer(path, method, await client.request(method, url)))
        out.append(await answer(path, method, await client.request(
            method, f"/sessions/nobody{suffix}", headers=AUTH)))
    odd = web.Application()
    odd.router.add_route("*", "/sessions/{id}", broken)
    odd_server: TestServer = await aiohttp_server(odd, host="127.0.0.1")
    for address in (f"127.0.0.1:{odd_server.port}", free_url().removeprefix("http://")):
        await move_route(client, sid, address)
        out.append(await answer("/sessions/{id}", "get",
                                await client.get(f"/sessions/{sid}", headers=AUTH)))
        out.append(await answer("/sessions/{id}/stop", "post",
                                await client.post(f"/sessions/{sid}/stop", headers=AUTH)))
    return out


async def store_down_answers(make_client: MakeClient) -> list[Answer]:
    """The ingress's store (PostgreSQL with replicas) unreachable: 503 store_unavailable."""
    client = await make_client()
    assert client.app is not None
    store = client.app[STORE]

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("postgresql://grid@127.0.0.1:5432/grid: connection refused")
    store.record = store.route = unreachable  # type: ignore[method-assign]
    out = [await charge(client, key="k-store-down")]
    for method, suffix, path in (("get", "", "/sessions/{id}"),
                                 ("post", "/stop", "/sessions/{id}/stop")):
        out.append(await answer(path, method, await client.request(
            method, f"/sessions/some-session{suffix}", headers=AUTH)))
    return out


@pytest.fixture
def backends_and_client(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
                        ) -> tuple[FakeBackends, MakeClient]:
    fake = FakeBackends()

    async def make(balancer_url: str | None = None, **config: Any) -> Client:
        if not fake.substation_address:
            sub: TestServer = await aiohttp_server(fake.substation, host="127.0.0.1")
            fake.substation_address = f"127.0.0.1:{sub.port}"
        if balancer_url is None:
            server: TestServer = await aiohttp_server(fake.balancer, host="127.0.0.1")
            balancer_url = f"http://127.0.0.1:{server.port}"
        cfg = IngressConfig(balancer_urls=(balancer_url,), api_keys=(KEY, OTHER_KEY),
                            store_path=str(tmp_path / f"ingress-{len(made)}.sqlite3"), **config)
        made.append(cfg)
        return await aiohttp_client(create_app(cfg))  # type: ignore[no-any-return]
    made: list[IngressConfig] = []
    return fake, make


async def test_every_answer_matches_the_document_and_every_documented_code_is_answered(
        backends_and_client: tuple[FakeBackends, MakeClient], aiohttp_server: Any,
        aiohttp_client: Any) -> None:
    backends, make_client = backends_and_client
    answers = await charge_answers(make_client, backends) + \
        await session_answers(make_client, aiohttp_server, aiohttp_client) + \
        await store_down_answers(make_client)
    sessions = [body for path, _, status, body in answers
                if path.startswith("/sessions") and status == 200]
    assert [s["state"] for s in sessions] == ["charging", "stopped"]
    assert {"started_at", "ends_at"} <= set(sessions[0])
    assert {"started_at", "ended_at"} <= set(sessions[1])
    assert problems_of(answers) == []
    produced = {(path, method, status, body["error"])
                for path, method, status, body in answers if "error" in body}
    assert produced == documented_codes()
    assert {(path, method, status) for path, method, status, body in answers
            if "error" not in body} == {("/charge", "post", 200), ("/sessions/{id}", "get", 200),
                                        ("/sessions/{id}/stop", "post", 200)}


def test_the_walk_fails_on_an_answer_the_document_does_not_promise() -> None:
    problems = problems_of([
        ("/charge", "post", 200, {"status": "charging", "session_id": "s", "substation": "a",
                                  "policy": "p", "routed_to": "127.0.0.1:9101"}),
        ("/sessions/{id}", "get", 200, {"session_id": "s", "state": "charging",
                                        "substation": "a", "started_at": 1796677384.1}),
        ("/sessions/{id}", "get", 200, {"session_id": "s", "state": "charging",
                                        "substation": "a", "ends_at": "tomorrow"}),
        ("/charge", "post", 503, {"error": "no_capacity", "detail": "full",
                                  "session_may_exist": False}),
        ("/charge", "post", 503, {"error": "payload_too_large", "detail": "big"}),
        ("/charge", "post", 418, {"error": "teapot", "detail": "short and stout"}),
    ])
    expected = [("POST /charge 200 : ", "'routed_to' was unexpected"),
                ("GET /sessions/{id} 200 : ", 'is not of type "string"'),
                ("GET /sessions/{id} 200 : ", 'is not a "date-time"'),
                ("POST /charge 503 no_capacity: ", "'session_may_exist' was unexpected"),
                ("POST /charge 503 payload_too_large: ", '"payload_too_large" is not one of'),
                ("POST /charge 418 teapot: ", "the document lists no 418 answer")]
    assert len(problems) == len(expected), problems
    for problem, (where, what) in zip(problems, expected, strict=True):
        assert problem.startswith(where) and what in problem, problem


def test_the_document_carries_the_packages_version() -> None:
    assert DOC["info"]["version"] == importlib.metadata.version(DISTRIBUTION)


async def test_the_session_schema_lists_every_field_a_substation_answer_shows(
        aiohttp_client: Any) -> None:
    """Each field of a real substation's session answers (charging, then stopped) is either in
    the public Session schema or deliberately internal: a new field must take a side."""
    internal = {"load_kw", "load_seq", "capacity_kw", "load_forecast_kw"}
    substation = await aiohttp_client(real_substation())
    sent = await place_at(substation, "s-1")
    assert sent["state"] == "charging"
    stopped = await (await substation.delete("/sessions/s-1")).json()
    assert stopped["state"] == "stopped"
    # Adaptive power's fields show on a session that gave a floor and a departure.
    resp = await substation.post("/charge", json={**CHARGE, "session_id": "s-2", "epoch": 1,
                                                  "min_kw": 1.4, "departure_at": 4e9})
    assert resp.status == 200
    adaptive = await resp.json()
    assert (set(sent) | set(stopped) | set(adaptive)) - internal == set(SESSION_FIELDS)
    assert set(DOC["components"]["schemas"]["Session"]["properties"]) == set(SESSION_FIELDS)
    times = {k for k, v in SESSION_FIELDS.items() if v.get("format") == "date-time"}
    assert times == {"started_at", "ended_at", "ends_at", "departure_at"}


def test_every_object_the_document_promises_is_closed() -> None:
    schemas = DOC["components"]["schemas"]
    assert {name for name, schema in schemas.items()
            if schema.get("additionalProperties") is not False} == set()
    assert "routed_to" not in str(DOC)

