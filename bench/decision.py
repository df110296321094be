"""The in-process decision: select_substation with 10, 100 and 1,000 substations and a full
ledger (every substation has pending entries and a fresh observation).

For the forecast-aware policy every substation exports a forecast at every horizon (and its
answer carries one), every entry has an end, and the decisions are spread over one 15 s scrape
interval, so the aged loads cross horizons and entries expire as they would in service (their
cost is in the numbers). With 4 balancer replicas the decision draws among the candidates near
the best (selection.py), which costs one more pass over them."""

from __future__ import annotations

import random
import time
from pathlib import Path

from balancer.ledger import PendingLedger
from balancer.policy import load_policy
from balancer.selection import select_substation
from balancer.snapshot import Snapshot, SubstationView
from gridlb.charge import FORECAST_HORIZONS_S

POLICIES = Path(__file__).resolve().parent.parent / "policies"
TARGET_P99_US = {100: 100.0, 1000: 500.0}


def decision_cost(n: int, policy_name: str, rounds: int = 3000, seed: int = 1,
                  balancers: int = 1) -> dict[str, object]:
    rng = random.Random(seed)
    policy = load_policy(POLICIES / f"{policy_name}.yaml")
    views = {}
    for i in range(n):
        instance = f"10.0.{i // 250}.{i % 250}:9100"
        load = rng.uniform(0, 400)
        score = {"rate-weighted": 500.0 - load,
                 # kW beyond the committed floors per session sharing it (5 charging)
                 "most-deliverable-energy": (500.0 - load) / 6.0}.get(policy_name,
                                                                      load / 500.0)
        ending = sorted(rng.uniform(0, load) for _ in FORECAST_HORIZONS_S)
        forecast = tuple((h, load - e) for h, e in zip(FORECAST_HORIZONS_S, ending, strict=True))
        views[instance] = SubstationView(instance, f"s{i}", True, 1000.0, load, 500.0, score,
                                         forecast=forecast)
    snapshot = Snapshot(policy_name, 1000.0, views, balancers=balancers)
    ledger = PendingLedger()
    for i, instance in enumerate(views):
        for j in range(5):
            ledger.reserve(instance, f"{i}-{j}", 3.7)
            ledger.confirm(instance, f"{i}-{j}", 1001.0, ends_at=1001.0 + rng.uniform(0, 60))
        # the answer carries its own forecast, as the substations' answers do
        ledger.observe(instance, views[instance].load_kw or 0.0, 1000.5,
                       forecast=views[instance].forecast)
        ledger.reserve(instance, f"{i}-inflight", 7.4)
    # Adaptive power: the fit check is by the floor (an 11 kW request accepting 3.7 kW).
    kw = 3.7 if policy_name == "most-deliverable-energy" else 11.0
    samples = []
    for k in range(rounds):
        now = 1001.0 + 15.0 * k / rounds
        started = time.perf_counter_ns()
        select_substation(snapshot, ledger, policy, kw, rng, now=now)
        samples.append(time.perf_counter_ns() - started)
    samples.sort()
    p99 = samples[int(0.99 * (len(samples) - 1))] / 1000
    target = TARGET_P99_US.get(n)
    return {"substations": n, "policy": policy_name, "balancers": balancers,
            "p50_us": samples[len(samples) // 2] / 1000, "p99_us": p99,
            "target_p99_us": target, "met": None if target is None else p99 < target}


def run_decision(quick: bool = False) -> list[dict[str, object]]:
    rounds = 500 if quick else 3000
    return [decision_cost(n, p, rounds, balancers=k) for n in (10, 100, 1000)
            for p, k in (("least-utilization", 1), ("least-forecast-utilization", 1),
                         ("least-forecast-utilization", 4), ("rate-weighted", 1),
                         ("most-deliverable-energy", 1))]
