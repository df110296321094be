"""The nemesis's schedule: reproducible from its seed, overlapping, one fault per target at once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

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
