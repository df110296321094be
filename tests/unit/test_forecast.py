"""Forecast-aware balancing (`load_aging: forecast`): the substation's forecast, the aging of a
stale reading by it, ledger entries that stop at their announced end, and the decision."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from balancer.aging import AgedLoads, forecast_curve
from balancer.chooser import answer_forecast, observe_reply
from balancer.ledger import PendingLedger
from balancer.placement import Reply
from balancer.prom import GridQueries, make_client, read_forecasts, read_snapshot
from balancer.selection import effective_load_kw, select_substation
from balancer.snapshot import SubstationView
from gridlb.charge import FORECAST_HORIZONS_S
from substation.app import create_app
from substation.charging import SessionTable
from substation.config import SubstationConfig
from tests.conftest import make_policy, make_snapshot, series, view
from tests.unit.test_prom_answers import A, B, grid_answers, make_handler, vector

AGING = make_policy(result={"pending_adjustment": "utilization", "load_aging": "forecast"})
PLAIN = make_policy(result={"pending_adjustment": "utilization"})


def with_forecast(v: SubstationView, *points: tuple[float, float]) -> SubstationView:
    return dataclasses.replace(v, forecast=tuple(points))


# -- the substation's forecast (pure) --------------------------------------------------------

def table_with(*sessions: tuple[str, float, float], speed: float = 60.0) -> SessionTable:
    """Sessions (id, kW, kWh) admitted at t=0: at speed 60, 1 kWh at 60 kW lasts 1 s."""
    table = SessionTable(1000.0, speed_factor=speed)
    for sid, kw, kwh in sessions:
        table.admit(sid, "ev", kw, kwh, now=0.0)
    return table


def test_a_session_ends_when_its_declared_energy_is_delivered() -> None:
    table = table_with(("a", 60.0, 10.0))   # 10 kWh at 60 kW: 10 simulated min, 10 real s
    assert table.ends_at(table.active["a"]) == pytest.approx(10.0)
    table.advance(4.0)                      # 4 kWh delivered: the end does not move
    assert table.ends_at(table.active["a"]) == pytest.approx(10.0)


def test_the_forecast_drops_each_session_at_its_end_and_never_rises() -> None:
    table = table_with(("a", 60.0, 3.0), ("b", 30.0, 6.0), ("c", 10.0, 100.0))
    # a ends at 3 s, b at 12 s, c at 600 s
    assert table.forecast_kw(0.0, (1.0, 3.0, 5.0, 15.0, 120.0)) == \
        pytest.approx([100.0, 40.0, 40.0, 10.0, 10.0])
    assert table.forecast_kw(2.0, (1.0,)) == pytest.approx([40.0])   # a is due by 3 s


def test_a_forecast_waits_one_tick_more_than_the_declared_end() -> None:
    # The session leaves the load at the first tick after its end, not before.
    table = SessionTable(100.0, speed_factor=60.0, end_lag_s=0.2)
    table.admit("a", "ev", 60.0, 1.0, now=0.0)      # declared end at 1 s
    assert table.forecast_kw(0.0, (1.0, 1.2)) == pytest.approx([60.0, 0.0])


def test_a_session_past_its_end_is_not_forecast_to_end() -> None:
    # Its tick is late (or it runs long): when it leaves is not known, so it stays at every
    # horizon; the others still end on time.
    table = table_with(("a", 60.0, 1.0), ("b", 30.0, 6.0))    # a due at 1 s, b at 12 s
    assert table.forecast_kw(2.0, (1.0, 20.0, 120.0)) == pytest.approx([90.0, 60.0, 60.0])
    table.advance(2.0)                     # the tick comes: a is gone, and so is the doubt
    assert table.forecast_kw(2.0, (20.0,)) == [0.0]


def brute_force_forecast(table: SessionTable, now: float, horizons: tuple[float, ...]
                         ) -> list[float]:
    ends = [(table.ends_at(s), s.power_kw) for s in table.active.values()]
    overdue = any(end <= now for end, _ in ends)
    out = []
    for h in horizons:
        left = sum(kw for end, kw in ends if end <= now or end > now + h)
        out.append(0.0 if not left and not overdue else left)
    return out


def test_the_kept_order_of_ends_follows_admits_stops_ends_and_resumes() -> None:
    table = SessionTable(10_000.0, speed_factor=60.0, end_lag_s=0.2)
    for i, (kw, kwh) in enumerate([(60, 1), (60, 1), (30, 2), (11, 5), (22, 0.5), (7.4, 9)]):
        table.admit(f"s{i}", "ev", kw, kwh, now=0.0)      # s0 and s1 end at the same instant
    horizons = (0.5, 1.0, 1.5, 3.0, 5.0, 30.0, 120.0)
    assert table.forecast_kw(0.0, horizons) == pytest.approx(brute_force_forecast(table, 0.0,
                                                                                  horizons))
    table.stop("s1", now=0.5)                  # one of two equal ends goes; the other stays
    table.advance(1.4)                         # s0 (1 s) and s4 (1.36 s) complete
    assert set(table.active) == {"s2", "s3", "s5"}
    resumed = table.active.pop("s3")            # as after a restart: credited from 2.0 on
    table.load_kw -= resumed.power_kw
    table._untrack_end("s3")
    table.resume(resumed, now=2.0)
    for now in (1.4, 2.0, 4.1):
        assert table.forecast_kw(now, horizons) == pytest.approx(
            brute_force_forecast(table, now, horizons)), now


def test_an_empty_substation_forecasts_exactly_zero() -> None:
    assert table_with().forecast_kw(0.0, FORECAST_HORIZONS_S) == [0.0] * len(FORECAST_HORIZONS_S)


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    app = create_app(SubstationConfig("s1", capacity_kw=100.0, speed_factor=60.0))
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def test_an_accept_announces_when_the_session_ends(client: TestClient[Any, Any]) -> None:
    charge = {"session_id": "s-1", "vehicle_id": "ev", "requested_kw": 60.0, "energy_kwh": 5.0}
    body = await (await client.post("/charge", json=charge)).json()
    # 5 kWh at 60 kW at speed 60: 5 real seconds, plus the tick that ends it
    assert body["ends_at"] - body["started_at"] == pytest.approx(5.2, abs=1e-6)
    stopped = await (await client.delete("/sessions/s-1")).json()
    assert "ends_at" not in stopped            # only a charging session has an end to come


async def test_metrics_export_one_forecast_series_per_horizon(client: TestClient[Any, Any]
                                                              ) -> None:
    # 60 kW ending in 3.2 s, 30 kW in 100.2 s: the horizons asserted are seconds away from
    # either end, so a slow machine (or mutmut's tracing) between the charge and the read
    # changes nothing.
    for i, kwh in enumerate((3.0, 50.0)):
        charge = {"session_id": f"s-{i}", "vehicle_id": "ev", "requested_kw": 60.0 - 30 * i,
                  "energy_kwh": kwh}
        assert (await client.post("/charge", json=charge)).status == 200
    text = await (await client.get("/metrics")).text()
    forecast = {s.labels["horizon"]: s.value
                for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == "substation_load_forecast_kw"}
    assert list(forecast) == [f"{h:g}s" for h in FORECAST_HORIZONS_S]
    assert forecast["1s"] == 90.0 and forecast["5s"] == 30.0 and forecast["120s"] == 0.0


# -- aging a reading ---------------------------------------------------------------------------

def aged_view(load: float = 100.0) -> SubstationView:
    # scraped at 1000 s: 100 kW, 40 kW of it due to end within 5 s, the rest within 60 s
    return with_forecast(view("a", load, 200.0), (1.0, 100.0), (5.0, 60.0), (60.0, 0.0))


def aged_loads(*views: SubstationView, skew_s: float = 0.0,
               ledger: PendingLedger | None = None) -> AgedLoads:
    return AgedLoads(make_snapshot(*views), ledger or PendingLedger(clock_skew_s=skew_s))


def test_the_fit_reading_is_the_forecast_at_the_last_horizon_passed() -> None:
    aged = aged_loads(aged_view())
    for now, fit, expected in ((1000.5, 100.0, 100.0), (1001.0, 100.0, 80.0),
                               (1004.9, 100.0, 80.0), (1005.0, 60.0, 30.0),
                               (1100.0, 0.0, 0.0)):
        aged.advance(now)
        assert (aged.fit_by_instance["a"], aged.rank_by_instance["a"]) == (fit, expected), now


def test_time_never_runs_backwards_for_the_aged_loads() -> None:
    aged = aged_loads(aged_view())
    aged.advance(1010.0)
    aged.advance(1000.0)
    assert aged.fit_by_instance["a"] == 60.0


def test_clock_skew_delays_every_crossing() -> None:
    aged = aged_loads(aged_view(), skew_s=0.5)
    aged.advance(1005.2)
    assert aged.fit_by_instance["a"] == 100.0
    aged.advance(1005.5)
    assert aged.fit_by_instance["a"] == 60.0


@pytest.mark.parametrize("points, fit", [
    (((5.0, 150.0),), (100.0, 100.0)),             # above the load: no decline, never a rise
    (((5.0, 50.0), (10.0, 80.0)), (100.0, 50.0, 50.0)),   # rising: held at the lowest so far
    (((0.0, 10.0), (-1.0, 0.0), (5.0, float("nan"))), None),   # nothing usable
    (((5.0, -3.0),), (100.0, 0.0)),                # negative: read as empty
], ids=["above-load", "rising", "unusable", "negative"])
def test_an_odd_forecast_is_read_as_the_most_pessimistic_consistent_curve(
        points: tuple[tuple[float, float], ...], fit: tuple[float, ...] | None) -> None:
    curve = forecast_curve(with_forecast(view("a", 100.0, 200.0), *points))
    assert (curve.fit if curve else None) == fit


def test_the_curve_starts_at_the_sample_shifted_by_the_skew() -> None:
    curve = forecast_curve(aged_view(), skew_s=0.5)
    assert curve is not None
    assert curve.times == (1000.5, 1001.5, 1005.5, 1060.5)
    assert curve.fit == (100.0, 100.0, 60.0, 0.0)
    assert curve.rank == (100.0, 80.0, 30.0, 0.0)
    assert forecast_curve(aged_view()).times[0] == 1000.0    # type: ignore[union-attr]


def test_a_bad_point_is_skipped_and_the_rest_of_the_curve_kept() -> None:
    curve = forecast_curve(with_forecast(view("a", 100.0, 200.0), (0.0, 10.0), (5.0, 50.0)))
    assert curve is not None and curve.fit == (100.0, 50.0)


def test_no_load_means_no_curve_even_with_a_forecast() -> None:
    assert forecast_curve(with_forecast(view("a", None, 200.0), (5.0, 50.0))) is None


def test_a_substation_without_forecast_does_not_stop_the_next_being_aged() -> None:
    aged = aged_loads(view("plain", 10.0, 100.0), aged_view())
    aged.advance(1006.0)
    assert aged.fit_by_instance == {"a": 60.0}


def test_an_answer_after_the_last_horizon_is_aged_by_nothing_more() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    aged = aged_loads(with_forecast(view("a", 100.0, 200.0), (1.0, 80.0), (60.0, 20.0)),
                      ledger=ledger)
    ledger.observe("a", 30.0, at=1070.0)
    aged.advance(1080.0)
    assert (aged.fit_by_instance["a"], aged.rank_by_instance["a"]) == (30.0, 30.0)


def test_an_answer_in_the_first_second_is_ranked_from_the_first_step() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    aged = aged_loads(aged_view(), ledger=ledger)
    ledger.observe("a", 100.0, at=1000.2)       # expected load then: (100 + 100) / 2
    aged.advance(1001.5)                        # expected now: (100 + 60) / 2
    assert (aged.fit_by_instance["a"], aged.rank_by_instance["a"]) == (100.0, 80.0)
    aged.advance(1002.0)
    assert aged.rank_by_instance["a"] == 80.0   # nothing more until the next horizon


def test_an_answer_aged_to_nothing_is_exactly_zero() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    aged = aged_loads(aged_view(), ledger=ledger)
    ledger.observe("a", 100.0, at=1000.5)
    aged.advance(1200.0)                        # everything has ended
    assert (aged.fit_by_instance["a"], aged.rank_by_instance["a"]) == (0.0, 0.0)


def test_the_expected_load_may_fall_below_one_kilowatt() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    aged = aged_loads(aged_view(), ledger=ledger)
    ledger.observe("a", 70.5, at=1000.2)
    aged.advance(1006.0)       # sure decline 100 -> 60, expected 100 -> 30
    assert (aged.fit_by_instance["a"], aged.rank_by_instance["a"]) == (30.5, 0.5)


def test_an_answer_is_aged_only_by_ends_surely_after_it() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    aged = aged_loads(aged_view(), ledger=ledger)
    # The answer at 1003 s (70 kW) may or may not include the 40 kW due by 5 s: once they
    # are due, none is taken off it.
    ledger.observe("a", 70.0, at=1003.0)
    aged.advance(1006.0)
    assert aged.fit_by_instance["a"] == 70.0
    assert aged.rank_by_instance["a"] == pytest.approx(70.0 - (80.0 - 30.0))
    # An answer at 1000.5 s surely still had them: they come off.
    ledger.observe("a", 120.0, at=1000.5)
    aged.advance(1006.5)
    assert aged.fit_by_instance["a"] == 80.0


def test_clock_skew_widens_the_margin_after_an_answer() -> None:
    ledger = PendingLedger(clock_skew_s=0.5, end_margin_s=0.0)
    aged = aged_loads(aged_view(), ledger=ledger)
    ledger.observe("a", 120.0, at=1000.2)       # 1 s horizon at 1001.5 (with skew): after it
    aged.advance(1006.0)
    assert aged.fit_by_instance["a"] == 80.0
    ledger.observe("a", 120.0, at=1000.8)       # now the 1 s horizon is within the skew
    aged.advance(1006.1)
    assert aged.fit_by_instance["a"] == 120.0


def test_ends_within_the_margin_after_an_answer_stay_in_it() -> None:
    # A session leaves the load up to a tick before its announced end: an answer read less
    # than end_margin_s before an end may already lack it, so that end does not come off it.
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=1.0)
    aged = aged_loads(aged_view(), ledger=ledger)
    ledger.observe("a", 120.0, at=1000.5)    # the 1 s horizon is within the margin
    aged.advance(1006.0)
    assert aged.fit_by_instance["a"] == 120.0


def test_a_scrape_that_replaces_the_answer_is_the_base_again() -> None:
    ledger = PendingLedger(clock_skew_s=0.0)
    aged = aged_loads(aged_view(), ledger=ledger)
    ledger.observe("a", 150.0, at=1000.5, seq=3)
    aged.advance(1001.0)
    assert aged.fit_by_instance["a"] == 150.0
    ledger.settle("a", scrape_ts=1000.8, seq=4)
    aged.advance(1001.1)
    assert aged.fit_by_instance["a"] == 100.0


def test_each_ledger_ages_the_same_snapshot_by_its_own_answers() -> None:
    snap = make_snapshot(aged_view())
    one, two = PendingLedger(clock_skew_s=0.0), PendingLedger(clock_skew_s=0.0)
    one.observe("a", 10.0, at=1000.5)
    first = AgedLoads.for_decision(snap, one, 1001.0)
    second = AgedLoads.for_decision(snap, two, 1001.0)
    assert first is not None and second is not None
    assert (first.fit_by_instance["a"], second.fit_by_instance["a"]) == (10.0, 100.0)
    assert AgedLoads.for_decision(snap, one, 1002.0) is first      # kept while both hold


# -- the ledger: an entry stops at its end ----------------------------------------------------

def test_a_pending_entry_stops_counting_at_its_announced_end() -> None:
    ledger = PendingLedger(clock_skew_s=0.5)
    ledger.reserve("a", "s1", 11.0)
    ledger.confirm("a", "s1", now=1000.0, ends_at=1010.0)
    ledger.expire(1010.4)
    assert ledger.pending_kw("a") == 11.0          # not before the skew allowance
    ledger.expire(1010.5)
    assert ledger.pending_kw("a") == 0.0


def test_an_end_far_ahead_is_left_to_the_next_scrape() -> None:
    ledger = PendingLedger(end_horizon_s=600.0)
    ledger.reserve("a", "s1", 11.0)
    ledger.confirm("a", "s1", now=1000.0, ends_at=5000.0)
    ledger.expire(6000.0)
    assert ledger.pending_kw("a") == 11.0          # a scrape settles it, not this
    ledger.settle("a", scrape_ts=1002.0)
    assert ledger.pending_kw("a") == 0.0


def test_a_session_inside_an_answer_comes_off_it_when_it_ends() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=1.0)
    ledger.reserve("a", "s1", 11.0)
    ledger.confirm("a", "s1", now=1000.0, seq=5, ends_at=1010.0)
    ledger.observe("a", 41.0, at=1000.0, seq=5)    # the answer counts it
    assert (ledger.pending_kw("a"), ledger.observed_load_kw("a")) == (0.0, 41.0)
    ledger.expire(1010.0)
    assert ledger.observed_load_kw("a") == 30.0


def test_an_answer_after_the_end_is_not_reduced_again() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=1.0)
    ledger.reserve("a", "s1", 11.0)
    ledger.confirm("a", "s1", now=1000.0, seq=5, ends_at=1010.0)
    ledger.observe("a", 41.0, at=1000.0, seq=5)
    ledger.observe("a", 30.0, at=1010.0, seq=6)     # read as it ended: it is not in there
    ledger.expire(1011.0)
    assert ledger.observed_load_kw("a") == 30.0


def test_a_session_ending_within_the_margin_is_not_taken_off_an_answer() -> None:
    ledger = PendingLedger(clock_skew_s=0.25, end_margin_s=1.0)
    ledger.reserve("a", "s1", 11.0)
    ledger.confirm("a", "s1", now=1000.0, seq=5, ends_at=1001.2)
    ledger.observe("a", 41.0, at=1000.0, seq=5)    # 1.2 s before the end: may lack it
    ledger.expire(1010.0)
    assert ledger.observed_load_kw("a") == 41.0


def test_a_scrape_hands_the_end_to_the_forecast() -> None:
    ledger = PendingLedger(clock_skew_s=0.0)
    ledger.reserve("a", "s1", 11.0)
    ledger.confirm("a", "s1", now=1000.0, seq=5, ends_at=1010.0)
    ledger.observe("a", 41.0, at=1000.0, seq=5)
    ledger.settle("a", scrape_ts=1001.0, seq=6)    # the scrape is the base again
    ledger.expire(1011.0)
    assert ledger.observed_load_kw("a") is None and ledger.pending_kw("a") == 0.0


def test_a_refused_entry_with_an_end_is_simply_gone() -> None:
    ledger = PendingLedger()
    ledger.reserve("a", "s1", 11.0)
    ledger.release("a", "s1")
    ledger.expire(10**10)
    assert ledger.pending_kw("a") == 0.0


# -- the decision --------------------------------------------------------------------------------

def two_substations() -> tuple[SubstationView, SubstationView]:
    # a: 90 of 100 kW, 60 kW of it ending within 5 s; b: 70 of 100 kW, ending in 10 min
    a = with_forecast(view("a", 90.0, 100.0, score=0.9), (5.0, 30.0), (60.0, 30.0))
    b = with_forecast(view("b", 70.0, 100.0, score=0.7), (5.0, 70.0), (60.0, 70.0))
    return a, b


def test_a_substation_whose_sessions_ended_since_the_scrape_is_chosen() -> None:
    snap = make_snapshot(*two_substations())
    choice = select_substation(snap, PendingLedger(), AGING, 20.0, random.Random(1), now=1006.0)
    assert choice is not None and (choice.instance, choice.effective_load_kw) == ("a", 30.0)


@pytest.mark.parametrize("policy, now, degraded", [
    (PLAIN, 1006.0, False),       # the policy does not ask for aging
    (AGING, None, False),         # no decision time given
    (AGING, 1006.0, True),        # degraded: old forecasts are not trusted either
], ids=["plain-policy", "no-now", "degraded"])
def test_without_aging_the_stale_reading_stands(policy: Any, now: float | None,
                                                 degraded: bool) -> None:
    snap = make_snapshot(*two_substations())
    choice = select_substation(snap, PendingLedger(), policy, 20.0, random.Random(1), now=now,
                               degraded=degraded)
    assert choice is not None and choice.instance == "b"


def test_a_request_fits_only_once_the_ends_have_surely_passed() -> None:
    a = with_forecast(view("a", 90.0, 100.0, score=0.9), (5.0, 30.0))
    snap, ledger = make_snapshot(a), PendingLedger(clock_skew_s=0.0)
    # Before 5 s the 60 kW may still be there: 20 kW does not fit (conservative fit).
    assert select_substation(snap, ledger, AGING, 20.0, random.Random(1), now=1004.9) is None
    assert select_substation(snap, ledger, AGING, 20.0, random.Random(1), now=1005.0) \
        is not None


def test_a_burst_on_a_stale_snapshot_spreads_over_aged_loads() -> None:
    # Same utilization at the scrape, but a's sessions end within 1 s: after that, a has
    # room for 50 kW of the burst before b (whose sessions run on) looks as good.
    a = with_forecast(view("a", 50.0, 100.0, score=0.5), (1.0, 0.0))
    b = with_forecast(view("b", 50.0, 100.0, score=0.5), (60.0, 50.0))
    snap, ledger, rng = make_snapshot(a, b), PendingLedger(), random.Random(2)
    placed = []
    for i in range(6):
        choice = select_substation(snap, ledger, AGING, 10.0, rng, now=1002.0 + i * 0.01)
        assert choice is not None
        ledger.reserve(choice.instance, f"s{i}", 10.0)
        placed.append(choice.instance)
    assert placed[:5] == ["a"] * 5     # 50 kW to a first: then both are at 0.5


def test_an_answer_newer_than_the_scrape_is_aged_too() -> None:
    a, b = two_substations()
    a = with_forecast(a, (1.0, 90.0), (5.0, 30.0), (60.0, 30.0))
    snap, ledger = make_snapshot(a, b), PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    # Read before 1 s, when none of the 60 kW had ended: by 5 s they have, and come off.
    ledger.observe("a", 95.0, at=1000.5)
    choice = select_substation(snap, ledger, AGING, 20.0, random.Random(1), now=1006.0)
    assert choice is not None and choice.instance == "a"
    assert effective_load_kw(a, ledger, AgedLoads.for_decision(snap, ledger, 1006.0)) == 35.0


def test_a_pending_entry_past_its_end_no_longer_blocks_a_fit() -> None:
    snap = make_snapshot(with_forecast(view("a", 0.0, 100.0, score=0.0), (60.0, 0.0)))
    ledger = PendingLedger(clock_skew_s=0.0)
    ledger.reserve("a", "s1", 90.0)
    ledger.confirm("a", "s1", now=1000.0, ends_at=1003.0)
    assert select_substation(snap, ledger, AGING, 20.0, random.Random(1), now=1002.0) is None
    assert select_substation(snap, ledger, AGING, 20.0, random.Random(1), now=1003.0) \
        is not None


# -- reading the forecast from Prometheus --------------------------------------------------------

Q = GridQueries()


def test_forecast_points_are_read_per_substation_and_horizon() -> None:
    forecasts, problems = read_forecasts([
        series(30, instance=A, horizon="5s"), series(10, instance=A, horizon="60s"),
        series(35, instance=A, horizon="5s"),     # a second series: the higher is kept
        series(7, instance=B, horizon="1s")])
    assert forecasts == {A: ((5.0, 35.0), (60.0, 10.0)), B: ((1.0, 7.0),)}
    assert problems == []


@pytest.mark.parametrize("bad", [
    series(1, instance=A, horizon="5m"), series(1, instance=A, horizon="0s"),
    series(1, instance=A, horizon="xs"), series(1, instance=A),
    series("NaN", instance=A, horizon="5s"), series(1, horizon="5s"),
], ids=["minutes", "zero", "not-a-number", "no-horizon", "nan", "no-instance"])
def test_an_unusable_forecast_point_is_dropped_and_reported(bad: dict[str, Any]) -> None:
    forecasts, problems = read_forecasts([bad])
    assert forecasts == {}
    assert len(problems) == 1 and problems[0].startswith("forecast: unusable series")


async def test_only_a_forecast_policy_queries_the_forecast(aiohttp_raw_server: Any) -> None:
    answers = {**grid_answers(), AGING.query: vector(series(0.4, instance=A)),
               Q.forecast: vector(series(10, instance=A, horizon="15s"))}
    server = await aiohttp_raw_server(make_handler(answers))
    client = make_client(str(server.make_url("/")))
    aging = await asyncio.to_thread(read_snapshot, client, AGING, Q, 1000.0)
    plain = await asyncio.to_thread(read_snapshot, client, PLAIN, Q, 1000.0)
    assert aging.substations[A].forecast == ((15.0, 10.0),)
    assert aging.substations[B].forecast == ()     # not exported: not aged
    assert plain.substations[A].forecast == ()


# -- what mutation testing asked for (docs/mutation.md) -----------------------------------------

def test_the_default_margins_and_horizon() -> None:
    ledger = PendingLedger()        # skew 0.5 s, margin 1 s, ends tracked up to 600 s ahead
    for sid, kw, ends_at in (("edge", 1.0, 1001.5), ("inside", 2.0, 1001.75),
                             ("far", 4.0, 1600.0), ("too-far", 8.0, 1600.5)):
        ledger.reserve("a", sid, kw)
        ledger.confirm("a", sid, now=1000.0, seq=5, ends_at=ends_at)
    ledger.observe("a", 100.0, at=1000.0, seq=5)   # counts all four
    ledger.expire(1002.25)
    # "edge" ends exactly at the margin: it may be missing from the answer, so it stays;
    # "inside" surely was in it and comes off at its end plus the skew.
    assert ledger.observed_load_kw("a") == 98.0
    ledger.expire(1601.0)
    assert ledger.observed_load_kw("a") == 94.0    # "far" was tracked, "too-far" was not


def test_an_included_end_waits_for_the_skew() -> None:
    ledger = PendingLedger(clock_skew_s=0.5, end_margin_s=0.0)
    ledger.reserve("a", "s1", 11.0)
    ledger.confirm("a", "s1", now=1000.0, seq=5, ends_at=1010.0)
    ledger.observe("a", 11.0, at=1000.0, seq=5)
    ledger.expire(1010.4)
    assert ledger.observed_load_kw("a") == 11.0
    ledger.expire(1010.5)
    assert ledger.observed_load_kw("a") == 0.0       # exactly nothing left


def test_an_end_of_a_forgotten_substation_is_skipped() -> None:
    ledger = PendingLedger(clock_skew_s=0.0)
    ledger.reserve("a", "s1", 11.0)
    ledger.confirm("a", "s1", now=1000.0, ends_at=1010.0)
    ledger.forget_except(set())
    ledger.expire(1011.0)
    assert ledger.pending_kw("a") == 0.0


def test_a_scrape_older_than_the_kept_answer_hands_no_end_to_it() -> None:
    # Settled by the scrape (it counts the session) while a newer answer is kept: that answer
    # was read after the session ended, so nothing may come off it at the end.
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    ledger.reserve("a", "s1", 11.0)
    ledger.observe("a", 20.0, at=1004.0, seq=9)      # read after the end, before the accept
    ledger.confirm("a", "s1", now=1000.0, seq=5, ends_at=1003.0)
    ledger.settle("a", scrape_ts=1001.0, seq=6)      # older than the kept answer
    ledger.expire(1005.0)
    assert ledger.observed_load_kw("a") == 20.0


def test_after_a_scrape_an_end_is_the_forecasts_not_the_ledgers() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    ledger.reserve("a", "s1", 11.0)
    ledger.confirm("a", "s1", now=1000.0, seq=5, ends_at=1010.0)
    ledger.observe("a", 41.0, at=1000.0, seq=5)
    ledger.settle("a", scrape_ts=1001.0, seq=6)      # replaces the answer
    ledger.observe("a", 41.0, at=1002.0, seq=7)      # still counts the session
    ledger.expire(1011.0)
    # The scrape's forecast takes it off (aging.py); the ledger must not take it off again.
    assert ledger.observed_load_kw("a") == 41.0


def test_an_end_inside_an_answer_reaches_the_aged_loads() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    snap = make_snapshot(aged_view(load=0.0))
    ledger.reserve("a", "s1", 11.0)
    ledger.confirm("a", "s1", now=1000.5, seq=5, ends_at=1003.0)
    ledger.observe("a", 11.0, at=1000.5, seq=5)
    aged = AgedLoads.for_decision(snap, ledger, 1001.0)
    assert aged is not None and aged.fit_by_instance["a"] == 11.0
    AgedLoads.for_decision(snap, ledger, 1003.0)
    assert aged.fit_by_instance["a"] == 0.0


def test_the_effective_load_of_a_substation_without_forecast_is_its_reading() -> None:
    ledger = PendingLedger(clock_skew_s=0.0)
    plain, forecasting = view("plain", 40.0, 100.0), aged_view()
    snap = make_snapshot(plain, forecasting)
    ledger.observe("plain", 45.0, at=1000.5)
    aged = AgedLoads.for_decision(snap, ledger, 1006.0)
    assert effective_load_kw(plain, ledger, aged) == 45.0
    assert effective_load_kw(forecasting, ledger, aged) == 60.0


def test_a_substation_without_forecast_competes_with_its_reading() -> None:
    # b exports no forecast: its reading (the answer, newer than the scrape) counts as is.
    a = with_forecast(view("a", 50.0, 100.0, score=0.5), (60.0, 50.0))
    b = view("b", 90.0, 100.0, score=0.9)
    ledger = PendingLedger(clock_skew_s=0.0)
    ledger.observe("b", 20.0, at=1000.5)
    choice = select_substation(make_snapshot(a, b), ledger, AGING, 10.0, random.Random(1),
                               now=1002.0)
    assert choice is not None and (choice.instance, choice.effective_load_kw) == ("b", 20.0)


def test_a_substation_without_forecast_or_answer_competes_with_its_scrape() -> None:
    a = with_forecast(view("a", 50.0, 100.0, score=0.5), (60.0, 50.0))
    c = view("c", 30.0, 100.0, score=0.3)
    choice = select_substation(make_snapshot(a, c), PendingLedger(clock_skew_s=0.0), AGING,
                               10.0, random.Random(1), now=1002.0)
    assert choice is not None and (choice.instance, choice.effective_load_kw) == ("c", 30.0)


def test_the_ranking_uses_the_expected_load_the_fit_the_sure_one() -> None:
    # a: surely 50 kW until 60 s, expected 30 (sessions ending within the minute); b: 40 kW
    # that run on. By the expected load a is better; it still fits by the sure one.
    a = with_forecast(view("a", 50.0, 100.0, score=0.5), (1.0, 50.0), (60.0, 10.0))
    b = with_forecast(view("b", 40.0, 100.0, score=0.4), (60.0, 40.0))
    choice = select_substation(make_snapshot(a, b), PendingLedger(clock_skew_s=0.0), AGING,
                               10.0, random.Random(1), now=1002.0)
    assert choice is not None and (choice.instance, choice.effective_load_kw) == ("a", 50.0)


def test_pending_kw_count_against_the_expected_load_too() -> None:
    a = with_forecast(view("a", 50.0, 100.0, score=0.5), (1.0, 0.0))
    b = with_forecast(view("b", 50.0, 100.0, score=0.5), (60.0, 50.0))
    snap, ledger, rng = make_snapshot(a, b), PendingLedger(clock_skew_s=0.0), random.Random(3)
    placed = []
    for i in range(12):
        choice = select_substation(snap, ledger, AGING, 10.0, rng, now=1002.0)
        assert choice is not None
        ledger.reserve(choice.instance, f"s{i}", 10.0)
        placed.append(choice.instance)
    assert placed[:5] == ["a"] * 5 and placed.count("b") >= 3


def test_a_weighted_policy_reports_the_aged_load_of_its_draw() -> None:
    weighted = make_policy(result={"better": "higher", "select": "weighted",
                                   "pending_adjustment": "headroom", "load_aging": "forecast"})
    a = with_forecast(view("a", 90.0, 100.0, score=10.0), (5.0, 30.0))
    choice = select_substation(make_snapshot(a), PendingLedger(clock_skew_s=0.0), weighted,
                               20.0, random.Random(1), now=1006.0)
    assert choice is not None and choice.effective_load_kw == 30.0


def test_a_forecast_below_one_kilowatt_is_exact() -> None:
    table = SessionTable(100.0, speed_factor=60.0)
    table.admit("big", "ev", 11.0, 11.0 / 60, now=0.0)       # ends at 1 s
    table.admit("small", "ev", 0.5, 100.0, now=0.0)          # runs on
    assert table.forecast_kw(0.0, (2.0,)) == [0.5]


def test_once_every_session_has_ended_the_forecast_is_exactly_zero() -> None:
    # 1.4 + 0.1 - 1.4 - 0.1 leaves 8e-17 in floats: the forecast does not.
    table = SessionTable(100.0, speed_factor=60.0)
    table.admit("a", "ev", 1.4, 1.4 / 60, now=0.0)           # ends at 1 s
    table.admit("b", "ev", 0.1, 0.2 / 60, now=0.0)           # ends at 2 s
    assert table.forecast_kw(0.0, (5.0,)) == [0.0]


# -- an answer's own forecast ------------------------------------------------------------------

async def test_every_answer_carries_the_forecast_of_its_reading(client: TestClient[Any, Any]
                                                                 ) -> None:
    charge = {"session_id": "s-1", "vehicle_id": "ev", "requested_kw": 60.0, "energy_kwh": 5.0}
    accepted = await (await client.post("/charge", json=charge)).json()
    refused = await (await client.post("/charge", json={**charge, "session_id": "s-2"})).json()
    status = await (await client.get("/status")).json()
    for body in (accepted, refused, status):
        forecast = dict(map(tuple, body["load_forecast_kw"]))
        assert list(forecast) == list(FORECAST_HORIZONS_S)
        # 60 kW ending 5.2 s after the accept (5 kWh at speed 60, plus the tick)
        assert (forecast[5.0], forecast[6.0], forecast[120.0]) == (60.0, 0.0, 0.0), body
    assert refused["error"] == "over_capacity"


def test_an_answer_with_its_own_forecast_is_aged_by_it_from_its_arrival() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=1.0)
    aged = aged_loads(aged_view(), ledger=ledger)
    # At 1003 s: 70 kW, of which 50 kW end within 2 s of the answer and 20 kW within 10 s.
    # The scrape's forecast could not say whether its 5 s ends are in it; the answer's can.
    ledger.observe("a", 70.0, at=1003.0, forecast=((1.0, 70.0), (2.0, 20.0), (10.0, 0.0)))
    for now, fit, rank in ((1003.5, 70.0, 70.0), (1004.0, 70.0, 45.0), (1005.0, 20.0, 10.0),
                           (1012.9, 20.0, 10.0), (1013.0, 0.0, 0.0)):
        aged.advance(now)
        assert (aged.fit_by_instance["a"], aged.rank_by_instance["a"]) == (fit, rank), now


def test_the_scrape_curve_stops_once_an_answer_brings_its_own() -> None:
    ledger = PendingLedger(clock_skew_s=0.0)
    aged = aged_loads(aged_view(), ledger=ledger)
    ledger.observe("a", 90.0, at=1000.5, forecast=((100.0, 0.0),))
    aged.advance(1060.0)    # the scrape's 5 s and 60 s horizons passed: not this answer's
    assert aged.fit_by_instance["a"] == 90.0
    aged.advance(1100.5)
    assert aged.fit_by_instance["a"] == 0.0


def test_a_later_answer_without_a_forecast_is_aged_by_the_scrape_again() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    aged = aged_loads(aged_view(), ledger=ledger)
    ledger.observe("a", 90.0, at=1000.2, seq=1, forecast=((100.0, 0.0),))
    aged.advance(1000.3)
    ledger.observe("a", 120.0, at=1000.4, seq=2)      # e.g. a substation of an older release
    assert "a" not in ledger.observed_forecast_by_instance
    aged.advance(1006.0)     # the scrape's decline after the answer: 100 -> 60
    assert aged.fit_by_instance["a"] == 80.0


def test_a_scrape_that_replaces_an_answer_drops_its_forecast_too() -> None:
    ledger = PendingLedger(clock_skew_s=0.0)
    aged = aged_loads(aged_view(), ledger=ledger)
    ledger.observe("a", 150.0, at=1000.5, seq=3, forecast=((1.0, 150.0),))
    ledger.settle("a", scrape_ts=1000.8, seq=4)
    assert "a" not in ledger.observed_forecast_by_instance
    aged.advance(1005.0)
    assert aged.fit_by_instance["a"] == 60.0       # the scrape's forecast at 5 s


def test_an_answer_with_a_forecast_tracks_no_end_inside_it() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    ledger.reserve("a", "p1", 50.0)
    ledger.confirm("a", "p1", 1000.0, seq=1, ends_at=1010.0)
    ledger.observe("a", 50.0, at=1000.1, seq=1, forecast=((10.0, 0.0),))
    ledger.expire(1011.0)
    # The answer's forecast takes the 50 kW off; the ledger must not take them off again.
    assert ledger.observed_load_kw("a") == 50.0 and ledger.pending_kw("a") == 0.0


def test_an_answer_with_a_forecast_drops_the_ends_kept_for_an_earlier_one() -> None:
    ledger = PendingLedger(clock_skew_s=0.0, end_margin_s=0.0)
    ledger.reserve("a", "p1", 50.0)
    ledger.confirm("a", "p1", 1000.0, seq=1, ends_at=1010.0)
    ledger.observe("a", 50.0, at=1000.1, seq=1)          # no forecast: the end is kept here
    ledger.observe("a", 60.0, at=1000.2, seq=2, forecast=((10.0, 10.0),))
    ledger.expire(1011.0)
    assert ledger.observed_load_kw("a") == 60.0


def test_a_forgotten_substation_forgets_its_answers_forecast() -> None:
    ledger = PendingLedger()
    ledger.observe("a", 50.0, at=1000.0, forecast=((1.0, 0.0),))
    ledger.forget_except({"b"})
    assert ledger.observed_forecast_by_instance == {}


@pytest.mark.parametrize("value", [
    pytest.param(None, id="missing"),
    pytest.param("60", id="not-a-list"),
    pytest.param([], id="empty"),
    pytest.param([[1.0, 5.0, 2.0]], id="not-a-pair"),
    pytest.param([{"h": 1, "kw": 5}], id="pair-as-object"),
    pytest.param([[True, 5.0]], id="boolean"),
    pytest.param([[1.0, float("nan")]], id="nan"),
    pytest.param([[1.0, "5"]], id="text"),
    pytest.param([[1.0, -5.0]], id="negative-load"),
    pytest.param([[0.0, 5.0]], id="zero-horizon"),
    pytest.param([[2.0, 5.0], [1.0, 5.0]], id="horizons-not-ascending"),
    pytest.param([[1.0, 5.0], [1.0, 4.0]], id="horizon-twice"),
])
def test_an_odd_answer_forecast_is_ignored_as_a_whole(value: object) -> None:
    assert answer_forecast(value) is None


def test_an_answer_forecast_is_read_as_ascending_pairs() -> None:
    assert answer_forecast([[1, 5], [2.5, 0]]) == ((1.0, 5.0), (2.5, 0.0))


def test_the_reply_forecast_reaches_the_ledger() -> None:
    ledger = PendingLedger()
    body = {"load_kw": 5.0, "load_seq": 2, "load_forecast_kw": [[1.0, 5.0], [2.0, 0.0]]}
    observe_reply(ledger, "a", Reply(True, 200, body), now=1000.0)
    assert ledger.observed_forecast_by_instance["a"] == ((1.0, 5.0), (2.0, 0.0))
    observe_reply(ledger, "a", Reply(True, 200, {**body, "load_seq": 3, "load_forecast_kw": "x"}),
                  now=1001.0)
    assert "a" not in ledger.observed_forecast_by_instance
    assert ledger.observed_load_kw("a") == 5.0


def test_back_on_the_scrape_curve_at_the_same_instant_it_is_read_where_time_is() -> None:
    ledger = PendingLedger(clock_skew_s=0.0)
    snapshot = make_snapshot(aged_view())
    aged = AgedLoads.for_decision(snapshot, ledger, 1006.0)     # past the 5 s horizon: 60 kW
    assert aged is not None and aged.fit_by_instance["a"] == 60.0
    ledger.observe("a", 90.0, at=1006.0, seq=1, forecast=((100.0, 0.0),))
    AgedLoads.for_decision(snapshot, ledger, 1006.0)
    assert aged.fit_by_instance["a"] == 90.0
    ledger.settle("a", scrape_ts=1006.0, seq=2)                 # the scrape is the base again
    AgedLoads.for_decision(snapshot, ledger, 1006.0)
    assert aged.fit_by_instance["a"] == 60.0
    AgedLoads.for_decision(snapshot, ledger, 1060.0)            # and it moves on from there
    assert aged.fit_by_instance["a"] == 0.0


def test_switching_curves_after_the_last_horizon_stays_at_its_end() -> None:
    ledger = PendingLedger(clock_skew_s=0.0)
    snapshot = make_snapshot(aged_view())
    AgedLoads.for_decision(snapshot, ledger, 2000.0)
    ledger.observe("a", 40.0, at=1999.0, seq=1, forecast=((1.0, 40.0), (2.0, 10.0)))
    aged = AgedLoads.for_decision(snapshot, ledger, 2000.0)
    assert aged is not None and aged.fit_by_instance["a"] == 40.0
    aged = AgedLoads.for_decision(snapshot, ledger, 2001.0)     # the answer's last horizon
    assert aged is not None and aged.fit_by_instance["a"] == 10.0
    ledger.settle("a", scrape_ts=2001.5, seq=2)
    aged = AgedLoads.for_decision(snapshot, ledger, 2002.0)     # the scrape's, long ended
    assert aged is not None and aged.fit_by_instance["a"] == 0.0


def test_after_a_switch_the_next_crossing_moves_the_load_down_not_back_up() -> None:
    ledger = PendingLedger(clock_skew_s=0.0)
    snapshot = make_snapshot(aged_view())
    AgedLoads.for_decision(snapshot, ledger, 1000.5)
    ledger.observe("a", 80.0, at=1000.5, seq=1,
                   forecast=((1.0, 80.0), (2.0, 50.0), (3.0, 20.0)))
    for now, fit in ((1000.6, 80.0), (1001.5, 80.0), (1002.5, 50.0), (1003.5, 20.0)):
        aged = AgedLoads.for_decision(snapshot, ledger, now)
        assert aged is not None and aged.fit_by_instance["a"] == fit, now


def test_resuming_a_session_twice_keeps_one_end() -> None:
    table = table_with(("a", 60.0, 1.0), ("b", 30.0, 6.0))      # ends at 1 s and 12 s
    session = table.active["b"]
    table.resume(session, now=0.0)                               # already charging: same end
    table.load_kw -= session.power_kw                            # resume counted it again
    assert table.forecast_kw(0.0, (2.0, 20.0)) == pytest.approx([30.0, 0.0])


def test_the_ends_of_sessions_ending_together_are_removed_one_by_one() -> None:
    table = table_with(("early", 60.0, 0.5), ("x", 60.0, 1.0), ("y", 60.0, 1.0),
                       ("z", 60.0, 1.0), ("late", 60.0, 10.0))
    table.stop("z", now=0.1)
    table.stop("x", now=0.1)
    assert table.forecast_kw(0.1, (0.5, 1.0, 20.0)) == pytest.approx([120.0, 60.0, 0.0])
    table.stop("y", now=0.2)
    assert table.forecast_kw(0.2, (0.5, 20.0)) == pytest.approx([60.0, 0.0])


def test_the_forecast_is_exactly_zero_whatever_order_the_powers_add_up_in() -> None:
    # admitted 1.4, 3.7, 11 kW; ending 11 (6 s), 3.7 (12 s), 1.4 (30 s): summed in that order
    # the ended kW fall 3.6e-15 short of the load
    table = SessionTable(100.0, speed_factor=60.0)
    for sid, kw, kwh in (("a", 1.4, 0.7), ("b", 3.7, 0.74), ("c", 11.0, 1.1)):
        table.admit(sid, "ev", kw, kwh, now=0.0)
    assert table.load_kw - sum([11.0, 3.7, 1.4]) > 0.0
    assert table.forecast_kw(0.0, (120.0,)) == [0.0]
