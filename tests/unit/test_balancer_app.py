"""The balancer's HTTP behaviour against fake substations (real aiohttp servers on loopback)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_api_client.exceptions import PrometheusApiClientException

from balancer.__main__ import parse_args
from balancer.app import create_app
from balancer.config import BalancerConfig
from balancer.placement import MIN_CALL_S
from balancer.prom import GridQueries, QueryFailure
from balancer.state import HEALTH, REFRESH_LOOP, SERVING
from tests.conftest import FakeQueryClient, series

REPO = Path(__file__).resolve().parents[2]
Q = GridQueries()
CHARGE = {"session_id": "sess-1", "vehicle_id": "ev-1", "requested_kw": 11.0,
          "energy_kwh": 30.0}
Behaviour = Callable[[web.Request], Awaitable[web.Response]]


async def accept(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"session_id": body["session_id"], "state": "charging"})


async def over_capacity(request: web.Request) -> web.Response:
    return web.json_response({"error": "over_capacity", "detail": "full", "load_kw": 99.0,
                              "capacity_kw": 100.0}, status=409)


async def absent(request: web.Request) -> web.Response:
    return web.json_response({"session_id": request.match_info["id"], "state": "absent"})


class FakeSubstation:
    """A substation whose POST /charge and fence do what the test says; records what it got."""

    def __init__(self, behaviour: Behaviour = accept) -> None:
        self.behaviour = behaviour
        self.fence_behaviour: Behaviour = absent
        self.charges: list[dict[str, Any]] = []
        self.fences: list[tuple[str, int]] = []
        self.auth: list[str | None] = []
        self.request_ids: list[tuple[str, str | None]] = []   # (call, its X-Request-Id)
        self.app = web.Application()
        self.app.router.add_post("/charge", self._charge)
        self.app.router.add_post("/sessions/{id}/fence", self._fence)
        self.address = ""

    async def _charge(self, request: web.Request) -> web.Response:
        self.request_ids.append(("charge", request.headers.get("X-Request-Id")))
        self.charges.append(await request.json())
        self.auth.append(request.headers.get("Authorization"))
        return await self.behaviour(request)

    async def _fence(self, request: web.Request) -> web.Response:
        self.request_ids.append(("fence", request.headers.get("X-Request-Id")))
        self.fences.append((request.match_info["id"], (await request.json())["epoch"]))
        return await self.fence_behaviour(request)


def grid(subs: dict[str, tuple[float, float]], up: dict[str, int] | None = None,
         scraped: float | None = None) -> dict[str, Any]:
    """Canned results for the grid queries: {address: (load_kw, capacity_kw)}, scraped at
    `scraped`, by default now (the snapshot's age is its newest scrape's)."""
    up = up or {}
    scraped = time.time() if scraped is None else scraped
    return {
        Q.up: [series(up.get(a, 1), instance=a) for a in subs],
        Q.scrape_time: [series(scraped, instance=a) for a in subs],
        Q.load: [series(load, instance=a, substation=f"sub-{i}")
                 for i, (a, (load, _)) in enumerate(subs.items())],
        Q.capacity: [series(cap, instance=a, substation=f"sub-{i}")
                     for i, (a, (_, cap)) in enumerate(subs.items())],
    }


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


class Harness:
    def __init__(self, client: TestClient[web.Request, web.Application],
                 prometheus: FakeQueryClient) -> None:
        self.client = client
        self.prometheus = prometheus

    @property
    def app(self) -> web.Application:
        app = self.client.app
        assert app is not None
        return app

    async def dispatch(self, **overrides: Any) -> tuple[int, dict[str, Any]]:
        resp = await self.client.post("/dispatch", json={**CHARGE, **overrides})
        return resp.status, await resp.json()


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def balancer(aiohttp_client: Any, tmp_path: Path) -> MakeHarness:
    shutil.copytree(REPO / "policies", tmp_path / "policies")

    async def make(subs: dict[str, tuple[float, float]], *, policy: str = "least-load",
                   token: str | None = None, **config: Any) -> Harness:
        answers = grid(subs)
        prometheus = FakeQueryClient(answers, default=lambda q: answers[Q.load])
        cfg = BalancerConfig(policy_dir=str(tmp_path / "policies"), policy=policy,
                             internal_token=token, seed=3,
                             **{"forward_timeout_s": 0.5, **config})
        client = await aiohttp_client(create_app(cfg, client=prometheus))
        harness = Harness(client, prometheus)
        await harness.app[REFRESH_LOOP].refresh_once()
        return harness
    return make


MakeSubstation = Callable[..., Awaitable[FakeSubstation]]


@pytest.fixture
def substation(aiohttp_server: Any) -> MakeSubstation:
    async def make(behaviour: Behaviour = accept) -> FakeSubstation:
        sub = FakeSubstation(behaviour)
        server: TestServer = await aiohttp_server(sub.app, host="127.0.0.1")
        sub.address = f"127.0.0.1:{server.port}"
        return sub
    return make


async def test_dispatch_routes_to_the_least_loaded_and_forwards_the_charge(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    low, high = await substation(), await substation()
    h = await balancer({low.address: (10.0, 100.0), high.address: (50.0, 100.0)})
    status, body = await h.dispatch()
    assert status == 200
    assert (body["routed_to"], body["substation"], body["policy"], body["attempts"]) == \
        (low.address, "sub-0", "least-load", 1)
    assert low.charges == [{**CHARGE, "epoch": 1}] and high.charges == []


async def test_refusing_substation_makes_the_balancer_pick_the_next(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    full, spare = await substation(over_capacity), await substation()
    h = await balancer({full.address: (0.0, 100.0), spare.address: (50.0, 100.0)})
    status, body = await h.dispatch()
    assert status == 200 and body["routed_to"] == spare.address and body["attempts"] == 2
    # The refusal's reported load keeps the next request away from it until the next scrape.
    status, body = await h.dispatch(session_id="sess-2")
    assert body["routed_to"] == spare.address and len(full.charges) == 1


async def test_unreachable_substation_is_skipped_and_counted_against_it(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    spare = await substation()
    dead = free_address()
    h = await balancer({dead: (0.0, 100.0), spare.address: (50.0, 100.0)})
    status, body = await h.dispatch()
    assert status == 200 and body["routed_to"] == spare.address
    assert h.app[HEALTH]._records[dead].failures == 1


async def test_ambiguous_timeout_is_fenced_on_the_same_substation_before_moving(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})
    slow, spare = await substation(hang), await substation()
    h = await balancer({slow.address: (0.0, 100.0), spare.address: (50.0, 100.0)})
    status, body = await h.dispatch(epoch=4)
    # Fenced above this epoch there (a late copy cannot start it), only then placed elsewhere.
    assert [c["session_id"] for c in slow.charges] == ["sess-1"]
    assert slow.fences == [("sess-1", 5)]
    assert status == 200 and body["routed_to"] == spare.address


async def test_a_fence_that_finds_the_session_makes_it_placed_there(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    async def found(request: web.Request) -> web.Response:
        return web.json_response({"session_id": "sess-1", "state": "charging",
                                  "load_kw": 11.0, "load_seq": 5})
    slow, spare = await substation(hang), await substation()
    slow.fence_behaviour = found
    h = await balancer({slow.address: (0.0, 100.0), spare.address: (50.0, 100.0)})
    status, body = await h.dispatch()
    assert status == 200 and body["routed_to"] == slow.address and body["status"] == "charging"
    assert spare.charges == []


async def test_a_repeat_of_an_ended_session_is_reported_as_ended_not_charging(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    async def stopped(request: web.Request) -> web.Response:
        return web.json_response({"session_id": "sess-1", "state": "stopped"},
                                 headers={"X-Duplicate": "true"})
    sub = await substation(stopped)
    h = await balancer({sub.address: (0.0, 100.0)})
    status, body = await h.dispatch()
    assert status == 200 and body["status"] == "stopped"


async def test_no_substation_with_room_gives_503_no_capacity_with_retry_after(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    sub = await substation()
    h = await balancer({sub.address: (95.0, 100.0)})
    resp = await h.client.post("/dispatch", json=CHARGE)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    body = await resp.json()
    assert body["error"] == "no_capacity" and "11 kW" in body["detail"]
    assert sub.charges == []


async def test_a_burst_spreads_over_equal_substations_between_scrapes(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    a, b = await substation(), await substation()
    h = await balancer({a.address: (0.0, 500.0), b.address: (0.0, 500.0)})
    results = await asyncio.gather(*(h.dispatch(session_id=f"s{i}") for i in range(50)))
    assert all(status == 200 for status, _ in results)
    assert (len(a.charges), len(b.charges)) == (25, 25)


@pytest.mark.parametrize(("payload", "status", "error", "detail"), [
    ({**CHARGE, "requested_kw": -1}, 422, "invalid_request", "requested_kw: must be above 0"),
    ({**CHARGE, "session_id": ""}, 422, "invalid_request", "session_id: must not be empty"),
    ({**CHARGE, "energy_kwh": True}, 422, "invalid_request", "energy_kwh"),
    ({**CHARGE, "resolve": "yes"}, 422, "invalid_request", "resolve: must be true or false"),
    ({**CHARGE, "timeout_s": 0}, 422, "invalid_request", "timeout_s: must be a number"),
    ({**CHARGE, "epoch": 1.5}, 422, "invalid_request", "epoch: must be an integer"),
    ([1, 2], 400, "invalid_body", "must be a JSON object"),
])
async def test_bad_dispatch_bodies_get_json_4xx(balancer: MakeHarness, payload: Any,
                                                status: int, error: str, detail: str) -> None:
    h = await balancer({})
    resp = await h.client.post("/dispatch", json=payload)
    body = await resp.json()
    assert resp.status == status and body["error"] == error and detail in body["detail"]


def test_the_minimum_power_is_configurable_like_the_ingress_and_substations(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRID_INTERNAL_TOKEN", "t0k")
    assert parse_args([]).limits.min_kw == 1.4
    assert parse_args(["--min-kw", "1"]).limits.min_kw == 1.0
    with pytest.raises(SystemExit):
        parse_args(["--min-kw", "0"])
    assert "--min-kw must be above 0" in capsys.readouterr().err


async def test_malformed_json_and_wrong_content_type(balancer: MakeHarness) -> None:
    h = await balancer({})
    resp = await h.client.post("/dispatch", data=b"{nope",
                               headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"] == "malformed_json"
    resp = await h.client.post("/dispatch", data=b"x=1",
                               headers={"Content-Type": "text/plain"})
    assert resp.status == 415 and (await resp.json())["error"] == "unsupported_media_type"


async def test_unknown_route_is_a_json_404(balancer: MakeHarness) -> None:
    h = await balancer({})
    resp = await h.client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"


async def test_internal_token_is_required_and_forwarded(balancer: MakeHarness,
                                                       substation: MakeSubstation) -> None:
    sub = await substation()
    h = await balancer({sub.address: (0.0, 100.0)}, token="s3cret")
    resp = await h.client.post("/dispatch", json=CHARGE)
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
    resp = await h.client.post("/dispatch", json=CHARGE,
                               headers={"Authorization": "Bearer s3cret"})
    assert resp.status == 200 and sub.auth == ["Bearer s3cret"]
    assert (await h.client.get("/metrics")).status == 200


async def test_policy_view_shows_query_scores_ledger_and_graph_link(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    sub = await substation()
    h = await balancer({sub.address: (20.0, 100.0)})
    await h.dispatch()
    body = await (await h.client.get("/policy")).json()
    assert body["policy"] == "least-load" and body["mode"] == "normal"
    # As evaluated: $grid filled in ("" without --grid: the series without a grid label).
    assert body["query"] == 'substation_load{job="substation", grid=""}'
    row = body["substations"][0]
    assert (row["score"], row["load_kw"], row["pending_kw"], row["effective_load_kw"]) == \
        (20.0, 20.0, 11.0, 31.0)
    assert body["prometheus_graph_url"].startswith(
        "http://127.0.0.1:9090/graph?g0.expr=substation_load%7Bjob%3D%22substation%22%2C+grid"
        "%3D%22%22%7D")


async def test_broken_policy_edit_is_refused_and_the_old_policy_keeps_serving(
        balancer: MakeHarness, substation: MakeSubstation, tmp_path: Path) -> None:
    sub = await substation()
    h = await balancer({sub.address: (0.0, 100.0)})
    (tmp_path / "policies" / "least-load.yaml").write_text(
        "name: least-load\nquery: sum(substation_load\n")
    resp = await h.client.post("/-/reload")
    body = await resp.json()
    assert resp.status == 422 and body["error"] == "invalid_policy"
    assert "query: PromQL does not parse: unclosed left parenthesis" in body["detail"]
    assert body["serving"] == "least-load"
    status, _ = await h.dispatch()
    assert status == 200
    policy = await (await h.client.get("/policy")).json()
    assert "unclosed left parenthesis" in policy["reload_error"]


async def test_policy_prometheus_rejects_is_refused(balancer: MakeHarness, tmp_path: Path
                                                    ) -> None:
    h = await balancer({})
    (tmp_path / "policies" / "mine.yaml").write_text(
        "name: mine\nquery: up / on(job) group_left up\n")
    h.prometheus.answers["up / on(job) group_left up"] = QueryFailure(
        "execution", "many-to-many matching not allowed")
    resp = await h.client.post("/-/reload", json={"policy": "mine"})
    body = await resp.json()
    assert resp.status == 422 and "Prometheus rejected it" in body["detail"]
    assert (await (await h.client.get("/policy")).json())["policy"] == "least-load"


async def test_switching_policy_by_reload(balancer: MakeHarness) -> None:
    h = await balancer({})
    resp = await h.client.post("/-/reload", json={"policy": "least-utilization"})
    assert resp.status == 200 and (await resp.json())["policy"] == "least-utilization"


async def test_prometheus_down_keeps_the_last_snapshot_then_degrades(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    sub = await substation()
    h = await balancer({sub.address: (0.0, 100.0)}, max_snapshot_age_s=0.2)
    h.prometheus.answers[Q.up] = QueryFailure("unreachable", "connection refused")
    await h.app[REFRESH_LOOP].refresh_once()
    ready = await (await h.client.get("/readyz")).json()
    assert ready["mode"] == "normal"
    serving = h.app[SERVING]
    evaluated = serving.snapshot.evaluated_at if serving.snapshot else 0.0
    serving.clock = lambda: evaluated + 0.3      # the snapshot is now past its maximum age
    ready = await (await h.client.get("/readyz")).json()
    assert ready["mode"] == "degraded"
    status, _ = await h.dispatch()
    assert status == 200
    metrics = await (await h.client.get("/metrics")).text()
    assert "balancer_degraded 1.0" in metrics
    assert 'balancer_prometheus_query_errors_total{policy="least-load",reason="unreachable"}' \
        in metrics
    # Prometheus is back, with a scrape taken at the (test's) now.
    h.prometheus.answers.update(grid({sub.address: (11.0, 100.0)}, scraped=evaluated + 0.3))
    await h.app[REFRESH_LOOP].refresh_once()
    assert (await (await h.client.get("/readyz")).json())["mode"] == "normal"


async def test_not_ready_before_the_first_snapshot(aiohttp_client: Any) -> None:
    prometheus = FakeQueryClient({Q.up: QueryFailure("unreachable", "down")})
    app = create_app(BalancerConfig(policy_dir=str(REPO / "policies"), policy="least-load"),
                     client=prometheus)
    client = await aiohttp_client(app)
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["mode"] == "starting"
    resp = await client.post("/dispatch", json=CHARGE)
    assert resp.status == 503 and (await resp.json())["error"] == "no_snapshot"


async def test_unknown_outcome_keeps_the_session_off_other_substations_until_resolved(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    hanging = True

    async def hang_while_told(request: web.Request) -> web.Response:
        if hanging:
            await asyncio.sleep(2)
        return await accept(request)

    async def fence_while_told(request: web.Request) -> web.Response:
        if hanging:
            await asyncio.sleep(2)
        return web.json_response({"session_id": "sess-1", "state": "charging"})
    flaky, spare = await substation(hang_while_told), await substation()
    flaky.fence_behaviour = fence_while_told     # the fence gets no answer either
    h = await balancer({flaky.address: (0.0, 100.0), spare.address: (50.0, 100.0)})
    status, body = await h.dispatch()
    assert status == 503 and body["error"] == "outcome_unknown"
    assert body["may_be_at"] == ["sub-0"] and body["session_may_exist"] is True
    # The retry (a new epoch, resolving) must not book the spare while flaky may hold it.
    status, body = await h.dispatch(epoch=2, resolve=True)
    assert status == 503 and body["error"] == "outcome_unknown"
    assert spare.charges == [] and ("sess-1", 2) in spare.fences
    hanging = False
    status, body = await h.dispatch(epoch=3, resolve=True)
    assert status == 200 and body["routed_to"] == flaky.address
    assert spare.charges == []


async def test_a_retry_that_finds_the_session_nowhere_places_it(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    a, b = await substation(), await substation()
    h = await balancer({a.address: (0.0, 100.0), b.address: (50.0, 100.0)})
    status, body = await h.dispatch(epoch=2, resolve=True)
    assert status == 200 and body["routed_to"] == a.address
    assert sorted(a.fences + b.fences) == [("sess-1", 2), ("sess-1", 2)]


async def test_a_second_dispatch_of_a_running_session_waits_then_resolves(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    placed: dict[str, Any] = {}

    async def slow_accept(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        placed["done"] = True
        return await accept(request)

    async def fence_after(request: web.Request) -> web.Response:
        state = "charging" if placed else "absent"
        return web.json_response({"session_id": "sess-1", "state": state})
    sub = await substation(slow_accept)
    sub.fence_behaviour = fence_after
    h = await balancer({sub.address: (0.0, 100.0)}, forward_timeout_s=2.0)
    first, second = await asyncio.gather(h.dispatch(), h.dispatch(epoch=2, resolve=True))
    assert first[0] == 200 and second[0] == 200
    assert len(sub.charges) == 1        # the second never ran beside the first


async def test_a_second_dispatch_past_its_deadline_is_refused_in_progress(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    async def slow_accept(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return await accept(request)
    sub = await substation(slow_accept)
    h = await balancer({sub.address: (0.0, 100.0)}, forward_timeout_s=2.0)
    first, second = await asyncio.gather(h.dispatch(),
                                         h.dispatch(epoch=2, resolve=True, timeout_s=0.3))
    assert first[0] == 200
    assert second[0] == 409 and second[1]["error"] == "dispatch_in_progress"


async def test_the_deadline_bounds_the_whole_dispatch(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})
    slow = await substation(hang)
    slow.fence_behaviour = hang
    h = await balancer({slow.address: (0.0, 100.0)}, forward_timeout_s=3.0)
    started = asyncio.get_running_loop().time()
    status, body = await h.dispatch(timeout_s=0.6)
    assert asyncio.get_running_loop().time() - started < 1.5
    assert status == 503 and body["error"] == "outcome_unknown"


async def test_at_most_max_attempts_substations_are_tried(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    full = [await substation(over_capacity) for _ in range(4)]
    h = await balancer({s.address: (0.0, 100.0) for s in full}, max_attempts=3)
    status, body = await h.dispatch()
    assert status == 503 and body["error"] == "no_capacity" and "tried 3" in body["detail"]
    assert sum(len(s.charges) for s in full) == 3


async def test_an_empty_grid_is_not_ready_and_says_why(balancer: MakeHarness) -> None:
    h = await balancer({})
    resp = await h.client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["usable_substations"] == 0
    status, body = await h.dispatch()
    assert status == 503 and body["error"] == "no_substations"


async def test_a_substation_that_went_down_keeps_its_name(balancer: MakeHarness,
                                                          substation: MakeSubstation) -> None:
    sub = await substation()
    h = await balancer({sub.address: (10.0, 100.0)})
    # Down: Prometheus has only `up == 0` left; load and capacity series are gone.
    h.prometheus.answers.update({Q.up: [series(0, instance=sub.address)], Q.load: [],
                                 Q.capacity: []})
    await h.app[REFRESH_LOOP].refresh_once()
    row = (await (await h.client.get("/policy")).json())["substations"][0]
    assert (row["substation"], row["up"]) == ("sub-0", False)


async def test_an_ejected_substation_is_not_tried(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    async def too_many_requests(request: web.Request) -> web.Response:
        return web.json_response({"error": "too_many_requests"}, status=429)
    flaky, spare = await substation(too_many_requests), await substation()
    h = await balancer({flaky.address: (0.0, 100.0), spare.address: (50.0, 100.0)})
    for i in range(2):               # two consecutive failures eject it (docs/failure-modes.md)
        status, body = await h.dispatch(session_id=f"s{i}")
        assert status == 200 and body["routed_to"] == spare.address and body["attempts"] == 2
    assert (await (await h.client.get("/policy")).json())["ejected"] == [flaky.address]
    status, body = await h.dispatch(session_id="s2")
    # Still the least loaded in the snapshot, but ejected: not tried at all.
    assert status == 200 and body["routed_to"] == spare.address and body["attempts"] == 1
    assert len(flaky.charges) == 2


async def test_an_unknown_outcome_tells_the_client_when_to_retry(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})
    slow = await substation(hang)
    slow.fence_behaviour = hang
    h = await balancer({slow.address: (0.0, 100.0)}, forward_timeout_s=0.2)
    resp = await h.client.post("/dispatch", json=CHARGE)
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "outcome_unknown"
    assert resp.headers["Retry-After"] == "2"
    assert body["session_may_exist"] is True


async def test_a_5xx_after_sending_is_ambiguous_and_fenced_not_a_refusal(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    async def admitted_then_failed(request: web.Request) -> web.Response:
        return web.json_response({"error": "internal_error", "detail": "boom"}, status=500)

    async def found(request: web.Request) -> web.Response:
        return web.json_response({"session_id": "sess-1", "state": "charging"})
    broken, spare = await substation(admitted_then_failed), await substation()
    broken.fence_behaviour = found
    h = await balancer({broken.address: (0.0, 100.0), spare.address: (50.0, 100.0)})
    status, body = await h.dispatch(epoch=2)
    # The 500 may have come after the admission: the fence (epoch + 1) finds it there.
    assert broken.fences == [("sess-1", 3)]
    assert status == 200 and body["routed_to"] == broken.address and spare.charges == []


def test_the_default_is_at_most_three_attempts() -> None:
    from balancer.__main__ import parse_args
    assert BalancerConfig().max_attempts == 3
    assert parse_args(["--insecure-no-auth"]).max_attempts == 3


async def test_the_policy_view_lists_what_was_odd_in_the_last_answer(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    a, b = await substation(), await substation()
    h = await balancer({a.address: (10.0, 100.0), b.address: (20.0, 100.0)})
    h.prometheus.answers[Q.load] = [series("NaN", instance=a.address, substation="sub-0"),
                                    series(20.0, instance=b.address, substation="sub-1"),
                                    series(25.0, instance=b.address, substation="sub-1"),
                                    series(5.0, substation="stray")]
    await h.app[REFRESH_LOOP].refresh_once()
    body = await (await h.client.get("/policy")).json()
    problems = "\n".join(body["problems"])
    assert f"load: {a.address} is nan; not eligible" in problems
    assert f"load: several series for {b.address}; kept the most pessimistic" in problems
    assert "load: a series has no 'instance' label" in problems
    assert body["last_error"] is None


@pytest.mark.parametrize(("failure", "reason"), [
    (PrometheusApiClientException("HTTP Status Code 400 (b'bad_data: parse error')"),
     "bad_data"),
    (PrometheusApiClientException("HTTP Status Code 422 (b'execution: many-to-many')"),
     "execution"),
    (PrometheusApiClientException("HTTP Status Code 503 (b'timeout')"), "timeout"),
    (PrometheusApiClientException("HTTP Status Code 502 (b'')"), "http_502"),
    (requests.Timeout("read timed out"), "client_timeout"),
    (requests.ConnectionError("connection refused"), "unreachable"),
    (ValueError("Expecting value: line 1 column 1"), "bad_response"),
], ids=["bad_data", "execution", "timeout", "http_502", "client_timeout", "unreachable",
        "bad_response"])
async def test_each_failed_evaluation_is_counted_by_its_reason_and_shown(
        balancer: MakeHarness, failure: Exception, reason: str) -> None:
    h = await balancer({})
    h.prometheus.answers[Q.up] = failure
    assert await h.app[REFRESH_LOOP].refresh_once() is False
    metrics = await (await h.client.get("/metrics")).text()
    assert f'balancer_prometheus_query_errors_total{{policy="least-load",reason="{reason}"}} 1.0' \
        in metrics
    body = await (await h.client.get("/policy")).json()
    assert body["last_error"]["reason"] == reason


async def test_a_copy_fenced_by_a_newer_dispatch_is_superseded(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    async def fenced(request: web.Request) -> web.Response:
        return web.json_response({"error": "session_fenced", "detail": "newer epoch"},
                                 status=409)
    sub, spare = await substation(fenced), await substation()
    h = await balancer({sub.address: (0.0, 100.0), spare.address: (50.0, 100.0)})
    status, body = await h.dispatch()
    # A newer dispatch owns the session: this one must not place it anywhere else.
    assert status == 409 and body["error"] == "superseded"
    assert body["session_may_exist"] is True and spare.charges == []


async def test_a_dispatch_without_time_for_a_forward_is_deadline_exceeded(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    sub = await substation()
    h = await balancer({sub.address: (0.0, 100.0)})
    resp = await h.client.post("/dispatch", json={**CHARGE, "timeout_s": MIN_CALL_S / 2})
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "deadline_exceeded"
    assert resp.headers["Retry-After"] == "1"
    assert body["session_may_exist"] is False and sub.charges == []


# --- Issue 16: evidence for the ingress, the roster, POST /resolve, exceeds_capacity ---------

async def charging_fence(request: web.Request) -> web.Response:
    return web.json_response({"session_id": request.match_info["id"], "state": "charging",
                              "substation": "gone-sub", "vehicle_id": "ev-1"})


async def test_a_request_above_every_capacity_is_a_definite_422_naming_the_largest(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    """Case 7: no retry can help, so no Retry-After (a client obeying it retried forever)."""
    small, big = await substation(), await substation()
    h = await balancer({small.address: (0.0, 100.0), big.address: (0.0, 300.0)})
    resp = await h.client.post("/dispatch", json={**CHARGE, "requested_kw": 500.0})
    body = await resp.json()
    assert resp.status == 422 and body["error"] == "exceeds_capacity", body
    assert body["largest_capacity_kw"] == 300.0 and "300 kW" in body["detail"]
    assert "Retry-After" not in resp.headers and body["session_may_exist"] is False
    assert small.charges == big.charges == []
    # Within the largest capacity but above what is free now: still no_capacity, retried.
    resp = await h.client.post("/dispatch", json={**CHARGE, "requested_kw": 250.0})
    assert resp.status in (200, 503)


async def test_a_resolve_with_no_substation_to_ask_answers_unknown_not_a_refusal(
        balancer: MakeHarness) -> None:
    """Case 2: a resolve that checked nothing has no evidence the session is absent."""
    h = await balancer({})
    status, body = await h.dispatch(epoch=2, resolve=True)
    assert (status, body["error"]) == (503, "outcome_unknown"), body
    assert body["session_may_exist"] is True and body["resolved"] is False
    assert "no substation is listed" in body["detail"]


async def test_a_resolve_asks_substations_seen_recently_but_listed_no_more(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    """A target dropped from discovery may still charge the session: the roster names it."""
    listed, dropped = await substation(), await substation()
    dropped.fence_behaviour = charging_fence
    h = await balancer({listed.address: (0.0, 100.0)})
    h.prometheus.answers[Q.roster] = [series(100.0, instance=dropped.address,
                                             substation="gone-sub"),
                                      series(100.0, instance=listed.address, substation="sub-0")]
    h.app[REFRESH_LOOP].roster.expire()     # read every 30 s: the harness read it at start
    await h.app[REFRESH_LOOP].refresh_once()
    assert dict(h.app[SERVING].snapshot.recent) == {dropped.address: "gone-sub"}  # type: ignore[union-attr]
    status, body = await h.dispatch(epoch=2, resolve=True)
    assert (status, body["status"], body["routed_to"]) == (200, "charging", dropped.address)
    assert dropped.fences == [("sess-1", 2)] and listed.charges == []


async def test_a_resolve_that_fenced_everyone_says_so(balancer: MakeHarness,
                                                       substation: MakeSubstation) -> None:
    a, b = await substation(over_capacity), await substation(over_capacity)
    h = await balancer({a.address: (0.0, 100.0), b.address: (0.0, 100.0)})
    status, body = await h.dispatch(epoch=2, resolve=True)
    assert (status, body["error"]) == (503, "no_capacity")
    assert body["session_may_exist"] is False and body["resolved"] is True
    assert sorted(a.fences + b.fences) == [("sess-1", 2), ("sess-1", 2)]
    status, body = await h.dispatch(session_id="fresh", epoch=1)
    assert body["resolved"] is False                     # a fresh dispatch resolved nothing


async def resolve(h: Harness, **body: Any) -> tuple[int, dict[str, Any]]:
    resp = await h.client.post("/resolve", json={"session_id": "sess-1", "epoch": 5, **body})
    return resp.status, await resp.json()


async def test_post_resolve_fences_everywhere_and_places_nothing(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    a, b = await substation(), await substation()
    h = await balancer({a.address: (0.0, 100.0), b.address: (0.0, 100.0)})
    status, body = await resolve(h)
    assert (status, body["error"], body["resolved"], body["session_may_exist"]) == \
        (404, "unknown_session", True, False), body
    assert a.fences == b.fences == [("sess-1", 5)] and a.charges == b.charges == []
    b.fence_behaviour = charging_fence
    status, body = await resolve(h, epoch=6)
    assert (status, body["status"], body["routed_to"]) == (200, "charging", b.address)
    assert body["session"]["vehicle_id"] == "ev-1"


async def test_post_resolve_with_one_substation_unreachable_is_unknown(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    alive, dead = await substation(), free_address()
    h = await balancer({alive.address: (0.0, 100.0), dead: (0.0, 100.0)})
    status, body = await resolve(h)
    assert (status, body["error"], body["session_may_exist"]) == (503, "outcome_unknown", True)
    assert body["may_be_at"] == ["sub-1"]


@pytest.mark.parametrize("body", [{"session_id": "", "epoch": 1}, {"session_id": "s"},
                                  {"session_id": "s", "epoch": True},
                                  {"session_id": "s", "epoch": 1, "extra": 1},
                                  {"session_id": "s", "epoch": 1, "timeout_s": -1}])
async def test_post_resolve_refuses_a_bad_body(balancer: MakeHarness, body: dict[str, Any]
                                               ) -> None:
    h = await balancer({})
    resp = await h.client.post("/resolve", json=body)
    answer = await resp.json()
    assert resp.status == 422 and answer["error"] == "invalid_request", answer


async def test_the_request_id_goes_with_every_charge_and_fence_and_comes_back(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    sub = await substation()
    h = await balancer({sub.address: (0.0, 100.0)}, token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    resp = await h.client.post("/dispatch", json=CHARGE, headers={**auth, "X-Request-Id": "d-1"})
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "d-1"
    # A retry that must first find out where the session is fences before it places.
    resp = await h.client.post("/dispatch", json={**CHARGE, "session_id": "s-2", "epoch": 2,
                                                  "resolve": True},
                               headers={**auth, "X-Request-Id": "d-2"})
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "d-2"
    assert sub.request_ids == [("charge", "d-1"), ("fence", "d-2"), ("charge", "d-2")]
    resp = await h.client.post("/dispatch", json=CHARGE)
    made = resp.headers["X-Request-Id"]
    assert resp.status == 401 and len(made) == 32
    resp = await h.client.post("/dispatch", json={}, headers={**auth, "X-Request-Id": "d-3"})
    assert resp.status == 422 and resp.headers["X-Request-Id"] == "d-3"
    resp = await h.client.get("/policy", headers={"X-Request-Id": "d-4"})
    assert resp.headers["X-Request-Id"] == "d-4"


async def test_a_flexible_charge_fits_by_its_floor_and_the_ledger_counts_the_floor(
        balancer: MakeHarness, substation: MakeSubstation) -> None:
    """Adaptive power: 11 kW does not fit beside 95 of 100 kW, its 3.7 kW floor does; the
    substation is sent the floor and the departure, and what is pending there is the floor."""
    sub = await substation()
    h = await balancer({sub.address: (95.0, 100.0)})
    status, body = await h.dispatch(min_kw=3.7, departure_at=1796677384.5)
    assert status == 200, body
    assert sub.charges == [{**CHARGE, "epoch": 1, "min_kw": 3.7, "departure_at": 1796677384.5}]
    row = (await (await h.client.get("/policy")).json())["substations"][0]
    assert (row["load_kw"], row["pending_kw"]) == (95.0, 3.7)
    # a second floor no longer fits beside 95 + 3.7: refused naming the floor
    status, body = await h.dispatch(session_id="sess-2", min_kw=3.7)
    assert status == 503 and body["error"] == "no_capacity" and "3.7 kW" in body["detail"]
