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
heap of the next crossings: O(log n) per crossing and nothing per request otherwise, so the
decision stays in microseconds at 100 substations.

A substation's own answer (a reading newer than the scrape, ledger.observe) is aged by the
decline the scrape's forecast gives between the answer and now, counted only for horizons
wholly after the answer: a lower bound of what really ended since, so again never too low.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

from balancer.snapshot import SubstationView


@dataclass(frozen=True)
class _Curve:
    times: tuple[float, ...]   # absolute: the sample time, then sample time + each horizon
    fit: tuple[float, ...]     # the forecast at each time (non-increasing)
    rank: tuple[float, ...]    # the expected load from each time to the next


def forecast_curve(view: SubstationView, skew_s: float = 0.0) -> _Curve | None:
    """The view's forecast as steps in absolute time, or None when it has none usable.

    A forecast above the load or rising with the horizon says something odd about the
    substation; it is read as the most pessimistic consistent curve (no decline there)."""
    if view.load_kw is None or not view.forecast:
        return None
    times, fit = [view.scrape_ts + skew_s], [view.load_kw]
    for horizon_s, load_kw in view.forecast:
        if horizon_s <= 0.0 or not math.isfinite(load_kw):
            continue
        times.append(view.scrape_ts + skew_s + horizon_s)
        fit.append(min(fit[-1], max(0.0, load_kw)))
    if len(times) == 1:
        return None
    rank = [(a + b) / 2.0 for a, b in pairwise(fit)] + [fit[-1]]
    return _Curve(tuple(times), tuple(fit), tuple(rank))


class AgedLoads:
    """The aged loads of one snapshot's substations, moved on as time passes (`advance`)."""

    def __init__(self, views: Iterable[SubstationView], skew_s: float = 0.0) -> None:
        # Crossings are shifted by the clock skew allowed between Prometheus and us: a horizon
        # counts as passed only once it has surely passed on the scraper's clock.
        self.fit_by_instance: dict[str, float] = {}
        self.rank_by_instance: dict[str, float] = {}
        self._curves: dict[str, _Curve] = {}
        self._crossings: list[tuple[float, str, int]] = []
        self._now = -math.inf
        # (reading time, fit at the first horizon after it, expected load then) per instance
        self._reading_base: dict[str, tuple[float, float, float]] = {}
        for view in views:
            curve = forecast_curve(view, skew_s)
            if curve is None:
                continue
            self._curves[view.instance] = curve
            self.fit_by_instance[view.instance] = curve.fit[0]
            self.rank_by_instance[view.instance] = curve.rank[0]
            self._crossings.append((curve.times[1], view.instance, 1))
        heapq.heapify(self._crossings)

    def __bool__(self) -> bool:
        return bool(self._curves)

    def advance(self, now: float) -> None:
        """Move every substation's aged load on to `now` (time never runs backwards here)."""
        if now <= self._now:
            return
        self._now = now
        crossings, curves = self._crossings, self._curves
        while crossings and crossings[0][0] <= now:
            _, instance, step = heapq.heappop(crossings)
            curve = curves[instance]
            self.fit_by_instance[instance] = curve.fit[step]
            self.rank_by_instance[instance] = curve.rank[step]
            if step + 1 < len(curve.times):
                heapq.heappush(crossings, (curve.times[step + 1], instance, step + 1))

    def age_reading(self, instance: str, load_kw: float, at: float) -> tuple[float, float]:
        """A substation's answer `load_kw` read at `at` (after the scrape), brought to the last
        `advance`: (for the fit check, for the ranking). Unchanged without a forecast."""
        curve = self._curves.get(instance)
        if curve is None:
            return load_kw, load_kw
        base = self._reading_base.get(instance)
        if base is None or base[0] != at:
            # The forecast at the first horizon at or after the answer: sessions due to end
            # later are surely still in the answer (it was read before they ended).
            after = min(bisect_left(curve.times, at), len(curve.times) - 1)
            during = max(0, bisect_right(curve.times, at) - 1)
            base = self._reading_base[instance] = (at, curve.fit[after], curve.rank[during])
        fit_now, rank_now = self.fit_by_instance[instance], self.rank_by_instance[instance]
        return (load_kw - max(0.0, base[1] - fit_now),
                max(0.0, load_kw - max(0.0, base[2] - rank_now)))
