"""Keeping the policy snapshot fresh, off the request path.

A background loop evaluates the active policy every `refresh_interval` (in a thread: the
Prometheus client is synchronous), settles the pending ledger against the new scrape times, and
reloads the policy file when it changes. A failed evaluation keeps the last good snapshot; a
broken policy edit keeps the last good policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balancer.health import OutlierDetector
from balancer.ledger import PendingLedger
from balancer.metrics import BalancerMetrics
from balancer.policy import Policy, PolicyError, load_policy
from balancer.prom import GridQueries, QueryClient, QueryFailure, read_snapshot, run_query
from balancer.snapshot import Snapshot

log = logging.getLogger(__name__)

# Prometheus's own rejections of a query: a reload with such a query is refused.
_REJECTIONS = {"bad_data", "execution"}


@dataclass(frozen=True)
class EvaluationError:
    reason: str
    detail: str
    at: float


class PolicyRefresher:
    def __init__(self, client: QueryClient, policy: Policy, policy_file: Path,
                 ledger: PendingLedger, health: OutlierDetector, metrics: BalancerMetrics, *,
                 queries: GridQueries | None = None, max_snapshot_age_s: float = 15.0,
                 extra_params: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.policy = policy
        self.policy_file = policy_file
        self.ledger = ledger
        self.health = health
        self.metrics = metrics
        self.queries = queries or GridQueries()
        self.max_snapshot_age_s = max_snapshot_age_s
        self.extra_params = dict(extra_params or {})
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self._names: dict[str, str] = {}   # instance -> substation id, as last seen
        self.last_error: EvaluationError | None = None
        self.reload_error: str | None = None
        self.reloaded_at = clock()
        self._policy_mtime = self._mtime()

    # -- state the request path reads -------------------------------------------------------
    def snapshot_age_s(self) -> float | None:
        return None if self.snapshot is None else self.clock() - self.snapshot.evaluated_at

    @property
    def degraded(self) -> bool:
        age = self.snapshot_age_s()
        return age is not None and age > self.max_snapshot_age_s

    @property
    def mode(self) -> str:
        if self.snapshot is None:
            return "starting"
        return "degraded" if self.degraded else "normal"

    # -- evaluation -------------------------------------------------------------------------
    async def refresh_once(self) -> Snapshot | None:
        policy = self.policy
        started = time.perf_counter()
        try:
            snapshot = await asyncio.to_thread(read_snapshot, self.client, policy, self.queries,
                                               self.clock(), self.extra_params)
        except QueryFailure as exc:
            self.last_error = EvaluationError(exc.reason, exc.detail, self.clock())
            self.metrics.query_errors.labels(policy=policy.name, reason=exc.reason).inc()
            log.warning("policy %s: evaluation failed (%s); keeping the last snapshot",
                        policy.name, exc)
            self.update_gauges()
            return None
        finally:
            self.metrics.query_seconds.labels(policy=policy.name).observe(
                time.perf_counter() - started)
        if not snapshot.substations:
            self.metrics.query_errors.labels(policy=policy.name, reason="no_substations").inc()
        self.install(snapshot)
        return snapshot

    def install(self, snapshot: Snapshot) -> None:
        snapshot = self._with_known_names(snapshot)
        for view in snapshot.substations.values():
            self.ledger.settle(view.instance, view.scrape_ts)
        present = set(snapshot.substations)
        self.ledger.forget_except(present)
        self.health.forget_except(present)
        self.snapshot = snapshot
        self.last_error = None
        self.update_gauges()

    def _with_known_names(self, snapshot: Snapshot) -> Snapshot:
        """A substation that is down has no series left to name it: keep the name it had."""
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

    def update_gauges(self) -> None:
        age = self.snapshot_age_s()
        self.metrics.snapshot_age.set(age if age is not None else float("inf"))
        self.metrics.degraded.set(1.0 if self.mode != "normal" else 0.0)
        self.metrics.ejected.set(self.health.ejected_count())
        if self.snapshot is None:
            return
        names = {v.instance: v.name for v in self.snapshot.substations.values()}
        self.metrics.prune_substations(set(names.values()))
        for view in self.snapshot.substations.values():
            if view.score is not None:
                self.metrics.policy_score.labels(policy=self.policy.name,
                                                 substation=view.name).set(view.score)
            self.metrics.pending_kw.labels(substation=view.name).set(
                self.ledger.pending_kw(view.instance))

    # -- policy reloads ---------------------------------------------------------------------
    def _mtime(self) -> float:
        try:
            return self.policy_file.stat().st_mtime
        except OSError:
            return 0.0

    async def reload(self, policy_file: Path | None = None) -> Policy:
        """Load, validate and check the policy with Prometheus; swap only if all pass."""
        target = policy_file or self.policy_file
        self._policy_mtime = self._mtime()
        try:
            candidate = load_policy(target)
            await self._check_with_prometheus(candidate)
        except PolicyError as exc:
            self.reload_error = str(exc)
            self.metrics.reloads.labels(result="error").inc()
            log.error("policy reload refused, the previous policy keeps serving: %s", exc)
            raise
        self.policy, self.policy_file = candidate, target
        self.reload_error = None
        self.reloaded_at = self.clock()
        self.metrics.reloads.labels(result="success").inc()
        log.info("policy %s loaded from %s", candidate.name, target)
        return candidate

    async def _check_with_prometheus(self, policy: Policy) -> None:
        try:
            await asyncio.to_thread(run_query, self.client, policy.query, self.extra_params)
        except QueryFailure as exc:
            if exc.reason in _REJECTIONS:
                raise PolicyError(policy.source, [f"query: Prometheus rejected it: {exc.detail}"]
                                  ) from exc
            # Prometheus unreachable: the query parsed locally; accept and let refreshes report.

    async def run(self) -> None:
        """The background loop: reload on file change, evaluate, sleep; forever."""
        while True:
            if self._mtime() != self._policy_mtime:
                # A refused edit is logged and shown in /policy; the old policy keeps serving.
                with contextlib.suppress(PolicyError):
                    await self.reload()
            await self.refresh_once()
            await asyncio.sleep(self.policy.refresh_interval_s)
