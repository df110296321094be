"""A short chaos run inside `make test` (the long one is `make chaos`)."""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos import run_chaos

pytestmark = pytest.mark.integration


def test_short_chaos_run_with_two_replicas_double_books_nothing_and_tells_the_truth() -> None:
    """Renamed substations restarted on the same ports and Prometheus data, then a substation
    SIGKILLed, Prometheus stopped and a balancer replica SIGKILLed under traffic."""
    # The renamed-grid restart before the traffic costs a Prometheus restart (about 6 s): the
    # traffic phase is shorter and denser than before to keep the whole run as long.
    report = asyncio.run(run_chaos(duration_s=14.0, rate_per_s=12.0, max_snapshot_age_s=2.0,
                                   replicas=2))
    print(report.render())
    # Renamed substations on the same ports and Prometheus data: the previous ids' series were
    # still there, and the new grid was scored and routed within two scrape intervals.
    assert report.renamed_leftover_series > 0
    assert report.renamed_seen_s is not None, "the balancers never saw the renamed grid"
    assert report.renamed_routed_s is not None
    assert report.renamed_routed_s <= 2 * report.scrape_interval_s
    assert report.requests_sent >= 150
    assert report.other_errors == {}
    assert (report.double_bookings, report.untrue_answers, report.keys_with_two_sessions,
            report.unknown_sessions, report.overloads_seen) == (0, 0, 0, 0, 0)
    assert report.degraded_entered
    assert set(report.recovery_s) == {"substation killed", "prometheus stopped",
                                      "balancer killed"}
    assert all(seconds is not None for seconds in report.recovery_s.values())
    assert sum(report.transient_5xx.values()) <= report.transient_bound
    assert report.clean
    assert report.overloads_seen == 0
    assert report.answered_200 > report.requests_sent // 2
    assert report.recovery_s["substation killed"] is not None
    assert report.recovery_s["prometheus stopped"] is not None
