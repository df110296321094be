from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from balancer.ledger import PendingLedger
from balancer.policy import Policy
from balancer.prom import GridQueries, read_snapshot
from balancer.selection import (
    Candidate,
    adjusted_score,
    effective_load_kw,
    select_despite_doubt,
    select_substation,
)
from balancer.snapshot import Snapshot, SubstationView
from gridlb.charge import FIT_TOLERANCE_KW
from tests.conftest import FakeQueryClient, make_policy, make_snapshot, series, view

LEAST_LOAD = make_policy()
LEAST_UTIL = make_policy(result={"pending_adjustment": "utilization"})
WEIGHTED = make_policy(result={"better": "higher", "select": "weighted",
                               "pending_adjustment": "headroom"})


def burst(snapshot: Snapshot, policy_kw: float, count: int, *, policy: Policy = LEAST_LOAD,
          use_ledger: bool = True, seed: int = 1) -> Counter[str]:
    """Place `count` requests against one stale snapshot, as between two scrapes."""
    ledger, rng, placed = PendingLedger(), random.Random(seed), Counter[str]()
    for i in range(count):
        choice = select_substation(snapshot, ledger if use_ledger else PendingLedger(), policy,
                                   policy_kw, rng)
        if choice is None:
            placed["refused"] += 1
            continue
        ledger.reserve(choice.instance, f"s{i}", policy_kw)
        ledger.confirm(choice.instance, f"s{i}", now=1001.0)
        placed[choice.name] += 1
    return placed


def test_rush_hour_burst_on_stale_data_spreads_evenly() -> None:
    snap = make_snapshot(view("a", 0.0, 500.0), view("b", 0.0, 500.0))
    assert burst(snap, 11.0, 50) == Counter({"a": 25, "b": 25})


def test_without_the_ledger_the_burst_herds() -> None:
    # The seed's approach: argmin on the last scrape. Documents the problem the ledger solves.
    snap = make_snapshot(view("a", 0.0, 500.0), view("b", 1.0, 500.0))
    # All 50 land on "a" (550 kW on 500): only the substation's own check would stop it.
    assert burst(snap, 11.0, 50, use_ledger=False) == Counter({"a": 50})


def test_least_utilization_fills_unequal_substations_to_the_same_level() -> None:
    snap = make_snapshot(*(view(n, 0.0, cap, score=0.0)
                           for n, cap in (("s100", 100.0), ("s200", 200.0), ("s300", 300.0))))
    placed = burst(snap, 10.0, 48, policy=LEAST_UTIL)
    utils = [placed[n] * 10.0 / cap for n, cap in (("s100", 100), ("s200", 200), ("s300", 300))]
    assert max(utils) - min(utils) <= 10.0 / 100.0   # within one request on the smallest


def test_burst_never_overloads_and_refuses_what_does_not_fit() -> None:
    snap = make_snapshot(view("a", 80.0, 100.0), view("b", 90.0, 100.0))
    placed = burst(snap, 7.0, 10)
    assert placed == Counter({"a": 2, "b": 1, "refused": 7})


def test_exact_fit_is_admitted_and_one_watt_more_is_not() -> None:
    snap = make_snapshot(view("a", 89.0, 100.0))
    rng, ledger = random.Random(0), PendingLedger()
    assert select_substation(snap, ledger, LEAST_LOAD, 11.0, rng) is not None
    assert select_substation(snap, ledger, LEAST_LOAD, 11.001, rng) is None


@pytest.mark.parametrize(
    "unusable",
    [view("a", None, 100.0), view("a", 10.0, None), view("a", 10.0, 100.0, up=False)],
    ids=["load-absent", "capacity-absent", "down"],
)
def test_unknown_or_down_substations_are_never_chosen(unusable: SubstationView) -> None:
    snap = make_snapshot(unusable, view("b", 90.0, 100.0))
    choice = select_substation(snap, PendingLedger(), LEAST_LOAD, 5.0, random.Random(0))
    assert choice is not None and choice.instance == "b"


