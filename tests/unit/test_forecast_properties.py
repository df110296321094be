"""The promise of forecast aging, as a property: with true declarations, the load the fit check
counts is never below the substation's true load, whatever the sessions, the scrape time, the
answers in between and the moment of the decision. The substation side is the real
`SessionTable` (its forecast and its own delivery), the balancer side the real `AgedLoads` and
`PendingLedger`."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.aging import AgedLoads
from balancer.ledger import PendingLedger
from balancer.selection import effective_load_kw
from balancer.snapshot import Snapshot, SubstationView
from gridlb.charge import FORECAST_HORIZONS_S
from substation.charging import SessionTable

TICK_S = 0.2
SPEED = 60.0

sessions = st.lists(
    st.tuples(st.floats(0.0, 30.0),                       # started at (s)
              st.sampled_from((3.7, 7.4, 11.0, 22.0, 50.0, 150.0)),   # kW
              st.floats(0.01, 40.0)),                     # declared kWh (0.2 s to 11 min)
    max_size=25)


def substation(arrivals: list[tuple[float, float, float]]) -> SessionTable:
    return SessionTable(10_000.0, speed_factor=SPEED, end_lag_s=TICK_S)


def true_load(table: SessionTable, at: float) -> float:
    table.advance(at)
    return table.load_kw


def own_forecast(table: SessionTable, at: float, carried: bool
                 ) -> tuple[tuple[float, float], ...] | None:
    """The answer's load_forecast_kw as the substation sends it (when `carried`)."""
    if not carried:
        return None
    return tuple(zip(FORECAST_HORIZONS_S, table.forecast_kw(at, FORECAST_HORIZONS_S),
                     strict=True))


@settings(max_examples=300, deadline=None)
@given(arrivals=sessions, scrape_at=st.floats(30.0, 40.0),
       answer_after=st.one_of(st.none(), st.floats(0.0, 60.0)), carried=st.booleans(),
       decisions=st.lists(st.floats(0.0, 150.0), min_size=1, max_size=8))
def test_the_aged_fit_load_is_never_below_the_true_load(
        arrivals: list[tuple[float, float, float]], scrape_at: float,
        answer_after: float | None, carried: bool, decisions: list[float]) -> None:
    table = substation(arrivals)
    for i, (start, kw, kwh) in enumerate(sorted(arrivals)):
        table.advance(start)
        table.admit(f"s{i}", "ev", kw, kwh, now=start)
    # The scrape: the load and forecast the substation exports at that moment.
    load = true_load(table, scrape_at)
    forecast = tuple(zip(FORECAST_HORIZONS_S, table.forecast_kw(scrape_at, FORECAST_HORIZONS_S),
                         strict=True))
    view = SubstationView("a", "a", True, scrape_at, load, 10_000.0, load / 10_000.0,
                          forecast=forecast)
    ledger = PendingLedger(clock_skew_s=0.0)
    aged = AgedLoads(Snapshot("p", scrape_at, {"a": view}), ledger)
    answered = False
    for offset in sorted(decisions):
        now = scrape_at + offset
        if answer_after is not None and not answered and answer_after <= offset:
            # The substation's own answer, newer than the scrape (no new session: an answer
            # to a refusal, or another balancer's work is not modelled here).
            at = scrape_at + answer_after
            ledger.observe("a", true_load(table, at), at,
                           forecast=own_forecast(table, at, carried))
            answered = True
        aged.advance(now)
        truth = true_load(table, now)
        assert aged.fit_by_instance["a"] >= truth - 1e-9, (now, truth)
        assert 0.0 <= aged.rank_by_instance["a"] <= aged.fit_by_instance["a"] + 1e-9


placements = st.lists(
    st.tuples(st.floats(0.0, 60.0),                       # after the scrape (s)
              st.sampled_from((3.7, 11.0, 50.0)),
              st.floats(0.01, 10.0),                       # declared kWh
              st.booleans()),                              # whether its answer is read
    max_size=10)


@settings(max_examples=300, deadline=None)
@given(arrivals=sessions, scrape_at=st.floats(30.0, 40.0), placed=placements,
       carried=st.booleans(), decisions=st.lists(st.floats(0.0, 150.0), min_size=1, max_size=8))
def test_placements_since_the_scrape_are_counted_until_they_really_end(
        arrivals: list[tuple[float, float, float]], scrape_at: float,
        placed: list[tuple[float, float, float, bool]], carried: bool,
        decisions: list[float]) -> None:
    """This balancer's own placements after the scrape: pending until an answer counts them,
    then inside that answer; each stops counting at its announced end (or, when the answer
    carries its own forecast, by that). The effective load of the fit check (aged reading +
    pending) never drops below the truth."""
    table = substation(arrivals)
    for i, (start, kw, kwh) in enumerate(sorted(arrivals)):
        table.advance(start)
        table.admit(f"s{i}", "ev", kw, kwh, now=start)
    load = true_load(table, scrape_at)
    forecast = tuple(zip(FORECAST_HORIZONS_S, table.forecast_kw(scrape_at, FORECAST_HORIZONS_S),
                         strict=True))
    view = SubstationView("a", "a", True, scrape_at, load, 10_000.0, load / 10_000.0,
                          forecast=forecast)
    snapshot = Snapshot("p", scrape_at, {"a": view})
    ledger = PendingLedger(clock_skew_s=0.0)
    events = sorted([(scrape_at + off, 1, (kw, kwh, read)) for off, kw, kwh, read in placed]
                    + [(scrape_at + off, 2, None) for off in decisions], key=lambda e: e[:2])
    for n, (now, kind, detail) in enumerate(events):
        if kind == 1 and detail is not None:
            kw, kwh, read = detail
            table.advance(now)
            ledger.reserve("a", f"p{n}", kw)
            session = table.admit(f"p{n}", "ev", kw, kwh, now=now).session
            ledger.confirm("a", f"p{n}", now, seq=table.load_seq, ends_at=table.ends_at(session))
            if read:
                ledger.observe("a", table.load_kw, now, seq=table.load_seq,
                               forecast=own_forecast(table, now, carried))
            continue
        aged = AgedLoads.for_decision(snapshot, ledger, now)
        assert aged is not None
        effective = effective_load_kw(view, ledger, aged)
        truth = true_load(table, now)
        assert effective is not None and effective >= truth - 1e-9, (now, truth, events)
