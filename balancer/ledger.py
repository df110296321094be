"""The pending ledger: kW this balancer assigned that its last observation does not include.

Prometheus data is one scrape old. Without this, every request of a burst sees the same stale
loads and goes to the same substation (herding). An assignment is pending from the moment it is
reserved (before forwarding, so concurrent decisions see it) until an observation of that
substation's load includes it:
- a scrape that started after the substation confirmed it (`settle`), or
- the substation's own answer: every answer (accept or refusal) carries its load at that moment
  and the sequence number of that reading (`load_seq`), which includes everything the substation
  admitted up to it (`observe`). Answers to concurrent requests can arrive in any order: only a
  reading newer than the one kept counts, and an entry is dropped by a reading whose sequence is
  at least that of the accept that confirmed it. This keeps the view fresh between scrapes, and
  while Prometheus is down (degraded mode) it stops the ledger from only growing.

The invariant (tests/unit/test_ledger_properties.py): the load a decision counts, the base
reading plus pending kW, is never below the substation's true load, and above it only by kW
whose answers are still on the way. The base's number is the kept answer's or, once a scrape
replaced it, the scrape's: an older answer arriving later never becomes the base again (it
misses what the scrape counts and the ledger no longer holds), and an accept arriving after a
reading that counts it leaves the ledger at once (else counted twice until the next reading).

A session also stops being load when it ends. An accept may say when (`ends_at`, the end of its
declared energy, for `load_aging: forecast`): `expire(now)` then stops counting it, both while
it is pending and inside a substation's answer that included it (until a scrape, whose forecast
knows its end, replaces that answer). Ends are taken `clock_skew_s` late, never early. An answer
that carries its own forecast (`load_forecast_kw`) knows the ends of all it counts: aging.py
ages it by that, and no end inside it is tracked here.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

_MEAN_WEIGHT = 0.01


@dataclass
class _Entry:
    kw: float
    confirmed_at: float | None = None   # None while the forward is in flight
    confirmed_seq: int | None = None    # the load_seq of the accept (it includes this entry)
    reserved_tick: int = 0              # when reserved, in the ledger's own event order
    ends_at: float | None = None        # when the substation expects it to end, if it said


@dataclass
class _SubstationLedger:
    entries: dict[str, _Entry] = field(default_factory=dict)
    pending_kw: float = 0.0


class PendingLedger:
    """Per-substation pending kW, O(1) to read on the decision path."""

    def __init__(self, clock_skew_s: float = 0.5, end_horizon_s: float = 600.0,
                 end_margin_s: float = 1.0) -> None:
        # Scrape timestamps come from Prometheus's clock and confirmations from ours; an entry is
        # only dropped once a scrape started clearly after it, with this much slack for skew.
        self.clock_skew_s = clock_skew_s
        self._by_instance: dict[str, _SubstationLedger] = {}
        # Plain dicts the decision loop reads directly: one lookup per substation per request.
        self.pending_by_instance: dict[str, float] = {}
        self.observed_by_instance: dict[str, float] = {}   # load_kw the substation reported
        self.observed_at_by_instance: dict[str, float] = {}   # when, on our clock
        # The answer's own forecast, when it carried one: ((horizon_s, kW), ...) after it.
        self.observed_forecast_by_instance: dict[str, tuple[tuple[float, float], ...]] = {}
        self._observed_seq: dict[str, int] = {}
        # Event order of reservations and readings: a reading received after a reservation may
        # already include that session (admitted, its answer still on the way).
        self._tick = 0
        self._observed_tick: dict[str, int] = {}
        # Ends to act on, earliest first: (when, what, instance, key). `what` 0 is a pending
        # entry (key: session id), 1 a session inside the kept answer (key: its number).
        self._ends: list[tuple[float, int, str, str]] = []
        # Sessions the kept answer of an instance includes whose end we know: number -> kW
        self._included: dict[str, dict[str, tuple[float, float]]] = {}
        self._included_count = 0
        # Only ends this soon after the accept are tracked: a scrape settles the rest long
        # before (counting them until then is the safe side), and memory stays bounded by the
        # request rate times this.
        self.end_horizon_s = end_horizon_s
        # An announced end is when a session leaves the load at the latest (its substation's
        # next tick); it may leave up to a tick earlier. A reading taken within this margin
        # before an end may or may not count the session, so it is never taken off that
        # reading (counting it is the safe side). Must cover the tick plus the clock skew.
        self.end_margin_s = end_margin_s
        # Instances whose kept reading changed (for aging.py, which recomputes only those), and
        # the state aging.py derives from this ledger: each ledger (replica) has its own.
        self.readings_changed: set[str] = set()
        self.aging_state: object | None = None
        # The mean requested kW (moving average over about the last 100 requests): what another
        # replica may have sent the best candidate meanwhile (selection.py).
        self.mean_request_kw: float | None = None

    def pending_kw(self, instance: str) -> float:
        return self.pending_by_instance.get(instance, 0.0)

    def observed_load_kw(self, instance: str) -> float | None:
        """The load the substation itself reported, when newer than the last scrape."""
        return self.observed_by_instance.get(instance)

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
        mean = self.mean_request_kw
        self.mean_request_kw = kw if mean is None else mean + _MEAN_WEIGHT * (kw - mean)
        self._tick += 1
        book.entries[session_id] = _Entry(kw=kw, reserved_tick=self._tick)
        book.pending_kw += kw
        self._set_pending(instance, book)

    def confirm(self, instance: str, session_id: str, now: float, seq: int | None = None,
                ends_at: float | None = None) -> None:
        book = self._by_instance.get(instance)
        entry = book.entries.get(session_id) if book else None
        if entry is None or book is None:
            return
        entry.confirmed_at, entry.confirmed_seq = now, seq
        if ends_at is not None and ends_at - now <= self.end_horizon_s:
            entry.ends_at = ends_at
            heapq.heappush(self._ends, (ends_at + self.clock_skew_s, 0, instance, session_id))
        base_seq = self._observed_seq.get(instance)
        if seq is not None and base_seq is not None and seq <= base_seq:
            # Its accept arrived after a newer reading (an answer or a scrape) that counts it:
            # pending until the next reading, it would be counted twice meanwhile.
            # Only this entry: what the base counts of the others was settled with it.
            self._absorb(instance, book, session_id, self.observed_at_by_instance.get(instance))
            self._set_pending(instance, book)

    def expire(self, now: float) -> None:
        """Stop counting sessions that have ended by `now` (by the ends their accepts said).
        Cheap when nothing ends: the decision path calls it before every choice."""
        ends = self._ends
        while ends and ends[0][0] <= now:
            _, what, instance, key = heapq.heappop(ends)
            if what == 0:
                book = self._by_instance.get(instance)
                entry = book.entries.get(key) if book else None
                if entry is not None and entry.ends_at is not None:
                    self.release(instance, key)
                continue
            included = self._included.get(instance)
            ended = included.pop(key, None) if included else None
            observed = self.observed_by_instance.get(instance)
            if ended is not None and observed is not None:
                self.observed_by_instance[instance] = max(0.0, observed - ended[1])
                self.readings_changed.add(instance)

    def doubtful_kw(self, instance: str) -> float:
        """Pending kW the kept reading may count already: forwards still in flight that were
        reserved before that reading arrived (admitted before it, their answers on the way).
        Counting them twice is the safe side for a moment; this says how much it can be."""
        book = self._by_instance.get(instance)
        seen = self._observed_tick.get(instance)
        if book is None or seen is None or instance not in self.observed_by_instance:
            return 0.0
        return sum(e.kw for e in book.entries.values()
                   if e.confirmed_at is None and e.reserved_tick < seen)

    def release(self, instance: str, session_id: str) -> None:
        """The substation did not take it: it was never load."""
        book = self._by_instance.get(instance)
        entry = book.entries.pop(session_id, None) if book else None
        if book is not None and entry is not None:
            book.pending_kw = max(0.0, book.pending_kw - entry.kw)
            self._set_pending(instance, book)

    def observe(self, instance: str, load_kw: float, at: float, seq: int | None = None,
                forecast: tuple[tuple[float, float], ...] | None = None) -> bool:
        """The substation answered with its load (reading `seq`, received at `at` on our
        clock): what it had admitted by then is in that number, so it is no longer pending.
        False, and nothing changes, when a newer reading is already kept.

        `forecast`: the answer's own load forecast ((horizon_s, kW) after the reading), which
        knows the end of every session in the reading, so no end is tracked here for it."""
        kept = self._observed_seq.get(instance)
        if seq is not None and kept is not None and seq <= kept:
            return False
        self.observed_by_instance[instance] = load_kw
        self.observed_at_by_instance[instance] = at
        self.readings_changed.add(instance)
        included = self._included.get(instance)
        if forecast:
            self.observed_forecast_by_instance[instance] = forecast
            self._included.pop(instance, None)
        else:
            self.observed_forecast_by_instance.pop(instance, None)
        if included and not forecast:
            # A session that may have ended before this reading may be missing from it: it is
            # never taken off again (that could count an end twice).
            for key in [k for k, (ends_at, _) in included.items()
                        if not self.surely_before_end(at, ends_at)]:
                del included[key]
        self._tick += 1
        self._observed_tick[instance] = self._tick
        if seq is None:
            self._observed_seq.pop(instance, None)
        else:
            self._observed_seq[instance] = seq
        book = self._by_instance.get(instance)
        if book is not None:
            self._drop_confirmed(instance, book, at, seq, reading_at=at)
        return True

    def settle(self, instance: str, scrape_ts: float, seq: int | None = None) -> None:
        """A scrape at `scrape_ts` (of reading `seq`, when the substation exports it) is in the
        snapshot: drop what it already counts. With `seq` that is exact: accepts and answers
        numbered up to it; without, by time, with slack for clock skew."""
        horizon = scrape_ts - self.clock_skew_s
        observed_at = self.observed_at_by_instance.get(instance)
        kept_seq = self._observed_seq.get(instance)
        if seq is not None and kept_seq is not None:
            scrape_is_newer = kept_seq <= seq
        else:
            scrape_is_newer = observed_at is not None and observed_at <= horizon
        if seq is not None and (observed_at is None or scrape_is_newer) and \
                (kept_seq is None or kept_seq < seq):
            # The scrape is the base: an answer older than it, arriving after it, must not
            # become the base again (it misses what the scrape counts and the ledger, settled,
            # no longer holds), and an accept it counts is settled when it arrives.
            self._observed_seq[instance] = seq
        if observed_at is not None and scrape_is_newer:
            # The scrape is newer: it is the base again. Sequences keep ordering the answers.
            # (Its tick may stay: doubtful_kw asks only while a reading is kept.)
            del self.observed_by_instance[instance], self.observed_at_by_instance[instance]
            self.observed_forecast_by_instance.pop(instance, None)
            self._included.pop(instance, None)   # the scrape's forecast knows their ends
            self.readings_changed.add(instance)
        book = self._by_instance.get(instance)
        if book is not None:
            self._drop_confirmed(instance, book, horizon, seq, reading_at=None)

    def _drop_confirmed(self, instance: str, book: _SubstationLedger, horizon: float,
                        seq: int | None, reading_at: float | None) -> None:
        """Drop the confirmed entries a reading counts: numbered up to `seq`, or (unnumbered)
        confirmed by `horizon`. `reading_at`: when the reading is a kept answer, its time."""
        def included(e: _Entry) -> bool:
            if e.confirmed_at is None:
                return False
            if seq is not None and e.confirmed_seq is not None:
                return e.confirmed_seq <= seq
            return e.confirmed_at <= horizon
        seen = [sid for sid, e in book.entries.items() if included(e)]
        for sid in seen:
            self._absorb(instance, book, sid, reading_at)
        self._set_pending(instance, book)

    def _absorb(self, instance: str, book: _SubstationLedger, session_id: str,
                reading_at: float | None) -> None:
        """The base reading counts this entry: it is no longer pending. When that reading is a
        kept answer (taken at `reading_at`) without a forecast of its own, the entry's end is
        tracked inside it; a scrape's forecast knows the end already."""
        entry = book.entries.pop(session_id)
        book.pending_kw -= entry.kw
        if reading_at is not None and entry.ends_at is not None and \
                instance not in self.observed_forecast_by_instance and \
                self.surely_before_end(reading_at, entry.ends_at):
            self._include(instance, entry.ends_at, entry.kw)

    def surely_before_end(self, reading_at: float, ends_at: float) -> bool:
        """Whether a reading at `reading_at` (our clock) surely still counted a session that
        leaves by `ends_at` (its substation's clock)."""
        return reading_at < ends_at - self.end_margin_s - self.clock_skew_s

    def _include(self, instance: str, ends_at: float, kw: float) -> None:
        """The kept answer counts this session: take it off that answer when it ends."""
        self._included_count += 1
        key = str(self._included_count)
        self._included.setdefault(instance, {})[key] = (ends_at, kw)
        heapq.heappush(self._ends, (ends_at + self.clock_skew_s, 1, instance, key))

    def forget_except(self, instances: set[str]) -> None:
        """Drop books of substations that left the grid, so memory stays bounded."""
        for gone in set(self._by_instance) - instances:
            del self._by_instance[gone]
            self.pending_by_instance.pop(gone, None)
        for gone in set(self.observed_by_instance) - instances:
            del self.observed_by_instance[gone], self.observed_at_by_instance[gone]
            self._observed_tick.pop(gone, None)
            self.observed_forecast_by_instance.pop(gone, None)
        for gone in set(self._observed_seq) - instances:
            del self._observed_seq[gone]
        for gone in set(self._included) - instances:
            del self._included[gone]
        self.readings_changed &= instances
        # Ends of forgotten instances are skipped when they come up (nothing to act on).

    def snapshot(self) -> dict[str, float]:
        return dict(self.pending_by_instance)
