"""Property-based test of the pending ledger (balancer/ledger.py) against a substation that
numbers its readings, with requests and answers in flight in any order, scrapes and refreshes
at any moment, and refreshes whose load is newer than their reading number (a scrape landing
between the two queries, balancer/prom.py).

After every step the load a decision counts (the kept reading, or the snapshot's load, plus
pending kW) is
- never below the substation's true load (L1): an undercount is how a burst overfills one
  substation, and
- above it by no more than the kW whose answers are still on the way, plus the kW a refresh's
  load counts beyond its reading number while that refresh is the base (L2): kW counted twice
  for longer make the balancer send the next requests elsewhere for nothing.
"""

from __future__ import annotations

import dataclasses

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from balancer.ledger import PendingLedger

INSTANCE = "s"
EPSILON_KW = 1e-6


@dataclasses.dataclass(frozen=True)
class Reading:
    load_kw: float
    seq: int
    at: float


@dataclasses.dataclass
class Forward:
    session_id: str
    kw: float
    answer: tuple[bool, Reading] | None = None   # (admitted, the reading it carries), once there


@settings(max_examples=300, stateful_step_count=50, deadline=None)
class LedgerMachine(RuleBasedStateMachine):
    @initialize(start_kw=st.sampled_from([0.0, 22.0]))
    def start(self, start_kw: float) -> None:
        self.ledger = PendingLedger(clock_skew_s=0.5)
        self.now = 1000.0
        self.load_kw, self.seq = start_kw, 7
        self.history = [Reading(start_kw, 7, self.now)]   # every reading, in order
        self.scrapes = [self.history[0]]
        self.forwards: list[Forward] = []   # reserved, answer not processed yet
        self.sent = 0
        # The snapshot in place: the load it reads and the reading number it settles with.
        self.snapshot_load_kw, self.snapshot_seq = start_kw, 7

    def tick(self) -> float:
        self.now += 0.01
        return self.now

    def reading(self) -> Reading:
        return Reading(self.load_kw, self.seq, self.tick())

    @rule(kw=st.sampled_from([3.7, 7.0, 11.0, 22.0]))
    def reserve(self, kw: float) -> None:
        self.sent += 1
        forward = Forward(f"x{self.sent}", kw)
        self.ledger.reserve(INSTANCE, forward.session_id, kw)
        self.forwards.append(forward)

    @precondition(lambda self: any(f.answer is None for f in self.forwards))
    @rule(pick=st.integers(0, 50), admit=st.booleans())
    def arrive(self, pick: int, admit: bool) -> None:
        """A forward reaches the substation, in any order: admitted or refused."""
        waiting = [f for f in self.forwards if f.answer is None]
        forward = waiting[pick % len(waiting)]
        if admit:
            self.load_kw += forward.kw
            self.seq += 1
            self.history.append(Reading(self.load_kw, self.seq, self.tick()))
        forward.answer = (admit, self.reading())

    @precondition(lambda self: any(f.answer is not None for f in self.forwards))
    @rule(pick=st.integers(0, 50), with_reading=st.booleans())
    def answer(self, pick: int, with_reading: bool) -> None:
        """An answer reaches the balancer, in any order, with the substation's reading or
        without (a substation that does not report its load)."""
        answered = [f for f in self.forwards if f.answer is not None]
        forward = answered[pick % len(answered)]
        assert forward.answer is not None
        admitted, reading = forward.answer
        now = self.tick()
        if admitted:
            self.ledger.confirm(INSTANCE, forward.session_id, now, reading.seq)
        else:
            self.ledger.release(INSTANCE, forward.session_id)
        if with_reading:
            self.ledger.observe(INSTANCE, reading.load_kw, now, reading.seq)
        self.forwards.remove(forward)

    @rule()
    def scrape(self) -> None:
        self.scrapes.append(self.reading())

    @rule(load_from=st.integers(0, 3))
    def refresh(self, load_from: int) -> None:
        """Install the latest scrape; its load may come from a scrape up to three newer than
        its number (each query sees at least what the one before saw)."""
        numbered = max(0, len(self.scrapes) - 1 - load_from)
        number, load = self.scrapes[numbered], self.scrapes[-1]
        self.snapshot_load_kw, self.snapshot_seq = load.load_kw, number.seq
        self.ledger.settle(INSTANCE, number.at, number.seq)

    def counted_kw(self) -> float:
        observed = self.ledger.observed_load_kw(INSTANCE)
        base = self.snapshot_load_kw if observed is None else observed
        return base + self.ledger.pending_kw(INSTANCE)

    @invariant()
    def never_below_the_truth(self) -> None:                                     # L1
        assert self.counted_kw() >= self.load_kw - EPSILON_KW

    @invariant()
    def above_the_truth_only_by_what_is_in_doubt(self) -> None:                  # L2
        in_flight_kw = sum(f.kw for f in self.forwards)
        beyond_number_kw = 0.0
        if self.ledger.observed_load_kw(INSTANCE) is None:
            numbered = next(r for r in self.history if r.seq == self.snapshot_seq)
            beyond_number_kw = self.snapshot_load_kw - numbered.load_kw
        assert self.counted_kw() <= self.load_kw + in_flight_kw + beyond_number_kw + \
            EPSILON_KW


TestLedgerMachine = LedgerMachine.TestCase
