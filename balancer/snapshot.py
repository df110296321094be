"""What the balancer knows about the grid: one consistent reading of Prometheus."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class Snapshot:
    policy_name: str
    evaluated_at: float                       # when the queries ran (local clock)
    substations: Mapping[str, SubstationView]  # by instance
    problems: tuple[str, ...] = field(default=())

    def by_name(self, name: str) -> SubstationView | None:
        for view in self.substations.values():
            if view.name == name:
                return view
        return None
