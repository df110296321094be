"""The refresh loop cannot die short of shutdown, and the serving state installs only newer
snapshots. Real aiohttp apps on loopback; Prometheus is a FakeQueryClient or a canned aiohttp
server read through the real client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient

from balancer.app import create_app
from balancer.config import BalancerConfig
from balancer.policy import load_policy
from balancer.prom import GridQueries, QueryClient, QueryFailure, make_client, read_snapshot
from balancer.refresh import MAX_BACKOFF_S, backoff_s
from balancer.snapshot import Snapshot
from balancer.state import REFRESH_LOOP, SERVING
from tests.conftest import FakeQueryClient, series
from tests.unit.test_balancer_app import CHARGE, accept, grid

REPO = Path(__file__).resolve().parents[2]
Q = GridQueries()
A, B = "127.0.0.1:9101", "127.0.0.1:9102"
FAST = """\
name: fast
query: substation_load{job="substation"}
result: {substation_label: instance, better: lower, select: best, pending_adjustment: kw}
refresh_interval: 100ms
"""

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    (tmp_path / "policies" / "fast.yaml").write_text(FAST)
    return tmp_path / "policies"


MakeBalancer = Callable[..., Awaitable[Client]]


@pytest.fixture
def balancer(aiohttp_client: Any, policy_dir: Path) -> MakeBalancer:
    async def make(prometheus: QueryClient, policy: str = "fast", **config: Any) -> Client:
        cfg = BalancerConfig(policy_dir=str(policy_dir), policy=policy, seed=1, **config)
        client: Client = await aiohttp_client(create_app(cfg, client=prometheus))
        return client
    return make


def fake(subs: dict[str, tuple[float, float]]) -> FakeQueryClient:
    """Prometheus answering the grid queries, and any policy query with the load."""
    answers = grid(subs)
    return FakeQueryClient(answers, default=lambda q: answers[Q.load])


async def stop_loop(app: web.Application) -> None:
    """Stop the background loop so that a test can drive refreshes (and the clock) itself."""
    task = app[REFRESH_LOOP]._task
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def app_of(client: Client) -> web.Application:
    assert client.app is not None
    return client.app


async def metric_value(client: Client, name: str, **labels: str) -> float:
    text = await (await client.get("/metrics")).text()
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                     if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def eventually(condition: Callable[[], Awaitable[bool]], what: str,
                     timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


async def policy_view(client: Client) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get("/policy")).json()
    return body


# -- backoff ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("interval", "failures", "wait"),
                         [(1.0, 0, 1.0), (1.0, 1, 1.0), (1.0, 2, 2.0), (1.0, 3, 4.0),
                          (1.0, 4, MAX_BACKOFF_S), (1.0, 10_000, MAX_BACKOFF_S),
                          (0.1, 3, 0.4), (30.0, 5, 30.0)])
def test_backoff_doubles_per_failure_up_to_a_cap(interval: float, failures: int,
                                                 wait: float) -> None:
    assert backoff_s(interval, failures) == pytest.approx(wait)


async def test_switching_from_a_slow_policy_to_a_fast_one_does_not_wait_out_the_slow_interval(
        balancer: MakeBalancer, policy_dir: Path) -> None:
    (policy_dir / "slow.yaml").write_text(FAST.replace("name: fast", "name: slow")
                                          .replace("100ms", "5m"))
    client = await balancer(fake({A: (10.0, 100.0)}), policy="slow")
    serving = app_of(client)[SERVING]
    await eventually(lambda: _scored(client, A), "the first evaluation")
    await asyncio.sleep(0.2)               # the loop is now asleep for 5 minutes
    resp = await client.post("/-/reload", json={"policy": "fast"})
    assert resp.status == 200, await resp.text()
    reloaded = serving.evaluations.attempted_at or 0.0

    async def loop_evaluated_again() -> bool:   # beyond the reload's own evaluation
        return (serving.evaluations.attempted_at or 0.0) > reloaded
    await eventually(loop_evaluated_again, "the loop to evaluate on the fast policy's interval",
                     timeout_s=2.0)


# -- failures inside one evaluation ---------------------------------------------------------------
async def test_an_unexpected_exception_is_counted_and_the_loop_keeps_evaluating(
        balancer: MakeBalancer) -> None:
    answers = grid({A: (10.0, 100.0)})
    broken = True

    def answer(query: str) -> Any:
        if broken:
            return RuntimeError("a bug nobody foresaw")
        return answers.get(query, answers[Q.load])
    client = await balancer(FakeQueryClient(default=answer))
    serving = app_of(client)[SERVING]

    async def failed_twice() -> bool:
        return serving.evaluations.consecutive_failures >= 2
    await eventually(failed_twice, "two failed evaluations")
    assert await metric_value(client, "balancer_prometheus_query_errors_total",
                              policy="fast", reason="internal") >= 2
    assert await metric_value(client,
                              "balancer_policy_evaluation_consecutive_failures") >= 2
    ready = await (await client.get("/readyz")).json()
    assert ready["refresh_loop"] == "running"
    assert ready["evaluations"]["last_error"]["reason"] == "internal"
    assert "a bug nobody foresaw" in ready["evaluations"]["last_error"]["detail"]

    broken = False
    await eventually(lambda: _scored(client, A), "an evaluation after the cause is gone")
    first = (await policy_view(client))["evaluated_at"]
    await eventually(lambda: _evaluated_after(client, first), "evaluation time to advance")
    assert serving.evaluations.consecutive_failures == 0
    assert await metric_value(client, "balancer_policy_evaluation_consecutive_failures") == 0


async def _scored(client: Client, instance: str) -> bool:
    rows = (await policy_view(client))["substations"]
    return any(r["instance"] == instance and r["score"] is not None for r in rows)


async def _evaluated_after(client: Client, at: float) -> bool:
    return bool((await policy_view(client))["evaluated_at"] > at)


def truncating_prometheus(answers: dict[str, Any], cut: threading.Event
                          ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """A Prometheus whose answers are cut off mid-body (chunked, then the connection closes)
    while `cut` is set."""
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        query = request.query.get("query", "")
        body = web.json_response({"status": "success", "data": {
            "resultType": "vector", "result": answers.get(query, answers[Q.load])}}).text or ""
        if not cut.is_set():
            return web.Response(text=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(body[: len(body) // 2].encode())
        assert request.transport is not None
        request.transport.close()
        return response
    return handler


async def test_a_truncated_prometheus_answer_is_a_counted_error_then_the_loop_recovers(
        balancer: MakeBalancer, aiohttp_raw_server: Callable[..., Awaitable[RawTestServer]]
        ) -> None:
    cut = threading.Event()
    cut.set()
    server = await aiohttp_raw_server(truncating_prometheus(grid({A: (10.0, 100.0)}), cut))
    client = await balancer(make_client(str(server.make_url("/")), timeout_s=2.0))
    serving = app_of(client)[SERVING]

    async def truncated() -> bool:
        return await metric_value(client, "balancer_prometheus_query_errors_total",
                                  policy="fast", reason="truncated") >= 2
    await eventually(truncated, "two truncated answers counted")
    assert serving.snapshot is None and serving.mode == "starting"
    error = serving.last_error
    assert error is not None and "cut off" in error.detail
    cut.clear()
    await eventually(lambda: _scored(client, A), "a snapshot once answers are whole again")
    first = (await policy_view(client))["evaluated_at"]
    await eventually(lambda: _evaluated_after(client, first), "evaluation time to advance")
    assert serving.mode == "normal"


# -- policy files ----------------------------------------------------------------------------
async def test_reloading_a_non_utf8_policy_is_422_naming_the_file_and_counted(
        balancer: MakeBalancer, policy_dir: Path) -> None:
    client = await balancer(fake({A: (10.0, 100.0)}))
    bad = policy_dir / "fast.yaml"
    bad.write_bytes(FAST.encode() + b"description: \xff\xfe\n")
    resp = await client.post("/-/reload")
    body = await resp.json()
    assert resp.status == 422 and body["error"] == "invalid_policy"
    assert body["detail"].startswith(f"{bad}: file: not UTF-8 text (byte 0xff")
    assert body["serving"] == "fast"
    assert await metric_value(client, "balancer_policy_reloads_total", result="error") == 1
    view = await policy_view(client)
    assert "not UTF-8" in view["reload_error"] and view["policy"] == "fast"


async def test_a_non_utf8_edit_leaves_the_loop_evaluating_and_a_fix_is_picked_up(
        balancer: MakeBalancer, policy_dir: Path, substation_address: str) -> None:
    answers = grid({substation_address: (10.0, 100.0)})
    client = await balancer(FakeQueryClient(answers, default=lambda q: answers[Q.load]))
    await eventually(lambda: _scored(client, substation_address), "the first snapshot")
    policy_file = policy_dir / "fast.yaml"
    policy_file.write_bytes(b"name: fast\ndescription: caf\xe9\n")

    async def refused() -> bool:
        return "not UTF-8" in ((await policy_view(client))["reload_error"] or "")
    await eventually(refused, "the loop to notice and refuse the edit")
    assert await metric_value(client, "balancer_policy_reload_failing") == 1
    first = (await policy_view(client))["evaluated_at"]
    await eventually(lambda: _evaluated_after(client, first), "evaluations to go on")
    resp = await client.post("/dispatch", json=CHARGE)
    assert resp.status == 200, await resp.text()

    policy_file.write_text(FAST.replace("description", "#") + "description: fixed\n")

    async def fixed() -> bool:
        view = await policy_view(client)
        return view["reload_error"] is None and view["description"] == "fixed"
    await eventually(fixed, "the fixed file to be loaded")
    # The alert on it (BalancerPolicyReloadFailing) resolves with the fix, not before.
    assert await metric_value(client, "balancer_policy_reload_failing") == 0


@pytest.fixture
async def substation_address(aiohttp_server: Any) -> str:
    app = web.Application()
    app.router.add_post("/charge", accept)
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"127.0.0.1:{server.port}"


# -- one odd series must not fail everyone ------------------------------------------------------
async def test_a_failing_policy_query_keeps_the_grid_and_ranks_by_utilization(
        balancer: MakeBalancer, substation_address: str) -> None:
    answers = grid({substation_address: (10.0, 100.0), A: (90.0, 100.0)})
    answers[Q.load] = [series(10.0, instance=substation_address, substation="sub-0"),
                       series(90.0, instance=A, substation="sub-1")]
    prometheus = FakeQueryClient(answers)
    client = await balancer(prometheus, policy="least-utilization")
    serving = app_of(client)[SERVING]
    prometheus.answers[Q.render(serving.policy.query)] = QueryFailure(
        "execution", "found duplicate series for the match group ...; many-to-many matching "
        "not allowed")
    assert await app_of(client)[REFRESH_LOOP].refresh_once() is False
    view = await policy_view(client)
    assert view["mode"] == "normal"
    assert {r["substation"]: r["score"] for r in view["substations"]} == \
        {"sub-0": None, "sub-1": None}
    assert any("ranked by utilization" in p for p in view["problems"])
    assert view["evaluations"]["last_error"]["reason"] == "execution"
    assert await metric_value(client, "balancer_prometheus_query_errors_total",
                              policy="least-utilization", reason="execution") >= 1
    resp = await client.post("/dispatch", json=CHARGE)
    body = await resp.json()
    assert resp.status == 200 and body["routed_to"] == substation_address   # 10 % < 90 %


# -- overlapping refreshes ------------------------------------------------------------------------
class GatedClient(FakeQueryClient):
    """Blocks the first query until `release` is set, so one evaluation outlasts another."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__(answers, default=lambda q: answers[Q.load])
        self.blocked = threading.Event()
        self.release = threading.Event()
        self._first = True

    def custom_query(self, query: str, params: dict[str, Any]) -> Any:
        if self._first:
            self._first = False
            self.blocked.set()
            self.release.wait(10)
        return super().custom_query(query, params)


