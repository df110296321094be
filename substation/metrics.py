"""The substation's metrics, on an explicit registry, each labelled with the substation id."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

from gridlb.charge import horizon_label

# `*_created` series double the series count and no dashboard or rule reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

OUTCOMES = ("accepted", "duplicate", "over_capacity", "too_many_sessions", "conflict", "fenced",
            "invalid", "not_saved")


class SubstationMetrics:
    def __init__(self, registry: CollectorRegistry, substation_id: str,
                 capacity_kw: float, forecast_horizons_s: Sequence[float] = ()) -> None:
        self.registry = registry
        label = {"substation": substation_id}
        # `substation_load` keeps the original system's name exactly: dashboards depend on it.
        # It is the committed load (every session's floor: its power when it gave no min_kw),
        # what admission and the balancer's fit check count; substation_granted_kw is drawn.
        self.load = Gauge("substation_load", "Power committed now (the sessions' floors; "
                          "drawn, for fixed-power sessions), in kW", ["substation"],
                          registry=registry).labels(**label)
        # The number of the load reading above: the balancer knows which of its placements a
        # scrape already counts, exactly, whatever the clocks say.
        self.load_seq = Gauge("substation_load_seq", "Sequence number of the load reading",
                              ["substation"], registry=registry).labels(**label)
        # The load each horizon ahead if sessions run to their declared energy: a fixed handful
        # of series (never one per session) from which the balancer ages a stale reading.
        forecast = Gauge("substation_load_forecast_kw",
                         "Load expected this long after the sample if every session charging "
                         "runs to its declared energy and none arrives, in kW",
                         ["substation", "horizon"], registry=registry)
        self.forecast_horizons_s = tuple(forecast_horizons_s)
        self.forecast = [forecast.labels(substation=substation_id, horizon=horizon_label(h))
                         for h in self.forecast_horizons_s]
        self.capacity = Gauge("substation_capacity_kw", "Capacity in kW", ["substation"],
                              registry=registry).labels(**label)
        self.active = Gauge("substation_active_sessions", "Sessions charging now",
                            ["substation"], registry=registry).labels(**label)
        # Admitted, waiting for their commit: above a few, the disk is slow (none of them is
        # in the load or the other gauges until it is on disk).
        self.saving = Gauge("substation_sessions_saving", "Sessions admitted and being saved",
                            ["substation"], registry=registry).labels(**label)
        # 1 while the load is above the capacity (restarted with less than its sessions
        # take): nothing new is admitted until it is under it again.
        self.over_capacity = Gauge("substation_over_capacity",
                                   "1 while the load is above the capacity", ["substation"],
                                   registry=registry).labels(**label)
        # Adaptive power (substation/allocation.py). substation_load is the committed floors
        # (what admission and the balancer's fit check count); these say what is drawn.
        self.committed_min = Gauge("substation_committed_min_kw",
                                   "Floors (min_kw, or requested_kw without one) committed to "
                                   "the sessions charging, in kW", ["substation"],
                                   registry=registry).labels(**label)
        self.granted = Gauge("substation_granted_kw", "Power granted to the sessions charging "
                             "(drawn now), in kW", ["substation"],
                             registry=registry).labels(**label)
        self.curtailed = Gauge("substation_curtailed_kw", "Power asked for and not granted, "
                               "summed over the sessions charging, in kW", ["substation"],
                               registry=registry).labels(**label)
        requests = Counter("substation_charge_requests", "Charge requests by outcome",
                           ["substation", "outcome"], registry=registry)
        # Every outcome exists from the start, so rate() works before the first refusal.
        self.requests = {o: requests.labels(substation=substation_id, outcome=o)
                         for o in OUTCOMES}
        self.energy = Counter("substation_energy_delivered_kwh", "Energy delivered, in kWh",
                              ["substation"], registry=registry).labels(**label)
        ended = Counter("substation_sessions_ended", "Sessions ended by reason",
                        ["substation", "reason"], registry=registry)
        self.ended = {r: ended.labels(substation=substation_id, reason=r)
                      for r in ("completed", "stopped")}
        self.capacity.set(capacity_kw)
