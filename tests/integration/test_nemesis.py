"""A short seeded nemesis run inside `make test` (the long ones: `make chaos ARGS="--nemesis
--seed N --duration S"`)."""

from __future__ import annotations

import asyncio

import pytest

from tests.nemesis.checker import INVARIANTS
from tests.nemesis.runner import run_nemesis
from tests.nemesis.schedule import KINDS

pytestmark = pytest.mark.integration

# Chosen for its schedule: every kind of fault within 35 s (25, several overlapping), one replica.
SEED = 5


def test_a_short_seeded_nemesis_run_keeps_every_invariant() -> None:
    report = asyncio.run(run_nemesis(SEED, duration_s=35.0))
    text = report.render()
    print(text)
    assert report.ready, text
    assert {f.kind for f in report.schedule} == set(KINDS)
    assert text.count("VIOLATION") == len(report.violations)
    # Enough happened for the invariants to mean something.
    assert len(report.requests) >= 80
    assert sum(1 for r in report.requests if report.outcome(r) == "200") >= 30
    assert sum(1 for e in report.events if e.event == "admit") >= 30
    assert any(e.event in ("stop", "complete") for e in report.events)
    assert all(f"{name} 0" in text for name in INVARIANTS), text
    assert report.violations == [], text
    assert report.clean
