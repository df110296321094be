"""The placement's Chooser over the serving state: what it asks selection, and in which mode."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from prometheus_client import CollectorRegistry

from balancer.chooser import LedgerChooser
from balancer.health import OutlierDetector
from balancer.ledger import PendingLedger
from balancer.metrics import BalancerMetrics
from balancer.placement import Reply
from balancer.serving import ServingState
from gridlb.charge import SessionCharge
from tests.conftest import make_policy, make_snapshot, view


def test_in_degraded_mode_the_doubt_path_ranks_unscored_substations_too() -> None:
    now = [1000.0]
    policy, ledger, health = make_policy(), PendingLedger(), OutlierDetector()
    serving = ServingState(policy, Path("policies/test-policy.yaml"), ledger, health,
                           BalancerMetrics(CollectorRegistry()), max_snapshot_age_s=15.0,
                           clock=lambda: now[0])
    # a is scored and full; b lost its score (NaN) and fits only once the kW its last
    # reading may already count are not counted twice.
    snapshot = make_snapshot(view("a", 44.0, 50.0, score=44.0),
                             dataclasses.replace(view("b", 22.0, 50.0), score=None), at=1000.0)
    assert serving.install(snapshot, evaluated_with=policy)
    ledger.reserve("b", "in-flight", 11.0)
    ledger.observe("b", 33.0, at=1001.0, seq=3)
    charge = SessionCharge("ev", 11.0, 30.0, session_id="s1")
    chooser = LedgerChooser(charge, serving, ledger, health, serving.metrics,
                            random.Random(0), clock=lambda: now[0])
    assert chooser.choose(()) is None              # normal mode: b is not eligible
    now[0] = 1020.0                                # the snapshot is past its maximum age
    assert serving.degraded
    assert chooser.choose(()) == "b"
    assert chooser.choose({"b"}) is None


def accept_many(policy_result: dict[str, str], count: int) -> PendingLedger:
    """`count` sessions accepted through the chooser, each answer announcing its end."""
    policy, ledger, health = make_policy(result=policy_result), PendingLedger(), OutlierDetector()
    serving = ServingState(policy, Path("policies/test-policy.yaml"), ledger, health,
                           BalancerMetrics(CollectorRegistry()), max_snapshot_age_s=15.0,
                           clock=lambda: 1000.0)
    assert serving.install(make_snapshot(view("a", 0.0, 1e6), at=1000.0), evaluated_with=policy)
    for i in range(count):
        chooser = LedgerChooser(SessionCharge("ev", 11.0, 1.0, session_id=f"s{i}"), serving,
                                ledger, health, serving.metrics, random.Random(0),
                                clock=lambda: 1000.0)
        chooser.accepted("a", Reply(True, 200, {"ends_at": 1010.0 + i, "load_kw": 11.0 * i,
                                                "load_seq": i}))
    return ledger


def test_ends_are_kept_only_for_a_policy_that_ages_loads() -> None:
    # Only forecast aging drains the ends (ledger.expire): kept for any other policy, they
    # would pile up for as long as the balancer runs.
    plain = accept_many({"pending_adjustment": "utilization"}, 50)
    aging = accept_many({"pending_adjustment": "utilization", "load_aging": "forecast"}, 50)
    assert len(plain._ends) == 0
    # each end twice: as a pending entry, and inside the answer that counts it
    assert len(aging._ends) == 100
