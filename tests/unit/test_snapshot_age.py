"""The snapshot's age is the age of its data (its newest scrape), not of the query that fetched
it: a backend can answer a fresh query with old samples (VictoriaMetrics hides the newest 30 s
unless -search.latencyOffset is set). Canned answers for the odd cases."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from balancer.app import create_app
from balancer.config import BalancerConfig
from balancer.health import OutlierDetector
from balancer.ledger import PendingLedger
from balancer.metrics import BalancerMetrics
from balancer.prom import GridQueries, read_snapshot
from balancer.serving import ServingState
from balancer.state import REFRESH_LOOP
from tests.conftest import FakeQueryClient, make_policy, make_snapshot, series, view
from tests.unit.test_balancer_app import grid

REPO = Path(__file__).resolve().parents[2]
Q = GridQueries()
A, B, C = "127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"


# -- Snapshot.data_at -----------------------------------------------------------------------------
def test_the_data_is_as_old_as_its_newest_scrape() -> None:
    snap = make_snapshot(view(A, 1, 10, scrape_ts=970.0), view(B, 1, 10, scrape_ts=990.0),
                         at=1000.0)
    assert snap.data_at == 990.0


def test_a_target_left_over_for_the_lookback_does_not_age_the_snapshot() -> None:
    # A substation removed without a staleness marker keeps its last `up` for 5 minutes.
    snap = make_snapshot(view(A, 1, 10, scrape_ts=999.0), view(B, 1, 10, scrape_ts=720.0),
                         at=1000.0)
    assert snap.data_at == 999.0


def test_a_scrape_stamped_after_the_evaluation_counts_as_the_evaluation() -> None:
    # The scraping host's clock is ahead of ours: data is never younger than the question.
    snap = make_snapshot(view(A, 1, 10, scrape_ts=1030.0), at=1000.0)
    assert snap.data_at == 1000.0


def test_without_any_scrape_time_the_evaluation_time_is_all_there_is() -> None:
    assert make_snapshot(at=1000.0).data_at == 1000.0       # an empty grid
    # timestamp(up) had no series for it: read_snapshot leaves 0.0
    assert make_snapshot(view(A, 1, 10, scrape_ts=0.0), at=1000.0).data_at == 1000.0
    assert make_snapshot(view(A, 1, 10, scrape_ts=0.0), view(B, 1, 10, scrape_ts=995.0),
                         at=1000.0).data_at == 995.0


def test_a_down_substation_still_dates_the_data() -> None:
    # `up == 0` is written at every failed scrape: its timestamp is when Prometheus last tried.
    snap = make_snapshot(view(A, None, None, up=False, scrape_ts=998.0), at=1000.0)
    assert snap.data_at == 998.0


# -- from canned Prometheus answers ---------------------------------------------------------------
def answers(stamps: list[dict[str, Any]]) -> dict[str, Any]:
    return {Q.up: [series(1, instance=i) for i in (A, B, C)],
            Q.scrape_time: stamps,
            Q.load: [series(10, instance=i, substation=f"s{n}") for n, i in enumerate((A, B, C))],
            Q.capacity: [series(100, instance=i, substation=f"s{n}")
                         for n, i in enumerate((A, B, C))]}


@pytest.mark.parametrize(("stamps", "data_at"), [
    # VictoriaMetrics without -search.latencyOffset: every scrape is 30 s behind the question
    ([series(970.0, instance=A), series(969.5, instance=B), series(970.2, instance=C)], 970.2),
    # one substation's timestamp is missing, one is NaN (dropped as not finite)
    ([series(980.0, instance=A), series("NaN", instance=C)], 980.0),
    # several series for one instance keep the oldest (min), the others still count
    ([series(990.0, instance=A), series(960.0, instance=A), series(985.0, instance=B)], 985.0),
    # no timestamp at all
    ([], 1000.0),
])
def test_the_age_comes_from_the_scrape_timestamps_prometheus_returns(
        stamps: list[dict[str, Any]], data_at: float) -> None:
    snap = read_snapshot(FakeQueryClient(answers(stamps)), make_policy(), Q, 1000.0)
    assert snap.data_at == data_at


# -- the serving state: age, degraded mode, the gauge --------------------------------------------
def serving_at(now: float, max_age_s: float = 15.0) -> ServingState:
    metrics = BalancerMetrics(CollectorRegistry())
    return ServingState(make_policy(), Path("policies/test-policy.yaml"), PendingLedger(),
                        OutlierDetector(), metrics, max_snapshot_age_s=max_age_s,
                        clock=lambda: now)


def test_scrapes_older_than_the_maximum_age_are_degraded_even_when_just_fetched() -> None:
    serving = serving_at(1000.4)
    policy = serving.policy
    snap = read_snapshot(FakeQueryClient(answers([series(970.0, instance=i) for i in (A, B, C)])),
                         policy, Q, 1000.0)
    assert serving.install(snap, evaluated_with=policy)
    assert serving.snapshot_age_s() == pytest.approx(30.4)   # not 0.4: when it was asked
    assert serving.mode == "degraded"
    assert serving.metrics.registry.get_sample_value("balancer_snapshot_age_seconds") == \
        pytest.approx(30.4)
    assert serving.metrics.registry.get_sample_value("balancer_degraded") == 1.0


def test_fresh_scrapes_are_normal() -> None:
    serving = serving_at(1000.4)
    policy = serving.policy
    snap = read_snapshot(FakeQueryClient(answers([series(999.0, instance=i) for i in (A, B, C)])),
                         policy, Q, 1000.0)
    serving.install(snap, evaluated_with=policy)
    assert serving.snapshot_age_s() == pytest.approx(1.4)
    assert serving.mode == "normal"


def test_no_snapshot_has_no_age() -> None:
    serving = serving_at(1000.0)
    assert serving.snapshot_age_s() is None and serving.mode == "starting"
    serving.update_gauges()
    assert math.isinf(serving.metrics.registry.get_sample_value(
        "balancer_snapshot_age_seconds") or 0.0)


# -- GET /policy --------------------------------------------------------------------------------
async def test_the_policy_view_gives_the_age_of_the_data(aiohttp_client: Any,
                                                         tmp_path: Path) -> None:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    scraped = time.time() - 30.0
    canned = grid({A: (10.0, 100.0)}, scraped=scraped)
    prometheus = FakeQueryClient(canned, default=lambda q: canned[Q.load])
    cfg = BalancerConfig(policy_dir=str(tmp_path / "policies"), policy="least-load",
                         max_snapshot_age_s=60.0)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_app(cfg, client=prometheus))
    assert client.app is not None
    await client.app[REFRESH_LOOP].refresh_once()
    body = await (await client.get("/policy")).json()
    assert body["data_at"] == pytest.approx(scraped)
    assert 30.0 <= body["age_s"] < 40.0
    assert body["evaluated_at"] - body["data_at"] >= 29.0
    assert (body["mode"], body["max_age_s"]) == ("normal", 60.0)
