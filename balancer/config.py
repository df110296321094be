"""Balancer configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from balancer.promaccess import PrometheusAccess
from gridlb.charge import ChargeLimits


@dataclass(frozen=True)
class BalancerConfig:
    prometheus_url: str = "http://127.0.0.1:9090"
    # Where a person's browser reaches Prometheus (for the graph link in GET /policy).
    prometheus_public_url: str | None = None
    policy_dir: str = "policies"
    # The policy served when the active-policy file holds no choice (docs/design.md, "Which
    # policy serves"): the best measured one (docs/benchmarks.md).
    policy: str = "least-forecast-utilization"
    # The file every replica watches for the fleet's choice, written by POST /-/reload
    # {"policy": ...}; None: a reload switches this replica only, until it restarts.
    active_policy_file: str | None = None
    host: str = "127.0.0.1"
    port: int = 8081
    substation_job: str = "substation"
    # The grid's name: its `grid` label (gridlb/grid.py). "" selects series without the label.
    grid: str = ""
    max_snapshot_age_s: float = 15.0
    query_timeout_s: float = 2.0
    forward_timeout_s: float = 3.0
    max_attempts: int = 3
    # The most a dispatch may take when the caller states no deadline of its own (the ingress
    # always does, a little under its own timeout).
    dispatch_budget_s: float = 10.0
    limits: ChargeLimits = field(default_factory=ChargeLimits)
    internal_token: str | None = None
    # Extra query parameters for Prometheus-compatible backends (Thanos' {"dedup": "true"}).
    # VictoriaMetrics 1.79 ignores `latency_offset` as one: set -search.latencyOffset on it
    # (docs/victoriametrics.md).
    extra_query_params: dict[str, Any] = field(default_factory=dict)
    prometheus_headers: dict[str, str] = field(default_factory=dict)
    # Credentials, CA and client certificate for a Prometheus behind auth (balancer/promaccess.py).
    prometheus_access: PrometheusAccess = field(default_factory=PrometheusAccess)
    clock_skew_s: float = 0.5
    seed: int | None = None
    max_body_bytes: int = 16 * 1024
    log_format: str = "text"        # or "json" (gridlb/logs.py)