def test_excluded_substations_are_skipped() -> None:
    snap = make_snapshot(view("a", 0.0, 100.0), view("b", 10.0, 100.0), view("c", 20.0, 100.0))
    choice = select_substation(snap, PendingLedger(), LEAST_LOAD, 5.0, random.Random(0),
                               exclude={"a", "b"})
    assert choice is not None and choice.instance == "c"


def first_choices(snap: Snapshot, policy: Policy, draws: int, seed: int | None = None
                  ) -> Counter[str]:
    """Which substation is chosen first, over many independent draws."""
    ledger, picks = PendingLedger(), Counter[str]()
    shared = random.Random(seed)
    for i in range(draws):
        rng = shared if seed is not None else random.Random(i)
        choice = select_substation(snap, ledger, policy, 1.0, rng)
        assert choice is not None
        picks[choice.instance] += 1
    return picks


def test_exact_ties_are_broken_at_random() -> None:
    snap = make_snapshot(view("a", 0.0, 100.0), view("b", 0.0, 100.0))
    firsts = first_choices(snap, LEAST_LOAD, 200)
    assert 60 < firsts["a"] < 140


def test_tie_tolerance_treats_near_equal_as_equal() -> None:
    tolerant = make_policy(tie_tolerance=5.0)
    snap = make_snapshot(view("a", 10.0, 100.0), view("b", 13.0, 100.0), view("c", 30.0, 100.0))
    firsts = first_choices(snap, tolerant, 200)
    assert set(firsts) == {"a", "b"}


def test_weighted_choice_is_proportional_to_weight() -> None:
    snap = make_snapshot(view("a", 0.0, 300.0, score=1.0), view("b", 0.0, 300.0, score=3.0))
    picks = first_choices(snap, WEIGHTED, 4000, seed=7)
    assert 0.22 < picks["a"] / 4000 < 0.28


def test_headroom_adjustment_shrinks_weight_with_pending_share() -> None:
    v = view("a", 60.0, 100.0, score=8.0)
    assert adjusted_score(v, WEIGHTED, delta_kw=10.0) == pytest.approx(6.0)
    assert adjusted_score(v, WEIGHTED, delta_kw=50.0) == 0.0


@pytest.mark.parametrize(("policy", "pending", "expected"), [
    (LEAST_LOAD, 10.0, 50.0),
    (LEAST_UTIL, 10.0, 40.0 + 10.0 / 200.0),
    (make_policy(result={"better": "higher"}), 10.0, 30.0),
    (make_policy(result={"pending_adjustment": "none"}), 10.0, 40.0),
])
def test_pending_adjustment_moves_the_score_towards_worse(policy: Policy, pending: float,
                                                          expected: float) -> None:
    assert adjusted_score(view("a", 40.0, 200.0), policy, pending) == pytest.approx(expected)


def test_degraded_mode_ranks_by_effective_utilization_not_stale_scores() -> None:
    snap = make_snapshot(view("big", 100.0, 400.0, score=0.0), view("small", 10.0, 50.0,
                                                                        score=99.0))
    choice = select_substation(snap, PendingLedger(), LEAST_LOAD, 1.0, random.Random(0),
                               degraded=True)
    assert choice is not None and choice.name == "small"
    assert choice.score is None


def test_policy_without_scores_falls_back_to_utilization() -> None:
    snap = make_snapshot(view("a", 50.0, 100.0, score=None), view("b", 10.0, 100.0))
    no_scores = make_snapshot(*(dataclasses.replace(v, score=None)
                                for v in snap.substations.values()))
    choice = select_substation(no_scores, PendingLedger(), LEAST_LOAD, 1.0, random.Random(0))
    assert choice is not None and choice.instance == "b"


def test_a_substations_own_report_replaces_the_stale_scrape_until_a_newer_one() -> None:
    snap = make_snapshot(view("a", 0.0, 100.0, scrape_ts=1000.0), view("b", 50.0, 100.0))
    ledger = PendingLedger(clock_skew_s=0.5)
    ledger.observe("a", 98.0, at=1001.0)      # e.g. a refusal: "I am at 98 kW"
    choice = select_substation(snap, ledger, LEAST_LOAD, 5.0, random.Random(0))
    assert choice is not None and choice.instance == "b"
    ledger.settle("a", scrape_ts=1002.0)      # a scrape newer than the report is the base again
    choice = select_substation(snap, ledger, LEAST_LOAD, 5.0, random.Random(0))
    assert choice is not None and choice.instance == "a"


