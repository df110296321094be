"""The policy refresh loop: keeps the serving snapshot fresh, off the request path.

Every `refresh_interval` it reloads the policy file if it changed, evaluates the policy (in a
thread: the Prometheus client is synchronous) and installs the result in the ServingState.
With an active-policy file (active.py) it also looks at that file about once a second, however
long the interval, and switches to the policy it names: that is how `POST /-/reload
{"policy": ...}` on one replica reaches every replica.

Nothing short of shutdown ends it. Each failure is caught, logged, counted in
`balancer_prometheus_query_errors_total{reason}` and retried after a backoff:
- a grid query fails (Prometheus down, slow, truncated or odd answers): the last good snapshot
  keeps serving (degraded mode once it is too old);
- only the policy's query fails (e.g. 422 many-to-many for one substation's odd series): the
  fresh grid is installed without scores, so substations are ranked by utilization;
- a policy edit is refused (unreadable, not UTF-8, invalid): the previous policy keeps serving
  and the next edit is tried again; likewise an active-policy file that is broken or names a
  policy that is refused;
- the policy's query succeeds but scores no substation that is up (a misspelt metric): logged
  as a warning once per change of that state, shown in `balancer_policy_no_data` and /policy;
- anything else (a bug): counted as `internal`, the loop carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balancer.active import ActivePolicyFile
from balancer.policy import Policy, PolicyError, load_policy, policy_path
from balancer.prom import (
    GridQueries,
    PolicyQueryFailed,
    QueryClient,
    QueryFailure,
    RosterCache,
    read_snapshot,
    run_query,
)
from balancer.serving import ServingState
from balancer.snapshot import Snapshot
from gridlb.grid import ConfigError

log = logging.getLogger(__name__)

# Prometheus's own rejections of a query: a reload with such a query is refused.
_REJECTIONS = {"bad_data", "execution"}
# Failures back off up to this (or the refresh interval, if longer): long enough to spare a
# struggling Prometheus, short enough that recovery is noticed well within the snapshot age.
MAX_BACKOFF_S = 5.0
# How often the active-policy file is looked at: a fleet-wide switch reaches every replica within
# about this, whatever the serving policy's refresh interval.
WATCH_INTERVAL_S = 1.0
_UNSEEN = object()   # the active file's bytes before the first look at them


def backoff_s(interval_s: float, consecutive_failures: int) -> float:
    """The wait before the next evaluation: the interval, doubled per failure in a row."""
    if consecutive_failures <= 0:
        return interval_s
    return min(interval_s * 2.0 ** min(consecutive_failures - 1, 20),
               max(interval_s, MAX_BACKOFF_S))


@dataclass(frozen=True)
class Candidate:
    """A policy that passed every check, ready to install; `mtime` is its file's when read."""

    policy: Policy
    file: Path
    mtime: float


