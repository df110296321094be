"""Fuzzing the Prometheus reader: whatever a canned aiohttp server answers (truncated bodies,
HTML, random bytes, JSON of every wrong shape, odd status codes), reading a snapshot either
succeeds or raises QueryFailure with a reason; nothing else ever leaves balancer/prom.py.

The server runs in a background thread with its own event loop, so that hypothesis drives plain
synchronous examples through the real prometheus-api-client and requests stack."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from balancer.prom import GridQueries, QueryFailure, make_client, read_snapshot
from balancer.snapshot import Snapshot
from gridlb.stack import free_port
from tests.conftest import make_policy, series

Q = GridQueries()
POLICY = make_policy()
A = "127.0.0.1:9101"
QUERIES = (Q.up, Q.scrape_time, Q.load, Q.capacity, POLICY.query)
KNOWN_REASONS = {"bad_data", "execution", "timeout", "canceled", "client_timeout",
                 "unreachable", "truncated", "bad_response", "request_failed"}


def good_answer(query: str) -> bytes:
    value = 1 if query in (Q.up,) else 50
    result = [series(value, instance=A, substation="s1", job="substation")]
    return json.dumps({"status": "success",
                       "data": {"resultType": "vector", "result": result}}).encode()


@dataclass
class Canned:
    """What the server answers to `query` (every other query gets a good answer)."""

    query: str = ""
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    cut_at: int | None = None   # send this many bytes (chunked), then close the connection


class CannedPrometheus:
    def __init__(self) -> None:
        self.canned = Canned()
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_route("*", "/api/v1/query", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        canned = self.canned
        query = request.query.get("query", "")
        if canned.query not in ("*", query):
            return web.Response(body=good_answer(query), content_type="application/json")
        if canned.cut_at is None:
            return web.Response(status=canned.status, body=canned.body,
                                headers={"Content-Type": canned.content_type})
        response = web.StreamResponse(status=canned.status,
                                      headers={"Content-Type": canned.content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(canned.body[:canned.cut_at])
        assert request.transport is not None
        request.transport.close()
        return response

    def __enter__(self) -> CannedPrometheus:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def read(self, canned: Canned) -> Snapshot:
        self.canned = canned
        client = make_client(f"http://127.0.0.1:{self.port}", timeout_s=2.0)
        try:
            return read_snapshot(client, POLICY, Q, 1000.0)
        finally:
            client._session.close()


@pytest.fixture(scope="module")
def prometheus() -> Iterator[CannedPrometheus]:
    with CannedPrometheus() as server:
        yield server


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
labels = st.dictionaries(st.sampled_from(["instance", "substation", "job", "x"]),
                         json_values | st.just(A), max_size=4)
odd_series = st.fixed_dictionaries(
    {}, optional={"metric": labels | json_values,
                  "value": st.lists(json_values | st.just("NaN") | st.just("12.5"),
                                    max_size=3) | json_values})
prometheus_shaped = st.fixed_dictionaries({
    "status": st.sampled_from(["success", "error"]) | json_values,
    "data": st.fixed_dictionaries(
        {}, optional={"resultType": st.sampled_from(["vector", "matrix", "scalar"]),
                      "result": st.lists(odd_series, max_size=4) | json_values}) | json_values,
}, optional={"errorType": st.text(max_size=10), "error": st.text(max_size=30)})
bodies = (
    prometheus_shaped.map(lambda v: json.dumps(v).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
    | st.sampled_from([b"<html><body>502 Bad Gateway</body></html>", b"", b"{",
                       b'{"status": "success", "data": {"resultType": "vector", "result": [',
                       b"[" * 100_000 + b"]" * 100_000])
)
canned = st.builds(
    Canned,
    query=st.sampled_from([*QUERIES, "*"]),
    status=st.sampled_from([200, 200, 200, 204, 301, 400, 404, 422, 500, 502, 503]),
    body=bodies,
    content_type=st.sampled_from(["application/json", "text/html", "text/plain"]),
    cut_at=st.none() | st.integers(min_value=0, max_value=300),
)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(Canned(query=Q.load, body=b"[" * 100_000 + b"]" * 100_000))
@example(Canned(query=POLICY.query, body=good_answer(POLICY.query), cut_at=40))
@example(Canned(query="*", body=b'{"data": {"result": [{"metric": {"instance": ["a"]}, '
                                b'"value": [1, "2"]}]}}'))
@given(canned)
def test_any_answer_is_a_snapshot_or_a_typed_failure(prometheus: CannedPrometheus,
                                                     canned: Canned) -> None:
    try:
        snapshot = prometheus.read(canned)
    except QueryFailure as exc:
        assert exc.reason in KNOWN_REASONS or exc.reason.startswith("http_"), exc.reason
        return
    assert isinstance(snapshot, Snapshot)
    for view in snapshot.substations.values():
        assert isinstance(view.instance, str) and isinstance(view.name, str)


@pytest.mark.parametrize(("canned", "reason"), [
    (Canned(query=Q.up, body=good_answer(Q.up), cut_at=30), "truncated"),
    (Canned(query=Q.up, body=b"<html>proxy error</html>", content_type="text/html"),
     "bad_response"),
    (Canned(query=Q.load, body=b"[" * 100_000 + b"]" * 100_000), "bad_response"),
    (Canned(query=Q.capacity, body=b'{"data": {"result": {"not": "a list"}}}'), "bad_response"),
    (Canned(query=Q.up, body=b'{"data": {"result": [{"metric": {"instance": 7}, '
                             b'"value": [1, "1"]}]}}'), "bad_response"),
    (Canned(query=Q.up, body=b'{"data": []}'), "bad_response"),
    (Canned(query=Q.up, status=502, body=b"<html>bad gateway</html>"), "http_502"),
])
def test_each_kind_of_malformed_answer_has_its_reason(prometheus: CannedPrometheus,
                                                      canned: Canned, reason: str) -> None:
    with pytest.raises(QueryFailure) as caught:
        prometheus.read(canned)
    assert caught.value.reason == reason
