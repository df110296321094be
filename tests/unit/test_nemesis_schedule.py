"""The nemesis's schedule: reproducible from its seed, overlapping, one fault per target at once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gridlb.charge import DEFAULT_MIN_KW
from tests.nemesis.runner import Workload, plan_requests
from tests.nemesis.schedule import KINDS, Topology, make_schedule, render

TOPOLOGY = Topology(("sub-a", "sub-b", "sub-c"), ("balancer", "balancer-2", "balancer-3"), 2)


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert make_schedule(7, 60, TOPOLOGY) == make_schedule(7, 60, TOPOLOGY)
    assert make_schedule(7, 60, TOPOLOGY) != make_schedule(8, 60, TOPOLOGY)
    text = render(7, make_schedule(7, 60, TOPOLOGY))
    assert text.startswith("schedule (seed 7): ") and "kill" in text


def test_a_long_run_combines_every_kind_of_fault_and_overlaps_them() -> None:
    faults = make_schedule(1, 300, TOPOLOGY)
    assert {f.kind for f in faults} == set(KINDS)
    overlapping = [(a, b) for i, a in enumerate(faults) for b in faults[i + 1:]
                   if b.at < a.at + a.duration]
    assert len(overlapping) >= 10
    # A slow disk and a kill of the same substation may overlap: a crash mid-commit.
    disks = {f.target.removeprefix("disk:") for f in faults if f.kind == "slow_disk"}
    assert disks <= set(TOPOLOGY.substations)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32), st.floats(5.0, 200.0))
def test_faults_on_one_target_never_overlap_and_all_are_undone_in_time(seed: int,
                                                                     duration: float) -> None:
    faults = make_schedule(seed, duration, TOPOLOGY)
    held: dict[str, list[tuple[float, float]]] = {}
    for f in faults:
        assert 2.0 <= f.at <= duration - 1.0 and f.at + f.duration <= duration + 1e-9
        # The replica count starts and stops replicas 2 and 3: it holds them, and they it.
        names = {f.target}
        if f.target == "replicas":
            names |= {"balancer-2", "balancer-3"}
        elif f.target in ("balancer-2", "balancer-3"):
            names.add("replicas")
        for name in names:
            for start, end in held.get(name, []):
                assert f.at >= end - 1e-9 or f.at + f.duration <= start, (name, f)
            held.setdefault(name, []).append((f.at, f.at + f.duration + 1.0))
    assert [f.at for f in faults] == sorted(f.at for f in faults)


def test_the_same_seed_gives_the_same_requests() -> None:
    workload = Workload(rate_per_s=3.0, keyless_share=0.25)
    first, again = plan_requests(5, 60, workload), plan_requests(5, 60, workload)
    assert first == again and first != plan_requests(6, 60, workload)
    assert 120 <= len(first) <= 240 and all(0 < p.at <= 60 for p in first)
    keyless = sum(1 for p in first if p.request.key is None)
    assert 0.1 < keyless / len(first) < 0.4
    # One vehicle per request: the history tells which sessions each request started.
    assert len({p.request.vehicle_id for p in first}) == len(first)


def test_adaptive_requests_get_a_floor_and_a_departure_and_leave_the_rest_as_it_was() -> None:
    plain = plan_requests(5, 60, Workload())
    adaptive = plan_requests(5, 60, Workload(adaptive_share=0.5))
    # The same requests, times and stops: only floors and departures are added.
    assert [(p.at, p.request.requested_kw, p.request.key, p.stop_after) for p in plain] == \
        [(p.at, p.request.requested_kw, p.request.key, p.stop_after) for p in adaptive]
    assert all(p.request.min_kw is None and p.request.departure_in_s is None for p in plain)
    floors = [p.request for p in adaptive if p.request.min_kw is not None]
    assert 0.35 < len(floors) / len(adaptive) < 0.65
    assert all(DEFAULT_MIN_KW <= r.min_kw <= r.requested_kw for r in floors
               if r.min_kw is not None)
    assert any(r.min_kw is not None and r.min_kw < r.requested_kw / 2 for r in floors)
    assert all(r.departure_in_s is not None and 3.0 <= r.departure_in_s <= 15.0
               for r in floors)


def test_ingress_replicas_and_their_postgresql_are_targets_of_process_faults() -> None:
    topology = Topology(("sub-a", "sub-b"), ("balancer",), 1, ("ingress", "ingress-2"),
                        "postgresql")
    assert topology.processes == ("sub-a", "sub-b", "balancer", "ingress", "ingress-2",
                                  "prometheus", "postgres")
    targets = {f.target for f in make_schedule(1, 300, topology) if f.kind == "kill"}
    assert {"ingress", "ingress-2", "postgres"} <= targets
    # The default shape is what it always was: the seeds of earlier runs keep their schedules.
    assert Topology(("sub-a",), ("balancer",), 1).processes == ("sub-a", "balancer", "ingress",
                                                                "prometheus")
