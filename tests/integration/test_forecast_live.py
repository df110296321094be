"""Forecast-aware balancing on real parts: substations export their forecast, a real Prometheus
scrapes it, and the balancer ages a stale snapshot by it."""

from __future__ import annotations

import time

import pytest

from gridlb.charge import FORECAST_HORIZONS_S
from tests.integration.conftest import Cluster, StartCluster, wait_for

pytestmark = pytest.mark.integration

# The forecast policy with a snapshot that stays as it is until a reload: the test decides
# exactly how stale the balancer's information is.
STALE_FORECAST = """\
name: least-forecast-utilization
query: substation_load{job="substation"} / on (instance) substation_capacity_kw
result: {substation_label: instance, better: lower, select: best,
         pending_adjustment: utilization, load_aging: forecast}
refresh_interval: 5m
"""
STALE_PLAIN = STALE_FORECAST.replace("load_aging: forecast", "load_aging: none")


def direct_charge(c: Cluster, sub_id: str, session_id: str, kw: float, seconds: float) -> None:
    """Start a session at one substation, bypassing the balancer (another balancer's work, as
    the balancer sees it): at speed factor 1, `seconds` of real time."""
    status, body = c.substation(sub_id, "POST", "/charge",
                                {"session_id": session_id, "vehicle_id": session_id,
                                 "requested_kw": kw, "energy_kwh": kw * seconds / 3600.0})
    assert status == 200, body


def test_the_forecast_reaches_prometheus_and_the_balancer(cluster: StartCluster) -> None:
    c = cluster([("a", 100.0)], policy="least-forecast-utilization")
    direct_charge(c, "a", "ends-soon", 60.0, 30.0)
    direct_charge(c, "a", "runs-long", 30.0, 3600.0)
    since = time.time()
    c.wait_scraped(since)
    forecast = c.prometheus.values('substation_load_forecast_kw{job="substation"}', "horizon")
    assert set(forecast) == {f"{h:g}s" for h in FORECAST_HORIZONS_S}
    assert (forecast["1s"], forecast["120s"]) == (90.0, 30.0), forecast
    row = wait_for(lambda: next((r for r in c.policy()["substations"]
                                 if r["forecast_kw"] and r["scraped_at"] > since), None),
                   "the balancer to read the forecast")
    assert row["forecast_kw"]["120s"] == 30.0
    assert c.policy()["result"]["load_aging"] == "forecast"


@pytest.mark.parametrize("policy_text, expected", [(STALE_FORECAST, "a"), (STALE_PLAIN, "b")],
                         ids=["forecast-sees-the-end", "plain-waits-for-a-scrape"])
def test_a_session_that_ended_since_the_scrape_frees_its_substation(
        cluster: StartCluster, policy_text: str, expected: str) -> None:
    c = cluster([("a", 100.0), ("b", 100.0)], policy="least-forecast-utilization",
                policy_overrides={"least-forecast-utilization": policy_text})
    direct_charge(c, "a", "ends-soon", 90.0, 3.0)      # a: 90 of 100 kW for 3 s
    direct_charge(c, "b", "runs-long", 50.0, 3600.0)   # b: half full for an hour
    since = time.time()
    c.wait_scraped(since)
    assert c.reload()[0] == 200                         # the snapshot: a at 90 %, b at 50 %
    wait_for(lambda: c.substation("a", "GET", "/status")[1]["load_kw"] == 0.0,
             "the 3 s session to end", timeout_s=10.0)
    # The forecast has a point 5 s after the sample: only past it (and the 0.5 s allowed for
    # clock skew) is the end certain. Still the same snapshot: no refresh for 5 minutes.
    scraped_at = next(r["scraped_at"] for r in c.policy()["substations"]
                      if r["substation"] == "a")
    wait_for(lambda: time.time() > scraped_at + 5.6, "the 5 s horizon to pass", timeout_s=10.0)
    row = next(r for r in c.policy()["substations"] if r["substation"] == "a")
    assert row["scraped_at"] == scraped_at and row["load_kw"] == 90.0
    assert row["effective_load_kw"] == (0.0 if expected == "a" else 90.0)
    status, body = c.charge("ev-1", 40.0)
    assert status == 200, body
    assert body["substation"] == expected
