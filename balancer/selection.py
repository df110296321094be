"""The routing decision, in one place.

Given the cached snapshot (one scrape old), the pending ledger (what this balancer assigned since)
and a request for `requested_kw`, choose a substation:

1. Eligible: Prometheus sees it up, it is not ejected, its load and capacity are known (absent
   is never read as zero), and its effective load plus the request fits its capacity:
       effective_load_kw = max(scraped load + pending kW, load it reported when it last refused)
2. Scored: the policy's score, corrected for pending kW as the policy declares
   (`pending_adjustment`), so a burst between two scrapes spreads like water-filling instead of
   herding onto the apparently least loaded substation.
3. Chosen: `best` takes the best score, breaking ties (within `tie_tolerance`) at random, so
   several balancer replicas do not herd together; `weighted` draws at random with probability
   proportional to the score.

Degraded mode (the snapshot is older than the configured maximum age): the policy's scores are
too old to trust, but the last known capacities and loads plus everything assigned since are a
safe upper bound; rank by that effective utilization. The same applies to a substation the
policy gave no score for, when no substation has one (e.g. a policy query that returns nothing).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass

from balancer.ledger import PendingLedger
from balancer.policy import Better, PendingAdjustment, Policy, SelectMode
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


def effective_load_kw(view: SubstationView, ledger: PendingLedger) -> float | None:
    if view.load_kw is None:
        return None
    load = view.load_kw + ledger.pending_kw(view.instance)
    reported = ledger.reported_load_kw(view.instance, view.scrape_ts)
    return load if reported is None else max(load, reported)


def adjusted_score(view: SubstationView, policy: Policy, pending_kw: float) -> float | None:
    """The policy's stale score moved by what this balancer assigned since the scrape."""
    score = view.score
    if score is None or pending_kw == 0.0:
        return score
    worse = 1.0 if policy.better is Better.LOWER else -1.0
    adjustment = policy.pending_adjustment
    if adjustment is PendingAdjustment.KW:
        return score + worse * pending_kw
    if adjustment is PendingAdjustment.UTILIZATION and view.capacity_kw:
        return score + worse * pending_kw / view.capacity_kw
    if adjustment is PendingAdjustment.HEADROOM and view.capacity_kw and view.load_kw is not None:
        headroom = view.capacity_kw - view.load_kw
        if headroom <= 0:
            return 0.0
        return score * max(0.0, headroom - pending_kw) / headroom
    return score


def eligible_candidates(snapshot: Snapshot, ledger: PendingLedger, policy: Policy,
                        requested_kw: float, *, exclude: Collection[str] = (),
                        is_ejected: Callable[[SubstationView], bool] | None = None,
                        use_scores: bool = True) -> list[Candidate]:
    candidates = []
    for view in snapshot.substations.values():
        if not view.up or view.capacity_kw is None or view.instance in exclude:
            continue
        load = effective_load_kw(view, ledger)
        if load is None or load + requested_kw > view.capacity_kw + _FIT_EPSILON_KW:
            continue
        if is_ejected is not None and is_ejected(view):
            continue
        score = (adjusted_score(view, policy, ledger.pending_kw(view.instance))
                 if use_scores else None)
        candidates.append(Candidate(view.instance, view.name, load, view.capacity_kw, score))
    return candidates


def choose_best(candidates: list[Candidate], key: Callable[[Candidate], float],
                tolerance: float, rng: random.Random) -> Candidate:
    best = min(key(c) for c in candidates)
    near = [c for c in candidates if key(c) <= best + tolerance]
    return near[0] if len(near) == 1 else rng.choice(near)


def choose_weighted(candidates: list[Candidate], rng: random.Random) -> Candidate:
    weights = [max(c.score or 0.0, 0.0) for c in candidates]
    if sum(weights) <= 0.0:
        return rng.choice(candidates)
    return rng.choices(candidates, weights=weights, k=1)[0]


def select_substation(snapshot: Snapshot, ledger: PendingLedger, policy: Policy,
                      requested_kw: float, rng: random.Random, *,
                      exclude: Collection[str] = (),
                      is_ejected: Callable[[SubstationView], bool] | None = None,
                      degraded: bool = False) -> Candidate | None:
    """The substation to try next for this request, or None if none can take it."""
    candidates = eligible_candidates(snapshot, ledger, policy, requested_kw, exclude=exclude,
                                     is_ejected=is_ejected, use_scores=not degraded)
    scored = [c for c in candidates if c.score is not None]
    if not scored:
        if not candidates:
            return None
        return choose_best(candidates, lambda c: c.utilization, 0.0, rng)
    if policy.select is SelectMode.WEIGHTED:
        return choose_weighted(scored, rng)
    sign = 1.0 if policy.better is Better.LOWER else -1.0
    return choose_best(scored, lambda c: sign * (c.score or 0.0), policy.tie_tolerance, rng)
