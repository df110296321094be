"""The policy refresh loop: keeps the serving snapshot fresh, off the request path.

Every `refresh_interval` it reloads the policy file if it changed, evaluates the policy (in a
thread: the Prometheus client is synchronous) and installs the result in the ServingState.

Nothing short of shutdown ends it. Each failure is caught, logged, counted in
`balancer_prometheus_query_errors_total{reason}` and retried after a backoff:
- a grid query fails (Prometheus down, slow, truncated or odd answers): the last good snapshot
  keeps serving (degraded mode once it is too old);
- only the policy's query fails (e.g. 422 many-to-many for one substation's odd series): the
  fresh grid is installed without scores, so substations are ranked by utilization;
- a policy edit is refused (unreadable, not UTF-8, invalid): the previous policy keeps serving
  and the next edit is tried again;
- anything else (a bug): counted as `internal`, the loop carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from balancer.policy import Policy, PolicyError, load_policy
from balancer.prom import (
    GridQueries,
    PolicyQueryFailed,
    QueryClient,
    QueryFailure,
    read_snapshot,
    run_query,
)
from balancer.serving import ServingState

log = logging.getLogger(__name__)

# Prometheus's own rejections of a query: a reload with such a query is refused.
_REJECTIONS = {"bad_data", "execution"}
# Failures back off up to this (or the refresh interval, if longer): long enough to spare a
# struggling Prometheus, short enough that recovery is noticed well within the snapshot age.
MAX_BACKOFF_S = 5.0


def backoff_s(interval_s: float, consecutive_failures: int) -> float:
    """The wait before the next evaluation: the interval, doubled per failure in a row."""
    if consecutive_failures <= 0:
        return interval_s
    return min(interval_s * 2.0 ** min(consecutive_failures - 1, 20),
               max(interval_s, MAX_BACKOFF_S))


class PolicyRefreshLoop:
    def __init__(self, client: QueryClient, state: ServingState, *,
                 queries: GridQueries | None = None,
                 extra_params: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.state = state
        self.metrics = state.metrics
        self.queries = queries or GridQueries()
        self.extra_params = dict(extra_params or {})
        self._policy_mtime = self._mtime(state.policy_file)
        self._task: asyncio.Task[None] | None = None

    # -- evaluation -------------------------------------------------------------------------
    async def refresh_once(self) -> bool:
        """Evaluate the serving policy and install what came out; True on full success.
        Never raises (short of cancellation): both the loop and POST /-/reload call it."""
        state = self.state
        policy = state.policy
        at = state.clock()
        state.record_attempt(at)
        started = time.perf_counter()
        try:
            snapshot = await asyncio.to_thread(read_snapshot, self.client, policy, self.queries,
                                               at, self.extra_params)
        except PolicyQueryFailed as exc:
            state.install(exc.grid, evaluated_with=policy)
            self._failed(policy, exc.reason, exc.detail, "the grid was read; ranking by "
                         "utilization until the policy's query succeeds")
            return False
        except QueryFailure as exc:
            self._failed(policy, exc.reason, exc.detail, "keeping the last snapshot")
            return False
        except Exception as exc:   # a bug or an answer nobody foresaw: the loop must go on
            log.exception("policy %s: evaluation failed unexpectedly", policy.name)
            self._failed(policy, "internal", f"{type(exc).__name__}: {exc}"[:300],
                         "keeping the last snapshot")
            return False
        finally:
            self.metrics.query_seconds.labels(policy=policy.name).observe(
                time.perf_counter() - started)
        if not snapshot.substations:
            self.metrics.query_errors.labels(policy=policy.name, reason="no_substations").inc()
        state.install(snapshot, evaluated_with=policy)
        state.record_success(at)
        return True

    def _failed(self, policy: Policy, reason: str, detail: str, consequence: str) -> None:
        log.warning("policy %s: evaluation failed (%s: %s); %s", policy.name, reason, detail,
                    consequence)
        self.state.record_failure(reason, detail, self.state.clock())

    # -- policy reloads ---------------------------------------------------------------------
    @staticmethod
    def _mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0

    def policy_file_changed(self) -> bool:
        return self._mtime(self.state.policy_file) != self._policy_mtime

    async def reload(self, policy_file: Path | None = None) -> Policy:
        """Load, validate and check the policy with Prometheus; swap only if all pass.
        Raises PolicyError (naming the file and the field) and keeps the serving policy."""
        state = self.state
        target = policy_file or state.policy_file
        self._policy_mtime = self._mtime(target)
        try:
            candidate = load_policy(target)
            await self._check_with_prometheus(candidate)
        except PolicyError as exc:
            state.reload_error = str(exc)
            self.metrics.reloads.labels(result="error").inc()
            log.error("policy reload refused, the previous policy keeps serving: %s", exc)
            raise
        state.use_policy(candidate, target)
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

    # -- the loop ---------------------------------------------------------------------------
    async def tick(self) -> bool:
        """One round: reload the policy file if it changed, then evaluate."""
        if self.policy_file_changed():
            # A refused edit is logged, counted and shown in /policy; the previous policy serves.
            with contextlib.suppress(PolicyError):
                await self.reload()
        return await self.refresh_once()

    async def run(self) -> None:
        """Forever: tick, then wait the refresh interval (backing off while failing)."""
        while True:
            try:
                await self.tick()
            except Exception as exc:   # not even a reload may end the loop
                log.exception("policy refresh failed unexpectedly; retrying")
                self.state.record_failure("internal", f"{type(exc).__name__}: {exc}"[:300],
                                          self.state.clock())
            await asyncio.sleep(backoff_s(self.state.policy.refresh_interval_s,
                                          self.state.evaluations.consecutive_failures))

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name="policy-refresh")
        return self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

