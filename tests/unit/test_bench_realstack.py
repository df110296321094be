"""The pure parts of bench/realstack.py: the seeded trace and the spread statistics."""

from __future__ import annotations

import statistics

import pytest

from bench.realstack import (
    CAPACITIES_KW,
    MAX_SESSION_S,
    MIN_SESSION_S,
    SPEED_FACTOR,
    Scrape,
    Session,
    aging_errors,
    decision_regret,
    interpolated,
    make_trace,
    mean_request_points,
    mean_session_s,
    offered_utilization,
    percentile,
    refused_with_room,
    spread,
    target_rows,
)
from bench.workloads import MEAN_KW, POWERS_KW


def test_the_trace_is_seeded_identical_for_every_run_and_differs_by_seed() -> None:
    first = make_trace(CAPACITIES_KW, 120.0, seed=6)
    assert first == make_trace(CAPACITIES_KW, 120.0, seed=6)
    assert first != make_trace(CAPACITIES_KW, 120.0, seed=7)
    assert [c.at for c in first] == sorted(c.at for c in first)
    assert all(0.0 < c.at < 120.0 for c in first)


def test_sessions_last_seconds_to_a_minute_and_declare_their_energy() -> None:
    trace = make_trace(CAPACITIES_KW, 600.0, seed=1)
    assert {c.kw for c in trace} <= set(POWERS_KW)
    assert all(MIN_SESSION_S <= c.real_s <= MAX_SESSION_S for c in trace)
    for c in trace:
        # energy = power x real seconds x speed / 3600: the substation ends it after real_s
        assert c.energy_kwh == pytest.approx(c.kw * c.real_s * SPEED_FACTOR / 3600.0)
        assert c.energy_kwh * 3600.0 / (c.kw * SPEED_FACTOR) == pytest.approx(c.real_s)
    assert statistics.mean(c.real_s for c in trace) == pytest.approx(mean_session_s(), rel=0.1)


def test_the_trace_offers_the_intended_share_of_capacity() -> None:
    capacity = sum(CAPACITIES_KW)
    for utilization in (0.5, 0.8):
        trace = make_trace(CAPACITIES_KW, 3000.0, seed=3, utilization=utilization,
                           max_requests=100_000)
        # After the first minute (sessions last at most one) the grid is asked for its share.
        assert offered_utilization(trace, capacity, 60.0, 3000.0) == \
            pytest.approx(utilization, rel=0.08)


def test_bursts_arrive_every_interval_within_a_second() -> None:
    trace = make_trace(CAPACITIES_KW, 100.0, seed=2, utilization=0.1, burst_every_s=20.0,
                       burst_share=0.15)
    # Bursts offer more than 10 % on their own: the Poisson part is empty, only bursts remain.
    starts = sorted({int(c.at) for c in trace})
    assert starts == [20, 40, 60, 80]
    per_burst = round(0.15 * sum(CAPACITIES_KW) / MEAN_KW)
    assert len(trace) == 4 * per_burst


def test_a_trace_is_bounded_in_count() -> None:
    trace = make_trace(CAPACITIES_KW, 3000.0, seed=3, max_requests=100)
    assert len(trace) == 100
    assert trace == make_trace(CAPACITIES_KW, 3000.0, seed=3, max_requests=1000)[:100]


def test_offered_utilization_counts_each_session_only_while_it_charges_in_the_window() -> None:
    trace = make_trace(CAPACITIES_KW, 10.0, seed=1, utilization=0.0, burst_every_s=5.0)
    # utilization 0: bursts only, at 5 s; window [0, 5) sees none of it.
    assert offered_utilization(trace, 2200.0, 0.0, 5.0) == 0.0
    assert offered_utilization(trace, 2200.0, 5.0, 200.0) == pytest.approx(
        sum(c.kw * c.real_s for c in trace) / (2200.0 * 195.0))


def test_spread_is_max_minus_min_utilization() -> None:
    capacities = {"a": 100.0, "b": 500.0, "c": 200.0}
    assert spread({"a": 50.0, "b": 100.0, "c": 200.0}, capacities) == pytest.approx(0.8)
    assert spread({"a": 50.0, "b": 250.0, "c": 100.0}, capacities) == 0.0
    with pytest.raises(KeyError):
        spread({"a": 1.0, "b": 1.0}, capacities)   # a substation that did not answer


