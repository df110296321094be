"""The routing decision, in one place.

Given the cached snapshot (one scrape old), the pending ledger (what this balancer assigned since)
and a request for `requested_kw`, choose a substation:

1. Eligible: Prometheus sees it up, it is not ejected, its load and capacity are known (absent
   is never read as zero), and its effective load plus the request fits its capacity:
       effective_load_kw = last observed load + pending kW
   where the last observed load is the scrape's, or the load the substation reported in its
   last answer if that is newer, and pending kW is what was assigned since (see ledger.py).
2. Scored: the policy's score, corrected for the kW the load moved since the scrape
   (effective - scraped) as the policy declares (`pending_adjustment`), so a burst between two
   scrapes spreads like water-filling instead of herding onto the apparently least loaded one.
3. Chosen: `best` takes the best score, breaking ties (within `tie_tolerance`) at random;
   `weighted` draws at random with probability proportional to the score. With several balancer
   replicas up (`snapshot.balancers`, from Prometheus) and no tie_tolerance, `best` draws among
   the candidates better than the best one would be with one more mean request on it (from
   another replica; weighted by how much better): every replica decides on the same stale
   view, and without that they would all land on the same substation.

4. Nothing fits, but only because of kW that may be counted twice (a reading that may already
   include forwards whose answers are on the way, ledger.doubtful_kw): try the substation that
   fits without them, least utilized first (`select_despite_doubt`). The substation is the
   authority and refuses if it is really full; this costs at most one refused forward, where
   answering no_capacity would refuse a driver while there is room.

Forecast-aware (`load_aging: forecast`, with the decision's `now`): the scraped load, or the
substation's newer answer, is first aged to now by the substation's forecast (aging.py): the fit
check uses the conservative aged load (never below the truth while declarations hold), the
score the expected one. Pending entries stop at the ends their accepts announced
(ledger.expire). In degraded mode no reading is aged: old forecasts are not trusted either.

Degraded mode (the snapshot is older than the configured maximum age): the policy's scores are
too old to trust, but the last known capacities and loads plus everything assigned since are a
safe upper bound; rank by that effective utilization. The same applies when the policy scored no
substation at all (e.g. a query that returns nothing). While it scores some, a substation it gave
no finite value for (NaN, Inf, no series) is not eligible, even when no scored one fits.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass

from balancer.aging import AgedLoads
from balancer.ledger import PendingLedger
from balancer.policy import Better, LoadAging, PendingAdjustment, Policy, SelectMode
from balancer.snapshot import Snapshot, SubstationView

_FIT_EPSILON_KW = 1e-9


@dataclass(frozen=True)
class Candidate:
    instance: str
    name: str
    effective_load_kw: float
    capacity_kw: float
    score: float | None   # the corrected policy score; None when ranked by utilization

    @property
    def utilization(self) -> float:
        return self.effective_load_kw / self.capacity_kw


def effective_load_kw(view: SubstationView, ledger: PendingLedger,
                      aged: AgedLoads | None = None) -> float | None:
    """The load the fit check counts: the last reading (aged when `aged` is given) plus
    pending kW."""
    if view.load_kw is None:
        return None
    observed = ledger.observed_load_kw(view.instance)
    base = view.load_kw if observed is None else observed
    if aged is not None:
        base = aged.fit_by_instance.get(view.instance, base)
    return base + ledger.pending_kw(view.instance)


def aged_loads(snapshot: Snapshot, ledger: PendingLedger, policy: Policy, now: float | None,
               degraded: bool) -> AgedLoads | None:
    """The snapshot's loads aged to `now`, when the policy asks for it and it can be done;
    the ledger forgets sessions that ended by then. None: no aging."""
    if policy.load_aging is not LoadAging.FORECAST or now is None or degraded:
        return None
    return AgedLoads.for_decision(snapshot, ledger, now)


def _adjust_kw(score: float, pending: float, capacity: float, load: float, worse: float
               ) -> float:
    return score + worse * pending


def _adjust_utilization(score: float, pending: float, capacity: float, load: float,
                        worse: float) -> float:
    return score + worse * pending / capacity


def _adjust_headroom(score: float, pending: float, capacity: float, load: float,
                     worse: float) -> float:
    headroom = capacity - load
    return score * max(0.0, headroom - pending) / headroom if headroom > 0 else 0.0


def _adjust_none(score: float, pending: float, capacity: float, load: float, worse: float
                 ) -> float:
    return score


_ADJUSTERS = {
    PendingAdjustment.KW: _adjust_kw,
    PendingAdjustment.UTILIZATION: _adjust_utilization,
    PendingAdjustment.HEADROOM: _adjust_headroom,
    PendingAdjustment.NONE: _adjust_none,
}


def adjusted_score(view: SubstationView, policy: Policy, delta_kw: float) -> float | None:
    """The policy's stale score moved by the kW the load moved since the scrape (positive:
    towards worse), in the score's own unit (see PendingAdjustment)."""
    if view.score is None or not delta_kw or not view.capacity_kw or view.load_kw is None:
        return view.score
    worse = 1.0 if policy.better is Better.LOWER else -1.0
    return _ADJUSTERS[policy.pending_adjustment](view.score, delta_kw, view.capacity_kw,
                                                 view.load_kw, worse)


