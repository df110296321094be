"""The ingress record state machine (ingress/idempotency.py) and its reconciler, as a hypothesis
stateful test over the placement machine's world (tests/unit/test_placement_properties.py).

On top of the clients, substations and faults of that machine, this one adds what issue 16 found
broken: a balancer that cannot be reached (nothing sent), a resolve while Prometheus lists no
substation, the reconciler resolving PENDING records in the background, and substations
forgetting ended sessions once the reconciler has had its chance. It asserts, after every step,
the invariants of the placement machine plus:
- a record is ABSENT only while the session is active nowhere (inherited) and every copy still on
  its way is fenced out;
- a session that ended is never active again (its energy is delivered once).
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, rule

from balancer.placement import Deadline, Placement
from gridlb.charge import SessionCharge
from ingress.idempotency import (
    Dispatch,
    RecordState,
    Replay,
    after_answer,
    evidence_of,
    next_step,
    reconcile_step,
)
from tests.unit.test_placement_properties import (
    KEYS,
    KW,
    SUBSTATIONS,
    LeastLoadedChooser,
    PlacementMachine,
    Running,
)


class RecordMachine(PlacementMachine):
    @initialize()
    def start(self) -> None:
        """Time here jumps by days to complete sessions. In real time the reconciler asks every
        few seconds while a substation keeps an ended session for 10 minutes and a fence for a
        day, so forgetting is a rule of its own below (after the reconciler had its chance), and
        fences outlive every late copy."""
        super().start()
        for table in self.grid.tables.values():
            table.retention_s = table.fence_retention_s = 1e12

    def _placement(self, session_id: str, epoch: int) -> Placement:
        charge = SessionCharge("ev", KW, 30.0, session_id=session_id, epoch=epoch)
        return Placement(charge, self.grid, LeastLoadedChooser(self.grid),
                         Deadline(60.0, clock=lambda: self.grid.now), forward_timeout_s=1.0,
                         max_attempts=3)

    def _observe_ended(self) -> None:
        ended: set[str] = getattr(self, "ever_ended", set())
        for table in self.grid.tables.values():
            ended |= set(table.ended)
        self.ever_ended = ended

    @rule(key=st.sampled_from(KEYS))
    def no_balancer_can_be_reached(self, key: str) -> None:
        """A retry while every balancer replica is down: nothing is sent."""
        if self.busy(key):
            return
        before = self.records.get(key)
        step = next_step(before, "tenant", key, "same-request", self.grid.now)
        if isinstance(step, Replay) or not isinstance(step, Dispatch):
            return
        self.records[key] = after_answer(
            before, step.record, evidence_of("unreachable", 0, None, step.resolve), 503,
            {"error": "balancer_unavailable"}, self.grid.now)

    @rule(key=st.sampled_from(KEYS))
    def a_retry_while_prometheus_lists_nothing(self, key: str) -> None:
        """The balancer resolves with an empty list of substations to ask."""
        if self.busy(key):
            return
        before = self.records.get(key)
        step = next_step(before, "tenant", key, "same-request", self.grid.now)
        if not isinstance(step, Dispatch):
            return
        record = self.records[key] = step.record
        placement = self._placement(record.session_id, record.epoch)
        # Listing nothing, a fresh dispatch has nowhere to go and a resolve nothing to ask.
        task = self.loop.create_task(placement.run(() if step.resolve else None))
        self.running.append(Running(key, record, task, before=before, resolve=step.resolve))
        self.settle()

    @rule(forget=st.booleans())
    def the_reconciler_runs(self, forget: bool) -> None:
        """Every PENDING record nobody is answering is resolved at its next epoch (placing
        nothing); then, if `forget`, the substations that answered forget their ended sessions:
        in real time the reconciler runs every few seconds, a substation forgets 10 minutes
        after the end."""
        for key, before in list(self.records.items()):
            record = reconcile_step(before, self.grid.now)
            if record is None or self.busy(key):
                continue
            self.records[key] = record
            task = self.loop.create_task(
                self._placement(record.session_id, record.epoch).run(SUBSTATIONS, place=False))
            self.running.append(Running(key, record, task, before=before, resolve=True))
        self.settle()
        self._observe_ended()
        if forget:
            for instance, table in self.grid.tables.items():
                if self.grid.modes[instance] == "ok":
                    table.retention_s = 0.0
                    table.prune(self.grid.now + 1.0)
                    table.retention_s = 1e12

    @rule()
    def time_passes_and_sessions_complete(self) -> None:
        super().time_passes_and_sessions_complete()
        self._observe_ended()

    @invariant()
    def an_ended_session_never_charges_again(self) -> None:
        if not hasattr(self, "grid"):
            return
        self._observe_ended()
        for session_id in self.ever_ended:
            assert self.grid.holders(session_id) == [], f"{session_id} charges a second time"

    @invariant()
    def an_absent_record_has_no_copy_that_could_still_start(self) -> None:
        if not hasattr(self, "grid"):
            return
        for record in self.records.values():
            if record.state is not RecordState.ABSENT:
                continue
            for copy in self.grid.late:
                if copy.op == "charge" and copy.args[0].session_id == record.session_id:
                    table = self.grid.tables[copy.instance]
                    fence = table.fences.get(record.session_id, (0, 0.0))[0]
                    assert copy.args[0].epoch < fence, (record, copy)


TestRecordProtocol = RecordMachine.TestCase