async def test_an_older_snapshot_finishing_last_is_not_installed(balancer: MakeBalancer
                                                                 ) -> None:
    prometheus = GatedClient(grid({A: (10.0, 100.0)}))
    client = await balancer(fake({A: (10.0, 100.0)}), policy="least-load",
                            max_snapshot_age_s=600)
    app = app_of(client)
    await stop_loop(app)
    loop, serving = app[REFRESH_LOOP], app[SERVING]
    loop.client = prometheus
    now = [5000.0]
    serving.clock = lambda: now[0]
    slow = asyncio.create_task(loop.refresh_once())          # evaluates at t=5000
    assert await asyncio.to_thread(prometheus.blocked.wait, 5)
    now[0] = 5001.0
    prometheus.answers[Q.load] = [series(55.0, instance=A, substation="sub-0")]
    assert await loop.refresh_once() is True                 # evaluates at t=5001
    prometheus.release.set()
    assert await slow is True
    assert serving.snapshot is not None
    assert serving.snapshot.evaluated_at == 5001.0
    assert serving.snapshot.substations[A].load_kw == 55.0


async def test_a_snapshot_of_a_policy_no_longer_serving_is_not_installed(
        balancer: MakeBalancer) -> None:
    client = await balancer(fake({A: (10.0, 100.0)}), policy="least-load")
    app = app_of(client)
    serving = app[SERVING]
    old = serving.policy
    assert (await client.post("/-/reload", json={"policy": "fast"})).status == 200
    before = serving.snapshot
    stale = Snapshot(policy_name=old.name, evaluated_at=time.time() + 60, substations={})
    assert serving.install(stale, evaluated_with=old) is False
    assert serving.snapshot is before