def select_substation(snapshot: Snapshot, ledger: PendingLedger, policy: Policy,
                      requested_kw: float, rng: random.Random, *,
                      exclude: Collection[str] = (), degraded: bool = False,
                      now: float | None = None) -> Candidate | None:
    """The substation to try next for this request, or None if none can take it.

    `exclude` holds instances already tried for this request and those ejected for failing.
    `now` (seconds, the clock of the ledger's readings) is when the decision is made: a
    forecast-aware policy ages the loads to it.
    One pass over the snapshot, reservoir sampling for ties, building as little as possible per
    substation: this runs on every request and must stay in microseconds at 1,000 substations.
    """
    pending_get = ledger.pending_by_instance.get
    observed_get = ledger.observed_by_instance.get
    weighted = policy.select is SelectMode.WEIGHTED
    sign = 1.0 if policy.better is Better.LOWER else -1.0
    adjust = _ADJUSTERS[policy.pending_adjustment]
    tolerance = policy.tie_tolerance
    replicas = snapshot.balancers
    random_ = rng.random
    best = _Reservoir()        # scored candidates: lowest key
    fallback = _Reservoir()    # unscored candidates: lowest effective utilization
    near: list[tuple[float, SubstationView, float, float]] = []   # only with a tolerance
    drawn: list[SubstationView] = []                               # only when weighted
    weights: list[float] = []
    # While the policy scores any substation, one it gave no finite value (NaN, Inf, no series)
    # is not eligible, not even when no scored one fits: ranking by utilization is for degraded
    # mode and for a policy that scored nothing at all.
    rank_unscored = degraded or not snapshot.any_scored
    aged = aged_loads(snapshot, ledger, policy, now, degraded)
    if aged is not None:
        fit_get, expected_by = aged.fit_by_instance.get, aged.rank_by_instance
    for instance, scraped_kw, capacity, score, _, view in snapshot.usable:
        if instance in exclude:
            continue
        if aged is None:
            load = ranked = observed_get(instance, scraped_kw) + pending_get(instance, 0.0)
        else:
            fit = fit_get(instance)
            if fit is None:    # no forecast: its reading as it is
                fit = expected = observed_get(instance, scraped_kw)
            else:
                expected = expected_by[instance]   # kept for the same instances as fit
            pending = pending_get(instance, 0.0)
            load, ranked = fit + pending, expected + pending
        if load + requested_kw > capacity + _FIT_EPSILON_KW:
            continue
        if score is None or degraded:
            if rank_unscored:
                fallback.offer_lowest(ranked / capacity, view, load, None, random_)
            continue
        if ranked != scraped_kw:
            score = adjust(score, ranked - scraped_kw, capacity, scraped_kw, sign)
        if weighted:
            drawn.append(view)
            weights.append(score if score > 0.0 else 0.0)
        elif tolerance or replicas > 1:
            near.append((sign * score, view, load, score))
        else:
            best.offer_lowest(sign * score, view, load, score, random_)
    if drawn:
        view = rng.choices(drawn, weights=weights)[0] if sum(weights) > 0.0 \
            else rng.choice(drawn)
        # Load and score are recomputed for the winner only: cheaper than keeping them all.
        load = effective_load_kw(view, ledger, aged) or 0.0
        return Candidate(view.instance, view.name, load, view.capacity_kw or 0.0,
                         adjusted_score(view, policy, load - (view.load_kw or 0.0)))
    if near and replicas > 1 and not tolerance:
        return _spread_over_replicas(near, ledger, requested_kw, rng, sign, adjust, replicas)
    if near:
        low = min(row[0] for row in near)
        _, view, load, score = rng.choice([r for r in near if r[0] <= low + tolerance])
        return Candidate(view.instance, view.name, load, view.capacity_kw or 0.0, score)
    chosen = best if best.view is not None else fallback
    if chosen.view is None:
        return None
    return Candidate(chosen.view.instance, chosen.view.name, chosen.load,
                     chosen.view.capacity_kw or 0.0, chosen.score)


