"""The ingress's balancer replicas: host names expanded to every address, kept fresh, and a
replica that does not take the connection skipped (ingress/balancers.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ingress import balancers
from ingress.app import create_app
from ingress.balancers import BalancerReplicas, dispatch, replica_order, resolve_a_records
from ingress.config import IngressConfig


class FakeResolver:
    """Answers each host name from a table that the test changes as replicas come and go; a
    name mapped to an exception raises it, one missing from the table does not resolve."""

    def __init__(self, table: dict[str, Sequence[str] | BaseException]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []
        self.stall = False

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        if self.stall:
            await asyncio.sleep(3600)
        answer = self.table.get(host, socket.gaierror(-2, "Name or service not known"))
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def test_a_balancer_host_name_stands_for_every_address_it_has() -> None:
    resolve = FakeResolver({"balancer": ["10.89.0.7", "10.89.0.5", "10.89.0.7"]})
    replicas = BalancerReplicas(["http://balancer:8081"], resolve)
    assert replicas.urls() == ("http://balancer:8081",)     # as configured until resolved
    await replicas.refresh()
    assert resolve.calls == [("balancer", 8081)]
    assert replicas.urls() == ("http://10.89.0.5:8081", "http://10.89.0.7:8081")
    assert replicas.problems == {}


async def test_replicas_that_come_and_go_are_followed() -> None:
    resolve = FakeResolver({"balancer": ["10.89.0.5"]})
    replicas = BalancerReplicas(["http://balancer:8081/"], resolve)
    await replicas.refresh()
    assert replicas.urls() == ("http://10.89.0.5:8081/",)
    resolve.table["balancer"] = ["10.89.0.5", "10.89.0.9"]    # --scale balancer=2
    await replicas.refresh()
    assert replicas.urls() == ("http://10.89.0.5:8081/", "http://10.89.0.9:8081/")
    resolve.table["balancer"] = ["10.89.0.9"]                 # one removed
    await replicas.refresh()
    assert replicas.urls() == ("http://10.89.0.9:8081/",)


async def test_addresses_and_https_urls_are_used_as_given() -> None:
    resolve = FakeResolver({})
    configured = ["http://127.0.0.1:8081", "http://[::1]:8082", "https://balancer.example:8443"]
    replicas = BalancerReplicas(configured, resolve)
    assert not replicas.has_names
    await replicas.refresh()
    assert resolve.calls == [] and replicas.urls() == tuple(configured)


async def test_names_and_addresses_mix_and_one_replica_named_twice_counts_once() -> None:
    resolve = FakeResolver({"balancer": ["10.89.0.5", "10.89.0.6"]})
    replicas = BalancerReplicas(
        ["http://10.89.0.6:8081", "http://balancer:8081", "http://10.89.0.8:8081"], resolve)
    await replicas.refresh()
    assert replicas.urls() == ("http://10.89.0.6:8081", "http://10.89.0.5:8081",
                               "http://10.89.0.8:8081")
    assert resolve.calls == [("balancer", 8081)]


async def test_the_default_port_of_http_is_resolved_for() -> None:
    resolve = FakeResolver({"balancer": ["10.89.0.5"]})
    replicas = BalancerReplicas(["http://balancer"], resolve)
    await replicas.refresh()
    assert resolve.calls == [("balancer", 80)]
    assert replicas.urls() == ("http://10.89.0.5:80",)


@pytest.mark.parametrize(("answer", "reason"), [
    (socket.gaierror(-2, "Name or service not known"), "Name or service not known"),
    ([], "no IPv4 address"),
])
async def test_a_failed_resolution_keeps_the_last_good_one_and_says_why(
        caplog: pytest.LogCaptureFixture, answer: Sequence[str] | BaseException,
        reason: str) -> None:
    resolve = FakeResolver({"balancer": ["10.89.0.5", "10.89.0.6"]})
    replicas = BalancerReplicas(["http://balancer:8081"], resolve)
    await replicas.refresh()
    good = replicas.urls()
    resolve.table["balancer"] = answer
    with caplog.at_level(logging.WARNING, logger="ingress.balancers"):
        await replicas.refresh()
        await replicas.refresh()
    assert replicas.urls() == good
    assert reason in replicas.problems["http://balancer:8081"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings                       # once, not at every refresh
    assert "cannot resolve the balancer http://balancer:8081" in warnings[0]
    assert reason in warnings[0] and "10.89.0.5" in warnings[0]
    resolve.table["balancer"] = ["10.89.0.6"]
    await replicas.refresh()
    assert replicas.urls() == ("http://10.89.0.6:8081",) and replicas.problems == {}


async def test_a_name_that_never_resolved_is_used_as_configured() -> None:
    replicas = BalancerReplicas(["http://balancer:8081"], FakeResolver({}))
    await replicas.refresh()
    assert replicas.urls() == ("http://balancer:8081",)
    assert "Name or service not known" in replicas.problems["http://balancer:8081"]


async def test_a_resolver_that_does_not_answer_is_given_up_on() -> None:
    resolve = FakeResolver({"balancer": ["10.89.0.5"]})
    replicas = BalancerReplicas(["http://balancer:8081"], resolve)
    await replicas.refresh()
    resolve.stall = True
    await asyncio.wait_for(replicas.refresh(timeout_s=0.05), 5)
    assert replicas.urls() == ("http://10.89.0.5:8081",)
    assert replicas.problems == {"http://balancer:8081": "no answer within 0.05 s"}


async def test_the_system_resolver_gives_ipv4_addresses() -> None:
    assert "127.0.0.1" in await resolve_a_records("localhost", 8081)


def test_a_replica_going_away_moves_only_the_sessions_it_had() -> None:
    three = [f"http://10.89.0.{i}:8081" for i in (5, 6, 7)]
    before = {f"s{i}": replica_order(three, f"s{i}")[0] for i in range(300)}
    after = {sid: replica_order(three[:2], sid)[0] for sid in before}
    moved = {sid for sid in before if before[sid] != after[sid]}
    assert moved == {sid for sid, url in before.items() if url == three[2]}
    assert 60 < len(moved) < 140     # about a third


# --- dispatch and the app, against real sockets ----------------------------------------------

@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A URL whose listening socket takes no new connection: its accept queue is full, so the
    kernel drops every further SYN (as for an address where nothing answers any more)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        queued.close()
        listener.close()


def fake_balancer(seen: list[dict[str, Any]]) -> web.Application:
    async def dispatch_view(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({**body, "host": request.host})
        return web.json_response({"status": "charging", "session_id": body["session_id"],
                                  "substation": "s1", "routed_to": "127.0.0.1:1",
                                  "policy": "p", "attempts": 1})
    app = web.Application()
    app.router.add_post("/dispatch", dispatch_view)
    return app


async def test_a_replica_that_takes_no_connection_is_skipped_before_anything_is_sent(
        full_backlog: str, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(balancers, "CONNECT_TIMEOUT_S", 0.2)
    seen: list[dict[str, Any]] = []
    server: TestServer = await aiohttp_server(fake_balancer(seen), host="127.0.0.1")
    live = f"http://127.0.0.1:{server.port}"
    # A session id whose first replica is the one that takes no connection.
    sid = next(f"s{i}" for i in range(100)
               if replica_order([full_backlog, live], f"s{i}")[0] == full_backlog)
    async with aiohttp.ClientSession() as session:
        answer = await dispatch(session, [full_backlog, live], {"session_id": sid}, {}, 5.0)
        assert answer.status == 200 and [s["session_id"] for s in seen] == [sid], answer
        # Alone, it gets the whole time left: still nothing sent, and said so.
        alone = await dispatch(session, [full_backlog], {"session_id": sid}, {}, 0.5)
    assert alone.failure in ("unreachable", "timeout"), alone


async def test_the_ingress_charges_through_the_addresses_of_a_balancer_name(
        aiohttp_server: Any, aiohttp_client: Any, tmp_path: Any) -> None:
    seen: list[dict[str, Any]] = []
    server: TestServer = await aiohttp_server(fake_balancer(seen), host="127.0.0.1")
    resolve = FakeResolver({"balancer.test": ["127.0.0.1"]})
    config = IngressConfig(balancer_urls=(f"http://balancer.test:{server.port}",),
                           store_path=str(tmp_path / "ingress.sqlite3"),
                           balancer_dns_refresh_s=0.05)
    app = create_app(config, resolve=resolve)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    assert resolve.calls == [("balancer.test", server.port)]    # before the first request
    charge = {"vehicle_id": "ev-1", "requested_kw": 11, "energy_kwh": 30}
    answer = await client.post("/charge", json=charge)
    assert answer.status == 200, await answer.text()
    assert seen[0]["host"] == f"127.0.0.1:{server.port}"        # the address, not the name
    # Resolved again in the background; a failed resolution keeps the replica in use.
    resolve.table["balancer.test"] = []
    for _ in range(100):
        if len(resolve.calls) >= 3:
            break
        await asyncio.sleep(0.05)
    assert len(resolve.calls) >= 3, resolve.calls
    again = await client.post("/charge", json={**charge, "vehicle_id": "ev-2"})
    assert again.status == 200 and [s["vehicle_id"] for s in seen] == ["ev-1", "ev-2"]