def test_reported_drop_in_load_makes_a_substation_attractive_again() -> None:
    # Sessions ended since the scrape: the substation's answer says so before Prometheus does.
    snap = make_snapshot(view("a", 90.0, 100.0), view("b", 40.0, 100.0))
    ledger = PendingLedger()
    ledger.observe("a", 10.0, at=1001.0)
    choice = select_substation(snap, ledger, LEAST_LOAD, 5.0, random.Random(0))
    assert choice is not None and choice.instance == "a"
    assert choice.score == 10.0 and choice.effective_load_kw == 10.0


def unscored(v: SubstationView) -> SubstationView:
    """As read_snapshot leaves a substation whose policy value was NaN or Inf (or missing)."""
    return dataclasses.replace(v, score=None)


@pytest.mark.parametrize("policy", [LEAST_LOAD, make_policy(tie_tolerance=5.0), WEIGHTED],
                         ids=["best", "tie-tolerance", "weighted"])
def test_an_unscored_substation_is_no_fallback_while_the_policy_scores_others(
        policy: Policy) -> None:
    # Only the unscored one has room: it must still not be chosen (docs/failure-modes.md:
    # NaN/Inf -> not eligible); the utilization fallback is for a policy that scored nothing.
    snap = make_snapshot(view("scored", 95.0, 100.0, score=1.0),
                         unscored(view("nan", 0.0, 100.0)))
    for seed in range(20):
        assert select_substation(snap, PendingLedger(), policy, 11.0,
                                 random.Random(seed)) is None
    fits = select_substation(snap, PendingLedger(), policy, 5.0, random.Random(0))
    assert fits is not None and fits.instance == "scored"


def test_a_nan_policy_value_makes_that_substation_ineligible_end_to_end() -> None:
    # The canned Prometheus answer as the API gives it ("NaN" is a string in JSON), read by
    # the real snapshot reader, then the real decision.
    queries, policy = GridQueries(), LEAST_LOAD
    answers = {
        queries.up: [series(1, instance="a"), series(1, instance="b")],
        queries.scrape_time: [series(999.0, instance="a"), series(999.0, instance="b")],
        queries.load: [series(95, instance="a", substation="a"),
                       series(0, instance="b", substation="b")],
        queries.capacity: [series(100, instance="a", substation="a"),
                           series(100, instance="b", substation="b")],
        policy.query: [series(95, instance="a"), series("NaN", instance="b")],
    }
    snap = read_snapshot(FakeQueryClient(answers), policy, queries, 1000.0)
    assert any("b is nan; not eligible" in p for p in snap.problems)
    assert select_substation(snap, PendingLedger(), policy, 11.0, random.Random(0)) is None
    # In degraded mode the policy's scores are ignored altogether: b ranks by utilization.
    degraded = select_substation(snap, PendingLedger(), policy, 11.0, random.Random(0),
                                 degraded=True)
    assert degraded is not None and degraded.instance == "b"


def test_a_score_exactly_at_the_tie_tolerance_counts_as_a_tie() -> None:
    tolerant = make_policy(tie_tolerance=5.0)
    snap = make_snapshot(view("a", 10.0, 100.0), view("b", 15.0, 100.0), view("c", 15.5, 100.0))
    assert set(first_choices(snap, tolerant, 200)) == {"a", "b"}


def test_the_utilization_fallback_ranks_by_load_over_capacity_not_by_kw() -> None:
    # 60 kW of 400 (15 %) is emptier than 50 kW of 100 (50 %), though more kW.
    snap = make_snapshot(unscored(view("small", 50.0, 100.0)),
                         unscored(view("big", 60.0, 400.0)))
    for degraded in (False, True):
        choice = select_substation(snap, PendingLedger(), LEAST_LOAD, 1.0, random.Random(0),
                                   degraded=degraded)
        assert choice is not None and choice.instance == "big"
        assert choice.utilization == pytest.approx(60.0 / 400.0)


