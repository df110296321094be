"""The balance-quality simulation (bench/quality.py) itself: its forecast is the substations',
its forecast strategy is safe while declarations hold, and replicas do not share a ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer.ledger import PendingLedger
from bench.quality import (
    FORECAST,
    HORIZONS_S,
    Grid,
    Plan,
    Simulation,
    grid_of,
    run_quality,
    target,
)
from bench.workloads import WORKLOADS, Arrival


def arrival(at: float, kw: float, declared_s: float, actual_s: float | None = None) -> Arrival:
    return Arrival(at, kw, declared_s, declared_s if actual_s is None else actual_s)


def busy_grid() -> Grid:
    grid = Grid({"a": 300.0, "b": 100.0})
    for i, (kw, declared, actual) in enumerate([(50, 3, 3), (22, 12, 12), (11, 40, 40),
                                                (7.4, 40, 40), (150, 500, 500),
                                                (22, 8, 30)]):   # the last one runs long
        assert grid.admit("a", arrival(float(i) / 10, kw, declared, actual))
    assert grid.admit("b", arrival(0.0, 50.0, 1000.0))
    return grid


def test_forecast_is_the_load_at_horizon_zero_and_never_rises() -> None:
    grid = busy_grid()
    grid.advance(1.0)
    points = grid.forecast("a", 1.0, (0.0, *HORIZONS_S))
    assert points[0] == (0.0, grid.load["a"])
    values = [kw for _, kw in points]
    assert values == sorted(values, reverse=True)
    assert [h for h, _ in grid.forecast("a", 1.0)] == list(HORIZONS_S)


def test_forecast_subtracts_sessions_by_their_declared_end() -> None:
    grid = busy_grid()
    grid.advance(10.0)   # the 50 kW one (ends 3.0) is gone; the long runner (declared 8.5) is not
    assert grid.load["a"] == pytest.approx(22 + 11 + 7.4 + 150 + 22)
    forecast = dict(grid.forecast("a", 10.0))
    # Overdue by its declaration, the long runner (22 kW) is not forecast to end at all.
    assert forecast[1.0] == pytest.approx(22 + 11 + 7.4 + 150 + 22)
    assert forecast[2.0] == pytest.approx(22 + 11 + 7.4 + 150 + 22)   # the 22 kW one: at 12.1
    assert forecast[5.0] == pytest.approx(11 + 7.4 + 150 + 22)
    assert forecast[30.0] == pytest.approx(11 + 7.4 + 150 + 22)       # these two: at 40.2, 40.3
    assert forecast[45.0] == pytest.approx(150 + 22)
    assert forecast[120.0] == pytest.approx(150 + 22)
    assert dict(grid.forecast("b", 10.0))[120.0] == 50.0
    grid.advance(2000.0)
    assert grid.load == {"a": 0.0, "b": 0.0}
    assert set(dict(grid.forecast("a", 2000.0)).values()) == {0.0}


def test_snapshot_carries_the_forecast_only_when_asked() -> None:
    grid = busy_grid()
    with_forecast = grid.snapshot(1.0, lambda n: 0.0, with_forecast=True)
    assert with_forecast.substations["a"].forecast == grid.forecast("a", 1.0)
    assert grid.snapshot(1.0, lambda n: 0.0).substations["a"].forecast == ()


def small_trace(workload: str = "short") -> tuple[dict[str, float], list[Arrival]]:
    capacity = grid_of(10, 3)
    return capacity, WORKLOADS[workload](sum(capacity.values()), 400.0, 13)


@pytest.mark.parametrize("interval", [5.0, 15.0, 60.0])
def test_forecast_strategy_makes_no_overload_attempt_while_declarations_hold(
        interval: float) -> None:
    capacity, trace = small_trace()
    outcome = Simulation(capacity, interval, 7).run(FORECAST, trace)
    assert outcome.requests == len(trace)
    assert outcome.overload_attempts == 0
    assert Simulation(capacity, interval, 7).run("oracle", trace).overload_attempts == 0


class RecordingLedger(PendingLedger):
    def __init__(self, clock_skew_s: float) -> None:
        super().__init__(clock_skew_s)
        self.reserved: list[str] = []

    def reserve(self, instance: str, session_id: str, kw: float) -> None:
        if session_id not in self.reserved:
            self.reserved.append(session_id)
        super().reserve(instance, session_id, kw)


def test_replicas_keep_their_own_ledgers_and_take_turns() -> None:
    capacity = {f"s{i}": 100.0 for i in range(10)}
    # A burst between two scrapes: 50 x 22 kW where 40 fit (4 per substation), nothing ends.
    trace = [arrival(10.0 + i / 1000, 22.0, 600.0) for i in range(50)]
    alone = Simulation(capacity, 60.0, 7).run("least-utilization", trace)
    assert (alone.overload_attempts, alone.refused_requests) == (0, 10)
    two = Simulation(capacity, 60.0, 7, replicas=2)
    for replica in two.replicas:
        replica.ledger = RecordingLedger(clock_skew_s=0.0)
    outcome = two.run("least-utilization", trace)
    assert two.replicas[0].ledger is not two.replicas[1].ledger
    # Round robin: replica 0 places the even requests, replica 1 the odd ones.
    reserved = [r.ledger.reserved for r in two.replicas]   # type: ignore[attr-defined]
    assert {int(s[1:]) % 2 for s in reserved[0]} == {0}
    assert {int(s[1:]) % 2 for s in reserved[1]} == {1}
    assert len(reserved[0]) >= 20 and len(reserved[1]) >= 20
    # Each one fills what it believes is free, learning of the other only from the answers to
    # its own forwards: the substations refuse some.
    assert outcome.overload_attempts > 0


def test_stop_early_keeps_the_requests_and_changes_only_how_long_they_last() -> None:
    right = WORKLOADS["short"](1000.0, 300.0, 5)
    wrong = WORKLOADS["stop-early"](1000.0, 300.0, 5)
    assert [(a.at, a.kw, a.declared_s) for a in right] == \
        [(a.at, a.kw, a.declared_s) for a in wrong]
    assert all(0.5 * a.declared_s <= a.actual_s <= 1.5 * a.declared_s for a in wrong)
    assert any(a.actual_s < a.declared_s for a in wrong)
    assert any(a.actual_s > a.declared_s for a in wrong)


def test_burst10_is_ten_times_the_burst_in_the_middle() -> None:
    def in_second(trace: list[Arrival], start: float) -> int:
        return sum(start <= a.at < start + 1.0 for a in trace)
    today = WORKLOADS["today"](10_000.0, 1800.0, 5)
    burst = WORKLOADS["burst10"](10_000.0, 1800.0, 5)
    assert in_second(burst, 900.0) > 8 * in_second(today, 900.0)
    assert in_second(burst, 300.0) < 2 * in_second(today, 300.0)


def test_target_is_met_only_within_every_allowance() -> None:
    def summary(p99: float, refused: float, overloads: float = 0.0) -> dict[str, float]:
        return {"spread_p99": p99, "refused_requests": refused, "requests": 1000.0,
                "overload_attempts": overloads}
    cell: dict[str, object] = {"workload": "today", "substations": 10, "scrape_s": 15.0,
                               "replicas": 1}
    good = {(FORECAST, 1): summary(0.75, 30), ("oracle", 1): summary(0.70, 20),
            ("least-utilization", 1): summary(0.9, 25)}
    assert target(good, cell, 0.07, declared=True)["met"] is True
    wide = {**good, (FORECAST, 1): summary(0.78, 30)}
    assert target(wide, cell, 0.07, declared=True)["met"] is False
    refusing = {**good, (FORECAST, 1): summary(0.75, 41)}
    assert target(refusing, cell, 0.07, declared=True)["refused_met"] is False
    overloading = {**good, (FORECAST, 1): summary(0.75, 30, overloads=1)}
    assert target(overloading, cell, 0.07, declared=True)["met"] is False
    assert target(overloading, cell, 0.07, declared=False)["met"] is True


def test_a_tiny_run_gives_rows_targets_and_charts(tmp_path: Path) -> None:
    plan = Plan(sizes=(10,), intervals=(5.0, 15.0), horizon_s=300.0, short_horizon_s=150.0,
                workloads=("today", "short", "stop-early"), replicas=(4,),
                replica_workloads=("today",), small_seeds=(7,))
    rows = run_quality(plan, charts_dir=tmp_path, progress=lambda line: None)
    targets = [r for r in rows if r["strategy"] == "target"]
    assert {(r["workload"], r["replicas"]) for r in targets} == \
        {("today", 1), ("today", 4), ("short", 1), ("stop-early", 1)}
    assert all("extra_refused" in r for r in targets if r["workload"] == "stop-early")
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["quality-10.png", "quality-replicas-10.png", "quality-workloads-10.png"]
