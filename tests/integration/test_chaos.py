"""A short chaos run inside `make test` (the long one is `make chaos`)."""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos import run_chaos

pytestmark = pytest.mark.integration


def test_short_chaos_run_loses_nothing_and_double_books_nothing() -> None:
    report = asyncio.run(run_chaos(duration_s=20.0, rate_per_s=10.0, max_snapshot_age_s=2.0))
    print(report.render())
    assert report.requests_sent >= 150
    assert report.other_errors == {}
    assert report.unknown_sessions == 0
    assert report.duplicate_sessions == 0
    assert report.overloads_seen == 0
    assert report.answered_200 > report.requests_sent // 2
    assert report.recovery_s["substation killed"] is not None
    assert report.recovery_s["prometheus stopped"] is not None
