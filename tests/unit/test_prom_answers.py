"""One named case per odd Prometheus answer, served as real HTTP by an aiohttp test server and
read through the real prometheus-api-client."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from balancer.prom import (
    ROSTER_EVERY_S,
    GridQueries,
    PolicyQueryFailed,
    QueryFailure,
    RosterCache,
    make_client,
    read_snapshot,
)
from balancer.snapshot import Snapshot
from tests.conftest import FakeQueryClient, make_policy, series

Q = GridQueries()
A, B = "127.0.0.1:9101", "127.0.0.1:9102"
POLICY = make_policy()


def vector(*items: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": list(items)}}


def grid_answers() -> dict[str, Any]:
    labels = {"job": "substation"}
    return {
        Q.up: vector(series(1, instance=A, **labels), series(1, instance=B, **labels)),
        Q.scrape_time: vector(series(999.5, instance=A), series(999.0, instance=B)),
        Q.load: vector(series(40, instance=A, substation="s1", **labels),
                       series(60, instance=B, substation="s2", **labels)),
        Q.capacity: vector(series(100, instance=A, substation="s1", **labels),
                           series(100, instance=B, substation="s2", **labels)),
        POLICY.query: vector(series(40, instance=A), series(60, instance=B)),
    }


Answer = Any  # a JSON body, or (status, body), or an awaitable-producing callable


def make_handler(answers: dict[str, Answer]) -> Callable[[web.BaseRequest],
                                                          Awaitable[web.Response]]:
    async def handler(request: web.BaseRequest) -> web.Response:
        answer = answers.get(request.query.get("query", ""), vector())
        if callable(answer):
            answer = await answer()
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(status=status, text=text, content_type="application/json")
    return handler


async def snapshot_from(server_factory: Callable[..., Awaitable[RawTestServer]],
                        overrides: dict[str, Answer], timeout_s: float = 2.0) -> Snapshot:
    server = await server_factory(make_handler({**grid_answers(), **overrides}))
    client = make_client(str(server.make_url("/")), timeout_s=timeout_s)
    return await asyncio.to_thread(read_snapshot, client, POLICY, Q, 1000.0)


def error_body(kind: str, text: str) -> dict[str, Any]:
    return {"status": "error", "errorType": kind, "error": text}


async def test_normal_answer_gives_every_field(aiohttp_raw_server: Any) -> None:
    snap = await snapshot_from(aiohttp_raw_server, {})
    a = snap.substations[A]
    assert (a.name, a.up, a.scrape_ts, a.load_kw, a.capacity_kw, a.score) == \
        ("s1", True, 999.5, 40.0, 100.0, 40.0)
    assert snap.problems == ()


async def test_all_queries_are_evaluated_at_one_instant(aiohttp_raw_server: Any) -> None:
    seen: list[str] = []
    answers = grid_answers()

    async def handler(request: web.BaseRequest) -> web.Response:
        seen.append(request.query["time"])
        return web.json_response(answers.get(request.query["query"], vector()))
    server = await aiohttp_raw_server(handler)
    client = make_client(str(server.make_url("/")))
    await asyncio.to_thread(read_snapshot, client, POLICY, Q, 1234.5)
    assert seen == ["1234.500"] * 8


async def test_the_scraped_reading_number_is_kept_exactly(aiohttp_raw_server: Any) -> None:
    # Numbers from the start time in microseconds are below 2**53: exact as a float.
    seq = 1_764_000_000_123_457
    snap = await snapshot_from(aiohttp_raw_server, {
        Q.load_seq: vector(series(f"{seq}", instance=A, substation="s1"))})
    assert snap.substations[A].load_seq == seq
    assert snap.substations[B].load_seq is None     # not exported: settled by time instead


async def test_empty_policy_result_means_no_scores(aiohttp_raw_server: Any) -> None:
    snap = await snapshot_from(aiohttp_raw_server, {POLICY.query: vector()})
    assert all(v.score is None for v in snap.substations.values())
    assert snap.substations[A].load_kw == 40.0
    assert any("returned no data" in p for p in snap.problems)


async def test_nan_score_makes_that_substation_unscored(aiohttp_raw_server: Any) -> None:
    snap = await snapshot_from(aiohttp_raw_server, {
        POLICY.query: vector(series("NaN", instance=A), series(60, instance=B))})
    assert snap.substations[A].score is None
    assert snap.substations[B].score == 60.0
    assert any(f"{A} is nan" in p for p in snap.problems)


async def test_infinite_load_is_not_read_as_a_number(aiohttp_raw_server: Any) -> None:
    snap = await snapshot_from(aiohttp_raw_server, {
        Q.load: vector(series("+Inf", instance=A, substation="s1"),
                       series(60, instance=B, substation="s2"))})
    assert snap.substations[A].load_kw is None
    assert any("is inf" in p for p in snap.problems)


async def test_absent_load_stays_absent_not_zero(aiohttp_raw_server: Any) -> None:
    snap = await snapshot_from(aiohttp_raw_server, {
        Q.load: vector(series(60, instance=B, substation="s2"))})
    assert snap.substations[A].load_kw is None


async def test_several_series_keep_the_most_pessimistic(aiohttp_raw_server: Any) -> None:
    snap = await snapshot_from(aiohttp_raw_server, {
        POLICY.query: vector(series(40, instance=A, replica="x"),
                             series(70, instance=A, replica="y"), series(60, instance=B)),
        Q.capacity: vector(series(100, instance=A, substation="s1"),
                           series(80, instance=A, substation="s1"),
                           series(100, instance=B, substation="s2"))})
    assert snap.substations[A].score == 70.0       # lower is better: keep the higher
    assert snap.substations[A].capacity_kw == 80.0  # keep the smaller capacity
    assert any(f"several series for {A}" in p for p in snap.problems)


async def test_series_without_the_label_is_dropped(aiohttp_raw_server: Any) -> None:
    snap = await snapshot_from(aiohttp_raw_server, {
        POLICY.query: vector(series(5, job="substation"), series(60, instance=B))})
    assert snap.substations[A].score is None
    assert any("has no 'instance' label" in p for p in snap.problems)


async def test_down_substation_is_marked_down(aiohttp_raw_server: Any) -> None:
    snap = await snapshot_from(aiohttp_raw_server, {
        Q.up: vector(series(0, instance=A), series(1, instance=B))})
    assert snap.substations[A].up is False
    assert snap.substations[B].up is True


async def test_policy_keyed_by_substation_name_maps_to_instances(aiohttp_raw_server: Any
                                                                 ) -> None:
    policy = make_policy(result={"substation_label": "substation"})
    answers = {**grid_answers(),
               policy.query: vector(series(7, substation="s1"), series(9, substation="s2"))}
    server = await aiohttp_raw_server(make_handler(answers))
    client = make_client(str(server.make_url("/")))
    snap = await asyncio.to_thread(read_snapshot, client, policy, Q, 1000.0)
    assert (snap.substations[A].score, snap.substations[B].score) == (7.0, 9.0)


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, error_body("bad_data", "parse error"), "bad_data"),
        (422, error_body("execution", "many-to-many matching not allowed"), "execution"),
        (503, error_body("timeout", "query timed out"), "timeout"),
        (500, "oops", "http_500"),
        (200, {"status": "success", "data": {"resultType": "scalar",
                                             "result": [1, "2"]}}, "bad_response"),
        (200, "<html>not json</html>", "bad_response"),
    ],
    ids=["400-bad-data", "422-execution", "503-timeout", "500", "scalar-result", "not-json"],
)
async def test_error_answers_raise_with_a_reason(aiohttp_raw_server: Any, status: int,
                                                 body: Any, reason: str) -> None:
    with pytest.raises(QueryFailure) as caught:
        await snapshot_from(aiohttp_raw_server, {POLICY.query: (status, body)})
    assert caught.value.reason == reason


async def test_503_is_not_retried_by_the_client(aiohttp_raw_server: Any) -> None:
    calls = 0

    async def counted() -> tuple[int, Any]:
        nonlocal calls
        calls += 1
        return 503, error_body("timeout", "busy")
    with pytest.raises(QueryFailure, match="timeout"):
        await snapshot_from(aiohttp_raw_server, {Q.up: counted})
    assert calls == 1


async def test_slow_prometheus_times_out_quickly(aiohttp_raw_server: Any) -> None:
    async def slow() -> Any:
        await asyncio.sleep(1.0)
        return vector()
    with pytest.raises(QueryFailure) as caught:
        await snapshot_from(aiohttp_raw_server, {Q.up: slow}, timeout_s=0.2)
    assert caught.value.reason == "client_timeout"


async def test_unreachable_prometheus() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}", timeout_s=0.5)
    with pytest.raises(QueryFailure) as caught:
        await asyncio.to_thread(read_snapshot, client, POLICY, Q, 1000.0)
    assert caught.value.reason == "unreachable"


async def test_a_series_left_by_a_renamed_substation_is_dropped(aiohttp_raw_server: Any
                                                                ) -> None:
    """After a restart, Prometheus still shows the old id's series at the same address."""
    snap = await snapshot_from(aiohttp_raw_server, {
        POLICY.query: vector(series(95, instance=A, substation="old-name"),
                             series(40, instance=A, substation="s1"),
                             series(60, instance=B, substation="s2"))})
    assert snap.substations[A].score == 40.0      # not the old id's 95 (the pessimistic pick)
    assert any("'old-name' at 127.0.0.1:9101, where 's1' runs now" in p for p in snap.problems)