BETTER_HIGHER = make_policy(result={"better": "higher"})


def test_effective_load_is_the_newest_observation_plus_what_is_pending() -> None:
    v, ledger = view("a", 40.0, 100.0), PendingLedger()
    assert effective_load_kw(v, ledger) == 40.0
    ledger.reserve("a", "s1", 11.0)
    ledger.reserve("b", "s2", 7.0)                      # another substation's: not this one's
    assert effective_load_kw(v, ledger) == 51.0
    ledger.observe("a", 30.0, at=1001.0)
    ledger.observe("b", 99.0, at=1001.0)
    assert effective_load_kw(v, ledger) == 41.0
    assert effective_load_kw(view("a", None, 100.0), ledger) is None


@pytest.mark.parametrize("v", [view("a", 40.0, None), view("a", None, 100.0),
                               dataclasses.replace(view("a", 40.0, 100.0), score=None)],
                         ids=["no-capacity", "no-load", "no-score"])
@pytest.mark.parametrize("policy", [LEAST_LOAD, LEAST_UTIL, WEIGHTED],
                         ids=["kw", "utilization", "headroom"])
def test_a_score_is_not_adjusted_without_what_the_adjustment_needs(
        v: SubstationView, policy: Policy) -> None:
    assert adjusted_score(v, policy, delta_kw=10.0) == v.score
    assert adjusted_score(view("a", 40.0, 100.0), policy, delta_kw=0.0) == 40.0


def test_headroom_weight_is_zero_when_the_scrape_saw_no_headroom() -> None:
    full = view("a", 100.0, 100.0, score=5.0)
    assert adjusted_score(full, WEIGHTED, delta_kw=-50.0) == 0.0
    almost = view("a", 99.5, 100.0, score=1.0)          # 0.5 kW of headroom, half of it pending
    assert adjusted_score(almost, WEIGHTED, delta_kw=0.25) == pytest.approx(0.5)


def test_higher_is_better_picks_the_highest_score_and_moves_it_down_with_pending() -> None:
    snap = make_snapshot(view("a", 0.0, 100.0, score=50.0), view("b", 0.0, 100.0, score=40.0))
    ledger = PendingLedger()
    choice = select_substation(snap, ledger, BETTER_HIGHER, 5.0, random.Random(0))
    assert choice is not None and (choice.instance, choice.score) == ("a", 50.0)
    ledger.reserve("a", "s1", 11.0)                    # a's headroom score falls by 11 kW
    choice = select_substation(snap, ledger, BETTER_HIGHER, 5.0, random.Random(0))
    assert choice is not None and (choice.instance, choice.score) == ("b", 40.0)
    ledger.reserve("b", "s2", 2.0)                     # b falls below a again
    choice = select_substation(snap, ledger, BETTER_HIGHER, 5.0, random.Random(0))
    assert choice is not None and (choice.instance, choice.score) == ("a", 39.0)


def test_tie_tolerance_applies_to_higher_is_better_scores_in_their_own_unit() -> None:
    tolerant = make_policy(result={"better": "higher"}, tie_tolerance=5.0)
    snap = make_snapshot(view("a", 0.0, 100.0, score=50.0), view("b", 0.0, 100.0, score=46.0),
                         view("c", 0.0, 100.0, score=44.0))
    assert set(first_choices(snap, tolerant, 200)) == {"a", "b"}


def expected(choice: Candidate | None, *fields: object) -> None:
    assert choice is not None
    assert (choice.instance, choice.name, choice.effective_load_kw, choice.capacity_kw,
            choice.score) == fields


