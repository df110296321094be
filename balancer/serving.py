"""What the balancer serves from right now: the policy, the installed snapshot and the mode.

The request path reads this and nothing else of the refresh machinery: `.policy`,
`.snapshot`, `.degraded`, `.mode`. The refresh loop (refresh.py) writes it, through
`install()` for a new snapshot and `use_policy()` for a reloaded policy, and records how its
evaluations went so that `/readyz`, `/policy` and `/metrics` can say when they keep failing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from balancer.aging import AgedLoads
from balancer.health import OutlierDetector
from balancer.ledger import PendingLedger
from balancer.metrics import BalancerMetrics
from balancer.policy import LoadAging, Policy
from balancer.snapshot import Snapshot


@dataclass(frozen=True)
class EvaluationError:
    reason: str
    detail: str
    at: float


@dataclass
class EvaluationRecord:
    """How the policy's evaluations have gone: the evidence that the loop is alive and whether
    it keeps failing (a failing loop keeps an old snapshot, which alone looks like a quiet grid)."""

    attempted_at: float | None = None
    succeeded_at: float | None = None
    consecutive_failures: int = 0
    last_error: EvaluationError | None = None

    def as_dict(self) -> dict[str, object]:
        error = self.last_error
        return {"attempted_at": self.attempted_at, "succeeded_at": self.succeeded_at,
                "consecutive_failures": self.consecutive_failures,
                "last_error": None if error is None else dataclasses.asdict(error)}


class SubstationNames:
    """instance -> substation id, as last seen. A substation that is down has no series left
    to name it (only `up == 0`): it keeps the name it had, in views and metrics."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def fill_in(self, snapshot: Snapshot) -> Snapshot:
        for view in snapshot.substations.values():
            if view.name != view.instance:
                self._names[view.instance] = view.name
        for gone in set(self._names) - set(snapshot.substations):
            del self._names[gone]
        unnamed = {i: v for i, v in snapshot.substations.items()
                   if v.name == i and i in self._names}
        if not unnamed:
            return snapshot
        views = {**snapshot.substations,
                 **{i: dataclasses.replace(v, name=self._names[i]) for i, v in unnamed.items()}}
        return dataclasses.replace(snapshot, substations=views)


class ServingState:
    def __init__(self, policy: Policy, policy_file: Path, ledger: PendingLedger,
                 health: OutlierDetector, metrics: BalancerMetrics, *,
                 max_snapshot_age_s: float = 15.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.policy_file = policy_file
        self.ledger = ledger
        self.health = health
        self.metrics = metrics
        self.max_snapshot_age_s = max_snapshot_age_s
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.evaluations = EvaluationRecord()
        self.reload_error: str | None = None
        self.reloaded_at = clock()
        self._names = SubstationNames()
        metrics.serving(policy.name)

    # -- what the request path reads ----------------------------------------------------------
    def snapshot_age_s(self) -> float | None:
        """How old the data is (its newest scrape, Snapshot.data_at), not how long ago it was
        asked for: a backend can answer fresh queries with old samples."""
        return None if self.snapshot is None else self.clock() - self.snapshot.data_at

    @property
    def degraded(self) -> bool:
        age = self.snapshot_age_s()
        return age is not None and age > self.max_snapshot_age_s

    @property
    def mode(self) -> str:
        if self.snapshot is None:
            return "starting"
        return "degraded" if self.degraded else "normal"

    @property
    def last_error(self) -> EvaluationError | None:
        return self.evaluations.last_error

    # -- what the refresh loop writes ---------------------------------------------------------
    def install(self, snapshot: Snapshot, evaluated_with: Policy) -> bool:
        """Make `snapshot` the one decisions are made from; False (and nothing changes) when it
        is older than the one in place or was evaluated with a policy that no longer serves:
        two refreshes can overlap (the loop's and a reload's), and the slower must not win."""
        if evaluated_with is not self.policy:
            return False
        if self.snapshot is not None and snapshot.evaluated_at < self.snapshot.evaluated_at:
            return False
        snapshot = self._names.fill_in(snapshot)
        self._settle_ledger(snapshot)
        self._forget_departed(snapshot)
        self.snapshot = snapshot
        self.metrics.policy_no_data.set(1.0 if snapshot.policy_no_data else 0.0)
        if self.policy.load_aging is LoadAging.FORECAST:
            # Built here, in the refresh loop, so no request pays for it.
            AgedLoads.for_decision(snapshot, self.ledger, self.clock())
        self.update_gauges()
        return True

    def _settle_ledger(self, snapshot: Snapshot) -> None:
        """kW assigned before a substation's new scrape are in its scraped load now: no longer
        pending."""
        for view in snapshot.substations.values():
            self.ledger.settle(view.instance, view.scrape_ts, view.load_seq)

    def _forget_departed(self, snapshot: Snapshot) -> None:
        """Substations Prometheus no longer reports leave the ledger and the health records,
        so both stay bounded as substations come and go."""
        present = set(snapshot.substations)
        self.ledger.forget_except(present)
        self.health.forget_except(present)

    def use_policy(self, policy: Policy, policy_file: Path) -> None:
        changed, switched = policy != self.policy, policy.name != self.policy.name
        self.policy, self.policy_file = policy, policy_file
        self.reload_error = None
        self.reloaded_at = self.clock()
        if changed and self.snapshot is not None:
            # The scores in place are the previous policy's (or the previous version's), on
            # its scale and with its direction: until this one is evaluated, rank by
            # utilization (as for a policy that scores nothing) rather than misread them.
            self.snapshot = dataclasses.replace(
                self.snapshot, policy_no_data=False,
                substations={i: dataclasses.replace(v, score=None)
                             for i, v in self.snapshot.substations.items()})
        if switched:
            self.metrics.serving(policy.name)
        self.update_gauges()

    def record_attempt(self, at: float) -> None:
        self.evaluations.attempted_at = at

    def record_success(self, at: float) -> None:
        self.evaluations.succeeded_at = at
        self.evaluations.consecutive_failures = 0
        self.evaluations.last_error = None
        self.update_gauges()

    def record_failure(self, reason: str, detail: str, at: float) -> None:
        self.evaluations.consecutive_failures += 1
        self.evaluations.last_error = EvaluationError(reason, detail, at)
        self.metrics.query_errors.labels(policy=self.policy.name, reason=reason).inc()
        self.update_gauges()

    # -- metrics ----------------------------------------------------------------------------
    def update_gauges(self) -> None:
        age = self.snapshot_age_s()
        self.metrics.snapshot_age.set(age if age is not None else float("inf"))
        self.metrics.degraded.set(1.0 if self.mode != "normal" else 0.0)
        self.metrics.ejected.set(self.health.ejected_count())
        self.metrics.evaluation_failures.set(self.evaluations.consecutive_failures)
        self.metrics.reload_failing.set(0.0 if self.reload_error is None else 1.0)
        if self.evaluations.succeeded_at is not None:
            self.metrics.last_evaluation.set(self.evaluations.succeeded_at)
        if self.snapshot is None:
            return
        views = self.snapshot.substations.values()
        self.metrics.prune_substations({v.name for v in views})
        self.metrics.set_scores(self.policy.name,
                                {v.name: v.score for v in views if v.score is not None})
        for view in views:
            self.metrics.pending_kw.labels(substation=view.name).set(
                self.ledger.pending_kw(view.instance))
