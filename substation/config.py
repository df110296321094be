"""Substation configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

from gridlb.charge import FORECAST_HORIZONS_S, ChargeLimits
from gridlb.durable import Durability


@dataclass(frozen=True)
class SubstationConfig:
    substation_id: str
    capacity_kw: float
    host: str = "127.0.0.1"
    port: int = 9101
    speed_factor: float = 60.0
    tick_interval_s: float = 0.2
    internal_token: str | None = None
    state_path: str | None = None
    durability: Durability = Durability.FULL
    max_body_bytes: int = 16 * 1024
    retention_s: float = 600.0
    max_sessions: int = 10_000
    limits: ChargeLimits = field(default_factory=ChargeLimits)
    # substation_load_forecast_kw{horizon=...}: enough points to age a reading by up to a few
    # scrape intervals (1 to 60 s) with little error, few enough to stay a handful of series.
    forecast_horizons_s: tuple[float, ...] = FORECAST_HORIZONS_S
    log_format: str = "text"        # or "json" (gridlb/logs.py)
    # Append every admission, stop and completion to the state file's history table (for the
    # nemesis's checker; never pruned).
    history: bool = False
    # Test only: a file holding a delay in ms that every commit waits first (a slow disk).
    fault_file: str | None = None
