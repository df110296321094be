"""Passive health: eject a substation that fails requests, like Envoy's outlier detection.

A substation is ejected after `consecutive_failures` failed forwards (connection refused or
reset, 5xx), for `base_ejection_s` times the number of times it has been ejected, capped at
`max_ejection_s`. It comes back when that time has passed and a scrape newer than the ejection
shows it up. Never more than `max_ejected_fraction` of the substations are ejected at once:
piling every request onto the last few would overload them (Envoy's panic threshold idea).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from balancer.snapshot import SubstationView


@dataclass
class _Record:
    failures: int = 0
    ejections: int = 0
    ejected_at: float | None = None
    ejected_until: float = 0.0


class OutlierDetector:
    def __init__(self, consecutive_failures: int = 2, base_ejection_s: float = 5.0,
                 max_ejection_s: float = 60.0, max_ejected_fraction: float = 0.5) -> None:
        self.consecutive_failures = consecutive_failures
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self.max_ejected_fraction = max_ejected_fraction
        self._records: dict[str, _Record] = {}

    def record_success(self, instance: str) -> None:
        record = self._records.get(instance)
        if record is not None:
            record.failures = 0

    def record_failure(self, instance: str, now: float, total_substations: int) -> bool:
        """Count a failure; True if this ejected the substation."""
        record = self._records.setdefault(instance, _Record())
        record.failures += 1
        if record.ejected_at is not None or record.failures < self.consecutive_failures:
            return False
        if self.ejected_count() + 1 > self.max_ejected_fraction * max(total_substations, 1):
            return False
        record.ejections += 1
        record.ejected_at = now
        record.ejected_until = now + min(self.base_ejection_s * record.ejections,
                                         self.max_ejection_s)
        return True

    def is_ejected(self, instance: str, now: float, scrape_ts: float, up: bool) -> bool:
        record = self._records.get(instance)
        if record is None or record.ejected_at is None:
            return False
        if now >= record.ejected_until and up and scrape_ts > record.ejected_at:
            record.ejected_at = None
            record.failures = 0
            return False
        return True

    def ejected_now(self, now: float, views: Mapping[str, SubstationView]) -> set[str]:
        """Instances to skip now; re-admits those whose backoff ended and that scrape up."""
        ejected = set()
        for instance, record in self._records.items():
            if record.ejected_at is None:
                continue
            view = views.get(instance)
            up, scrape_ts = (view.up, view.scrape_ts) if view else (False, 0.0)
            if self.is_ejected(instance, now, scrape_ts, up):
                ejected.add(instance)
        return ejected

    def ejected_count(self) -> int:
        return sum(1 for r in self._records.values() if r.ejected_at is not None)

    def ejected(self) -> list[str]:
        return sorted(i for i, r in self._records.items() if r.ejected_at is not None)

    def forget_except(self, instances: set[str]) -> None:
        for gone in set(self._records) - instances:
            del self._records[gone]