def test_percentile_is_nearest_rank_like_the_simulation() -> None:
    values = [float(v) for v in range(101)]   # 0..100
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(list(reversed(values)), 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([float(v) for v in range(200)], 0.99) == 197.0


def test_mean_request_in_utilization_points() -> None:
    trace = make_trace(CAPACITIES_KW, 600.0, seed=6)
    points = mean_request_points(trace, CAPACITIES_KW)
    assert points == pytest.approx(statistics.mean(c.kw for c in trace) / 275.0)
    assert points == pytest.approx(MEAN_KW / 275.0, rel=0.15)


def test_the_target_compares_each_policys_15_s_p99_with_its_1_s_run() -> None:
    rows: list[dict[str, object]] = [
        {"policy": "a", "scrape_s": 1.0, "spread_p99": 0.50},
        {"policy": "a", "scrape_s": 15.0, "spread_p99": 0.57},
        {"policy": "b", "scrape_s": 1.0, "spread_p99": 0.50},
        {"policy": "b", "scrape_s": 15.0, "spread_p99": 0.59},
        {"policy": "c", "scrape_s": 1.0, "spread_p99": 0.50},      # no 15 s run: no verdict
        {"policy": "d", "skipped": "no file"},
    ]
    verdicts = {str(r["policy"]): r for r in target_rows(rows, allowance=0.08)}
    assert set(verdicts) == {"a", "b"}
    assert verdicts["a"]["met"] is True and verdicts["a"]["gap_p99"] == pytest.approx(0.07)
    assert verdicts["b"]["met"] is False and verdicts["b"]["gap_p99"] == pytest.approx(0.09)


def test_repeated_runs_are_averaged_before_the_target_is_judged() -> None:
    rows: list[dict[str, object]] = [
        {"policy": "a", "scrape_s": 1.0, "spread_p99": 0.50},
        {"policy": "a", "scrape_s": 1.0, "spread_p99": 0.60},
        {"policy": "a", "scrape_s": 15.0, "spread_p99": 0.70},
        {"policy": "a", "scrape_s": 15.0, "spread_p99": 0.66},
    ]
    (verdict,) = target_rows(rows, allowance=0.1)
    assert verdict["gap_p99"] == pytest.approx(0.13) and verdict["met"] is False
    assert verdict["runs"] == "2 vs 2"


CAPS = {"small": 100.0, "big": 400.0}


def test_regret_is_zero_for_the_oracles_choice_and_the_utilization_gap_otherwise() -> None:
    sessions = [
        Session("big", 0.0, None, 200.0),           # big at 0.5
        Session("small", 0.0, 5.0, 80.0),           # small at 0.8 until t=5
        Session("big", 10.0, None, 11.0),           # small (0.0) was best: regret 0.5
        Session("small", 11.0, None, 11.0),         # small 0.0 < big 0.5275: oracle's choice
        Session("big", 12.0, None, 150.0),          # does not fit small: big is the only fit
    ]
    regrets = decision_regret(sessions, CAPS, since=1.0)
    assert regrets == pytest.approx([0.5, 0.0, 0.0])
    # A session that started before `since` is not judged (the warm-up).
    assert len(decision_regret(sessions, CAPS, since=10.5)) == 2


def test_a_refusal_counts_as_with_room_only_if_some_substation_could_take_it() -> None:
    sessions = [Session("small", 0.0, 10.0, 90.0), Session("big", 0.0, None, 390.0)]
    refused = [(5.0, 11.0), (5.0, 10.0), (12.0, 50.0)]
    # 11 kW fits nowhere at 5 s; 10 kW fits both; at 12 s small is empty again
    assert refused_with_room(refused, sessions, CAPS) == 2


def test_aging_errors_measure_each_reading_against_what_is_left_of_its_sessions() -> None:
    # At the scrape (t=100) small carries 30 + 50 kW; the 50 kW session ends at 104 and the
    # forecast says so (gone by the 5 s horizon); a 20 kW session starts after the scrape (the
    # ledger's part, not counted). Polled at 107.5: the scrape is 7.5 s old.
    sessions = [Session("small", 90.0, None, 30.0), Session("small", 95.0, 104.0, 50.0),
                Session("small", 101.0, None, 20.0)]
    forecast = ((1.0, 80.0), (2.0, 80.0), (5.0, 30.0), (10.0, 30.0))
    scrapes = {"small": [Scrape(100.0, 80.0, forecast)], "big": []}
    errors = aging_errors(scrapes, sessions, CAPS, [107.5], visible_after_s=0.5, skew_s=0.0)
    assert errors["stale"] == pytest.approx([0.5])    # 80 kW read, 30 kW left
    assert errors["fit"] == pytest.approx([0.0])      # the 5 s horizon has passed: 30 kW
    assert errors["rank"] == pytest.approx([0.0])
    # At 103.5 (3 s old; the 2 s horizon passed, not the 5 s): the fit keeps 80 kW while the
    # session still runs (right), the ranking expects half of it gone (midway 2 s -> 5 s).
    errors = aging_errors(scrapes, sessions, CAPS, [103.5], visible_after_s=0.5, skew_s=0.0)
    assert errors["stale"] == pytest.approx([0.0])
    assert errors["fit"] == pytest.approx([0.0])
    assert errors["rank"] == pytest.approx([-0.25])
    # Linear between the 2 s (80 kW) and 5 s (30 kW) horizons: 3.5 s -> 55 kW.
    assert errors["interp"] == pytest.approx([-0.25])
    # 2.5 s: a sixth of the way from 80 to 30 kW, 71.7 kW read while 80 kW are still left.
    assert aging_errors(scrapes, sessions, CAPS, [102.5], skew_s=0.0)["interp"] == \
        pytest.approx([(80.0 - 50.0 / 6.0 - 80.0) / 100.0])
    # A scrape not yet visible to the balancer is not used.
    assert aging_errors(scrapes, sessions, CAPS, [100.2])["stale"] == []


def test_the_forecast_read_linearly_between_horizons() -> None:
    scrape = Scrape(0.0, 100.0, ((1.0, 90.0), (5.0, 50.0), (10.0, 50.0)))
    assert interpolated(scrape, -1.0) == 100.0
    assert interpolated(scrape, 0.5) == pytest.approx(95.0)
    assert interpolated(scrape, 3.0) == pytest.approx(70.0)
    assert interpolated(scrape, 7.0) == pytest.approx(50.0)
    assert interpolated(scrape, 60.0) == 50.0     # past the last horizon: the last value