def _spread_over_replicas(near: list[tuple[float, SubstationView, float, float]],
                          ledger: PendingLedger, requested_kw: float,
                          rng: random.Random, sign: float,
                          adjust: Callable[[float, float, float, float, float], float],
                          replicas: int) -> Candidate:
    """With several balancers deciding on the same stale view, the best candidate may by now
    carry another mean request from one of the others. Every candidate better than that is a
    fair choice: drawn with weight by how much better, so the replicas spread a burst over
    them instead of all landing on the best one, as long as there are at least as many fair
    choices as replicas. (Assuming a request from each other replica
    cut refusals further at 4 replicas but drew so widely that the p99 spread grew:
    docs/benchmarks.md.)"""
    best_row = min(near, key=lambda row: row[0])
    _, best, _, best_score = best_row
    others_kw = ledger.mean_request_kw or requested_kw
    threshold = sign * adjust(best_score, others_kw, best.capacity_kw or 1.0, best.load_kw or 0.0,
                              sign)
    rows = [row for row in near if row[0] < threshold]
    if len(rows) < replicas:
        # Fewer fair choices than replicas (none at all for a score that ignores pending kW):
        # some land together whatever the draw, which would only add its own error (measured
        # at 2 substations, docs/benchmarks.md).
        chosen = best_row
    else:
        chosen = rng.choices(rows, weights=[threshold - row[0] for row in rows])[0]
    _, view, load, score = chosen
    return Candidate(view.instance, view.name, load, view.capacity_kw or 0.0, score)


class _Reservoir:
    """Keeps the lowest-keyed row while seeing many, uniformly at random among exact ties."""

    __slots__ = ("key", "load", "score", "total", "view")

    def __init__(self) -> None:
        self.key = math.inf
        self.total = 0.0
        self.view: SubstationView | None = None
        self.load = 0.0
        self.score: float | None = None

    def offer_lowest(self, key: float, view: SubstationView, load: float, score: float | None,
                     random_: Callable[[], float]) -> None:
        if key < self.key:
            self.key, self.total = key, 1.0
        elif key == self.key:
            self.total += 1.0          # the n-th tie replaces the keeper with probability 1/n
            if random_() * self.total >= 1.0:
                return
        else:
            return
        self.view, self.load, self.score = view, load, score


def select_despite_doubt(snapshot: Snapshot, ledger: PendingLedger, requested_kw: float, *,
                         exclude: Collection[str] = (), degraded: bool = False
                         ) -> Candidate | None:
    """When select_substation found nothing: the substation that fits once the kW its reading
    may already count are not counted twice (step 4 above), or None. Only on the no-capacity
    path, so it may look at each substation's ledger in full. Eligible as in select_substation:
    while the policy scores some substation, one it did not score is not."""
    rank_unscored = degraded or not snapshot.any_scored
    best: Candidate | None = None
    for instance, scraped_kw, capacity, score, _, view in snapshot.usable:
        if instance in exclude or (score is None and not rank_unscored):
            continue
        doubt = ledger.doubtful_kw(instance)
        if not doubt:
            continue
        load = ledger.observed_by_instance.get(instance, scraped_kw) + ledger.pending_kw(instance)
        if load - doubt + requested_kw > capacity + _FIT_EPSILON_KW:
            continue
        candidate = Candidate(instance, view.name, load - doubt, capacity, None)
        if best is None or candidate.utilization < best.utilization:
            best = candidate
    return best