# -- readiness ----------------------------------------------------------------------------------
async def test_readyz_is_503_if_the_refresh_loop_ever_stopped(balancer: MakeBalancer) -> None:
    client = await balancer(fake({A: (10.0, 100.0)}))
    await eventually(lambda: _scored(client, A), "the first snapshot")
    assert (await client.get("/readyz")).status == 200
    await stop_loop(app_of(client))
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["refresh_loop"] == "stopped"


# -- a policy whose query returns nothing ---------------------------------------------------------
MISSPELT = FAST.replace("name: fast", "name: misspelt").replace("substation_load{",
                                                                "substation_lod{")
MISSPELT_QUERY = 'substation_lod{job="substation"}'


async def test_a_policy_query_without_data_is_a_warning_once_a_metric_and_a_problem(
        balancer: MakeBalancer, policy_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (policy_dir / "misspelt.yaml").write_text(MISSPELT)
    answers = grid({A: (10.0, 100.0)})
    prometheus = FakeQueryClient(answers)        # knows no substation_lod: an empty vector
    caplog.set_level(logging.INFO, logger="balancer.refresh")
    client = await balancer(prometheus, policy="misspelt")

    async def evaluated(times: int) -> bool:
        return sum(q == MISSPELT_QUERY for q, _ in prometheus.calls) >= times
    await eventually(lambda: evaluated(4), "four evaluations of the misspelt query")
    warnings = [r for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "balancer.refresh"]
    assert [r.getMessage() for r in warnings] == [
        "policy misspelt: its query gives no substation that is up a score (a misspelt metric "
        "or label?); substations are ranked by utilization until it does. Query: "
        f"{MISSPELT_QUERY}"]
    assert await metric_value(client, "balancer_policy_no_data") == 1.0
    view = await policy_view(client)
    assert view["policy_no_data"] is True
    assert "policy misspelt: the query returned no data (a misspelt metric or label?); " \
        "substations are ranked by utilization until it does" in view["problems"]

    prometheus.answers[MISSPELT_QUERY] = answers[Q.load]   # the metric exists again

    async def scored_again() -> bool:
        return await metric_value(client, "balancer_policy_no_data") == 0.0
    await eventually(scored_again, "the gauge to clear")
    assert "policy misspelt: its query scores substations again" in caplog.messages
    assert not (await policy_view(client))["policy_no_data"]


@pytest.mark.parametrize(("policy_answer", "up", "no_data"), [
    ([], {A: 1, B: 1}, True),                                       # nothing at all
    ([series(5, instance="10.0.0.9:9100")], {A: 1, B: 1}, True),    # only strangers
    ([series("NaN", instance=A), series("+Inf", instance=B)], {A: 1, B: 1}, True),
    ([series(5, instance=B)], {A: 1, B: 0}, True),                  # only the one that is down
    ([series(5, instance=A)], {A: 1, B: 1}, False),                 # some data is data
    ([], {A: 0, B: 0}, False),                                      # nothing up to score
    ([], {}, False),                                                # no grid at all
])
def test_no_data_means_no_substation_that_is_up_got_a_score(
        policy_answer: list[dict[str, Any]], up: dict[str, int], no_data: bool) -> None:
    canned = grid({a: (10.0, 100.0) for a in up}, up=up)
    policy = load_policy(REPO / "policies" / "least-load.yaml")
    canned[Q.render(policy.query)] = policy_answer
    snap = read_snapshot(FakeQueryClient(canned), policy, Q, time.time())
    assert snap.policy_no_data is no_data
    assert any("(a misspelt metric or label?)" in p for p in snap.problems) is no_data


async def test_a_query_that_fails_is_not_reported_as_no_data(balancer: MakeBalancer) -> None:
    prometheus = fake({A: (10.0, 100.0)})
    client = await balancer(prometheus, policy="least-load")
    app = app_of(client)
    await stop_loop(app)
    prometheus.answers[Q.render(app[SERVING].policy.query)] = QueryFailure("execution", "boom")
    assert await app[REFRESH_LOOP].refresh_once() is False
    assert await metric_value(client, "balancer_policy_no_data") == 0.0
    assert (await policy_view(client))["policy_no_data"] is False


# -- series that follow the serving policy -------------------------------------------------------
async def test_after_a_switch_only_the_new_policys_series_are_exported(
        balancer: MakeBalancer) -> None:
    client = await balancer(fake({A: (10.0, 100.0)}), policy="least-load")
    app = app_of(client)
    await stop_loop(app)
    await app[REFRESH_LOOP].refresh_once()
    text = await (await client.get("/metrics")).text()
    assert 'balancer_policy_score{policy="least-load",substation="sub-0"} 10.0' in text
    assert 'balancer_policy_info{policy="least-load"} 1.0' in text
    # Prometheus is unreachable from now on: the new policy cannot be evaluated yet.
    app[REFRESH_LOOP].client = FakeQueryClient(
        default=lambda q: QueryFailure("unreachable", "connection refused"))
    resp = await client.post("/-/reload", json={"policy": "fast"})
    assert resp.status == 200 and (await resp.json())["evaluated"] is False
    text = await (await client.get("/metrics")).text()
    assert "least-load" not in "\n".join(
        line for line in text.splitlines() if line.startswith("balancer_policy_"))
    assert [line for line in text.splitlines() if line.startswith("balancer_policy_info{")] == \
        ['balancer_policy_info{policy="fast"} 1.0']
    # Until the new policy is evaluated, no score is shown under its name: not the old one's.
    assert 'balancer_policy_score{policy="fast"' not in text
    rows = (await policy_view(client))["substations"]
    assert [(r["instance"], r["score"], r["load_kw"]) for r in rows] == [(A, None, 10.0)]
