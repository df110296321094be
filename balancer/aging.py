"""Aging a stale load reading by the substation's own forecast (`load_aging: forecast`).

A reading is one scrape old. Sessions that end between two scrapes are invisible to it: the
substation looks fuller than it is, and is passed over until the next scrape. But every session
has a power and an energy, so a substation knows when its sessions will end, and exports it:
`substation_load_forecast_kw{horizon="<h>s"}`, the load h seconds after the sample if every
session runs to its declared energy and nothing new arrives. A reading `age` seconds old is
brought to now in two ways:

- for the fit check, conservatively: the forecast at the largest horizon <= age. Sessions only
  end in a forecast, none is invented, so while declarations hold this is never below the true
  load (of the sessions the reading knew): aging never causes an overload attempt.
- for the ranking, the expected value: midway between that horizon's forecast and the next one's
  (sessions due to end in between end, on average, halfway).

Both are step functions of time that change only when a horizon is crossed. `AgedLoads` keeps
the current values in plain dicts the decision loop reads in O(1), and moves them on through a
heap of the next crossings: O(log n) per crossing or changed reading and nothing per request
otherwise, so the decision stays in microseconds at 100 substations.

A substation's own answer (a reading newer than the scrape, ledger.observe) carries its own
forecast (`load_forecast_kw`, the same horizons after the reading): it is aged by that exactly
as a scrape is, from the moment the answer arrived (the reading was taken before, so this is
late, never early). An answer without one is aged by the decline the scrape's forecast gives
between the answer and now, counted only for horizons wholly after the answer: a lower bound
of what really ended since, so again never too low. (Sessions ending between the answer and
the next horizon then stay in it until the next scrape: why answers carry a forecast.)
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import pairwise

from balancer.ledger import PendingLedger
from balancer.snapshot import Snapshot, SubstationView


@dataclass(frozen=True)
class _Curve:
    times: tuple[float, ...]   # absolute: the sample time, then sample time + each horizon
    fit: tuple[float, ...]     # the forecast at each time (non-increasing)
    rank: tuple[float, ...]    # the expected load from each time to the next


def forecast_curve(view: SubstationView, skew_s: float = 0.0) -> _Curve | None:
    """The view's forecast as steps in absolute time, or None when it has none usable."""
    if view.load_kw is None:
        return None
    return step_curve(view.scrape_ts + skew_s, view.load_kw, view.forecast)


def step_curve(start: float, load_kw: float, forecast: tuple[tuple[float, float], ...]
               ) -> _Curve | None:
    """A reading of `load_kw` at `start` and its forecast ((horizon_s, kW), ascending) as steps
    in absolute time, or None when the forecast has nothing usable.

    A forecast above the load or rising with the horizon says something odd about the
    substation; it is read as the most pessimistic consistent curve (no decline there)."""
    if not forecast:
        return None
    times, fit = [start], [load_kw]
    for horizon_s, forecast_kw in forecast:
        if horizon_s <= 0.0 or not math.isfinite(forecast_kw):
            continue
        times.append(start + horizon_s)
        fit.append(min(fit[-1], max(0.0, forecast_kw)))
    if len(times) == 1:
        return None
    rank = [(a + b) / 2.0 for a, b in pairwise(fit)] + [fit[-1]]
    return _Curve(tuple(times), tuple(fit), tuple(rank))


