"""Ingress configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

from gridlb.charge import ChargeLimits
from gridlb.durable import Durability


@dataclass(frozen=True)
class IngressConfig:
    # One or more balancer replicas; a session id always goes to the same one while it answers
    # (rendezvous hashing), the next one when it cannot be reached. An http URL whose host is a
    # name stands for every IPv4 address of the name, resolved again every
    # balancer_dns_refresh_s (ingress/balancers.py): `--scale balancer=N` in Compose.
    balancer_urls: tuple[str, ...] = ("http://127.0.0.1:8081",)
    balancer_dns_refresh_s: float = 5.0
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()
    internal_token: str | None = None
    store_path: str = ".run/ingress.sqlite3"
    # A postgresql:// URL: the store every ingress replica shares (ingress/stores/postgres.py);
    # None: the SQLite file at store_path, for one ingress process.
    store_url: str | None = None
    # PostgreSQL connections this replica opens at most: one per keyed request in flight.
    store_pool_size: int = 32
    durability: Durability = Durability.FULL
    # The whole answer to a client takes at most this; the balancer is given a little less, so
    # it answers (even "unknown") before the ingress gives up on it.
    request_timeout_s: float = 10.0
    max_body_bytes: int = 16 * 1024
    limits: ChargeLimits = field(default_factory=ChargeLimits)
    key_ttl_s: float = 24 * 3600.0
    # Settled idempotency records beyond this many are evicted, oldest first; records of
    # sessions whose outcome is unknown never are.
    max_keys: int = 1_000_000
    prune_interval_s: float = 3600.0
    # The reconciler (ingress/reconciler.py) looks for PENDING records this often, and takes
    # those not written for reconcile_min_age_s (a client retrying now settles its own).
    reconcile_interval_s: float = 2.0
    reconcile_min_age_s: float = 2.0
    log_format: str = "text"        # or "json" (gridlb/logs.py)
