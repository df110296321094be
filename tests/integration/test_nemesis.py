"""Short seeded nemesis runs inside `make test` (the long ones: `make chaos ARGS="--nemesis
--seed N --duration S"`): the single-machine stack, and two ingress replicas on PostgreSQL with
adaptive power."""

from __future__ import annotations

import asyncio

import pytest

from tests.nemesis.checker import INVARIANTS
from tests.nemesis.runner import Workload, run_nemesis
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


# Chosen for its schedule: every kind of fault within 35 s (28), PostgreSQL SIGKILLed and
# paused, each ingress replica SIGKILLed, one hung too; two balancer replicas.
SEED_REPLICATED = 31


def test_two_ingress_replicas_on_postgresql_with_adaptive_power_keep_every_invariant() -> None:
    """The nemesis of the exactly-once issue on the scaled-out shape: keys retried across two
    ingress replicas sharing PostgreSQL, which is killed, paused and hung like every other
    process; half the requests carry a floor and a departure, so power changes under them."""
    report = asyncio.run(run_nemesis(SEED_REPLICATED, duration_s=35.0,
                                     workload=Workload(adaptive_share=0.5),
                                     ingresses=2, store="postgresql"))
    text = report.render()
    print(text)
    assert report.ready, text
    assert "2 ingress replica(s) on postgresql" in text
    faulted = {(f.target, f.kind) for f in report.schedule}
    assert {("postgres", "kill"), ("ingress", "kill"), ("ingress-2", "kill")} <= faulted
    assert {f.kind for f in report.schedule} == set(KINDS)
    # Enough happened, on both replicas and with floors, for the invariants to mean something.
    assert len(report.requests) >= 80
    assert sum(1 for r in report.requests if report.outcome(r) == "200") >= 30
    floors = [(e.min_kw, e.power_kw) for e in report.events
              if e.event == "admit" and e.min_kw is not None and e.power_kw is not None]
    assert len(floors) >= 10 and all(floor < power for floor, power in floors)
    assert all(f"{name} 0" in text for name in INVARIANTS), text
    assert report.violations == [], text
    assert report.clean


def test_several_ingress_replicas_need_a_shared_store() -> None:
    with pytest.raises(ValueError, match="several replicas need a shared store"):
        asyncio.run(run_nemesis(1, duration_s=1.0, ingresses=2, store="sqlite"))