async def test_a_score_for_a_substation_not_scraped_now_is_reported(aiohttp_raw_server: Any
                                                                    ) -> None:
    policy = make_policy(result={"substation_label": "substation"})
    answers = {**grid_answers(),
               policy.query: vector(series(7, substation="s1"), series(8, substation="gone"))}
    server = await aiohttp_raw_server(make_handler(answers))
    client = make_client(str(server.make_url("/")))
    snap = await asyncio.to_thread(read_snapshot, client, policy, Q, 1000.0)
    assert snap.substations[A].score == 7.0
    assert any("'gone' is not a substation Prometheus scrapes now" in p for p in snap.problems)


async def test_a_failing_policy_query_still_gives_the_grid(aiohttp_raw_server: Any) -> None:
    with pytest.raises(PolicyQueryFailed) as caught:
        await snapshot_from(aiohttp_raw_server, {POLICY.query: (422, error_body(
            "execution", "many-to-many matching not allowed"))})
    grid = caught.value.grid
    assert caught.value.reason == "execution"
    assert {i: (v.load_kw, v.score) for i, v in grid.substations.items()} == \
        {A: (40.0, None), B: (60.0, None)}
    assert any("ranked by utilization" in p for p in grid.problems)


async def test_a_failing_grid_query_fails_the_evaluation(aiohttp_raw_server: Any) -> None:
    with pytest.raises(QueryFailure) as caught:
        await snapshot_from(aiohttp_raw_server, {Q.capacity: (503, error_body("timeout", "x"))})
    assert not isinstance(caught.value, PolicyQueryFailed)


