"""Several balancer replicas on one stale view: how many Prometheus sees, and how the decision
spreads a burst over the candidates instead of every replica landing on the same one."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

import pytest

from balancer.ledger import PendingLedger
from balancer.prom import read_balancers
from balancer.selection import select_substation
from tests.conftest import make_policy, make_snapshot, series, view
from tests.unit.test_prom_answers import Q, snapshot_from, vector

UTILIZATION = make_policy(result={"pending_adjustment": "utilization"})


# -- how many replicas: count(up{job="balancer"} == 1) ----------------------------------------

async def test_the_snapshot_counts_the_balancer_replicas_up(aiohttp_raw_server: Any) -> None:
    snapshot = await snapshot_from(aiohttp_raw_server, {Q.balancers: vector(series(3))})
    assert snapshot.balancers == 3 and snapshot.problems == ()


async def test_no_balancer_scraped_means_this_one_alone(aiohttp_raw_server: Any) -> None:
    snapshot = await snapshot_from(aiohttp_raw_server, {})
    assert snapshot.balancers == 1 and snapshot.problems == ()


def test_the_replica_query_counts_only_replicas_that_are_up() -> None:
    assert Q.balancers == 'count(up{job="balancer", grid=""} == 1)'


@pytest.mark.parametrize("result", [
    pytest.param([series(float("nan"))], id="nan"),
    pytest.param([series(0)], id="zero"),
    pytest.param([series(2.5)], id="fraction"),
    pytest.param([series(2), series(3)], id="several-series"),
    pytest.param([{"metric": {}, "value": [1.0, "many"]}], id="not-a-number"),
    pytest.param([{"metric": {}}], id="no-value"),
    pytest.param([{"metric": {}, "value": [1.0]}], id="value-without-a-number"),
    pytest.param([{"metric": {}, "value": None}], id="value-null"),
    pytest.param(["3"], id="not-a-sample"),
])
def test_an_odd_replica_count_is_reported_and_read_as_one(result: list[dict[str, Any]]) -> None:
    count, problems = read_balancers(result)
    assert count == 1
    assert len(problems) == 1 and problems[0].startswith("balancer replicas: ")
    assert problems[0].endswith("is not one whole number >= 1; read as 1")


def test_a_replica_count_is_read_as_a_whole_number() -> None:
    assert read_balancers([series(4)]) == (4, [])


# -- spreading over replicas ---------------------------------------------------------------

def grid(n: int = 10, balancers: int = 1, loads: tuple[float, ...] = ()) -> Any:
    views = [view(f"s{i}", loads[i] if i < len(loads) else 0.0, 100.0,
                  score=(loads[i] if i < len(loads) else 0.0) / 100.0) for i in range(n)]
    return dataclasses.replace(make_snapshot(*views), balancers=balancers)


def first_choices(snapshot: Any, draws: int = 400, kw: float = 10.0) -> Counter[str]:
    """Where a fresh replica (nothing pending) sends its first request, over many replicas."""
    rng = random.Random(1)
    choices: Counter[str] = Counter()
    for _ in range(draws):
        choice = select_substation(snapshot, PendingLedger(), UTILIZATION, kw, rng)
        assert choice is not None
        choices[choice.instance] += 1
    return choices


def test_alone_a_balancer_takes_the_best_candidate_every_time() -> None:
    assert first_choices(grid(loads=(50, 5, 50, 50, 50, 50, 50, 50, 50, 50))) == {"s1": 400}


def test_with_replicas_the_first_request_is_drawn_among_those_close_to_the_best() -> None:
    # s1 at 5 %, s2 at 8 %, s3 at 12 %, s4 at 16 %, the rest at 50 %; with 3 replicas another
    # mean request of 10 kW could take s1 to 15 %: s1, s2 and s3 are fair choices, s1 the
    # likeliest; s4 and the others never.
    loads = (50, 5, 8, 12, 16, 50, 50, 50, 50, 50)
    choices = first_choices(grid(balancers=3, loads=loads))
    assert set(choices) == {"s1", "s2", "s3"}
    assert choices["s1"] > choices["s2"] > choices["s3"]
    # weights by how much better than 15 %: 10 : 7 : 3
    assert choices["s1"] / 400 == pytest.approx(0.5, abs=0.08)


def test_with_fewer_fair_choices_than_replicas_the_best_is_taken() -> None:
    # the same three fair choices, but four replicas: some would land together anyway
    loads = (50, 5, 8, 12, 16, 50, 50, 50, 50, 50)
    assert first_choices(grid(balancers=4, loads=loads)) == {"s1": 400}


def test_the_spread_reaches_as_far_as_the_other_replicas_mean_request() -> None:
    loads = (50, 5, 15, 25, 50, 50, 50, 50, 50, 50)
    ledger = PendingLedger()
    ledger.reserve("elsewhere", "earlier", 25.0)       # the mean request so far: 25 kW
    rng = random.Random(2)
    chosen = {c.instance for c in (select_substation(grid(balancers=2, loads=loads), ledger,
                                                     UTILIZATION, 10.0, rng)
                                   for _ in range(300)) if c is not None}
    # one other replica, 25 kW: the best may be at 30 %: s2 and s3 (15 %, 25 %) qualify
    assert chosen == {"s1", "s2", "s3"}
    ledger2 = PendingLedger()
    ledger2.reserve("elsewhere", "earlier", 5.0)        # 5 kW: only s1 (5 %) is below 10 %
    chosen = {c.instance for c in (select_substation(grid(balancers=2, loads=loads), ledger2,
                                                     UTILIZATION, 10.0, rng)
                                   for _ in range(300)) if c is not None}
    assert chosen == {"s1"}


def test_a_burst_from_four_replicas_lands_on_more_substations_than_from_one_each() -> None:
    """Four replicas with their own ledgers place a burst on one stale view: alone in the
    world each would send all of its first requests to the same substations."""
    def burst(balancers: int) -> int:
        # no ties: 0, 1, 2 ... 19 kW
        snapshot = grid(n=20, balancers=balancers, loads=tuple(float(i) for i in range(20)))
        rng = random.Random(3)
        ledgers = [PendingLedger() for _ in range(4)]
        placed: Counter[str] = Counter()
        for i in range(8):
            ledger = ledgers[i % 4]
            choice = select_substation(snapshot, ledger, UTILIZATION, 20.0, rng)
            assert choice is not None
            ledger.reserve(choice.instance, f"r{i}", 20.0)
            placed[choice.instance] += 1
        return max(placed.values())
    assert burst(1) == 4          # each replica's first two go to the same two substations
    assert burst(4) < 4


def test_a_tie_tolerance_keeps_its_own_meaning_with_replicas() -> None:
    policy = make_policy(tie_tolerance=0.001, result={"pending_adjustment": "utilization"})
    loads = (50, 5, 15, 25, 50, 50, 50, 50, 50, 50)
    rng = random.Random(4)
    chosen = {c.instance for c in (select_substation(grid(balancers=4, loads=loads),
                                                     PendingLedger(), policy, 10.0, rng)
                                   for _ in range(100)) if c is not None}
    assert chosen == {"s1"}


def test_the_spread_never_chooses_a_substation_the_request_does_not_fit() -> None:
    loads = (50, 95, 5, 92, 50, 50, 50, 50, 50, 50)   # s1 and s3: 10 kW do not fit
    assert {"s1", "s3"}.isdisjoint(first_choices(grid(balancers=4, loads=loads)))


def test_the_mean_request_follows_the_requests_reserved() -> None:
    ledger = PendingLedger()
    assert PendingLedger().mean_request_kw is None
    ledger.reserve("a", "1", 10.0)
    assert ledger.mean_request_kw == 10.0
    for i in range(500):
        ledger.reserve("a", f"x{i}", 30.0)
    assert ledger.mean_request_kw == pytest.approx(30.0, abs=0.2)
    ledger.reserve("a", "x0", 1000.0)                 # a repeat is not a new request
    assert ledger.mean_request_kw == pytest.approx(30.0, abs=0.2)


def kw_grid(balancers: int, loads: tuple[float, ...]) -> Any:
    """Scores in kW (least-load): thresholds land exactly on whole kilowatts."""
    views = [view(f"s{i}", load, 100.0, score=load) for i, load in enumerate(loads)]
    return dataclasses.replace(make_snapshot(*views), balancers=balancers)


LEAST_LOAD = make_policy(result={"pending_adjustment": "kw"})


def test_a_candidate_exactly_one_mean_request_from_the_best_is_not_a_fair_choice() -> None:
    # best 10 kW, others 12 and 14, one at exactly 10 + 10 = 20 kW: three fair choices for four
    # replicas, so the best is taken (counting the fourth would draw among them).
    snapshot, rng = kw_grid(4, (10.0, 12.0, 14.0, 20.0, 60.0)), random.Random(5)
    chosen = {c.instance for c in (select_substation(snapshot, PendingLedger(), LEAST_LOAD,
                                                     10.0, rng) for _ in range(200)) if c}
    assert chosen == {"s0"}


def test_the_drawn_candidate_carries_its_own_load_capacity_and_score() -> None:
    views = [view("a", 8.0, 100.0, score=0.08, name="sub-a"),
             view("b", 11.0, 200.0, score=0.055, name="sub-b")]
    snapshot = dataclasses.replace(make_snapshot(*views), balancers=2)
    ledger = PendingLedger()
    # b: 15 kW effective, score 0.055 + 4/200; the mean request so far (4 kW) puts the
    # threshold at 0.075 + 4/200 = 0.095: a (0.08) is a fair choice too
    ledger.reserve("b", "p1", 4.0)
    seen = {}
    rng = random.Random(6)
    for _ in range(100):
        c = select_substation(snapshot, ledger, UTILIZATION, 10.0, rng)
        assert c is not None
        seen[c.instance] = (c.name, c.effective_load_kw, c.capacity_kw,
                            round(c.score or 0.0, 9))
    assert seen == {"a": ("sub-a", 8.0, 100.0, 0.08), "b": ("sub-b", 15.0, 200.0, 0.075)}


def test_two_candidates_tied_at_the_best_are_compared_by_score_alone() -> None:
    # a tie at the best: the draw must not try to order the substations themselves
    loads = (5, 5, 8, 12, 50, 50, 50, 50, 50, 50)
    choices = first_choices(grid(balancers=2, loads=loads))
    assert set(choices) == {"s0", "s1", "s2", "s3"}


def test_a_headroom_score_spreads_by_the_headroom_another_request_would_take() -> None:
    # rate-weighted style: higher is better, pending kW shrink the headroom. The best has 90 kW
    # of headroom (score 90, 10 kW load); another mean request of 10 kW would leave it 80: b
    # (85) and c (80.5) are fair choices, d (80) and e (70) are not.
    policy = make_policy(result={"better": "higher", "pending_adjustment": "headroom"})
    views = [view(n, 100.0 - s, 100.0, score=s) for n, s in
             (("a", 90.0), ("b", 85.0), ("c", 80.5), ("d", 80.0), ("e", 70.0))]
    snapshot, rng = dataclasses.replace(make_snapshot(*views), balancers=3), random.Random(7)
    chosen = Counter(c.instance for c in (select_substation(snapshot, PendingLedger(), policy,
                                                            10.0, rng) for _ in range(300)) if c)
    assert set(chosen) == {"a", "b", "c"}
    assert chosen["a"] > chosen["b"] > chosen["c"]


def test_a_score_that_ignores_pending_kw_takes_the_best_with_replicas_too() -> None:
    policy = make_policy(result={"pending_adjustment": "none"})
    snapshot, rng = kw_grid(4, (10.0, 12.0, 14.0, 16.0, 18.0)), random.Random(8)
    assert {c.instance for c in (select_substation(snapshot, PendingLedger(), policy, 10.0, rng)
                                 for _ in range(50)) if c} == {"s0"}


def test_the_mean_request_is_a_running_mean_not_the_last_request() -> None:
    ledger = PendingLedger()
    for i in range(1000):
        ledger.reserve("a", f"r{i}", 10.0 if i % 2 else 30.0)
    assert ledger.mean_request_kw == pytest.approx(20.0, abs=0.5)


def test_an_empty_best_leaves_its_whole_capacity_as_headroom() -> None:
    # 0 kW load, score 100: another 10 kW would leave 90; 89.95 is not a fair choice
    policy = make_policy(result={"better": "higher", "pending_adjustment": "headroom"})
    views = [view(n, 100.0 - s, 100.0, score=s) for n, s in
             (("a", 100.0), ("b", 95.0), ("c", 92.0), ("d", 89.95))]
    snapshot, rng = dataclasses.replace(make_snapshot(*views), balancers=3), random.Random(9)
    chosen = {c.instance for c in (select_substation(snapshot, PendingLedger(), policy, 10.0, rng)
                                   for _ in range(300)) if c}
    assert chosen == {"a", "b", "c"}