class AgedLoads:
    """One ledger's view of one snapshot, aged: for each substation with a forecast, the base
    load of its current reading (the scrape's, or the substation's newer answer) brought to the
    last `advance`, for the fit check and for the ranking. Readings without a forecast are not
    here (the decision reads them as they are).

    It belongs to one ledger (each balancer replica has its own) and one snapshot: made anew
    when either changes (`for_decision`). The ledger names the instances whose reading changed
    (`readings_changed`); only those and the ones that crossed a horizon are recomputed."""

    def __init__(self, snapshot: Snapshot, ledger: PendingLedger) -> None:
        self.snapshot, self.ledger = snapshot, ledger
        # Crossings are shifted by the clock skew allowed between Prometheus and us: a horizon
        # counts as passed only once it has surely passed on the scraper's clock.
        skew_s = ledger.clock_skew_s
        self.fit_by_instance: dict[str, float] = {}
        self.rank_by_instance: dict[str, float] = {}
        self._scrape_curves: dict[str, _Curve] = {}
        # The curve each instance is aged by now: its scrape's, or its kept answer's own.
        self._curves: dict[str, _Curve] = {}
        self._aged_by_answer: set[str] = set()   # whose curve is their kept answer's own
        self._step: dict[str, int] = {}
        # (time, instance, generation, step): a crossing of a curve since replaced is skipped.
        self._generation: dict[str, int] = {}
        self._crossings: list[tuple[float, str, int, int]] = []
        self._now = -math.inf
        # (reading time, fit at the first horizon after it, expected load then) per instance
        self._reading_base: dict[str, tuple[float, float, float]] = {}
        for view in snapshot.substations.values():
            curve = forecast_curve(view, skew_s)
            if curve is None:
                continue
            self._scrape_curves[view.instance] = curve
            self._generation[view.instance] = 0
            self._follow(view.instance)
        ledger.readings_changed.clear()

    @classmethod
    def for_decision(cls, snapshot: Snapshot, ledger: PendingLedger, now: float
                     ) -> AgedLoads | None:
        """The ledger's aged loads for this snapshot at `now` (None: nothing to age)."""
        ledger.expire(now)
        aged = ledger.aging_state
        if not isinstance(aged, cls) or aged.snapshot is not snapshot:
            aged = ledger.aging_state = cls(snapshot, ledger)
        if not aged._curves:
            return None
        aged.advance(now)
        return aged

    def advance(self, now: float) -> None:
        """Bring every aged load to `now` (time never runs backwards here) and take in the
        readings that changed since the last call."""
        changed = self.ledger.readings_changed
        if changed:
            for instance in changed:
                if instance in self._scrape_curves:
                    self._follow(instance)
            changed.clear()
        if now <= self._now:
            return
        self._now = now
        crossings, curves, generations = self._crossings, self._curves, self._generation
        while crossings and crossings[0][0] <= now:
            _, instance, generation, step = heapq.heappop(crossings)
            if generation != generations[instance]:
                continue
            self._step[instance] = step
            self._recompute(instance)
            times = curves[instance].times
            if step + 1 < len(times):
                heapq.heappush(crossings, (times[step + 1], instance, generation, step + 1))

    def _follow(self, instance: str) -> None:
        """Age `instance` by the curve its current reading calls for: the kept answer's own
        forecast when it carried one, else the scrape's. Then recompute it."""
        ledger = self.ledger
        # The ledger keeps an answer's forecast only together with that answer's reading.
        forecast = ledger.observed_forecast_by_instance.get(instance)
        curve = forecast and step_curve(ledger.observed_at_by_instance[instance],
                                        ledger.observed_by_instance[instance], forecast)
        if curve:
            self._aged_by_answer.add(instance)
        else:
            self._aged_by_answer.discard(instance)
            curve = self._scrape_curves[instance]
        # A new generation even for the same curve: the crossing pushed below supersedes any.
        self._curves[instance] = curve
        generation = self._generation[instance] = self._generation[instance] + 1
        step = self._step[instance] = max(0, bisect_right(curve.times, self._now) - 1)
        if step + 1 < len(curve.times):
            heapq.heappush(self._crossings, (curve.times[step + 1], instance, generation, step + 1))
        self._recompute(instance)

    def _recompute(self, instance: str) -> None:
        curve, step = self._curves[instance], self._step[instance]
        fit_now, rank_now = curve.fit[step], curve.rank[step]
        observed = self.ledger.observed_by_instance.get(instance)
        if observed is None or instance in self._aged_by_answer:
            # The scrape, or an answer aged by its own forecast (its curve starts at it).
            self.fit_by_instance[instance], self.rank_by_instance[instance] = fit_now, rank_now
            return
        at = self.ledger.observed_at_by_instance[instance]
        base = self._reading_base.get(instance)
        if base is None or base[0] != at:
            # The forecast at the first horizon surely after the answer (ledger.end_margin_s):
            # sessions due to leave later were surely still in it.
            # (The times carry the skew once already; the answer's own time needs it too.)
            ledger = self.ledger
            surely_after = at + ledger.end_margin_s + 2 * ledger.clock_skew_s
            after = min(bisect_left(curve.times, surely_after), len(curve.times) - 1)
            during = max(0, bisect_right(curve.times, at) - 1)
            base = self._reading_base[instance] = (at, curve.fit[after], curve.rank[during])
        fit = self.fit_by_instance[instance] = max(0.0, observed - max(0.0, base[1] - fit_now))
        # The expected load is never above the sure upper bound (an answer read exactly at a
        # horizon is one step ahead of the midpoint rule).
        self.rank_by_instance[instance] = min(fit, max(0.0, observed - max(0.0, base[2]
                                                                            - rank_now)))
