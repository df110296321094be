"""The pending ledger: kW this balancer assigned that Prometheus has not seen yet.

Prometheus data is one scrape old. Without this, every request of a burst sees the same stale
loads and goes to the same substation (herding). An assignment is pending from the moment it is
reserved (before forwarding, so concurrent decisions see it) until a scrape that started after
the substation confirmed it: that scrape's `substation_load` includes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Entry:
    kw: float
    confirmed_at: float | None = None   # None while the forward is in flight


@dataclass
class _SubstationLedger:
    entries: dict[str, _Entry] = field(default_factory=dict)
    pending_kw: float = 0.0


class PendingLedger:
    """Per-substation pending kW, O(1) to read on the decision path."""

    def __init__(self, clock_skew_s: float = 0.5) -> None:
        # Scrape timestamps come from Prometheus's clock and confirmations from ours; an entry is
        # only dropped once a scrape started clearly after it, with this much slack for skew.
        self.clock_skew_s = clock_skew_s
        self._by_instance: dict[str, _SubstationLedger] = {}
        # Plain dicts the decision loop reads directly: one lookup per substation per request.
        self.pending_by_instance: dict[str, float] = {}
        self.reported_by_instance: dict[str, tuple[float, float]] = {}

    def pending_kw(self, instance: str) -> float:
        return self.pending_by_instance.get(instance, 0.0)

    def reported_load_kw(self, instance: str, scrape_ts: float) -> float | None:
        """The load a substation reported when refusing, if newer than the scrape."""
        reported = self.reported_by_instance.get(instance)
        if reported is None or reported[1] <= scrape_ts:
            return None
        return reported[0]

    def _set_pending(self, instance: str, book: _SubstationLedger) -> None:
        if book.entries:
            self.pending_by_instance[instance] = book.pending_kw
        else:
            book.pending_kw = 0.0   # no float drift survives an empty book
            self.pending_by_instance.pop(instance, None)

    def reserve(self, instance: str, session_id: str, kw: float) -> None:
        book = self._by_instance.setdefault(instance, _SubstationLedger())
        if session_id in book.entries:
            return
        book.entries[session_id] = _Entry(kw=kw)
        book.pending_kw += kw
        self._set_pending(instance, book)

    def confirm(self, instance: str, session_id: str, now: float) -> None:
        book = self._by_instance.get(instance)
        entry = book.entries.get(session_id) if book else None
        if entry is not None:
            entry.confirmed_at = now

    def release(self, instance: str, session_id: str) -> None:
        """The substation did not take it: it was never load."""
        book = self._by_instance.get(instance)
        entry = book.entries.pop(session_id, None) if book else None
        if book is not None and entry is not None:
            book.pending_kw = max(0.0, book.pending_kw - entry.kw)
            self._set_pending(instance, book)

    def note_refusal(self, instance: str, reported_load_kw: float, now: float) -> None:
        self.reported_by_instance[instance] = (reported_load_kw, now)

    def settle(self, instance: str, scrape_ts: float) -> None:
        """A scrape at `scrape_ts` is in the snapshot: drop what it already counts."""
        horizon = scrape_ts - self.clock_skew_s
        reported = self.reported_by_instance.get(instance)
        if reported is not None and reported[1] <= horizon:
            del self.reported_by_instance[instance]
        book = self._by_instance.get(instance)
        if book is None:
            return
        seen = [sid for sid, e in book.entries.items()
                if e.confirmed_at is not None and e.confirmed_at <= horizon]
        for sid in seen:
            book.pending_kw -= book.entries.pop(sid).kw
        self._set_pending(instance, book)

    def forget_except(self, instances: set[str]) -> None:
        """Drop books of substations that left the grid, so memory stays bounded."""
        for gone in set(self._by_instance) - instances:
            del self._by_instance[gone]
            self.pending_by_instance.pop(gone, None)
        for gone in set(self.reported_by_instance) - instances:
            del self.reported_by_instance[gone]

    def snapshot(self) -> dict[str, float]:
        return dict(self.pending_by_instance)