@pytest.mark.parametrize("lands_after_query", range(9))
def test_a_scrape_landing_between_the_queries_never_makes_the_load_older_than_its_number(
        lands_after_query: int) -> None:
    # Each query is its own evaluation: a scrape (load 10 kW at reading 5 -> 20 kW at reading
    # 6) may commit between any two of them. The ledger drops the kW of every accept the
    # reading number counts, so a load older than its number would undercount 10 kW.
    labels = {"job": "substation", "substation": "s1"}

    def prometheus(query: str) -> Any:
        newer = len(client.calls) > lands_after_query
        answers = {Q.up: [series(1, instance=A, **labels)],
                   Q.scrape_time: [series(1000.0 if newer else 999.0, instance=A)],
                   Q.load: [series(20 if newer else 10, instance=A, **labels)],
                   Q.load_seq: [series(6 if newer else 5, instance=A, **labels)],
                   Q.capacity: [series(100, instance=A, **labels)],
                   POLICY.query: [series(0.2 if newer else 0.1, instance=A)]}
        return answers.get(query, [])

    client = FakeQueryClient(default=prometheus)
    view = read_snapshot(client, POLICY, Q, 1000.5).substations[A]
    assert (view.load_kw, view.load_seq) in {(10.0, 5), (20.0, 5), (20.0, 6)}


def test_the_roster_is_read_every_30_s_and_misses_nothing_listed_in_between() -> None:
    """The roster query reads 15 minutes of every substation's samples: it runs once per
    ROSTER_EVERY_S, not per refresh. A substation listed and dropped again between two reads
    (absent from the cached answer) is still one a resolve asks."""
    labels = {"job": "substation"}
    listed = {A: "s1"}

    def prometheus(query: str) -> Any:
        if query in (Q.up, Q.capacity):
            return [series(1 if query == Q.up else 100, instance=i, substation=n, **labels)
                    for i, n in listed.items()]
        if query == Q.roster:
            return [series(100, instance=A, substation="s1", **labels),
                    series(100, instance="10.0.0.9:9101", substation="old", **labels)]
        return []

    client = FakeQueryClient(default=prometheus)
    roster = RosterCache()
    first = read_snapshot(client, POLICY, Q, 1000.0, roster=roster)
    assert dict(first.recent) == {"10.0.0.9:9101": "old"}
    listed[B] = "s2"                                    # B comes...
    read_snapshot(client, POLICY, Q, 1010.0, roster=roster)
    del listed[B]                                       # ...and goes before the next read
    third = read_snapshot(client, POLICY, Q, 1020.0, roster=roster)
    assert dict(third.recent) == {"10.0.0.9:9101": "old", B: "s2"}
    assert [q for q, _ in client.calls].count(Q.roster) == 1
    read_snapshot(client, POLICY, Q, 1000.0 + ROSTER_EVERY_S, roster=roster)
    assert [q for q, _ in client.calls].count(Q.roster) == 2
    # Read again, the answer is Prometheus's own (which saw B): the remembered ones are dropped.
    assert roster.listed_since == {A: "s1"}
    # A clock that went back reads it again rather than trusting a future answer.
    read_snapshot(client, POLICY, Q, 900.0, roster=roster)
    assert [q for q, _ in client.calls].count(Q.roster) == 3
    # Without a cache (tests, benchmarks): the query runs every time.
    read_snapshot(client, POLICY, Q, 905.0)
    assert [q for q, _ in client.calls].count(Q.roster) == 4