def test_every_way_of_choosing_reports_the_candidate_as_it_is_now() -> None:
    ledger = PendingLedger()
    ledger.reserve("a", "s1", 10.0)
    a = view("a", 20.0, 100.0, score=30.0, name="sub-a")
    # best: the score moved by the pending kW
    expected(select_substation(make_snapshot(a), ledger, LEAST_LOAD, 1.0, random.Random(0)),
             "a", "sub-a", 30.0, 100.0, 40.0)
    # within a tie tolerance
    expected(select_substation(make_snapshot(a), ledger, make_policy(tie_tolerance=1.0), 1.0,
                               random.Random(0)), "a", "sub-a", 30.0, 100.0, 40.0)
    # weighted: the weight shrinks with the share of headroom pending (80 kW, 10 pending)
    expected(select_substation(make_snapshot(a), ledger, WEIGHTED, 1.0, random.Random(0)),
             "a", "sub-a", 30.0, 100.0, pytest.approx(30.0 * 70.0 / 80.0))
    # fallback by utilization: no score
    expected(select_substation(make_snapshot(unscored(a)), ledger, LEAST_LOAD, 1.0,
                               random.Random(0)), "a", "sub-a", 30.0, 100.0, None)


def test_an_empty_substation_chosen_by_weight_has_zero_load() -> None:
    empty = view("a", 0.0, 100.0, score=8.0)
    choice = select_substation(make_snapshot(empty), PendingLedger(), WEIGHTED, 1.0,
                               random.Random(0))
    expected(choice, "a", "a", 0.0, 100.0, 8.0)
    ledger = PendingLedger()
    ledger.reserve("a", "s1", 25.0)
    choice = select_substation(make_snapshot(empty), ledger, WEIGHTED, 1.0, random.Random(0))
    expected(choice, "a", "a", 25.0, 100.0, 6.0)


def test_a_substation_whose_weight_is_not_positive_is_never_drawn_while_one_is() -> None:
    snap = make_snapshot(view("zero", 0.0, 100.0, score=0.0),
                         view("negative", 0.0, 100.0, score=-3.0),
                         view("small", 0.0, 100.0, score=0.1))
    assert first_choices(snap, WEIGHTED, 300) == Counter({"small": 300})


def test_when_every_weight_is_zero_the_draw_is_uniform() -> None:
    snap = make_snapshot(view("a", 0.0, 100.0, score=0.0), view("b", 0.0, 100.0, score=0.0))
    picks = first_choices(snap, WEIGHTED, 400)
    assert 160 < picks["a"] < 240


def test_weights_below_one_are_still_proportional() -> None:
    snap = make_snapshot(view("a", 0.0, 100.0, score=0.1), view("b", 0.0, 100.0, score=0.3))
    picks = first_choices(snap, WEIGHTED, 2000, seed=11)
    assert 0.2 < picks["a"] / 2000 < 0.3


def test_exact_ties_are_broken_uniformly() -> None:
    for snap in (make_snapshot(view("a", 0.0, 100.0), view("b", 0.0, 100.0)),
                 make_snapshot(*(unscored(view(i, 10.0, 100.0)) for i in "ab"))):
        firsts = first_choices(snap, LEAST_LOAD, 2000)
        assert 900 < firsts["a"] < 1100, firsts
    three = make_snapshot(*(view(i, 0.0, 100.0) for i in "abc"))
    firsts = first_choices(three, LEAST_LOAD, 3000)
    assert all(900 < n < 1100 for n in firsts.values()), firsts


def test_a_request_fits_up_to_capacity_plus_the_float_tolerance() -> None:
    snap = make_snapshot(view("a", 0.0, 100.0))
    exactly = 100.0 + FIT_TOLERANCE_KW
    assert select_substation(snap, PendingLedger(), LEAST_LOAD, exactly,
                             random.Random(0)) is not None
    assert select_substation(snap, PendingLedger(), LEAST_LOAD, 100.0 + 1e-6,
                             random.Random(0)) is None


def test_a_weighted_policy_corrects_every_candidates_weight_for_pending_kw() -> None:
    snap = make_snapshot(view("a", 0.0, 100.0, score=1.0), view("b", 0.0, 100.0, score=1.0))
    ledger = PendingLedger()
    ledger.reserve("a", "s1", 100.0 - 1e-6)            # a's headroom is all but taken
    picks: Counter[str] = Counter()
    for seed in range(200):
        choice = select_substation(snap, ledger, WEIGHTED, 1e-7, random.Random(seed))
        assert choice is not None
        picks[choice.instance] += 1
    assert picks["b"] >= 199


