"""The routing decision and its bookkeeping, bound to one charge: the placement's `Chooser`.

Selection (balancer/selection.py) picks from the cached snapshot plus the pending ledger; this
keeps the ledger, the outlier detector and the metrics in step with what each forward did.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection

from balancer.health import OutlierDetector
from balancer.ledger import PendingLedger
from balancer.metrics import BalancerMetrics
from balancer.placement import Reply
from balancer.policy import LoadAging
from balancer.selection import select_despite_doubt, select_substation
from balancer.serving import ServingState
from gridlb.charge import SessionCharge


def _finite(value: object) -> float | None:
    """A JSON number that means something, else None (a missing or odd field is ignored)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def answer_forecast(value: object) -> tuple[tuple[float, float], ...] | None:
    """An answer's `load_forecast_kw` ([[horizon_s, kW], ...]) as ascending pairs, or None
    when it is missing or odd in any way (the reading is then aged by the scrape's forecast)."""
    if not isinstance(value, list) or not value:
        return None
    pairs: list[tuple[float, float]] = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            return None
        horizon_s, load_kw = _finite(item[0]), _finite(item[1])
        if horizon_s is None or load_kw is None or horizon_s <= 0.0 or load_kw < 0.0 or \
                (pairs and horizon_s <= pairs[-1][0]):
            return None
        pairs.append((horizon_s, load_kw))
    return tuple(pairs)


def observe_reply(ledger: PendingLedger, instance: str, reply: Reply | None, now: float) -> None:
    """A substation's answer carries its load right then: the freshest reading there is."""
    if reply is None:
        return
    load, seq = _finite(reply.body.get("load_kw")), reply.body.get("load_seq")
    if load is not None:
        ledger.observe(instance, load, now,
                       seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
                       forecast=answer_forecast(reply.body.get("load_forecast_kw")))


class LedgerChooser:
    def __init__(self, charge: SessionCharge, serving: ServingState, ledger: PendingLedger,
                 health: OutlierDetector, metrics: BalancerMetrics, rng: random.Random,
                 clock: Callable[[], float] = time.time) -> None:
        self.charge = charge
        self.serving = serving
        self.ledger = ledger
        self.health = health
        self.metrics = metrics
        self.rng = rng
        self.clock = clock

    def name(self, instance: str) -> str:
        snapshot = self.serving.snapshot
        view = snapshot.substations.get(instance) if snapshot else None
        return view.name if view else instance

    def choose(self, exclude: Collection[str]) -> str | None:
        snapshot = self.serving.snapshot
        if snapshot is None:
            return None
        started, now = time.perf_counter(), self.clock()
        skip = self.health.ejected_now(now, snapshot.substations).union(exclude)
        choice = select_substation(snapshot, self.ledger, self.serving.policy,
                                   self.charge.floor_kw, self.rng, exclude=skip,
                                   degraded=self.serving.degraded, now=now) \
            or select_despite_doubt(snapshot, self.ledger, self.charge.floor_kw,
                                    exclude=skip, degraded=self.serving.degraded)
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        return None if choice is None else choice.instance

    def reserve(self, instance: str) -> None:
        # The floor (min_kw, or requested_kw without one) is what the substation commits and
        # counts in its load; the rest of requested_kw is shared, never taken from others.
        self.ledger.reserve(instance, self.charge.session_id, self.charge.floor_kw)

    def accepted(self, instance: str, reply: Reply) -> None:
        now, seq = self.clock(), reply.body.get("load_seq")
        # A session found by a fence was reserved by an earlier dispatch, maybe by another
        # balancer: reserving it here is what its load is until a reading includes it.
        self.reserve(instance)
        # The end matters only to a policy that ages loads; only forecast aging drains the
        # ledger's ends (ledger.expire), so for any other policy they are not kept at all.
        ages = self.serving.policy.load_aging is LoadAging.FORECAST
        self.ledger.confirm(instance, self.charge.session_id, now,
                            seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
                            _finite(reply.body.get("ends_at")) if ages else None)
        observe_reply(self.ledger, instance, reply, now)
        self.health.record_success(instance)

    def released(self, instance: str, reply: Reply | None, failed: bool) -> None:
        now = self.clock()
        self.ledger.release(instance, self.charge.session_id)
        observe_reply(self.ledger, instance, reply, now)
        reason = (reply.error or reply.detail) if reply is not None else "no time left"
        self.metrics.forward_refusals.labels(self.name(instance), reason[:40]).inc()
        if failed:
            snapshot = self.serving.snapshot
            self.health.record_failure(instance, now,
                                       len(snapshot.substations) if snapshot else 1)