class PolicyRefreshLoop:
    def __init__(self, client: QueryClient, state: ServingState, *,
                 queries: GridQueries | None = None,
                 extra_params: Mapping[str, Any] | None = None,
                 active: ActivePolicyFile | None = None,
                 default_policy: str | None = None) -> None:
        self.client = client
        self.state = state
        self.metrics = state.metrics
        self.queries = queries or GridQueries()
        self.extra_params = dict(extra_params or {})
        # The roster query's answer, read every ROSTER_EVERY_S rather than every refresh.
        self.roster = RosterCache()
        # The fleet's choice (None: this replica decides alone) and the policy that serves
        # when the file does not exist (--policy).
        self.active = active
        self.default_policy = default_policy or state.policy.name
        self.policy_dir = state.policy_file.parent
        # (file, mtime) last loaded or tried: a file is tried again only once it changes, so a
        # refused edit is not retried (and logged) every interval.
        self._tried = (state.policy_file, self._mtime(state.policy_file))
        # The active file's bytes last acted on (a sentinel: read it on the first tick), and
        # the policy file it names.
        self._active_seen: bytes | object | None = _UNSEEN
        self._wanted: Path | None = None
        # (policy, whether its query scored nothing) as last logged.
        self._no_data: tuple[str, bool] | None = None
        self._task: asyncio.Task[None] | None = None
        # Set when another policy is installed: ends a wait sized for the previous one's
        # interval (switching from a 5m policy to a 1s one must not wait up to 5 minutes).
        self._policy_changed = asyncio.Event()

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
                                               at, self.extra_params, self.roster)
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
        if state.install(snapshot, evaluated_with=policy):
            self._note_no_data(policy, snapshot)
        state.record_success(at)
        return True

    def _failed(self, policy: Policy, reason: str, detail: str, consequence: str) -> None:
        log.warning("policy %s: evaluation failed (%s: %s); %s", policy.name, reason, detail,
                    consequence)
        self.state.record_failure(reason, detail, self.state.clock())

    def _note_no_data(self, policy: Policy, snapshot: Snapshot) -> None:
        """Warn when the policy's query starts scoring nothing, say when it scores again: once
        per change, not once per refresh (a refresh a second would bury everything else)."""
        now = (policy.name, snapshot.policy_no_data)
        if now == self._no_data or (self._no_data is None and not snapshot.policy_no_data):
            self._no_data = now
            return
        before, self._no_data = self._no_data, now
        if snapshot.policy_no_data:
            log.warning("policy %s: its query gives no substation that is up a score (a "
                        "misspelt metric or label?); substations are ranked by utilization "
                        "until it does. Query: %s", policy.name, self.queries.render(policy.query))
        elif before is not None and before[0] == policy.name:
            log.info("policy %s: its query scores substations again", policy.name)

    # -- policy reloads ---------------------------------------------------------------------
    @staticmethod
    def _mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0

    def policy_file_changed(self) -> bool:
        target = self._target()
        return (target, self._mtime(target)) != self._tried

    async def reload(self, policy_file: Path | None = None) -> Policy:
        """Load, validate and check the policy with Prometheus; swap only if all pass.
        Raises PolicyError (naming the file and the field) and keeps the serving policy."""
        candidate = await self.prepare(policy_file or self.state.policy_file)
        self.install(candidate)
        return candidate.policy

    async def prepare(self, target: Path) -> Candidate:
        """Every check `reload` makes, without installing: POST /-/reload records a fleet-wide
        choice between the two. Raises PolicyError, logged, counted and shown in /policy."""
        mtime = self._mtime(target)
        try:
            candidate = load_policy(target)
            await self._check_with_prometheus(candidate)
        except PolicyError as exc:
            self.state.reload_error = str(exc)
            self.metrics.reloads.labels(result="error").inc()
            log.error("policy reload refused, the previous policy keeps serving: %s", exc)
            raise
        return Candidate(candidate, target, mtime)

    def install(self, candidate: Candidate) -> None:
        self._tried = (candidate.file, candidate.mtime)
        self.state.use_policy(candidate.policy, candidate.file)
        self._policy_changed.set()
        self.metrics.reloads.labels(result="success").inc()
        log.info("policy %s loaded from %s", candidate.policy.name, candidate.file)

    async def _check_with_prometheus(self, policy: Policy) -> None:
        try:
            await asyncio.to_thread(run_query, self.client, self.queries.render(policy.query),
                                    self.extra_params)
        except QueryFailure as exc:
            if exc.reason in _REJECTIONS:
                raise PolicyError(policy.source, [f"query: Prometheus rejected it: {exc.detail}"]
                                  ) from exc
            # Prometheus unreachable: the query parsed locally; accept and let refreshes report.

    # -- the fleet's choice -----------------------------------------------------------------
    def _target(self) -> Path:
        """The policy file this replica should serve: the one the active-policy file names
        (read again whenever its bytes change), else the one serving now."""
        if self.active is not None:
            data = self.active.raw()
            if data != self._active_seen:
                self._active_seen = data
                self._follow(data)
        return self._wanted or self.state.policy_file

    def _follow(self, data: bytes | None) -> None:
        assert self.active is not None
        try:
            choice = self.active.parse(data)
        except ConfigError as exc:
            # Logged once per content: the loop reads it again only when it changes.
            self.state.reload_error = str(exc)
            self.metrics.reloads.labels(result="error").inc()
            log.error("active policy file refused, %s keeps serving: %s",
                      self.state.policy.name, exc)
            return
        name = self.default_policy if choice is None else choice.policy
        self._wanted = policy_path(self.policy_dir, name)

    def active_file_changed(self) -> bool:
        return self.active is not None and self.active.raw() != self._active_seen

    # -- the loop ---------------------------------------------------------------------------
    async def tick(self) -> bool:
        """One round: reload the policy file if it changed (or the fleet chose another one),
        then evaluate."""
        target = self._target()
        tried = (target, self._mtime(target))
        if tried != self._tried:
            self._tried = tried
            # A refused edit is logged, counted and shown in /policy; the previous policy serves.
            with contextlib.suppress(PolicyError):
                await self.reload(target)
        return await self.refresh_once()

    async def run(self) -> None:
        """Forever: tick, then wait the refresh interval (backing off while failing), or until
        another policy is installed or the fleet chooses one."""
        while True:
            try:
                await self.tick()
            except Exception as exc:   # not even a reload may end the loop
                log.exception("policy refresh failed unexpectedly; retrying")
                self.state.record_failure("internal", f"{type(exc).__name__}: {exc}"[:300],
                                          self.state.clock())
            # Cleared after the tick: the wait below is already sized for a policy the tick
            # installed; only one installed during the wait (POST /-/reload) ends it early.
            self._policy_changed.clear()
            await self._wait(backoff_s(self.state.policy.refresh_interval_s,
                                       self.state.evaluations.consecutive_failures))

    async def _wait(self, seconds: float) -> None:
        """Up to `seconds`, in slices of WATCH_INTERVAL_S when there is an active file to
        watch; over as soon as a policy is installed or the active file changes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            step = remaining if self.active is None else min(remaining, WATCH_INTERVAL_S)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._policy_changed.wait(), step)
                return
            if self.active_file_changed():
                return

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name="policy-refresh")
        return self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