def test_a_substation_full_only_by_kw_counted_twice_is_still_tried() -> None:
    # b reported 33 kW in an answer that arrived while the 11 kW forward reserved before it was
    # in flight: 33 + 11 counts that session twice if it was admitted before the reading.
    snap = make_snapshot(view("a", 44.0, 50.0), view("b", 22.0, 50.0))
    ledger = PendingLedger()
    ledger.reserve("b", "in-flight", 11.0)
    ledger.observe("b", 33.0, at=1001.0, seq=3)
    assert select_substation(snap, ledger, LEAST_LOAD, 11.0, random.Random(1)) is None
    choice = select_despite_doubt(snap, ledger, 11.0)
    assert choice is not None and choice.name == "b"
    assert choice.effective_load_kw == 33.0
    assert select_despite_doubt(snap, ledger, 11.0, exclude={"b"}) is None
    # A reservation made after the reading is load the reading cannot hold: no doubt.
    fresh = PendingLedger()
    fresh.observe("b", 33.0, at=1001.0, seq=3)
    fresh.reserve("b", "after", 11.0)
    assert select_despite_doubt(snap, fresh, 11.0) is None


def test_an_unscored_substation_is_not_tried_despite_doubt_either() -> None:
    # The doubt path (nothing fits only because a reading may count in-flight kW twice) must
    # not bring back a substation the policy scored NaN/Inf while it scores others.
    snap = make_snapshot(view("a", 44.0, 50.0, score=44.0), unscored(view("b", 22.0, 50.0)))
    ledger = PendingLedger()
    ledger.reserve("b", "in-flight", 11.0)
    ledger.observe("b", 33.0, at=1001.0, seq=3)
    assert select_substation(snap, ledger, LEAST_LOAD, 11.0, random.Random(1)) is None
    assert select_despite_doubt(snap, ledger, 11.0) is None
    # Degraded, or a policy that scored nothing: every substation ranks by utilization.
    choice = select_despite_doubt(snap, ledger, 11.0, degraded=True)
    assert choice is not None and choice.name == "b"
    nothing_scored = make_snapshot(*(unscored(v) for v in snap.substations.values()))
    choice = select_despite_doubt(nothing_scored, ledger, 11.0)
    assert choice is not None and choice.name == "b"


def doubtful(observed_kw: float, in_flight_kw: float) -> PendingLedger:
    """A ledger whose last reading of each given substation may count `in_flight_kw` twice."""
    ledger = PendingLedger()
    for instance in "abc":
        ledger.reserve(instance, f"in-flight-{instance}", in_flight_kw)
        ledger.observe(instance, observed_kw, at=1001.0, seq=3)
    return ledger


def test_despite_doubt_skips_what_is_excluded_or_does_not_fit_and_goes_on() -> None:
    snap = make_snapshot(view("a", 0.0, 50.0), view("b", 0.0, 40.0), view("c", 0.0, 50.0))
    ledger = doubtful(observed_kw=30.0, in_flight_kw=11.0)   # 41 kW counted, 30 for sure
    choice = select_despite_doubt(snap, ledger, 15.0, exclude={"a"})
    # b does not fit even without the doubtful kW (30 + 15 > 40): c does.
    assert choice is not None
    assert (choice.instance, choice.effective_load_kw, choice.capacity_kw) == ("c", 30.0, 50.0)
    assert select_despite_doubt(snap, ledger, 25.0) is None   # 30 + 25 > 50 anywhere


def test_despite_doubt_fits_exactly_up_to_the_float_tolerance() -> None:
    snap = make_snapshot(view("a", 0.0, 50.0))
    ledger = doubtful(observed_kw=0.0, in_flight_kw=11.0)
    assert select_despite_doubt(snap, ledger, 50.0) is not None
    assert select_despite_doubt(snap, ledger, 50.0 + FIT_TOLERANCE_KW) is not None
    assert select_despite_doubt(snap, ledger, 50.0 + 1e-6) is None
