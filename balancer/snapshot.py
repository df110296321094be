"""What the balancer knows about the grid: one consistent reading of Prometheus."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class SubstationView:
    """One substation as Prometheus last saw it. None means Prometheus had no usable value:
    such a substation is never chosen (absent is not zero)."""

    instance: str                 # host:port, the scrape address and where requests go
    name: str                     # the substation's own id (its `substation` label)
    up: bool
    scrape_ts: float              # timestamp(up): when Prometheus last scraped it
    load_kw: float | None
    capacity_kw: float | None
    score: float | None           # the policy's value for it, before the ledger correction
    load_seq: int | None = None   # the number of the scraped load reading, when exported
    # (horizon s, kW) of substation_load_forecast_kw, by horizon; empty when not exported
    forecast: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Snapshot:
    policy_name: str
    evaluated_at: float                       # when the queries ran (local clock)
    substations: Mapping[str, SubstationView]  # by instance
    problems: tuple[str, ...] = field(default=())
    # Balancer replicas Prometheus sees up (1 when it sees none): each decides on this same
    # stale view, so the decision spreads a burst over more candidates (selection.py).
    balancers: int = 1
    # Substations Prometheus saw within the roster window (GridQueries.roster) that are not
    # listed now under their name, instance -> name: one may still hold a session an earlier
    # dispatch placed (a target dropped from discovery keeps charging), so a resolve asks it.
    recent: Mapping[str, str] = field(default_factory=dict)

    def resolve_targets(self) -> list[str]:
        """Every substation a session placed within the roster window may be at: the listed
        ones (up or not) and the recently seen ones listed no more."""
        return [*self.substations, *(i for i in self.recent if i not in self.substations)]
    # The policy's query succeeded but gave no substation that is up a usable score (a
    # misspelt metric or label, a join that matches nothing): ranked by utilization instead.
    policy_no_data: bool = False

    @cached_property
    def data_at(self) -> float:
        """When the data in this snapshot was current: the newest scrape it holds.

        The newest, not the oldest: a target that left without a staleness marker (removed
        while Prometheus was down, or a previous run's) keeps its last `up` visible for the
        5-minute lookback, and one dead or slow substation must not put the whole balancer in
        degraded mode; each substation's own scrape time already governs its pending kW
        (ledger.settle). What the newest scrape measures is how far behind the backend's view
        is as a whole: Prometheus not scraping, or a backend that hides recent samples
        (VictoriaMetrics' latency offset, a lagging remote-write). Never later than the
        evaluation (a scrape clock ahead of ours), and the evaluation time when the snapshot
        holds no scrape time at all (an empty grid)."""
        stamps = [v.scrape_ts for v in self.substations.values() if v.scrape_ts > 0.0]
        return min(max(stamps), self.evaluated_at) if stamps else self.evaluated_at

    @cached_property
    def usable(self) -> tuple[tuple[str, float, float, float | None, float, SubstationView], ...]:
        """(instance, load_kw, capacity_kw, score, scrape_ts, view) of each substation that
        can be chosen at all: up, with known load and capacity.

        Built once per snapshot, not once per request (a snapshot serves thousands), as plain
        tuples because the decision loop unpacks them faster than it reads attributes."""
        return tuple((v.instance, v.load_kw, v.capacity_kw, v.score, v.scrape_ts, v)
                     for v in self.substations.values()
                     if v.up and v.load_kw is not None and v.capacity_kw)

    @cached_property
    def any_scored(self) -> bool:
        """Whether the policy gave any usable substation a score (once per snapshot)."""
        return any(row[3] is not None for row in self.usable)

    def by_name(self, name: str) -> SubstationView | None:
        for view in self.substations.values():
            if view.name == name:
                return view
        return None
